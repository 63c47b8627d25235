"""Side-by-side quality on the real benchmark files: class prior, three simple peers and
their plain average, every candidate stack member, and the default stack, all on the
project's shared folds (prompt-grouped, 5 folds), in one run.

For each CSV in ``../shared/data/`` (Kaggle train layout, with labels): seeded whole prompts
covering 5% of the rows (at least 20) are held out as a small test file, the rest is the
training file. The real pipeline runs on it in-process (embed -> features -> stack, all
through their caches):

1. the stack with every candidate member of CANDIDATES (each cross-fitted and cached);
2. the stack with the default config (its members are candidates of the same names and
   settings, so they come from the cache): its nested soft-voting blend is "default stack",
   and its submission is scored on the held-out rows;
3. the peers of ``bench/peers.py`` on the same folds;
4. every subset of the candidates blended the same nested way (each fold blended with
   weights fitted on the other folds only): ``bench/results/quality_subsets.md``, the table
   the default members were chosen from (best mean over files, every file counted).

Beside the table, ``bench/results/quality.png`` shows the same numbers per file.

The 95% interval of (default stack - best peer) and (default stack - peer average) comes
from resampling prompts (1,000 bootstrap draws of whole prompt groups).

    python bench/quality.py                 # every file (embedding ~8 min on 2 CPU cores, once)
    python bench/quality.py --limit 300     # quick check on 300 rows per file
"""
from __future__ import annotations

import argparse
import itertools
import json
import logging
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench import peers  # noqa: E402
from pipeline.blend import (accuracy, log_loss, nested_blend, nested_meta, normalize_proba,  # noqa: E402
                            prior_oof)
from pipeline.catalog import Catalog, read_json, write_csv_atomic, write_text_atomic  # noqa: E402
from pipeline.config import Config, apply_overrides, load_config  # noqa: E402
from pipeline.context import RunContext  # noqa: E402
from pipeline.data import LABEL_COLUMNS  # noqa: E402
from pipeline.report import save_png  # noqa: E402
from pipeline.stages import STAGES  # noqa: E402

RESULTS = REPO / "bench" / "results" / "quality.md"
SUBSETS = REPO / "bench" / "results" / "quality_subsets.md"
# Candidate members; the default stack.members is the subset chosen from these.
CANDIDATES = {
    "lgbm_all": ["all"],
    "lgbm_tfidf": {"kind": "lgbm", "inputs": ["tfidf", "length", "structure", "overlap"],
                   "params": {"learning_rate": 0.02}},
    "linear_tfidf": {"kind": "linear", "inputs": [{"tfidf": {"blocks": ["diff"]}}]},
    # The sparse TF-IDF member as it was before 2026-12-04: [A - B, A + B] blocks.
    "linear_tfidf_ab": {"kind": "linear", "inputs": ["tfidf"]},
    "linear_emb": {"kind": "linear", "inputs": ["embedding-full"]},
    "linear_len": {"kind": "linear", "inputs": ["length"]},
    "linear_all": {"kind": "linear", "inputs": ["all"]},
}
PEERS = ("length_lr", "tfidf_lgbm", "emb_lr")
MARGIN = 0.005  # the stack must beat the best peer and the peer average by this much


