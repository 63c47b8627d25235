"""Wall time of the stack stage with the default members on a 60k-row training set
(5 folds, swap augmentation, swap TTA), and the TF-IDF view's share of it.

The training set is real rows of the benchmark files ``../shared/data/*.csv`` (the
training splits of bench/quality.py) drawn with replacement to ``--rows`` with fresh ids,
plus a test set of a tenth of that. Texts repeat, so embeddings come from the embed cache
that bench/quality.py fills (embedding 60k new rows, ~180k texts, takes over an hour on
2 CPU cores); everything after it runs for real: the feature stage on the 66k rows, then
``--stage stack`` in-process with the default config (every member cross-fitted, the
TF-IDF n-gram counts of every text hashed and each fold's IDF/SVD fitted, the nested
blend, the run outputs). Rows sharing a prompt share a fold, as always.

The benchmark texts are shorter than Kaggle's (about 800 characters per pair against
3,500); the TF-IDF view reads at most ``max_chars`` (4,000) characters of each text.
Target: the stack stage under 10 minutes on 2 CPU cores.

    python bench/stack_speed.py                  # 60,000 rows
    python bench/stack_speed.py --rows 5000      # quick check
    python bench/stack_speed.py --members '{"lgbm_all": ["all"]}' --out /tmp/candidate.md
                                                 # a candidate default (members merged in)
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
from pipeline.catalog import Catalog, read_json, write_csv_atomic, write_text_atomic  # noqa: E402
from pipeline.config import Config, apply_overrides  # noqa: E402
from pipeline.context import RunContext  # noqa: E402
from pipeline.data import LABEL_COLUMNS  # noqa: E402
from pipeline.stages import STAGES  # noqa: E402

RESULTS = REPO / "bench" / "results" / "stack_speed.md"


def resampled_files(data: Path, workdir: Path, rows: int, seed: int = 0) -> tuple[Path, Path, int]:
    """train.csv / test.csv of ``rows`` / ``rows // 10`` real rows drawn with replacement."""
    frames = []
    for path in sorted(data.glob("*.csv")):
        train_path, _, _ = split_file(path, workdir / "bench_data" / path.stem, None, 0)
        df = pd.read_csv(train_path, dtype=str, keep_default_na=False)
        frames.append(df[["id", "prompt", "response_a", "response_b", *LABEL_COLUMNS]])
    pool = pd.concat(frames, ignore_index=True)
    rng = np.random.default_rng(seed)
    out = workdir / "bench_data" / f"speed-{rows}"
    train = pool.iloc[rng.integers(0, len(pool), rows)].reset_index(drop=True)
    train["id"] = [f"s{i}" for i in range(rows)]
    test = pool.iloc[rng.integers(0, len(pool), rows // 10)].reset_index(drop=True)
    test["id"] = [f"t{i}" for i in range(len(test))]
    write_csv_atomic(out / "train.csv", train)
    write_csv_atomic(out / "test.csv", test.drop(columns=list(LABEL_COLUMNS)))
    chars = sum(train[c].str.len().sum() for c in ("prompt", "response_a", "response_b")) / rows
    return out / "train.csv", out / "test.csv", int(chars)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=60_000)
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    p.add_argument("--workdir", type=Path, default=Path(os.environ.get("PREFSTACK_BENCH_DIR", "/tmp/prefstack-bench")))
    p.add_argument("--out", type=Path, default=RESULTS)
    p.add_argument("--members", default=None,
                   help="a candidate default: JSON {name: spec or null} merged over the default "
                        "members (null removes one), e.g. '{\"lgbm_all\": [\"all\"]}'")
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    for noisy in ("sentence_transformers", "transformers", "httpx", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    train_path, test_path, chars = resampled_files(args.data, args.workdir, args.rows)
    # A workdir of its own so that nothing but the embeddings comes from a cache.
    work = args.workdir / f"speed-work-{args.rows}"
    import shutil

    if work.exists():
        shutil.rmtree(work)
    (work / "cache").mkdir(parents=True)
    os.symlink(args.workdir / "cache" / "embed", work / "cache" / "embed")
    stack = {"use_finetune": False}
    if args.members:
        import json

        changes = json.loads(args.members)
        members = {**Config().stack.members, **changes}
        stack["members"] = {n: spec for n, spec in members.items() if spec is not None}
    cfg = apply_overrides(Config(), {"name": "speed", "stack": stack})
    ctx = RunContext(config=cfg, catalog=Catalog(work), train_path=train_path, test_path=test_path,
                     device_request="cpu")
    load_before = os.getloadavg()
    seconds = {}
    for name in ("embed", "features", "stack"):
        t0 = time.perf_counter()
        STAGES[name].load()(ctx)
        seconds[name] = time.perf_counter() - t0
    m = read_json(ctx.run_dir / "metrics.json")
    t = m["timing"]
    views = m["view_fits"]
    members = [(n, m["member_kinds"][n], ", ".join(k if isinstance(k, str) else next(iter(k))
                                                    for k in m["member_inputs"][n]), t[f"member_{n}_s"])
               for n in m["member_names"] if f"member_{n}_s" in t]
    lines = [
        "# Stack speed", "",
        f"`python bench/stack_speed.py --rows {args.rows}` on {platform.machine()}, {os.cpu_count()} CPU "
        f"cores, Python {platform.python_version()}, written {time.strftime('%Y-%m-%d %H:%M')}; load "
        f"average before {load_before[0]:.2f} / after {os.getloadavg()[0]:.2f}. Data: {args.rows:,} training "
        f"and {args.rows // 10:,} test rows drawn with replacement from the benchmark files' real rows "
        f"({chars:,} characters per pair; Kaggle's are ~3,500). Default config: "
        f"{m['n_folds']} folds, seeds {cfg.stack.seeds}, swap augmentation and TTA"
        + (f"; members changed by `--members '{args.members}'`." if args.members else "."), "",
        "| step | seconds |", "|---|---|",
        f"| embed (every text read from the cache) | {seconds['embed']:.1f} |",
        f"| features (computed) | {seconds['features']:.1f} |",
    ]
    shares = views.get("member_view_seconds", {})
    lines += [f"| member {n} ({k} on {i}); its views {shares.get(n, 0.0):.1f} s of it, on the "
              f"helper thread | {s:.1f} |" for n, k, i, s in members]
    lines += [
        f"| of which view preparation (TF-IDF n-gram hashing of {3 * (args.rows + args.rows // 10):,} "
        f"texts, reading full embeddings) | {views['prepare_seconds']:.1f} |",
        f"| per-fold view fitting and transforms, every member ({views['view_fits']} fits; on the "
        "local engine's helper thread while the previous fold fits, so overlapping the members' "
        "times above) | "
        f"{views['view_seconds']:.1f} |",
        f"| blend + outputs | {seconds['stack'] - sum(s for *_, s in members):.1f} |",
        f"| **stack stage total** | **{seconds['stack']:.1f}** ({seconds['stack'] / 60:.1f} min; target < 10 min) |",
        "",
        f"OOF log loss on the resampled set: {m['oof_log_loss']:.4f} (rows repeat, so this is a speed "
        "benchmark, not a quality one).", "",
    ]
    text = "\n".join(lines)
    print(text)
    if args.out:
        write_text_atomic(args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
