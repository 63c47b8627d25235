"""Human-readable outputs: one run's report.md with plots, and the table of all runs."""
from __future__ import annotations

import json
import logging
import math
from pathlib import Path

import numpy as np
import pandas as pd

from features.turns import CLASS_NAMES
from pipeline.catalog import atomic_path, read_json, write_text_atomic
from pipeline.learners.base import importance_label

log = logging.getLogger(__name__)
CLASSES = CLASS_NAMES


def _fmt(v, nd: int = 4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "-"
    if isinstance(v, float):
        return f"{v:.{nd}f}"
    return str(v)


def save_png(fig, path: Path) -> None:
    """``fig`` as a PNG at ``path``, written atomically (run reports, bench plots)."""
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110, bbox_inches="tight")


def calibration_table(y: np.ndarray, proba: np.ndarray, n_bins: int = 10) -> pd.DataFrame:
    """Reliability of each class's probability in equal-width bins.

    Returns: DataFrame [cls, bin_mid, mean_pred, observed, count] (empty bins dropped).
    """
    rows = []
    edges = np.linspace(0, 1, n_bins + 1)
    for c, name in enumerate(CLASSES):
        p = proba[:, c]
        hit = (np.asarray(y) == c).astype(float)
        which = np.clip(np.digitize(p, edges) - 1, 0, n_bins - 1)
        for b in range(n_bins):
            sel = which == b
            if sel.any():
                rows.append({"cls": name, "bin_mid": (edges[b] + edges[b + 1]) / 2,
                             "mean_pred": float(p[sel].mean()), "observed": float(hit[sel].mean()),
                             "count": int(sel.sum())})
    return pd.DataFrame(rows)


def confusion(y: np.ndarray, proba: np.ndarray) -> np.ndarray:
    """int [3, 3]: rows = true class, columns = most probable class."""
    out = np.zeros((3, 3), dtype=int)
    np.add.at(out, (np.asarray(y), np.argmax(proba, axis=1)), 1)
    return out


