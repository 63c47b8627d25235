"""LightGBM settings of the ``lgbm_tfidf`` member, side by side on every shared file.

Each variant replaces ``lgbm_tfidf`` beside the other default members of the time (OTHERS);
the table gives the variant's own OOF log loss and the default blend's (nested level-2,
as the default stack) with the variant in its place, on the folds and held-out split of
``bench/quality.py``. Members are cross-fitted through the stack cache, so a rerun with
the same code reads them back. What the default is then chosen from, with the bar of
issue #10 beside it (best peer and peer average minus 0.005, from quality.md).

    python bench/lgbm_sweep.py                 # every file (after bench/quality.py)
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

from bench.quality import _ctx, bar_of, fit_and_read, peer_oofs, split_file  # noqa: E402
from pipeline.blend import log_loss, nested_meta  # noqa: E402
from pipeline.catalog import write_text_atomic  # noqa: E402
from pipeline.config import Config, apply_overrides  # noqa: E402

RESULTS = REPO / "bench" / "results" / "lgbm_sweep.md"
INPUTS = ["tfidf", "length", "structure", "overlap"]
# label -> (member name, LightGBM params or "svd128")
VARIANTS = {
    "learning_rate 0.04 (default before 2026-12-04 03:00)": ("lgbm_tfidf", {}),
    "refit": ("v_refit", {"refit": True}),
    "learning_rate 0.02 (default since)": ("v_lr02", {"learning_rate": 0.02}),
    "num_leaves 7, min_data_in_leaf 80": ("v_small", {"num_leaves": 7, "min_data_in_leaf": 80}),
    "feature_fraction 0.3": ("v_ff3", {"feature_fraction": 0.3}),
    "lambda_l2 20, min_data_in_leaf 60": ("v_l2", {"lambda_l2": 20.0, "min_data_in_leaf": 60}),
    "svd_dims 128": ("v_svd128", "svd128"),
    # Cheaper trees (2026-12-04 07:10), each at learning rate 0.02 (the default since):
    "learning_rate 0.02, bagging_fraction 0.5": ("v_lr02_bag05", {"learning_rate": 0.02,
                                                                  "bagging_fraction": 0.5}),
    "learning_rate 0.02, GOSS instead of bagging": ("v_lr02_goss", {
        "learning_rate": 0.02, "data_sample_strategy": "goss", "bagging_fraction": 1.0,
        "bagging_freq": 0}),
    "learning_rate 0.02, max_bin 63": ("v_lr02_mb63", {"learning_rate": 0.02, "max_bin": 63}),
}
# The other default members as they were when this table was made (2026-12-04; the
# default linear_tfidf now reads only the A - B block: bench/quality.py).
OTHERS = {
    "linear_tfidf": {"kind": "linear", "inputs": ["tfidf"]},
    "linear_emb": {"kind": "linear", "inputs": ["embedding-full"]},
    "linear_all": {"kind": "linear", "inputs": ["all"]},
}
FILES = ("hh_rlhf_harmless_base_test", "hh_rlhf_helpful_base_test", "lfqa_experts_human",
         "pandalm_test", "vicuna80_qlora_mturk_human")
# Bars of issue #10 (bench/results/quality.md, 2026-12-04).
BARS = {"hh_rlhf_harmless_base_test": 0.6326, "hh_rlhf_helpful_base_test": 0.6441,
        "lfqa_experts_human": 0.5696, "pandalm_test": 0.7835, "vicuna80_qlora_mturk_human": 0.8454}


def _member(name: str, params) -> dict:
    if params == "svd128":
        return {"kind": "lgbm", "inputs": [{"tfidf": {"svd_dims": 128}}, *INPUTS[1:]]}
    return {"kind": "lgbm", "inputs": INPUTS, "params": dict(params)}


def sweep_file(path: Path, workdir: Path, seed: int, run_name: str, others: dict,
               variants: dict, fold_seed: int | None = None) -> dict:
    """Cross-fit ``others`` and every variant of one member on one file (bench/quality.py's
    split), then score each variant alone and in the nested level-2 stack beside
    ``others``. ``variants``: label -> (member name, member spec). Returns: {file,
    variants: label -> {member, stack}, seconds}. ``fold_seed``: another draw of the folds
    than the default's ``stack.fold_seed`` (its runs are named apart)."""
    base = Config()
    if fold_seed is not None:
        base = apply_overrides(base, {"stack": {"fold_seed": fold_seed}})
        run_name = f"{run_name}-fs{fold_seed}"
    train_path, test_path, _ = split_file(path, workdir / "bench_data" / path.stem, None, seed)
    members = {**others, **{name: spec for name, spec in variants.values()}}
    cfg = apply_overrides(base, {"name": f"{run_name}-{path.stem}",
                                 "stack": {"members": members, "use_finetune": False}})
    ctx = _ctx(cfg, workdir, train_path, test_path)
    t0 = time.perf_counter()
    metrics, oof, y, folds = fit_and_read(ctx)
    proba = {n: oof[[f"{n}_a", f"{n}_b", f"{n}_tie"]].to_numpy() for n in members}
    rest = [proba[n] for n in others]
    out = {label: {"member": metrics["members"][name]["oof_log_loss"],
                   "stack": log_loss(y, nested_meta([proba[name]] + rest, y, folds,
                                                    base.stack.meta_C))}
           for label, (name, _) in variants.items()}
    res = {"file": path.stem, "variants": out, "seconds": time.perf_counter() - t0}
    if fold_seed is not None:  # the bar of this draw: its own peers (cached by folds)
        res["bar"] = bar_of(peer_oofs(ctx, workdir, path.stem, y, folds), y)
    return res


