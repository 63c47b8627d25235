"""Cross-fitting seconds of lgbm_tfidf at its default settings against other LightGBM
params, side by side in one run on the ``bench/stack_speed.py`` set (run that first: its
workdir holds the fold-fitted TF-IDF states, which both members read back, so the
difference is the boosting).

    python bench/stack_speed.py && python bench/member_speed.py '{"learning_rate": 0.02}'
    python bench/member_speed.py --add '{"lgbm_all": ["all"]}'   # what a new member costs
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.catalog import Catalog, read_json  # noqa: E402
from pipeline.config import Config, apply_overrides  # noqa: E402
from pipeline.context import RunContext  # noqa: E402
from pipeline.stages import STAGES  # noqa: E402


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("params", nargs="?", default=None,
                   help="LightGBM params of the second lgbm_tfidf, as JSON (omit with --add)")
    p.add_argument("--add", default=None,
                   help="other members to time, as JSON {name: spec} (fitted under fresh names)")
    p.add_argument("--rows", type=int, default=60_000)
    p.add_argument("--workdir", type=Path,
                   default=Path(os.environ.get("PREFSTACK_BENCH_DIR", "/tmp/prefstack-bench")))
    args = p.parse_args(argv)
    work = args.workdir / f"speed-work-{args.rows}"
    data = args.workdir / "bench_data" / f"speed-{args.rows}"
    if not (work.is_dir() and (data / "train.csv").is_file()):
        print(f"run python bench/stack_speed.py --rows {args.rows} first ({work} is missing)")
        return 2
    if args.params is None and args.add is None:
        p.error("give LightGBM params for lgbm_tfidf, or --add members")
    default = Config().stack.members["lgbm_tfidf"]
    # Fresh member names: none is read from the stack cache.
    tag = time.strftime("%H%M%S")
    members, labels = {}, []
    if args.params is not None:
        params = json.loads(args.params)
        members[f"base_{tag}"] = default
        members[f"variant_{tag}"] = {**default, "params": {**default.get("params", {}), **params}}
        labels += ["lgbm_tfidf default", f"lgbm_tfidf with {params}"]
    for name, spec in json.loads(args.add or "{}").items():
        members[f"{name}_{tag}"] = spec
        labels.append(f"{name} {json.dumps(spec)}")
    cfg = apply_overrides(Config(), {"name": "member-speed",
                                     "stack": {"use_finetune": False, "members": members}})
    ctx = RunContext(config=cfg, catalog=Catalog(work), train_path=data / "train.csv",
                     test_path=data / "test.csv", device_request="cpu")
    load = os.getloadavg()[0]
    STAGES["stack"].load()(ctx)
    m = read_json(ctx.run_dir / "metrics.json")
    views = m["view_fits"]
    print(f"{args.rows:,} rows, load {load:.2f} -> {os.getloadavg()[0]:.2f}; view states "
          f"fitted {views['view_fits']}, read {views['view_hits']}")
    for name, label in zip(members, labels):
        print(f"{label}: {m['timing'][f'member_{name}_s']:.1f} s cross-fitting, OOF "
              f"{m['members'][name]['oof_log_loss']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