def split_file(path: Path, out_dir: Path, limit: int | None, seed: int) -> tuple[Path, Path, pd.DataFrame]:
    """Seeded holdout: (train.csv, test.csv without labels, held-out labelled rows)."""
    df = pd.read_csv(path, dtype=str, keep_default_na=False)
    rng = np.random.default_rng(seed)
    if limit:
        df = df.iloc[np.sort(rng.permutation(len(df))[:limit])].reset_index(drop=True)
    n_test = max(20, int(round(0.05 * len(df))))
    # Whole prompts are held out (drawn in a seeded order until n_test rows): rows that
    # share a prompt often share response texts too (PandaLM: ~6 pairs of 4-5 responses per
    # prompt), so a row-level holdout would score the model on near-copies of its training
    # rows (it gave PandaLM 0.50 against 0.75 out of fold).
    codes, uniques = pd.factorize(df["prompt"])
    order = rng.permutation(len(uniques))
    sizes = np.bincount(codes, minlength=len(uniques))[order]
    chosen = order[: int(np.searchsorted(np.cumsum(sizes), n_test)) + 1]
    test_rows = np.isin(codes, chosen)
    train_path, test_path = out_dir / "train.csv", out_dir / "test.csv"
    write_csv_atomic(train_path, df[~test_rows])
    write_csv_atomic(test_path, df[test_rows].drop(columns=list(LABEL_COLUMNS)))
    return train_path, test_path, df[test_rows].reset_index(drop=True)


def _ctx(cfg, workdir: Path, train_path: Path, test_path: Path) -> RunContext:
    return RunContext(config=cfg, catalog=Catalog(workdir), train_path=train_path,
                      test_path=test_path, device_request=cfg.device)


def bootstrap_diff(y, p1, p2, groups, n: int = 1000, seed: int = 0) -> tuple[float, float]:
    """95% interval of mean log loss(p1) - log loss(p2), resampling whole prompt groups."""
    l1 = -np.log(normalize_proba(p1)[np.arange(len(y)), y])
    l2 = -np.log(normalize_proba(p2)[np.arange(len(y)), y])
    d = l1 - l2
    codes, uniq = pd.factorize(pd.Series(groups))
    sums = np.bincount(codes, weights=d, minlength=len(uniq))
    counts = np.bincount(codes, minlength=len(uniq))
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(uniq), (n, len(uniq)))
    means = sums[draws].sum(axis=1) / counts[draws].sum(axis=1)
    return float(np.quantile(means, 0.025)), float(np.quantile(means, 0.975))


def _peer_oof(workdir: Path, stem: str, name: str, run, key) -> np.ndarray:
    """A peer's OOF probabilities, cached by its code (bench/peers.py, the learners), the
    file, labels, folds and seeds, so rerunning the bench refits only what changed."""
    from pipeline.catalog import hash_key
    from pipeline.views import array_hash

    learner = "lgbm" if name == "tfidf_lgbm" else "linear"
    code = [(REPO / f).read_text() for f in ("bench/peers.py", "pipeline/crossfit.py",
                                             f"pipeline/learners/{learner}.py")]
    path = workdir / "peers" / f"{stem}-{name}-{hash_key(code, array_hash(key[0], key[1]), key[2])}.npy"
    if path.is_file():
        return np.load(path)
    oof = run().oof
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, oof)
    return oof


def peer_oofs(ctx, workdir: Path, data_name: str, y: np.ndarray, folds: np.ndarray) -> dict:
    """OOF probabilities of the three peers and their plain average on ``ctx``'s training
    rows and ``folds`` (each peer cached by its code, the data and the folds)."""
    from pipeline.embed import embeddings_for
    from pipeline.folds import prompt_groups

    cfg = ctx.config
    train, test = ctx.dataset.train, ctx.dataset.test
    groups = prompt_groups(train)
    kw = {"seeds": tuple(cfg.stack.seeds)}
    model = cfg.embed.models[0]
    runs = {
        "length_lr": lambda: peers.length_lr(train, test, y, folds, groups, **kw),
        "tfidf_lgbm": lambda: peers.tfidf_lgbm(train, test, y, folds, groups, **kw),
        "emb_lr": lambda: peers.emb_lr(embeddings_for(ctx, train, model),
                                       embeddings_for(ctx, test, model), y, folds, groups, **kw),
    }
    out = {n: _peer_oof(workdir, data_name, n, run, (y, folds, kw)) for n, run in runs.items()}
    out["peer_average"] = 0.5 * (out["tfidf_lgbm"] + out["emb_lr"])
    return out


