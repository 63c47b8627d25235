"""How the embedding stage's long-text mode moves the default stack, per file and fold draw.

MiniLM keeps the first 256 word pieces of a text (``embed.long_text: truncate``, the
default). ``head_tail`` keeps the start and the end within that budget; ``chunk_mean``
embeds windows of the budget and averages them, weighted by tokens (README, "Long
texts"). This script runs the default config with each mode on ``bench/quality.py``'s
split, for each ``stack.fold_seed`` given, and prints per file: the share of responses
over the budget, and per mode and draw the default stack's OOF log loss and its margin to
issue #10's bar of that draw (the three peers' OOF on the same folds; cached by folds,
so draws already run by ``bench/fold_seeds.py`` cost nothing there). Members that do not
read the embeddings (``lgbm_tfidf``, ``linear_tfidf``) come from the cache.

    python bench/long_text_probe.py                          # draws 42-45, all three modes
    python bench/long_text_probe.py --seeds 42 --modes truncate chunk_mean --only pandalm_test
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
from pipeline.config import Config, apply_overrides  # noqa: E402
from pipeline.embed import LONG_TEXT_MODES  # noqa: E402

RESULTS = REPO / "bench" / "results" / "long_text_probe.md"


def over_budget(train_path: Path, cfg: Config) -> float:
    """Share of the file's distinct responses longer than the embedding model's token budget
    (its max_seq_length less the special tokens), as the embed stage joins their turns."""
    from transformers import AutoTokenizer

    from pipeline.data import load_pairs
    from pipeline.embed import frame_texts
    from pipeline.models import resolve_model_path

    texts = frame_texts(load_pairs(train_path), cfg.embed.turn_sep, cfg.embed.max_chars)
    responses = list(dict.fromkeys(texts["response_a"] + texts["response_b"]))
    tok = AutoTokenizer.from_pretrained(resolve_model_path(cfg.embed.models[0]))
    budget = (cfg.embed.max_seq_length or 256) - tok.num_special_tokens_to_add()
    tok.model_max_length = 1 << 30  # only counting: no warning for texts over 512 tokens
    ids = tok(responses, add_special_tokens=False)["input_ids"]
    return float(np.mean([len(x) > budget for x in ids]))


def run_one(path: Path, workdir: Path, mode: str, fold_seed: int) -> dict:
    """The default stack with ``embed.long_text: mode`` on one draw: OOF log loss and bar."""
    train_path, test_path, _ = quality.split_file(path, workdir / "bench_data" / path.stem, None, 0)
    cfg = apply_overrides(Config(), {"name": f"ltprobe-{mode}-fs{fold_seed}-{path.stem}",
                                     "embed": {"long_text": mode},
                                     "stack": {"use_finetune": False, "fold_seed": fold_seed}})
    ctx = quality._ctx(cfg, workdir, train_path, test_path)
    metrics, _, y, folds = quality.fit_and_read(ctx)
    bar = quality.bar_of(quality.peer_oofs(ctx, workdir, path.stem, y, folds), y)
    return {"stack": metrics["oof_log_loss"], "bar": bar,
            "linear_emb": metrics["members"]["linear_emb"]["oof_log_loss"]}


def table(rows: dict, shares: dict, seeds: list[int], modes: list[str], load: str,
          started: str) -> str:
    lines = ["# Long-text mode of the embeddings: the default stack per file and fold draw", "",
             f"`python bench/long_text_probe.py --seeds {' '.join(map(str, seeds))} --modes "
             f"{' '.join(modes)}`. Machine: {platform.machine()}, {os.cpu_count()} CPU cores, "
             f"Python {platform.python_version()}, load average at start {load}. Started "
             f"{started}, written {time.strftime('%Y-%m-%d %H:%M')}.", "",
             "OOF log loss of the default stack (nested level-2 blend) with each "
             "`embed.long_text`, and its margin to issue #10's bar of that draw (negative = "
             "met); `linear_emb` is the member that reads the whole vectors. Over budget: the "
             "share of distinct responses longer than the model's token budget (its max_seq_length "
             "less the special tokens: 254 for MiniLM).", "",
             "| file | over budget | mode | " + " | ".join(f"draw {s}" for s in seeds)
             + " | mean stack | mean linear_emb |",
             "|---|---|---|" + "---|" * len(seeds) + "---|---|"]
    for stem, by_mode in rows.items():
        for mode in modes:
            cells = by_mode[mode]
            lines.append(
                f"| {stem} | {shares[stem]:.0%} | {mode} | "
                + " | ".join(f"{cells[s]['stack']:.4f} ({cells[s]['stack'] - cells[s]['bar']:+.4f})"
                             for s in seeds)
                + f" | {np.mean([cells[s]['stack'] for s in seeds]):.4f}"
                + f" | {np.mean([cells[s]['linear_emb'] for s in seeds]):.4f} |")
    means = {m: np.mean([np.mean([rows[f][m][s]["stack"] for s in seeds]) for f in rows])
             for m in modes}
    lines += ["", "Mean over the files and draws: "
              + ", ".join(f"{m} {v:.4f}" for m, v in means.items()) + "."]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    p.add_argument("--workdir", type=Path,
                   default=Path(os.environ.get("PREFSTACK_BENCH_DIR", "/tmp/prefstack-bench")))
    p.add_argument("--seeds", type=int, nargs="+", default=[42, 43, 44, 45])
    p.add_argument("--modes", nargs="+", choices=LONG_TEXT_MODES, default=list(LONG_TEXT_MODES))
    p.add_argument("--only", nargs="*", default=None, help="file stems to run (default: all)")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    quality.setup_logging()
    files = quality.data_files(args.data, args.only)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    started = time.strftime("%Y-%m-%d %H:%M")
    rows, shares = {}, {}
    for path in files:
        train_path, _, _ = quality.split_file(path, args.workdir / "bench_data" / path.stem, None, 0)
        shares[path.stem] = over_budget(train_path, Config())
        rows[path.stem] = {m: {s: run_one(path, args.workdir, m, s) for s in args.seeds}
                           for m in args.modes}
        print(path.stem, json.dumps({m: [round(c["stack"], 4) for c in v.values()]
                                     for m, v in rows[path.stem].items()}), flush=True)
    text = table(rows, shares, args.seeds, args.modes, load, started)
    if args.out:
        write_text_atomic(args.out, text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