def run_file(path: Path, workdir: Path, seed: int, fold_seed: int | None = None) -> dict:
    variants = {v: (name, _member(name, p)) for v, (name, p) in VARIANTS.items()}
    return sweep_file(path, workdir, seed, "lgbm-sweep", OTHERS, variants, fold_seed)


def table(rows: list[dict], load: str) -> str:
    files = [r["file"] for r in rows]
    lines = [
        "# LightGBM settings of lgbm_tfidf, on every shared file",
        "",
        f"Written {time.strftime('%Y-%m-%d %H:%M')} by `python bench/lgbm_sweep.py`. Machine: "
        f"{platform.machine()}, {os.cpu_count()} CPU cores, load average at start {load}. "
        "OOF log loss, prompt-grouped 5 folds (bench/quality.py's split). Each cell: the "
        "variant alone / the default stack with it in lgbm_tfidf's place (nested level-2 "
        f"blend). {len(VARIANTS)} settings tried: choosing the best of them is slightly "
        "optimistic.",
        "",
        "| lgbm_tfidf setting | " + " | ".join(files) + " | mean (stack) | files where the stack beats the first row's |",
        "|---|" + "---|" * (len(files) + 2),
    ]
    first = next(iter(VARIANTS))
    base = {r["file"]: r["variants"][first]["stack"] for r in rows}
    for v in VARIANTS:
        cells, stacks, better = [], [], 0
        for r in rows:
            c = r["variants"][v]
            stacks.append(c["stack"])
            better += c["stack"] < base[r["file"]] - 1e-4
            cells.append(f"{c['member']:.4f} / {c['stack']:.4f}")
        lines.append(f"| {v} | " + " | ".join(cells) + f" | {np.mean(stacks):.4f} | {better} |")
    lines += ["", "Bar per file (issue #10): " + ", ".join(
        f"{f} {BARS[f]:.4f}" for f in files if f in BARS)]
    return "\n".join(lines) + "\n"


def variant_lines(rows: list[dict], labels: list[str], first_col: str, name_of=None) -> list[str]:
    """Markdown lines of a variant table (bench/seeds.py, bench/member_probe.py): per variant
    each file's member / stack OOF, the stack's mean, on how many files the stack beats the
    first variant's, and on how many it meets issue #10's bar; then the bars and seconds."""
    files = [r["file"] for r in rows]
    bars = {r["file"]: r.get("bar", BARS.get(r["file"], np.inf)) for r in rows}
    base = {r["file"]: r["variants"][labels[0]]["stack"] for r in rows}
    lines = [f"| {first_col} | " + " | ".join(files) + " | mean (stack) | files where the stack beats "
             "the first row's by > 0.0001 | files meeting the bar |",
             "|---|" + "---|" * (len(files) + 3)]
    for label in labels:
        cells, stacks, better, met = [], [], 0, 0
        for r in rows:
            c = r["variants"][label]
            stacks.append(c["stack"])
            better += c["stack"] < base[r["file"]] - 1e-4
            met += c["stack"] <= bars[r["file"]]
            cells.append(f"{c['member']:.4f} / {c['stack']:.4f}")
        name = name_of(label) if name_of else label
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {np.mean(stacks):.4f} | {better} | {met} |")
    draw = ("" if not any("bar" in r for r in rows) else
            " (of this draw of the folds: its own peers' OOF, as bench/fold_seeds.py)")
    return lines + ["", f"Bar per file (issue #10){draw}: " + ", ".join(
        f"{f} {bars[f]:.4f}" for f in files if np.isfinite(bars[f])),
        "", "Seconds per file (every member, cached ones ~0): " + ", ".join(
            f"{r['file']} {r['seconds']:.0f}" for r in rows)]


def sweep_main(argv, description: str, run_file, table, results: Path) -> int:
    """The command line of a variant sweep (this script, bench/seeds.py): every shared file
    through ``run_file(path, workdir, seed, fold_seed)``, one line per file, then ``table(rows,
    load)`` printed and written to ``--out``."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    p.add_argument("--workdir", type=Path,
                   default=Path(os.environ.get("PREFSTACK_BENCH_DIR", "/tmp/prefstack-bench")))
    p.add_argument("--seed", type=int, default=0, help="seed of the held-out split (as quality.py)")
    p.add_argument("--fold-seed", type=int, default=None,
                   help="another draw of the folds (stack.fold_seed, as bench/fold_seeds.py); "
                        "the bars are then that draw's (its peers are fitted or read from the cache)")
    p.add_argument("--out", type=Path, default=results)
    args = p.parse_args(argv)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    rows = []
    for stem in FILES:
        path = args.data / f"{stem}.csv"
        if not path.is_file():
            print(f"skip {stem}: {path} not found")
            continue
        rows.append(run_file(path, args.workdir, args.seed, args.fold_seed))
        print(stem, json.dumps({v: [round(c["member"], 4), round(c["stack"], 4)]
                                for v, c in rows[-1]["variants"].items()}), flush=True)
    if not rows:
        print(f"no shared data file found under {args.data} (--data)", file=sys.stderr)
        return 2
    text = table(rows, load)
    if args.fold_seed is not None:
        text = text.replace("\n\n", f"\n\nFolds: `stack.fold_seed` {args.fold_seed} (`--fold-seed`).\n\n", 1)
    write_text_atomic(args.out, text)
    print(text)
    return 0


def main(argv=None) -> int:
    return sweep_main(argv, __doc__.split("\n")[0], run_file, table, RESULTS)


if __name__ == "__main__":
    sys.exit(main())