def bar_of(peer_p: dict, y: np.ndarray) -> float:
    """Issue #10's bar: the lower of the best peer's and the peer average's OOF log loss,
    minus the margin."""
    scores = {n: log_loss(y, p) for n, p in peer_p.items()}
    return min(min(scores[n] for n in PEERS), scores["peer_average"]) - MARGIN


def row_bar(r: dict) -> float:
    """``bar_of`` from a result row of ``run_file`` (its peers' OOF log losses)."""
    return min(r["peers"][r["best_peer"]][0], r["peers"]["peer_average"][0]) - MARGIN


def fit_and_read(ctx, stages=("embed", "features", "stack")) -> tuple[dict, pd.DataFrame, np.ndarray, np.ndarray]:
    """Run ``stages`` on ``ctx`` (each cached by content) and read the run's outputs back.
    Returns: (metrics.json, oof.parquet, labels int64 [n], folds int64 [n])."""
    for stage in stages:
        STAGES[stage].load()(ctx)
    oof = pd.read_parquet(ctx.run_dir / "oof.parquet")
    return (read_json(ctx.run_dir / "metrics.json"), oof,
            oof["label"].to_numpy().astype(np.int64), oof["fold"].to_numpy().astype(np.int64))


def run_file(path: Path, workdir: Path, limit: int | None, base_cfg, seed: int) -> dict:
    """Candidates, default stack and peers on one file; returns its results."""
    from pipeline.folds import prompt_groups

    stem = path.stem
    data_dir = workdir / "bench_data" / (stem + (f"-limit{limit}" if limit else ""))
    train_path, test_path, held = split_file(path, data_dir, limit, seed)
    t0 = time.perf_counter()
    # Another draw of the folds (bench/fold_seeds.py) runs under its own names, so the
    # default draw's run folders, which the probes read, are left as they are.
    draw = "" if base_cfg.stack.fold_seed == Config().stack.fold_seed else f"-fs{base_cfg.stack.fold_seed}"
    cand_cfg = apply_overrides(base_cfg, {"name": f"quality-candidates-{data_dir.name}{draw}",
                                          "stack": {"members": CANDIDATES, "use_finetune": False}})
    ctx = _ctx(cand_cfg, workdir, train_path, test_path)
    cand_metrics, oof, y, folds = fit_and_read(ctx)
    cand_seconds = time.perf_counter() - t0
    members = {n: oof[[f"{n}_a", f"{n}_b", f"{n}_tie"]].to_numpy() for n in CANDIDATES}

    t0 = time.perf_counter()
    def_cfg = apply_overrides(base_cfg, {"name": f"quality-default-{data_dir.name}{draw}",
                                         "stack": {"use_finetune": False}})
    dctx = _ctx(def_cfg, workdir, train_path, test_path)
    STAGES["stack"].load()(dctx)
    default_seconds = time.perf_counter() - t0
    m = read_json(dctx.run_dir / "metrics.json")
    d_oof = pd.read_parquet(dctx.run_dir / "oof.parquet")
    stack_p = d_oof[["blend_a", "blend_b", "blend_tie"]].to_numpy()
    sub = pd.read_csv(dctx.run_dir / "submission.csv", dtype={"id": str})
    y_held = np.argmax(held[list(LABEL_COLUMNS)].astype(int).to_numpy(), axis=1)
    p_held = sub[list(LABEL_COLUMNS)].to_numpy()

    train = ctx.dataset.train
    assert (train["id"].astype(str).to_numpy() == oof["id"].to_numpy()).all()
    groups = prompt_groups(train)
    t0 = time.perf_counter()
    peer_p = peer_oofs(ctx, workdir, data_dir.name, y, folds)
    peer_seconds = time.perf_counter() - t0
    scores = {n: log_loss(y, p) for n, p in peer_p.items()}
    best_peer = min(PEERS, key=lambda n: scores[n])
    subsets = {}
    names = list(CANDIDATES)
    meta_C = def_cfg.stack.meta_C
    for r in range(1, len(names) + 1):
        for combo in itertools.combinations(names, r):
            probas = [members[n] for n in combo]
            nested, _ = nested_blend(probas, y, folds, temperature=False)
            subsets["soft_vote: " + "+".join(combo)] = log_loss(y, nested)
            subsets["meta: " + "+".join(combo)] = log_loss(y, nested_meta(probas, y, folds, meta_C))
    return {
        "file": stem, "rows": len(y), "held_rows": len(held),
        "prior": log_loss(y, prior_oof(y, folds)),
        "peers": {n: (scores[n], accuracy(y, p)) for n, p in peer_p.items()},
        "members": {n: (cand_metrics["members"][n]["oof_log_loss"],
                        cand_metrics["members"][n]["oof_accuracy"]) for n in CANDIDATES},
        "stack": (m["oof_log_loss"], m["oof_accuracy"]),
        "default_members": list(m["member_names"]),
        "weights": m["blend_weights"],
        "best_peer": best_peer,
        "ci_best": bootstrap_diff(y, stack_p, peer_p[best_peer], groups),
        "ci_avg": bootstrap_diff(y, stack_p, peer_p["peer_average"], groups),
        "held": (log_loss(y_held, p_held), accuracy(y_held, p_held)),
        "subsets": subsets,
        "seconds": {"candidates": cand_seconds, "default": default_seconds, "peers": peer_seconds},
        "member_seconds": {n: cand_metrics["timing"].get(f"member_{n}_s") for n in CANDIDATES},
    }


