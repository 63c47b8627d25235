#!/usr/bin/env python
"""Speed of the non-embedding feature groups (length incl. tokenizer counts, structure, overlap).

Data: each CSV in --data (default /work/shared/data/*.csv, or ../shared/data), then two
sets of --rows rows (default 60,000) resampled from all of them with a fixed seed:
"resampled" (whole rows drawn with replacement) and "kaggle-length" (each response the
concatenation of 7 drawn responses, each prompt of 2 drawn prompts, so the mean lengths
approach Kaggle's ~1,400 characters per response) and "kaggle-diverse" (the kaggle-length
set with 3 random words appended to every prompt and response; see ``diversify``).
Resampling repeats the pool's ~30k distinct whitespace chunks, far fewer than real Kaggle
text holds (~450k estimated); kaggle-diverse adds ~470k distinct chunks, so the costs that
grow with distinct chunks (tokenizer, chunk regexes, word codes) are paid as on real data.
Prints a table and writes it to bench/results/feature_speed.md.

    python bench/feature_speed.py             # full run
    python bench/feature_speed.py --quick     # 3,000-row resampled sets, one repeat
    python bench/feature_speed.py --only kaggle-diverse --repeats 1   # one set, JSON
"""
from __future__ import annotations

import argparse
import glob
import json
import os
import platform
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from features.groups import TEXT_GROUPS  # noqa: E402
from features.length import token_counts  # noqa: E402
from features.text import TextView  # noqa: E402
from pipeline.catalog import write_text_atomic  # noqa: E402
from pipeline.config import DEFAULT_MODEL  # noqa: E402
from pipeline.data import TEXT_COLUMNS, load_pairs  # noqa: E402
from pipeline.featurize import token_counter  # noqa: E402

DEFAULT_DATA = ["/work/shared/data/*.csv", str(ROOT.parent / "shared" / "data" / "*.csv")]


def resample(pool: pd.DataFrame, rows: int, seed: int, join: dict[str, int] | None = None) -> pd.DataFrame:
    """``rows`` rows drawn from ``pool``; with ``join``, each text column's cell is the
    concatenation (turn lists joined) of ``join[col]`` independently drawn cells."""
    rng = np.random.default_rng(seed)
    out = {"id": [f"r{i}" for i in range(rows)]}
    if not join:
        idx = rng.integers(0, len(pool), rows)
        for col in TEXT_COLUMNS:
            out[col] = pool[col].to_numpy()[idx].tolist()
        return pd.DataFrame(out)
    for col in TEXT_COLUMNS:
        cells = pool[col].to_numpy()
        idx = rng.integers(0, len(pool), (rows, join[col]))
        out[col] = [["\n\n".join(t for k in r for t in cells[k])] for r in idx]
    return pd.DataFrame(out)


