"""Wall time of the stack on a 60k-row training set (5 folds, swap augmentation, TTA).

Embedding 60k Kaggle-sized rows (~180k texts) takes over an hour on 2 CPU cores, so the
features here are real features resampled, not recomputed: the feature stage's output for
the benchmark files ``../shared/data/*.csv`` (computed through the normal caches: the same
work bench/quality.py does, so run that first to make this fast), rows drawn with
replacement to ``--rows`` and jittered (x * (1 + 1% noise)) so that no two rows are
identical; labels come with their rows, each row is its own prompt group. The width is the
real feature width of the default config (about 400 columns with the MiniLM embedding
group).

Timed: building the swapped features, the LightGBM member ``lgbm_all`` cross-fitted on
every column (default parameters, stack.seeds, early stopping on an inner split, swap
augmentation and TTA, 10% of the rows as a test set), and the nested blend with its
scoring. Target: under 6 minutes on 2 CPU cores.

    python bench/stack_speed.py                  # 60,000 rows
    python bench/stack_speed.py --rows 5000      # quick check
"""
from __future__ import annotations

import argparse
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

from bench.quality import split_file  # noqa: E402
from features.swap import swap_features  # noqa: E402
from pipeline.catalog import Catalog, write_text_atomic  # noqa: E402
from pipeline.config import Config, apply_overrides  # noqa: E402
from pipeline.context import RunContext  # noqa: E402
from pipeline.stack import blend_members, cross_fit_member, lgbm_params, score_run  # noqa: E402
from pipeline.stages import STAGES  # noqa: E402

RESULTS = REPO / "bench" / "results" / "stack_speed.md"


def real_features(data: Path, workdir: Path) -> tuple[pd.DataFrame, np.ndarray]:
    """Feature rows (train split of bench/quality.py) and labels of every benchmark file."""
    frames, labels = [], []
    for path in sorted(data.glob("*.csv")):
        out_dir = workdir / "bench_data" / path.stem
        train_path, test_path, _ = split_file(path, out_dir, None, 0)
        cfg = apply_overrides(Config(), {"name": f"speed-{path.stem}"})
        ctx = RunContext(config=cfg, catalog=Catalog(workdir), train_path=train_path,
                         test_path=test_path, device_request=cfg.device)
        for name in ("embed", "features"):
            STAGES[name].load()(ctx)
        from pipeline.featurize import load_features

        train_feats, _ = load_features(ctx)
        order = train_feats.set_index("id").loc[ctx.dataset.train["id"].astype(str)].reset_index()
        frames.append(order)
        labels.append(ctx.dataset.train["label"].to_numpy())
    common = [c for c in frames[0].columns if all(c in f.columns for f in frames)]
    return pd.concat([f[common] for f in frames], ignore_index=True), np.concatenate(labels)


