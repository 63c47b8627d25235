"""Command line: parse arguments, build a RunContext, run the stages in order."""
from __future__ import annotations

import argparse
import errno
import json
import logging
import os
import sys
from pathlib import Path

from pipeline.catalog import Catalog, RunBusy
from pipeline.config import ConfigError, build_config, check_name
from pipeline.context import RunContext
from pipeline.data import DataError
from pipeline.executors.base import UnitFailed, known_engines
from pipeline.runner import execute, summary_line
from pipeline.stages import STAGES

log = logging.getLogger("prefstack")

EPILOG = """\
examples:
  python run_pipeline.py --demo                       # every stage on generated demo data
  python run_pipeline.py --stage embed                # data/raw/train.csv + test.csv
  python run_pipeline.py --stage stack --config experiments/seeds3.yaml
  python run_pipeline.py --stage predict --run default --test new_pairs.csv --out preds.csv
  python run_pipeline.py --stage report               # all past runs side by side
"""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="run_pipeline.py",
        description="prefstack: predict which of two LLM responses a person prefers "
                    "(A, B or tie) - Kaggle 'LLM Classification Finetuning' format.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--stage", choices=[*STAGES, "all"], default="all",
                   help="which stage to run (default: all = embed, features, [finetune], stack)")
    p.add_argument("--config", type=Path, default=None,
                   help="experiment YAML holding only its differences from the defaults; "
                        "its file name is the experiment name (default: 'default', or 'demo')")
    p.add_argument("--train", type=Path, default=None,
                   help="training CSV (default: <workdir>/raw/train.csv)")
    p.add_argument("--test", type=Path, default=None,
                   help="test CSV (default: <workdir>/raw/test.csv); with --stage predict, "
                        "the new pairs to score")
    p.add_argument("--workdir", type=Path, default=Path("data"),
                   help="root of everything the pipeline reads and writes (default: data/)")
    p.add_argument("--demo", action="store_true",
                   help="generate a small seeded demo dataset in <workdir>/raw/demo/ and use it")
    p.add_argument("--force", action="store_true",
                   help="recompute the chosen stages' artifacts even when cached")
    p.add_argument("--device", default=None, choices=["auto", "cpu", "cuda"],
                   help="torch device for embedding and fine-tuning (default: auto = GPU if any)")
    p.add_argument("--engine", default=None, choices=known_engines(),
                   help="where the independent units run: local (this process, default) or ray "
                        "(a local Ray instance, or the cluster of --ray-address / RAY_ADDRESS)")
    p.add_argument("--ray-address", default=None,
                   help="Ray cluster to join with --engine ray (host:port or 'auto')")
    p.add_argument("--run", default=None,
                   help="--stage predict: the experiment whose fitted models to use")
    p.add_argument("--out", type=Path, default=None,
                   help="--stage predict: output CSV (default: runs/<run>/predictions.csv)")
    p.add_argument("--folds", default=None,
                   help="--stage finetune: comma-separated folds to train (e.g. 0 or 0,1)")
    p.add_argument("--max-rows", type=int, default=None,
                   help="--stage finetune: use only the first N training rows (quick runs)")
    p.add_argument("--no-wait", action="store_true",
                   help="exit 2 at once if another run of the same experiment is in progress "
                        "(default: wait for it)")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return p


