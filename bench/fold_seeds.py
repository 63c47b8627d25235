"""Issue #10's verdict under other fold draws: ``bench/quality.py`` once per ``stack.fold_seed``.

The quality table uses one draw of the prompt-grouped folds (``stack.fold_seed`` 42). A
target missed or met by less than its own noise says little on one draw, and a default
chosen among hundreds of subsets on one draw's OOF is slightly fitted to it. This script
reruns the whole side-by-side comparison (candidates, default stack, the three peers and
their average, every subset blended the nested way) with each fold seed, on the same
held-out split, and prints:

1. per file and seed: the default stack, the best peer and the peer average, the bar
   (the lower of the two minus the 0.005 margin) and whether the stack meets it;
2. per seed: where the default members rank by mean OOF log loss among the subsets that
   win the most files, i.e. whether the selection rule would pick them again;
3. ``bench/results/fold_seeds.png``: the margins of (1) as a picture.

Every fit is cached by its folds, so a seed already run (or the default seed, after
``bench/quality.py``) costs only its subset blends. Other draws' runs are named apart
(``quality-candidates-<file>-fs43``), so the default draw's run folders, which
``bench/meta_offset.py`` and ``bench/cohort_probe.py`` read, stay the quality table's.

    python bench/fold_seeds.py                       # seeds 42 (the default), 43, 44
    python bench/fold_seeds.py --seeds 42 43 44 45
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench import quality  # noqa: E402
from pipeline.catalog import write_text_atomic  # noqa: E402
from pipeline.config import apply_overrides, load_config  # noqa: E402

RESULTS = REPO / "bench" / "results" / "fold_seeds.md"


def verdicts(rows: list[dict]) -> list[dict]:
    """Per file: stack, best peer, peer average, bar and margin to it (negative = met)."""
    out = []
    for r in rows:
        best, avg = r["peers"][r["best_peer"]][0], r["peers"]["peer_average"][0]
        bar = quality.row_bar(r)
        out.append({"file": r["file"], "stack": r["stack"][0], "best_peer": r["best_peer"],
                    "best": best, "avg": avg, "bar": bar, "margin": r["stack"][0] - bar})
    return out


def selection(rows: list[dict]) -> dict:
    """Where the default members' meta blend ranks among the subsets winning the most files."""
    files = [r["file"] for r in rows]
    bars = {v["file"]: v["bar"] for v in verdicts(rows)}
    default = "meta: " + "+".join(n for n in quality.CANDIDATES if n in rows[0]["default_members"])
    scored = []
    for name in rows[0]["subsets"]:
        vals = [r["subsets"][name] for r in rows]
        wins = sum(v <= bars[f] for v, f in zip(vals, files))
        scored.append((float(np.mean(vals)), name, wins))
    most = max(w for _, _, w in scored)
    top = sorted((m, n) for m, n, w in scored if w == most)
    rank = next((i + 1 for i, (_, n) in enumerate(top) if n == default), None)
    d_mean, _, d_wins = next(s for s in scored if s[1] == default)
    return {"default": default, "default_mean": d_mean, "default_wins": d_wins, "most_wins": most,
            "n_top": len(top), "rank": rank, "best": top[0], "n_subsets": len(scored)}


def pooled(results: dict[int, list[dict]], top: int = 10) -> list[str]:
    """Markdown rows: subsets ranked by mean OOF log loss over every file and draw."""
    seeds = sorted(results)
    bars = {s: {v["file"]: v["bar"] for v in verdicts(results[s])} for s in seeds}
    default = selection(results[seeds[0]])["default"]
    files = [r["file"] for r in results[seeds[0]]]
    scored = []
    for name in results[seeds[0]][0]["subsets"]:
        per_file = [np.mean([next(r for r in results[s] if r["file"] == f)["subsets"][name] for s in seeds])
                    for f in files]
        wins = [sum(r["subsets"][name] <= bars[s][r["file"]] for r in results[s]) for s in seeds]
        scored.append((float(np.mean(per_file)), name, per_file, wins))
    scored.sort()
    rank = next(i + 1 for i, x in enumerate(scored) if x[1] == default)
    lines = ["| rank | members | " + " | ".join(files) + " | mean | files won per draw |",
             "|---|---|" + "---|" * (len(files) + 2)]
    for i, (mean, name, per_file, wins) in enumerate(scored):
        if i < top or name == default:
            mark = "**" if name == default else ""
            lines.append(f"| {i + 1} | {mark}{name}{mark} | " + " | ".join(f"{v:.4f}" for v in per_file)
                         + f" | {mean:.4f} | {', '.join(map(str, wins))} |")
    return lines + ["", f"The default members (bold) rank {rank} of {len(scored)} on the mean over "
                    f"{len(seeds)} draws."]