def resample(feats: pd.DataFrame, y: np.ndarray, n: int, seed: int):
    """n rows drawn with replacement, jittered multiplicatively, fresh ids.

    Returns: (features, labels, source row of each new row): copies of one source row
    must share a fold and an inner split side, or early stopping sees its own rows.
    """
    rng = np.random.default_rng(seed)
    pick = rng.integers(0, len(feats), n)
    cols = [c for c in feats.columns if c != "id"]
    values = feats[cols].to_numpy(np.float32)[pick]
    values *= (1 + 0.01 * rng.standard_normal(values.shape)).astype(np.float32)
    out = pd.DataFrame(values, columns=cols)
    out.insert(0, "id", [f"s{i}" for i in range(n)])
    return out, y[pick].astype(np.int64), pick


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=60_000)
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    p.add_argument("--workdir", type=Path, default=Path(os.environ.get("PREFSTACK_BENCH_DIR", "/tmp/prefstack-bench")))
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    for noisy in ("sentence_transformers", "transformers", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    cfg = Config().stack
    load_before = os.getloadavg()[0]
    feats, y0 = real_features(args.data, args.workdir)
    train, y, source = resample(feats, y0, args.rows, 0)
    test, _, _ = resample(feats, y0, args.rows // 10, 1)
    cols = [c for c in train.columns if c != "id"]
    # Folds and inner-split groups by source row, so no row's copy is on the other side.
    folds = (np.random.default_rng(2).permutation(len(feats)) % args.folds)[source]
    groups = source

    t0 = time.perf_counter()
    tr_sw, te_sw = swap_features(train), swap_features(test)
    X, Xs = train[cols].to_numpy(np.float32), tr_sw[cols].to_numpy(np.float32)
    Xt, Xts = test[cols].to_numpy(np.float32), te_sw[cols].to_numpy(np.float32)
    t_swap = time.perf_counter() - t0
    t0 = time.perf_counter()
    fit = cross_fit_member(X, Xs, y, train["id"].to_numpy(), folds, groups, Xt, Xts, cols,
                           lgbm_overrides=cfg.lgbm_params, seeds=cfg.seeds,
                           swap_augment=cfg.swap_augment, swap_tta=cfg.swap_tta,
                           num_boost_round=cfg.num_boost_round, early_stopping=cfg.early_stopping,
                           early_stopping_rounds=cfg.early_stopping_rounds,
                           inner_valid_fraction=cfg.inner_valid_fraction)
    t_fit = time.perf_counter() - t0
    t0 = time.perf_counter()
    res = blend_members(["lgbm_all"], [fit.oof], [fit.test], y, folds, cfg.temperature, cfg.clip_eps)
    metrics = score_run(res, y, folds, cfg.clip_eps)
    t_blend = time.perf_counter() - t0
    total = t_swap + t_fit + t_blend
    threads = lgbm_params(cfg.lgbm_params, 0, n_rows=2 * args.rows)["num_threads"]
    iters = sorted(fit.best_iterations.values())
    text = "\n".join([
        "# Stack speed",
        "",
        f"`python bench/stack_speed.py --rows {args.rows}` on {platform.machine()}, {os.cpu_count()} CPU "
        f"cores (LightGBM num_threads={threads}), Python {platform.python_version()}, written "
        f"{time.strftime('%Y-%m-%d %H:%M')}. Features: the real feature stage output of the "
        f"benchmark files ({len(feats)} rows, {len(cols)} columns) resampled to {args.rows} training "
        f"and {len(test)} test rows with 1% multiplicative jitter (embedding 60k real rows on this CPU "
        "would take over an hour). Default stack config: "
        f"{args.folds} folds, seeds {list(cfg.seeds)}, swap augmentation (so {2 * args.rows * (args.folds - 1) // args.folds:,} "
        "rows per fit before the inner split), swap TTA, early stopping on a 15% inner split.",
        "",
        "| step | seconds |",
        "|---|---|",
        f"| swapped features (train + test) | {t_swap:.1f} |",
        f"| LightGBM member, {len(fit.models)} models (best iterations {iters}; "
        f"{1000 * t_fit / (sum(iters) + len(iters) * cfg.early_stopping_rounds):.0f} ms per boosting round) "
        f"| {t_fit:.1f} |",
        f"| nested blend + scoring | {t_blend:.1f} |",
        f"| **total** | **{total:.1f}** ({total / 60:.1f} min; target < 6 min) |",
        "",
        f"Machine load (1-min load average) before / after: {load_before:.1f} / "
        f"{os.getloadavg()[0]:.1f}: above {os.cpu_count()} means other processes shared the cores.",
        "",
        f"Copies of one source row share a fold and an inner-split side, so early stopping "
        f"reacts to {len(feats)} distinct rows' worth of signal: fewer rounds than 60k real rows "
        f"would need. Budget: at the measured cost per round, 6 minutes allow about "
        f"{360 / max(t_fit / (sum(iters) + len(iters) * cfg.early_stopping_rounds), 1e-9) / args.folds:.0f} "
        f"rounds per fold. OOF log loss on the resampled set: {metrics['oof_log_loss']:.4f} "
        "(a speed benchmark, not a quality one).",
        "",
    ])
    print(text)
    if args.out:
        write_text_atomic(args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