def _plots(run_dir: Path, metrics: dict, y: np.ndarray, proba: np.ndarray,
           importances: dict[str, pd.Series]) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = {}
    cal = calibration_table(y, proba)
    fig, axes = plt.subplots(1, 3, figsize=(12, 4), sharey=True)
    for ax, name in zip(axes, CLASSES):
        part = cal[cal["cls"] == name] if len(cal) else cal
        ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="perfect")
        if len(part):
            ax.plot(part["mean_pred"], part["observed"], marker="o", label="OOF blend")
            for _, r in part.iterrows():
                ax.annotate(str(r["count"]), (r["mean_pred"], r["observed"]), fontsize=7,
                            textcoords="offset points", xytext=(3, -9))
        ax.set_title(f"class {name}")
        ax.set_xlabel("predicted probability")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
    axes[0].set_ylabel("observed frequency")
    axes[0].legend(loc="upper left", fontsize=8)
    fig.suptitle("Calibration of the nested OOF blend (numbers: rows per bin)")
    save_png(fig, run_dir / "calibration.png")
    plt.close(fig)
    files["calibration"] = "calibration.png"

    cm = confusion(y, proba)
    fig, ax = plt.subplots(figsize=(4.5, 4))
    ax.imshow(cm, cmap="Blues")
    for i in range(3):
        for j in range(3):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center",
                    color="white" if cm[i, j] > cm.max() / 2 else "black")
    ax.set_xticks(range(3), CLASSES)
    ax.set_yticks(range(3), CLASSES)
    ax.set_xlabel("predicted (argmax)")
    ax.set_ylabel("true")
    ax.set_title("Confusion matrix (OOF blend)")
    save_png(fig, run_dir / "confusion.png")
    plt.close(fig)
    files["confusion"] = "confusion.png"

    if importances:
        # The member the blend leans on most (its importances are on its learner's own
        # scale): the largest soft-voting weight, or with the level-2 learner (whose inputs
        # have no weights) the member with the best OOF log loss.
        weights = metrics.get("blend_weights", {})
        if metrics.get("blend_method") == "meta":
            losses = {n: v.get("oof_log_loss", float("inf")) for n, v in metrics.get("members", {}).items()}
            name = min(importances, key=lambda n: (losses.get(n, float("inf")), -len(importances[n])))
        else:
            name = max(importances, key=lambda n: (weights.get(n, 0.0), len(importances[n])))
        imp = importances[name]
        kind = metrics.get("member_kinds", {}).get(name, "lgbm")
        top = imp.head(25)[::-1]
        if len(top):
            fig, ax = plt.subplots(figsize=(7, 0.28 * len(top) + 1.2))
            ax.barh(range(len(top)), top.to_numpy())
            ax.set_yticks(range(len(top)), top.index, fontsize=8)
            ax.set_xlabel(importance_label(kind))
            ax.set_title(f"Top feature importances: {name}")
            save_png(fig, run_dir / "importance.png")
            plt.close(fig)
            files["importance"] = "importance.png"

    diag = metrics.get("diagnostics", {})
    position = diag.get("position_bias", {})
    if position:
        names = list(position)
        fig, axes = plt.subplots(1, 2, figsize=(11, 0.45 * len(names) + 1.8))
        flips = [100 * position[n]["flip_rate"] for n in names]
        axes[0].barh(range(len(names)), flips, color="tab:orange")
        axes[0].set_yticks(range(len(names)), names, fontsize=8)
        axes[0].set_xlabel("% of rows whose most probable class changes")
        axes[0].set_title("Swapping A and B (no TTA)")
        gaps = [position[n]["identical_a_minus_b"] or 0.0 for n in names]
        n_ident = max(position[n]["identical_pairs"] for n in names)
        axes[1].barh(range(len(names)), gaps, color="tab:purple")
        axes[1].axvline(0, color="grey", lw=1)
        axes[1].set_yticks(range(len(names)), [""] * len(names))
        axes[1].set_xlabel("mean P(A) - P(B) (0 = no position bias)")
        axes[1].set_title(f"Identical responses ({n_ident} pairs)")
        fig.suptitle("Position bias of each member (the blend averages both orders: swap TTA)")
        save_png(fig, run_dir / "position_bias.png")
        plt.close(fig)
        files["position"] = "position_bias.png"
    lb = pd.DataFrame(diag.get("length_bias", []))
    if len(lb):
        fig, ax = plt.subplots(figsize=(7, 4))
        for c, color in (("a", "tab:blue"), ("b", "tab:red"), ("tie", "tab:green")):
            ax.plot(lb["mid"], lb[f"observed_{c}"], marker="o", color=color, label=f"observed {c}")
            ax.plot(lb["mid"], lb[f"predicted_{c}"], ls="--", color=color, label=f"predicted {c}")
        ax.set_xlabel("log((1 + chars of A) / (1 + chars of B)), median of each decile")
        ax.set_ylabel("rate")
        ax.set_ylim(0, 1)
        ax.legend(fontsize=8, ncol=3)
        ax.set_title("Length bias: win rates by length ratio (nested OOF blend)")
        save_png(fig, run_dir / "length_bias.png")
        plt.close(fig)
        files["length"] = "length_bias.png"

    weights = metrics.get("blend_weights", {})
    if len(weights) >= 2:
        fig, ax = plt.subplots(figsize=(max(4, 1.2 * len(weights) + 2), 3))
        ax.bar(list(weights), list(weights.values()))
        ax.set_ylim(0, 1.15)
        ax.set_ylabel("weight")
        ax.set_title(f"Blend weights (temperature {metrics.get('blend_temperature', 1):.3f})")
        for i, v in enumerate(weights.values()):
            ax.text(i, v + 0.02, f"{v:.2f}", ha="center")
        save_png(fig, run_dir / "blend_weights.png")
        plt.close(fig)
        files["weights"] = "blend_weights.png"
    return files


