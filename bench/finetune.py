#!/usr/bin/env python
"""Five-fold OOF log loss of the fine-tuned member alone and in the default stack, against
issue #10's bar.

For each CSV in --data (default /work/shared/data/*.csv; never copied into the repo; a
.csv.gz is read as well), in a temporary workdir, on ``bench/quality.py``'s split (the
same held-out prompts, so the same training rows and folds as the quality table):

1. ``--stage finetune`` on the training rows (the shared five folds), with the settings
   below; per fold: validation log loss, seconds per epoch, peak memory (GPU: max
   allocated; CPU: the process's max RSS).
2. ``embed``, ``features`` and ``stack`` with ``stack.use_finetune: false`` -> the default
   stack, then ``stack`` again with the fine-tuned member beside the default members.
   Both scores are the stack's nested OOF log loss (blend fitted on the other folds).
3. The three peers of ``bench/quality.py`` on the same folds -> issue #10's bar (the best
   peer's or the peer average's OOF, whichever is lower, minus 0.005).

All numbers are out-of-fold on the same five folds. Prints a table and writes it to
bench/results/finetune.md. On the lent GPU machine (README, "Fine-tuned member"):

    bash bench/gpu_env.sh python bench/finetune.py --device cuda --max-length 512 \
        --epochs 2 --data .gpu-data/vicuna80_qlora_mturk_human.csv.gz

CPU cost, measured on this 2-core machine while shared (MiniLM, batch 8-16 pairs):
training runs at ~3.5 sequences/s at 48-128 tokens (optimiser steps included) and sees
each pair twice (swap augmentation), so five folds of one epoch cost ~8N / 3.5 ~ 2.3N s
for N rows, plus inference (~0.2N s): pandalm (999 rows) ~40 min, hh-rlhf (2,307) ~95 min.
``--quick`` (120 rows per file, 48 tokens) took ~5 min per file. On a GPU use full lengths.

    python bench/finetune.py --quick                  # 120 rows per file, 48 tokens
    python bench/finetune.py --max-rows 400 --max-length 96
    python bench/finetune.py --device cuda --max-length 512 --epochs 2   # on a GPU
"""
from __future__ import annotations

import argparse
import glob
import json
import logging
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.quality import bar_of, peer_oofs, split_file  # noqa: E402
from pipeline.catalog import Catalog, read_json, write_text_atomic  # noqa: E402
from pipeline.config import Config, apply_overrides  # noqa: E402
from pipeline.context import RunContext  # noqa: E402

RESULTS = ROOT / "bench" / "results" / "finetune.md"
DEFAULT_DATA = ["/work/shared/data/*.csv", str(ROOT.parent / "shared" / "data" / "*.csv")]
log = logging.getLogger("bench.finetune")


def _stem(path: Path) -> str:
    """The file's name without .csv / .csv.gz."""
    name = path.name
    for suffix in (".gz", ".csv"):
        name = name[: -len(suffix)] if name.endswith(suffix) else name
    return name


def _ctx(cfg: Config, workdir: Path, train: Path, test: Path, device: str) -> RunContext:
    return RunContext(config=cfg, catalog=Catalog(workdir), train_path=train, test_path=test,
                      device_request=device)


def bench_file(path: Path, args: argparse.Namespace) -> dict:
    """Run the stages on one file; return the table row."""
    from pipeline import finetune as FT
    from pipeline.stages import STAGES

    with tempfile.TemporaryDirectory(prefix="bench-ft-") as tmp:
        workdir = Path(tmp)
        train, test, _ = split_file(path, workdir / "raw", args.max_rows, args.seed)
        ft = {"max_length": args.max_length, "epochs": args.epochs, "batch_size": args.batch_size,
              "head": args.head, "lr": args.lr, "head_lr": args.head_lr}
        cfg = apply_overrides(Config(), {"name": "ft", "finetune": ft,
                                         "stack": {"n_folds": args.folds}})
        ctx = _ctx(cfg, workdir, train, test, args.device)
        n_rows = len(ctx.dataset.train)
        t0 = time.perf_counter()
        FT.run_stage(ctx)
        ft_seconds = time.perf_counter() - t0
        member = FT.member_for(ctx)
        if member is None:
            raise RuntimeError(f"{path}: the finetune stage left no complete member")
        labels = ctx.dataset.train.set_index("id").loc[member.oof["id"], "label"].to_numpy()
        ft_loss = FT.log_loss_of_logits(member.oof[FT.LOGITS].to_numpy(), labels)
        plan = FT.make_plan(ctx)
        fold_metrics = [read_json(plan.fold_dir(k) / "metrics.json") for k in range(args.folds)]
        epoch_s = [s for m in fold_metrics for seed in m["seeds"] for s in seed["epoch_seconds"]]
        row = {"file": _stem(path), "rows": n_rows, "device": ctx.device,
               "max_length": args.max_length, "epochs": args.epochs, "ft_oof_logloss": ft_loss,
               "ft_fold_logloss": [round(m["val_logloss"], 4) for m in fold_metrics],
               "sec_per_epoch": float(np.mean(epoch_s)), "ft_total_s": ft_seconds,
               "peak_mb": max(m["peak_memory_mb"] for m in fold_metrics),
               "peak_kind": fold_metrics[0]["peak_memory_kind"]}
        if args.skip_blend:
            return row
        for name in ("embed", "features"):
            STAGES[name].load()(ctx)
        for exp, use_ft in (("stack", False), ("blend", True)):
            sctx = _ctx(apply_overrides(cfg, {"name": exp, "stack": {"use_finetune": use_ft}}),
                        workdir, train, test, args.device)
            STAGES["stack"].load()(sctx)
            metrics = read_json(sctx.run_dir / "metrics.json")
            row[f"{exp}_oof_logloss"] = metrics["oof_log_loss"]
            if use_ft:
                row["ft_in_blend"] = metrics.get("finetune_member") is not None
                row["ft_weight"] = metrics["blend_weights"].get(member.name, 0.0)
        oof = pd.read_parquet(sctx.run_dir / "oof.parquet")
        y = oof["label"].to_numpy().astype(np.int64)
        row["bar"] = bar_of(peer_oofs(sctx, workdir, _stem(path), y,
                                      oof["fold"].to_numpy().astype(np.int64)), y)
        return row