def _cell(pair) -> str:
    return f"{pair[0]:.4f} / {pair[1]:.3f}"


def table(rows: list[dict], limit: int | None, load: str) -> str:
    """Markdown: the side-by-side table with the targets checked."""
    cols = ["class prior", "length LR", "TF-IDF + LightGBM", "MiniLM + LR", "peer average"]
    cols += [f"member {n}" for n in CANDIDATES] + ["**default stack**", "stack - best peer (95% CI)",
                                                   "stack - peer avg (95% CI)", "held-out", "target met"]
    lines = [
        "# Stack quality on the real benchmark files",
        "",
        "Five-fold OOF log loss / accuracy, folds grouped by prompt, the same folds for every column. "
        f"{'A seeded sample of ' + str(limit) + ' rows per file; ' if limit else ''}"
        "whole prompts covering 5% of each file (min 20 rows) held out as a test file and scored at the end. "
        f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, Python {platform.python_version()}, "
        f"load average at start {load}. Embeddings: the bundled all-MiniLM-L6-v2. "
        f"Written {time.strftime('%Y-%m-%d %H:%M')} by `python bench/quality.py"
        + (f" --limit {limit}" if limit else "") + "`. Default members: "
        + (", ".join(rows[0]["default_members"]) if rows else "-") + ".",
        "",
        "| file | rows | " + " | ".join(cols) + " |",
        "|---|---|" + "---|" * len(cols),
    ]
    for r in rows:
        best = r["peers"][r["best_peer"]][0]
        avg = r["peers"]["peer_average"][0]
        bar = row_bar(r)
        met = r["stack"][0] <= bar
        cells = [f"{r['prior']:.4f}"] + [_cell(r["peers"][n]) for n in (*PEERS, "peer_average")]
        cells += [_cell(r["members"][n]) for n in CANDIDATES]
        cells += [f"**{_cell(r['stack'])}**",
                  f"{r['stack'][0] - best:+.4f} ({r['ci_best'][0]:+.4f}, {r['ci_best'][1]:+.4f})",
                  f"{r['stack'][0] - avg:+.4f} ({r['ci_avg'][0]:+.4f}, {r['ci_avg'][1]:+.4f})",
                  f"{_cell(r['held'])} ({r['held_rows']} rows)",
                  ("yes" if met else "**no**") + f" (<= {bar:.4f})"]
        lines.append(f"| {r['file']} | {r['rows']} | " + " | ".join(cells) + " |")
    lines += ["", "Soft-voting weights of the default members (on all OOF rows; reported for reference when "
              "the default combines them with the level-2 learner): "]
    for r in rows:
        lines.append(f"- {r['file']}: " + ", ".join(f"{n} {w:.2f}" for n, w in r["weights"].items()))
    lines += ["", "Seconds per file (candidates incl. embed/features as cached; default stack; peers) "
              "and per candidate member (a member found in the cache shows ~0 s):"]
    for r in rows:
        s = r["seconds"]
        lines.append(f"- {r['file']}: {s['candidates']:.0f} / {s['default']:.0f} / {s['peers']:.0f}; "
                     + ", ".join(f"{n} {v}" for n, v in r["member_seconds"].items()))
    return "\n".join(lines) + "\n"