def write_run_report(run_dir: str | Path, metrics: dict, y: np.ndarray, proba: np.ndarray,
                     importances: dict[str, pd.Series]) -> Path:
    """Write ``report.md`` and its PNG plots into ``run_dir``; returns the report's path.

    ``y`` [n] labels and ``proba`` [n, 3] the nested OOF blend; ``importances`` maps a
    member to its gain per feature (sorted descending).
    """
    run_dir = Path(run_dir)
    files = _plots(run_dir, metrics, y, proba, importances)
    lines = [f"# Run report: {metrics.get('experiment', run_dir.name)}", "",
             f"{metrics.get('rows')} training rows, {metrics.get('n_folds')} folds (grouped by "
             f"prompt), {metrics.get('n_features')} features, {metrics.get('test_rows')} test rows; "
             f"written {metrics.get('date')}.", "",
             "## Scores (out-of-fold)", "",
             "| model | learner | inputs | log loss | accuracy | blend weight |",
             "|---|---|---|---|---|---|",
             f"| **blend (nested: weights fitted without the scored fold)** | | | "
             f"**{_fmt(metrics['oof_log_loss'])}** | **{_fmt(metrics['oof_accuracy'], 3)}** | |",
             f"| blend, in-sample weights (optimistic, for reference) | | | "
             f"{_fmt(metrics['oof_log_loss_in_sample_blend'])} | - | |"]
    for key, label in (("soft_vote_oof_log_loss", "soft vote (nested)"),
                       ("meta_oof_log_loss", "level-2 logistic regression on member log-probabilities (nested)")):
        if key in metrics:
            used = " (used)" if metrics.get("blend_method", "soft_vote") == key.split("_oof")[0] else ""
            lines.append(f"| {label}{used} | | | {_fmt(metrics[key])} | - | |")
    kinds = metrics.get("member_kinds", {})
    inputs = metrics.get("member_inputs", {})
    transductive = set(metrics.get("transductive_members", []))
    weights = metrics.get("blend_weights", {})
    for name, m in metrics.get("members", {}).items():
        label = f"member {name}" + (" (transductive: TF-IDF fitted on train+test texts)"
                                    if name in transductive else "")
        ins = ", ".join(next(iter(i)) if isinstance(i, dict) else str(i) for i in inputs.get(name, []))
        lines.append(f"| {label} | {kinds.get(name, 'finetune')} | {ins} | {_fmt(m['oof_log_loss'])} | "
                     f"{_fmt(m['oof_accuracy'], 3)} | {_fmt(weights.get(name), 3)} |")
    lines.append(f"| class prior (fitted on training folds) | | | {_fmt(metrics['prior_log_loss'])} | "
                 f"{_fmt(metrics['prior_accuracy'], 3)} | |")
    lines += ["", "Per-class log loss of the blend (mean over rows of that true class): " +
              ", ".join(f"{c} {_fmt(v)}" for c, v in metrics.get("per_class_log_loss", {}).items()),
              "", "Per-fold blend log loss: " +
              ", ".join(f"fold {k} {_fmt(v)}" for k, v in metrics.get("oof_log_loss_per_fold", {}).items()),
              "", "## Blend", "",
              "Weights (fitted on all OOF rows, used for the test set): " +
              ", ".join(f"{n} {w:.3f}" for n, w in metrics.get("blend_weights", {}).items()) +
              f"; temperature {metrics.get('blend_temperature', 1.0):.3f}.", ""]
    if "weights" in files:
        lines += [f"![blend weights]({files['weights']})", ""]
    lines += ["## Calibration", "", f"![calibration]({files['calibration']})", "",
              "## Confusion matrix", "", f"![confusion]({files['confusion']})", ""]
    diag = metrics.get("diagnostics", {})
    if diag.get("position_bias"):
        lines += ["## Position bias", "",
                  "| member | flips when A and B are swapped (no TTA) | mean change of P(A) | "
                  "P(A) - P(B) on identical pairs |", "|---|---|---|---|"]
        for n, v in diag["position_bias"].items():
            lines.append(f"| {n} | {100 * v['flip_rate']:.1f}% | {_fmt(v['mean_abs_shift'], 3)} | "
                         f"{_fmt(v['identical_a_minus_b'], 3)} ({v['identical_pairs']} pairs) |")
        lines += ["", "Members fitted on both orders as pairs (linear) are swap-equivariant: 0 "
                  "by construction. The blend and the submission use swap TTA.", ""]
        if "position" in files:
            lines += [f"![position bias]({files['position']})", ""]
    if "length" in files:
        lines += ["## Length bias", "", "Observed (solid) and predicted (dashed) rates of each "
                  "outcome by length ratio of the responses.", "",
                  f"![length bias]({files['length']})", ""]
    if "importance" in files:
        from pipeline.diagnostics import legend

        names = [n for imp in importances.values() for n in imp.head(25).index]
        lines += ["## Feature importance", "", f"![importance]({files['importance']})", "",
                  *legend(names), ""]
    timing = metrics.get("timing", {})
    if timing:
        lines += ["## Timing", "", ", ".join(f"{k} {v}" for k, v in timing.items()), ""]
    path = run_dir / "report.md"
    write_text_atomic(path, "\n".join(lines))
    return path