def _table(rows: list[dict]) -> str:
    head = ("| file | rows | device | max_length | epochs | fine-tuned OOF | stack OOF | stack + "
            "fine-tuned OOF | bar (issue #10) | ft weight | s / epoch (mean fold) | finetune "
            "total s | peak memory MiB |")
    lines = [head, "|" + "---|" * 13]
    for r in rows:
        def f(key, fmt="{:.4f}"):
            return fmt.format(r[key]) if key in r else "-"
        lines.append(f"| {r['file']} | {r['rows']} | {r['device']} | {r['max_length']} "
                     f"| {r['epochs']:g} | {f('ft_oof_logloss')} | {f('stack_oof_logloss')} "
                     f"| {f('blend_oof_logloss')} | {f('bar')} | {f('ft_weight', '{:.2f}')} "
                     f"| {r['sec_per_epoch']:.1f} | {r['ft_total_s']:.0f} "
                     f"| {r['peak_mb']:.0f} ({r['peak_kind']}) |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", nargs="*", default=None,
                   help="CSV files or globs (default: /work/shared/data/*.csv)")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: --max-rows 120 --max-length 48 (numbers are not meaningful)")
    p.add_argument("--max-rows", type=int, default=None,
                   help="N rows of each file, drawn with --seed (as bench/quality.py --limit)")
    p.add_argument("--seed", type=int, default=0, help="seed of the held-out split (as quality.py)")
    p.add_argument("--max-length", type=int, default=128, help="tokens per packed pair (default 128)")
    p.add_argument("--epochs", type=float, default=1.0)
    p.add_argument("--batch-size", type=int, default=8, help="pairs per micro-batch")
    p.add_argument("--head", default="mean", choices=["auto", "mean", "cnn"])
    p.add_argument("--lr", type=float, default=5e-5)
    p.add_argument("--head-lr", type=float, default=1e-3)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--skip-blend", action="store_true", help="only the fine-tuned member")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    if args.quick:
        args.max_rows = args.max_rows or 120
        args.max_length = 48
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s",
                        datefmt="%H:%M:%S")
    for noisy in ("transformers", "sentence_transformers", "httpx", "urllib3", "filelock"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    patterns = args.data or DEFAULT_DATA
    files = sorted({Path(f) for pat in patterns for f in glob.glob(pat)}, key=lambda f: f.name)
    if not files:
        raise SystemExit(f"no CSV files match {patterns}: pass --data FILE ...")
    rows = []
    for path in files:
        log.info("bench: %s", path)
        rows.append(bench_file(path, args))
        log.info("bench: %s", json.dumps(rows[-1]))
    import torch
    table = _table(rows)
    conditions = (f"model all-MiniLM-L6-v2 (bundled), head {args.head}, lr {args.lr:g} "
                  f"(head {args.head_lr:g}), batch {args.batch_size} pairs (x2 with swap "
                  f"augmentation), {args.folds} folds, swap TTA; "
                  f"{str(args.max_rows) + ' rows per file; ' if args.max_rows else ''}"
                  f"torch {torch.__version__}, {platform.processor() or platform.machine()}, "
                  f"{os.cpu_count()} CPU threads visible; {time.strftime('%Y-%m-%d %H:%M')}")
    command = "python bench/finetune.py " + " ".join(sys.argv[1:] if argv is None else argv)
    text = (f"# Fine-tuned member: five-fold OOF log loss\n\n`{command.strip()}`\n\n{table}\n\n"
            f"{conditions}\n\n"
            "Fine-tuned OOF: the member's own out-of-fold logits. Stack / stack + fine-tuned "
            "OOF: the default stack's nested OOF log loss (blend fitted on the other folds) "
            "without / with the fine-tuned member; bar: issue #10's on the same folds (the "
            "lower of the best peer's and the peer average's OOF, minus 0.005). Peak memory: "
            "GPU max allocated, or the process max RSS on the CPU (a process-wide peak: it "
            "includes earlier files' stages).\n")
    print("\n" + table + "\n\n" + conditions)
    write_text_atomic(args.out, text)
    print(f"written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