def setup_logging(verbose: bool) -> None:
    root = logging.getLogger()
    for handler in [h for h in root.handlers if getattr(h, "_prefstack", False)]:
        root.removeHandler(handler)  # main() may run more than once in a process (tests)
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(name)s: %(message)s",
                                           datefmt="%H:%M:%S"))
    handler._prefstack = True  # type: ignore[attr-defined]
    root.addHandler(handler)
    root.setLevel(logging.DEBUG if verbose else logging.INFO)
    for noisy in ("httpx", "urllib3", "filelock", "huggingface_hub", "sentence_transformers",
                  "transformers", "matplotlib", "PIL"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # Hub download bars would run into the log lines (transformers' own "Loading weights"
    # bar is turned off where models are loaded: pipeline.models.quiet_loading).
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")


def make_context(args: argparse.Namespace) -> RunContext:
    """The layered config (defaults < demo settings < experiment file < flags), then the
    input paths (demo data written if asked)."""
    catalog = Catalog(args.workdir)
    demo_layer = None
    if args.demo:
        from pipeline.demo import demo_overrides, write_demo

        train_path, test_path = write_demo(catalog.demo_dir)
        demo_layer = demo_overrides()
    else:
        train_path = args.train or catalog.raw_dir / "train.csv"
        test_path = args.test or catalog.raw_dir / "test.csv"
    if args.demo and args.train:
        train_path = args.train
    if args.demo and args.test:
        test_path = args.test
    overrides: dict = {}
    if args.device:
        overrides["device"] = args.device
    if args.engine:
        overrides["engine"] = args.engine
    if args.ray_address:
        overrides["ray"] = {"address": args.ray_address}
        overrides.setdefault("engine", "ray")
    ft: dict = {}
    if args.folds is not None:
        try:
            ft["folds"] = [int(f) for f in str(args.folds).split(",") if f.strip()]
        except ValueError:
            raise ConfigError(f"--folds {args.folds!r}: expected comma-separated integers") from None
    if args.max_rows is not None:
        ft["max_rows"] = args.max_rows
    if ft:
        overrides["finetune"] = ft
    cfg = build_config(args.config, demo_layer=demo_layer, overrides=overrides)
    if args.run is not None:
        check_name(args.run, "--run")
    return RunContext(config=cfg, catalog=catalog, train_path=Path(train_path),
                      test_path=Path(test_path), device_request=cfg.device, force=args.force,
                      run_name=args.run, out_path=args.out)


# What to do about an operating-system error, by errno.
_OS_HINTS = {
    errno.ENOSPC: "the disk is full: free some space and run again (finished artifacts are kept)",
    errno.EDQUOT: "the disk quota is used up: free some space and run again (finished artifacts "
                  "are kept)",
    errno.EROFS: "the file system is read-only: pass a writable --workdir (or --out)",
    errno.EACCES: "permission denied: pass a --workdir (or --out) you can write to",
    errno.EPERM: "operation not permitted: pass a --workdir (or --out) you can write to",
    errno.ENOTDIR: "a part of the path is a file, not a folder: pass another --workdir (or --out)",
    errno.EEXIST: "a file is in the way of a folder: pass another --workdir (or move the file)",
    errno.EISDIR: "that path is a folder: --out (and data paths) must name a file",
    errno.ELOOP: "the path loops through symbolic links: fix the link or pass another path",
    errno.ENAMETOOLONG: "the path is too long: use a shorter --workdir",
    errno.ENOENT: "no such file or folder, and it cannot be made there: check the path or "
                  "pass another --workdir",
}


def os_error_message(exc: OSError) -> str:
    """One line for an operating-system error: what, which path, and what to do."""
    # For a rename (our atomic writes) the destination is the path that matters.
    where = exc.filename2 if exc.filename2 is not None else exc.filename
    what = exc.strerror or type(exc).__name__
    hint = _OS_HINTS.get(exc.errno or -1, "check the path and the disk, then run again "
                         "(-v shows the traceback)")
    return f"{what}: {where or exc}; {hint}"


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    setup_logging(args.verbose)
    try:
        ctx = make_context(args)
        metrics = execute(ctx, args.stage, wait=not args.no_wait)
        if metrics is not None:
            # Logs go to stderr; stdout gets one machine-readable line.
            print(json.dumps(summary_line(ctx, metrics)), flush=True)
    except (DataError, ConfigError, RunBusy) as exc:
        log.error("%s", exc)
        return 2
    except UnitFailed as exc:
        log.error("%s; finished units are cached: run again to resume", exc)
        log.debug("traceback of the error above", exc_info=True)
        return 1
    except OSError as exc:
        log.error("%s", os_error_message(exc))
        log.debug("traceback of the error above", exc_info=True)
        return 2
    except KeyboardInterrupt:
        log.error("interrupted: finished chunks and artifacts are kept; run again to resume")
        return 130
    return 0