def flatten(d: dict, prefix: str = "") -> dict[str, object]:
    """{"stack": {"seeds": [0]}} -> {"stack.seeds": [0]} (mappings of settings stay whole
    below the second level, e.g. stack.members)."""
    out: dict[str, object] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, dict) and not prefix:
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def config_changes(config: dict) -> dict[str, object]:
    """Settings of a run's config that differ from today's defaults (the name left out)."""
    from pipeline.config import Config

    defaults = flatten(Config().to_dict())
    mine = flatten(config or {})
    return {k: v for k, v in sorted(mine.items())
            if k != "name" and (k not in defaults or defaults[k] != v)}


def _changes_text(changes: dict) -> str:
    if not changes:
        return "(defaults)"
    parts = [f"{k}={json.dumps(v, separators=(',', ':'))}" for k, v in changes.items()]
    text = "; ".join(parts)
    return text if len(text) <= 160 else text[:157] + "..."


def experiments_table(runs_dir: str | Path, skipped: list[Path] | None = None) -> str:
    """Markdown table of every ``runs/*/metrics.json`` side by side, sorted by OOF log loss:
    what each changed from the defaults, the data it ran on, its scores and date. Runs whose
    blended predictions are bit-identical to a better-listed run's are marked so (a change
    that had no effect). Damaged files are left out with a warning and appended to
    ``skipped``."""
    rows = []
    for path in sorted(Path(runs_dir).glob("*/metrics.json")):
        try:
            m = read_json(path)
        except (OSError, ValueError) as exc:
            log.warning("report: skipping unreadable %s (%s)", path, exc)
            if skipped is not None:
                skipped.append(path)
            continue
        if not isinstance(m, dict) or not isinstance(m.get("blend_weights", {}), dict):
            log.warning("report: skipping %s: not a run's metrics (rerun --stage stack for %s)",
                        path, path.parent.name)
            if skipped is not None:
                skipped.append(path)
            continue
        rows.append(m | {"_dir": path.parent.name})
    header = ["| experiment | changes from the defaults | data (file, rows, content) | members "
              "(blend weight) | OOF log loss | accuracy | class prior | date |",
              "|---|---|---|---|---|---|---|---|"]
    if not rows:
        return "\n".join(header + ["| (no runs yet: run --stage stack) | | | | | | | |"]) + "\n"
    rows.sort(key=lambda m: (m["oof_log_loss"] if isinstance(m.get("oof_log_loss"), (int, float))
                             else float("inf"), m["_dir"]))
    body, first_with = [], {}
    for m in rows:
        members = ", ".join(f"{n} ({w:.2f})" for n, w in m.get("blend_weights", {}).items())
        changes = _changes_text(config_changes(m.get("config", {})))
        result = m.get("result_sha256")
        if result and result in first_with:
            changes += f" **(result identical to {first_with[result]}: no effect)**"
        elif result:
            first_with[result] = m["_dir"]
        data = "-"
        if m.get("train_path"):
            digest_ = str(m.get("train_sha256", ""))[:8]
            data = f"{Path(m['train_path']).name}, {m.get('rows', '-')}" + (f", {digest_}" if digest_ else "")
        body.append(f"| {m['_dir']} | {changes} | {data} | {members} | "
                    f"{_fmt(m.get('oof_log_loss'))} | {_fmt(m.get('oof_accuracy'), 3)} | "
                    f"{_fmt(m.get('prior_log_loss'))} | {m.get('date', '-')} |")
    return "\n".join(header + body) + "\n"


def run_experiments_table(ctx) -> None:
    """--stage report: write runs/experiments.md and print it."""
    runs_dir = ctx.catalog.runs_dir
    skipped: list[Path] = []
    text = ("# Experiments\n\nBest first. Changes are each run's settings that differ from "
            "today's defaults; members are shown with their blend weight.\n\n"
            + experiments_table(runs_dir, skipped))
    write_text_atomic(runs_dir / "experiments.md", text)
    print(text)
    log.info("report: wrote %s", runs_dir / "experiments.md")
    if skipped:  # the others are reported; the exit status still says something is wrong
        from pipeline.data import DataError

        raise DataError(f"report: {len(skipped)} damaged metrics file(s) left out, e.g. "
                        f"{skipped[0]}: rerun --stage stack for {skipped[0].parent.name!r} "
                        "(or delete that run folder)")