def report(results: dict[int, list[dict]], load: str, started: str) -> str:
    seeds = sorted(results)
    files = [r["file"] for r in results[seeds[0]]]
    lines = ["# Issue #10's targets under other fold draws", "",
             f"`python bench/fold_seeds.py --seeds {' '.join(map(str, seeds))}`: `bench/quality.py` "
             "once per `stack.fold_seed` (42 is the default and the quality table's draw), the same "
             "held-out split, every member, peer and subset refitted on each draw's folds. "
             f"Machine: {platform.machine()}, {os.cpu_count()} CPU cores, Python "
             f"{platform.python_version()}, load average at start {load}. Started {started}, written "
             f"{time.strftime('%Y-%m-%d %H:%M')}.", "",
             "OOF log loss of the default stack against its bar (the lower of the best peer and "
             f"the peer average, minus {quality.MARGIN}); margin = stack - bar, negative = target met.", "",
             "| file | " + " | ".join(f"seed {s}: stack / bar (margin)" for s in seeds)
             + " | met on | mean margin |",
             "|---|" + "---|" * (len(seeds) + 2)]
    per = {s: {v["file"]: v for v in verdicts(results[s])} for s in seeds}
    for f in files:
        cells = []
        for s in seeds:
            v = per[s][f]
            mark = "" if v["margin"] <= 0 else "**"
            cells.append(f"{v['stack']:.4f} / {v['bar']:.4f} ({mark}{v['margin']:+.4f}{mark})")
        met = sum(per[s][f]["margin"] <= 0 for s in seeds)
        mean = np.mean([per[s][f]["margin"] for s in seeds])
        lines.append(f"| {f} | " + " | ".join(cells) + f" | {met} of {len(seeds)} | {mean:+.4f} |")
    lines += ["", "Best peer per draw (name, OOF) and the peer average:", ""]
    for f in files:
        lines.append(f"- {f}: " + "; ".join(
            f"seed {s} {per[s][f]['best_peer']} {per[s][f]['best']:.4f}, average {per[s][f]['avg']:.4f}"
            for s in seeds))
    lines += ["", "Would the selection rule pick the default members again on this draw? Among the "
              "subsets (both blends) that win the most files, ranked by mean OOF log loss:", "",
              "| seed | subsets | most files won | subsets winning that many | default: files won | "
              "default: mean | default: rank among them | best of them (mean) |",
              "|---|---|---|---|---|---|---|---|"]
    for s in seeds:
        sel = selection(results[s])
        lines.append(f"| {s} | {sel['n_subsets']} | {sel['most_wins']} | {sel['n_top']} | "
                     f"{sel['default_wins']} | {sel['default_mean']:.4f} | "
                     f"{sel['rank'] if sel['rank'] else '-'} | {sel['best'][1]} ({sel['best'][0]:.4f}) |")
    lines += ["", f"Every subset on the mean over all {len(seeds)} draws and the five files (each file's "
              "column is its mean over the draws; the top ten and the default):", ""]
    lines += pooled(results)
    return "\n".join(lines) + "\n"


def margins_plot(results: dict[int, list[dict]], path: Path) -> Path:
    """A PNG beside the table: per file, the default stack's margin to its bar on every
    draw (stack - bar; below the zero line the target is met), one marker per draw."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from pipeline.report import save_png

    seeds = sorted(results)
    files = [r["file"] for r in results[seeds[0]]]
    per = {s: {v["file"]: v for v in verdicts(results[s])} for s in seeds}
    fig, ax = plt.subplots(figsize=(1.9 * len(files) + 2.5, 3.8))
    width = 0.6 / max(len(seeds), 1)
    for i, seed in enumerate(seeds):
        x = np.arange(len(files)) - 0.3 + (i + 0.5) * width
        m = [per[seed][f]["margin"] for f in files]
        ax.scatter(x, m, label=f"fold seed {seed}", zorder=3,
                   marker="os^Dvp<>"[i % 8], c=["tab:red" if v > 0 else "tab:green" for v in m],
                   edgecolors="k", linewidths=0.5)
    ax.axhline(0, color="k", lw=1)
    ax.axhspan(0, ax.get_ylim()[1], color="tab:red", alpha=0.06)
    ax.set_xticks(np.arange(len(files)))
    ax.set_xticklabels([f"{f}\n(met on {sum(per[s][f]['margin'] <= 0 for s in seeds)} of {len(seeds)})"
                        for f in files], fontsize=7)
    ax.set_ylabel("stack - bar (OOF log loss)", fontsize=8)
    ax.set_title("Issue #10's target per fold draw: the default stack's margin to its bar "
                 "(below 0: met)", fontsize=9)
    ax.legend(fontsize=7, loc="best")
    ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    save_png(fig, path)
    plt.close(fig)
    return path


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    p.add_argument("--workdir", type=Path,
                   default=Path(os.environ.get("PREFSTACK_BENCH_DIR", "/tmp/prefstack-bench")))
    p.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44], help="stack.fold_seed values")
    p.add_argument("--config", type=Path, default=None, help="experiment YAML to start from")
    p.add_argument("--only", nargs="*", default=None, help="file stems to run (default: all)")
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--json", type=Path, default=None, help="also write the raw results as JSON")
    args = p.parse_args(argv)
    quality.setup_logging()
    files = quality.data_files(args.data, args.only)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    started = time.strftime("%Y-%m-%d %H:%M")
    base = load_config(args.config)
    results = {}
    for seed in args.seeds:
        cfg = apply_overrides(base, {"stack": {"fold_seed": seed}})
        results[seed] = [quality.run_file(f, args.workdir, None, cfg, 0) for f in files]
    text = report(results, load, started)
    print(text)
    if args.out:
        write_text_atomic(args.out, text)
        print(f"plot: {margins_plot(results, args.out.with_suffix('.png'))}")
    if args.json:
        write_text_atomic(args.json, json.dumps(results, indent=1, default=float))
    return 0


if __name__ == "__main__":
    sys.exit(main())