def diversify(frame: pd.DataFrame, seed: int, words: int = 3,
              vocabulary: int = 2_000_000) -> pd.DataFrame:
    """``frame`` with ``words`` random words appended (after one space) to the last turn of
    every prompt and response.

    The synthetic vocabulary: the distinct runs of 3+ letters a-z in the lower-cased
    texts of the frame's first 2,000 rows (the base words, sorted), and ``vocabulary``
    ordered pairs of them drawn with a ``seed``-ed numpy generator, duplicates removed,
    each pair written as one word ("sortkitchen"). Compounds of real words tokenize into
    a few known pieces each, like the rare chunks of real text (names, compounds, code
    identifiers), where random letter strings would split into ~5 pieces. The appended
    words are drawn uniformly from that vocabulary with the same generator: at 60,000
    rows, 3 texts x 3 words = 540k draws add ~470k distinct chunks.
    """
    rng = np.random.default_rng(seed)
    sample = " ".join(t for col in TEXT_COLUMNS for cell in frame[col].iloc[:2000] for t in cell)
    base = np.array(sorted(set(re.findall(r"[a-z]{3,}", sample.lower()))), dtype=object)
    pairs = np.unique(rng.integers(0, len(base) ** 2, vocabulary))
    vocab = base[pairs // len(base)] + base[pairs % len(base)]
    out = {"id": frame["id"].tolist()}
    for col in TEXT_COLUMNS:
        drawn = vocab[rng.integers(0, len(vocab), (len(frame), words))]
        out[col] = [list(turns[:-1]) + [turns[-1] + " " + " ".join(extra)] if len(turns)
                    else [" ".join(extra)] for turns, extra in zip(frame[col], drawn.tolist())]
    return pd.DataFrame(out)


def time_groups(frame: pd.DataFrame, count_tokens, repeats: int) -> dict[str, float]:
    """Best-of-``repeats`` seconds per step: view (join, chunks, word codes), each group,
    tokens (as the length group counts them when given the counter); ``total`` sums them,
    ``first`` is the first repeat's total (a fresh process's one pass only when this
    process has timed nothing before, as with ``--only``), ``distinct`` / ``chunks`` count whitespace chunks."""
    best: dict[str, float] = {}
    first = None
    for _ in range(repeats):
        times = {}
        t0 = time.perf_counter()
        view = TextView(frame)
        view.words  # noqa: B018 - build the shared chunks and word codes (part of the cost)
        times["prepare"] = time.perf_counter() - t0
        ids = frame["id"].tolist()
        for name, group in TEXT_GROUPS.items():
            t0 = time.perf_counter()
            group.compute(view, ids, None)
            times[name] = time.perf_counter() - t0
        t0 = time.perf_counter()
        token_counts(view, count_tokens)
        times["tokens"] = time.perf_counter() - t0
        best = {k: min(v, best.get(k, np.inf)) for k, v in times.items()}
        first = sum(times.values()) if first is None else first
    best["total"] = sum(best.values())
    best.update(first=first, distinct=len(view.chunks.dictionary), chunks=len(view.chunks.codes))
    return best


SET_KEYS = ("resampled", "kaggle-length", "kaggle-diverse")


def build_sets(paths: list[str], rows: int, only: str | None = None) -> list[tuple[str, pd.DataFrame]]:
    """The benchmark's sets, (name, frame): each CSV, then the SET_KEYS sets of ``rows``
    rows; with ``only`` (a CSV's file name or a SET_KEYS key), that set alone."""
    sets: list[tuple[str, pd.DataFrame]] = [(Path(f).name, load_pairs(f)) for f in paths]
    pool = pd.concat([df[["id", *TEXT_COLUMNS]] for _, df in sets], ignore_index=True)
    if only is not None and only not in SET_KEYS:
        return [s for s in sets if s[0] == only]
    if only is None or only == "resampled":
        sets.append((f"resampled {rows:,}", resample(pool, rows, seed=0)))
    if only in (None, "kaggle-length", "kaggle-diverse"):
        kaggle = resample(pool, rows, seed=1, join={"prompt": 2, "response_a": 7, "response_b": 7})
        if only in (None, "kaggle-length"):
            sets.append((f"kaggle-length {rows:,}", kaggle))
        if only in (None, "kaggle-diverse"):
            sets.append((f"kaggle-diverse {rows:,}", diversify(kaggle, seed=2)))
    return sets if only is None else sets[-1:]


def set_key(name: str) -> str:
    """The ``--only`` key of a set name ("kaggle-length 60,000" -> "kaggle-length")."""
    key = name.split(" ")[0]
    return key if key in SET_KEYS else name


def fresh_total(key: str, argv: list[str]) -> float:
    """One pass over set ``key`` in a new Python process (nothing imported, computed or
    allocated before it, as a features stage runs it) -> its total seconds."""
    out = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--only", key, *argv],
                         check=True, capture_output=True, text=True).stdout
    return json.loads(out.strip().splitlines()[-1])["total"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", nargs="*", default=None, help="CSV files or globs (Kaggle layout)")
    p.add_argument("--rows", type=int, default=60_000, help="rows of each resampled set")
    p.add_argument("--repeats", type=int, default=2, help="timings are the best of this many")
    p.add_argument("--quick", action="store_true", help="3,000-row resampled sets, one repeat")
    p.add_argument("--tokenizer", default=DEFAULT_MODEL)
    p.add_argument("--only", default=None, metavar="SET",
                   help=f"time one set (a CSV's file name or one of {', '.join(SET_KEYS)}) "
                        "for --repeats passes and print its timings as one JSON line; "
                        "writes nothing (used for the fresh-process column)")
    p.add_argument("--no-fresh", action="store_true",
                   help="skip the fresh-process run of each set (its column shows -)")
    p.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "feature_speed.md")
    args = p.parse_args(argv)
    if args.quick:
        args.rows, args.repeats = min(args.rows, 3_000), 1
    paths = sorted({f for pattern in (args.data or DEFAULT_DATA) for f in glob.glob(pattern)})
    if not paths:
        p.error(f"no CSV found in {args.data or DEFAULT_DATA}: pass --data")
    t0 = time.perf_counter()
    count_tokens = token_counter(args.tokenizer)
    count_tokens(["warm up"])
    tok_load = time.perf_counter() - t0

    sets = build_sets(paths, args.rows, args.only)
    if args.only is not None:
        if not sets:
            p.error(f"--only {args.only}: no such set (CSV file names or {', '.join(SET_KEYS)})")
        print(json.dumps(time_groups(sets[0][1], count_tokens, args.repeats)))
        return 0
    child = ["--data", *paths, "--rows", str(args.rows), "--repeats", "1",
             "--tokenizer", args.tokenizer]

    header = ("| data | rows | chars/row | distinct chunks | prepare s | length s | structure s "
              "| overlap s | tokens s | total s | rows/s | first run s | fresh process s |")
    lines = [header, "|" + "---|" * 13]
    for name, frame in sets:
        fresh = None if args.no_fresh else fresh_total(set_key(name), child)
        chars = sum(TextView(frame.head(2000)).text[r].to_pandas().str.len().mean()
                    for r in ("p", "a", "b"))
        t = time_groups(frame, count_tokens, args.repeats)
        row = (f"| {name} | {len(frame):,} | {chars:,.0f} | {t['distinct']:,} of {t['chunks']:,} "
               f"| {t['prepare']:.2f} | {t['length']:.2f} | {t['structure']:.2f} | {t['overlap']:.2f} "
               f"| {t['tokens']:.2f} | {t['total']:.2f} | {len(frame) / t['total']:,.0f} "
               f"| {t['first']:.2f} | {'-' if fresh is None else f'{fresh:.2f}'} |")
        lines.append(row)
        print(row if len(lines) > 3 else "\n".join(lines), flush=True)
    notes = (f"\nAll non-embedding features (length with tokenizer counts of {args.tokenizer}, "
             f"structure, overlap) of prompt, A and B; best of {args.repeats}; "
             f"{os.cpu_count()} CPU core(s), Python {platform.python_version()}, "
             f"tokenizer load {tok_load:.1f}s (not counted). Steps and total: best of the repeats; "
             "'first run s': the first repeat's total in the bench's own process (which has "
             "already timed the sets above it, so memory is warm for later rows); 'fresh process "
             "s': the total of one pass in a new process that builds only that set (`--only`), "
             "as a features stage pays it. distinct chunks: whitespace-separated pieces of all "
             "texts that differ (token counts and chunk-level counts cost per distinct chunk; "
             "resampled sets repeat far more of them than real data). chars/row = mean "
             "characters of prompt + A + B. 'prepare' joins turns and builds the shared "
             "whitespace chunks and word codes (the token counts reuse the chunks). Timings "
             "depend on other load on the machine: check `uptime` when comparing.\n")
    text = "# Feature speed\n\n" + "\n".join(lines) + "\n" + notes
    write_text_atomic(args.out, text)
    print(notes)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