PEER_LABELS = {"length_lr": "length LR", "tfidf_lgbm": "TF-IDF + LightGBM", "emb_lr": "MiniLM + LR",
               "peer_average": "peer average"}


def quality_plot(rows: list[dict], path: Path) -> Path:
    """A PNG beside the table: per file, every predictor's OOF log loss on one axis (class
    prior, peers, candidate members, the default stack), issue #10's bar as a dashed line,
    and the stack's 95% interval against the best peer (the best peer plus the interval of
    stack - best peer) as a bar through its dot. Files get their own x-axis (their log losses
    differ by far more than the gaps within one file); predictors far to the right of the
    stack, the bar and the best peer sit at the axis's edge, labelled with their value."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = (["class prior"] + [PEER_LABELS[n] for n in (*PEERS, "peer_average")]
              + [f"member {n}" for n in rows[0]["members"]] + ["default stack"])
    fig, axes = plt.subplots(1, len(rows), figsize=(3.2 * len(rows) + 1.5, 0.32 * len(labels) + 1.6),
                             sharey=True, squeeze=False)
    ypos = np.arange(len(labels))[::-1]
    for ax, r in zip(axes[0], rows):
        best = r["peers"][r["best_peer"]][0]
        bar = row_bar(r)
        vals = ([r["prior"]] + [r["peers"][n][0] for n in (*PEERS, "peer_average")]
                + [v[0] for v in r["members"].values()] + [r["stack"][0]])
        met = r["stack"][0] <= bar
        colors = (["0.6"] + ["tab:blue"] * (len(PEERS) + 1) + ["tab:gray"] * len(r["members"])
                  + ["tab:green" if met else "tab:red"])
        lo, hi = best + r["ci_best"][0], best + r["ci_best"][1]
        # The x-axis spans the stack, its interval, the bar and the best peer, plus room; a
        # predictor far to the right (the prior, weak members) sits at the edge with its value.
        core = [r["stack"][0], lo, hi, bar, best]
        left = min(core + vals[1:]) - 0.01
        right = max(core) + max(0.04, 0.5 * (max(core) - min(core)))
        shown = np.minimum(vals, right)
        ax.scatter(shown, ypos, c=colors, s=[20] * (len(vals) - 1) + [60], zorder=3,
                   marker="o")
        for v, x, yp in zip(vals, shown, ypos):
            if v > right:
                ax.annotate(f"{v:.3f} ->", (x, yp), xytext=(-4, 0), textcoords="offset points",
                            ha="right", va="center", fontsize=6.5, color="0.35")
        ax.plot([lo, hi], [ypos[-1]] * 2, color=colors[-1], lw=2, zorder=2)
        ax.axvline(bar, ls="--", color="k", lw=1)
        ax.set_title(f"{r['file']}\n({r['rows']} rows; bar {bar:.4f}: {'met' if met else 'missed'})",
                     fontsize=8)
        ax.set_xlabel("OOF log loss", fontsize=8)
        ax.tick_params(labelsize=7)
        ax.grid(axis="x", alpha=0.3)
        ax.set_xlim(left, right + 0.005)
    axes[0][0].set_yticks(ypos)
    axes[0][0].set_yticklabels(labels, fontsize=8)
    fig.suptitle("Five-fold OOF log loss, prompt-grouped folds (dashed: issue #10's bar; "
                 "line through the stack: 95% interval vs the best peer)", fontsize=9)
    fig.tight_layout()
    save_png(fig, path)
    plt.close(fig)
    return path


def subsets_table(rows: list[dict]) -> str:
    """Markdown: nested-blend OOF log loss of every subset of the candidates, per file."""
    names = list(rows[0]["subsets"])
    files = [r["file"] for r in rows]
    bars = {r["file"]: row_bar(r) for r in rows}
    scored = []
    for n in names:
        vals = [r["subsets"][n] for r in rows]
        wins = sum(v <= bars[f] for v, f in zip(vals, files))
        scored.append((float(np.mean(vals)), n, vals, wins))
    scored.sort()
    lines = ["# Every subset of the candidate members, both ways of combining them", "",
             "soft_vote: simplex weights; meta: level-2 logistic regression on the members' "
             "log-probabilities (stack.meta_C); both nested (fitted without the scored fold).", "",
             "OOF log loss per file (same folds as quality.md); 'files won' counts files where the "
             f"subset beats the best peer and the peer average by >= {MARGIN}. Sorted by the mean.", "",
             "| members | " + " | ".join(files) + " | mean | files won |",
             "|---|" + "---|" * (len(files) + 2)]
    for mean, n, vals, wins in scored:
        lines.append(f"| {n} | " + " | ".join(f"{v:.4f}" for v in vals) + f" | {mean:.4f} | {wins} |")
    lines += ["", "Bar per file (min of best peer and peer average, minus the margin): "
              + ", ".join(f"{f} {bars[f]:.4f}" for f in files)]
    return "\n".join(lines) + "\n"


def setup_logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    for noisy in ("sentence_transformers", "transformers", "matplotlib", "PIL", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def data_files(data: Path, only=None) -> list[Path]:
    """The labelled CSVs of ``data`` (those named in ``only``, if given); exits if none."""
    files = sorted(data.glob("*.csv"))
    if only:
        files = [f for f in files if f.stem in only]
    if not files:
        raise SystemExit(f"no CSV files in {data}: pass --data DIR")
    return files


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data",
                   help="folder of labelled Kaggle-layout CSVs (default ../shared/data)")
    p.add_argument("--workdir", type=Path, default=Path(os.environ.get("PREFSTACK_BENCH_DIR", "/tmp/prefstack-bench")),
                   help="pipeline workdir for the bench (caches kept between runs)")
    p.add_argument("--limit", type=int, default=None, help="seeded sample of N rows per file")
    p.add_argument("--only", nargs="*", default=None, help="file stems to run (default: all)")
    p.add_argument("--config", type=Path, default=None, help="experiment YAML to start from")
    p.add_argument("--seed", type=int, default=0, help="seed of the held-out split")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--json", type=Path, default=None, help="also write the raw results as JSON")
    args = p.parse_args(argv)
    setup_logging()
    files = data_files(args.data, args.only)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    base = load_config(args.config)
    rows = [run_file(f, args.workdir, args.limit, base, args.seed) for f in files]
    text = table(rows, args.limit, load)
    sub = subsets_table(rows)
    print(text)
    print(sub)
    if args.out:
        write_text_atomic(args.out, text)
        write_text_atomic(args.out.with_name(args.out.stem + "_subsets.md"), sub)
        print(f"plot: {quality_plot(rows, args.out.with_suffix('.png'))}")
    if args.json:
        write_text_atomic(args.json, json.dumps(rows, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
