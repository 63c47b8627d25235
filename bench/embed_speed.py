"""Speed of the embed stage vs plain ``SentenceTransformer.encode``, cold and warm cache.

Texts: every prompt and response (turns joined as the stage joins them, deduplicated, so
the stage gets no credit for duplicates) of the real benchmark files ``../shared/data/*.csv``.
One model object, one device, one batch size for both; a short warm-up first. Timings:

    plain        model.encode(texts, normalize_embeddings=True, convert_to_numpy=True)
    stage cold   pipeline.embed.embed_texts on an empty cache: hashing, chunked encoding
                 (longest first), atomic Parquet writes, reading the vectors back
    stage warm   the same call again on a fresh EmbeddingCache object: reads the chunks
                 from disk, never loads or calls the model

Targets: stage cold within 10% of plain; warm at least 50x faster than cold. On a GPU:
``--n-texts 170000`` (real texts resampled, each copy made unique with a suffix) in under
60 s on an H200.

    python bench/embed_speed.py --limit 1000             # CPU, about a minute
    python bench/embed_speed.py --device cuda --n-texts 170000 --batch-size 256
"""
from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.config import DEFAULT_MODEL, EmbedConfig  # noqa: E402
from pipeline.data import TEXT_COLUMNS, load_pairs  # noqa: E402
from pipeline.embed import (EmbeddingCache, ModelEncoder, embed_texts, frame_texts,  # noqa: E402
                            load_model)
from pipeline.models import resolve_device  # noqa: E402

RESULTS = REPO / "bench" / "results" / "embed_speed.md"


def load_texts(data_dir: Path, cfg: EmbedConfig) -> list[str]:
    """Unique prompt / response texts of every CSV in ``data_dir``, in file order."""
    files = sorted(data_dir.glob("*.csv"))
    if not files:
        raise SystemExit(f"no CSV files in {data_dir}: pass --data DIR")
    texts: list[str] = []
    for path in files:
        by_col = frame_texts(load_pairs(path, "train"), cfg.turn_sep, cfg.max_chars)
        texts += [t for col in TEXT_COLUMNS for t in by_col[col]]
    return list(dict.fromkeys(texts))


# Kaggle "LLM Classification Finetuning" text lengths in characters, as lognormal fits
# (median, sigma): prompts median ~100 and mean ~370, responses median ~1,000 and mean
# ~1,400; one prompt and two responses per row.
KAGGLE_LENGTHS = {"prompt": (100, 1.6), "response": (1000, 0.85)}
MAX_SYNTHETIC_CHARS = 20_000


def synthetic_texts(n: int, seed: int = 0) -> list[str]:
    """``n`` unique English-like texts with Kaggle's prompt / response length mix.

    Words come from the demo data's vocabulary in random order (real tokenizer work, no
    data file needed: the GPU machine has none); every text starts with its own number.
    """
    from pipeline.demo import DEMO_SEED, make_demo

    rng = np.random.default_rng(seed)
    demo = make_demo(200, DEMO_SEED)
    words = sorted({w for col in ("prompt", "response_a", "response_b") for cell in demo[col]
                    for w in str(cell).replace('"', " ").replace("[", " ").replace("]", " ").split()})
    # One long random word stream; each text is a slice of it at a random offset.
    stream = " ".join(rng.choice(words, size=400_000))
    kinds = np.where(np.arange(n) % 3 == 0, "prompt", "response")
    out = []
    for i, kind in enumerate(kinds):
        median, sigma = KAGGLE_LENGTHS[kind]
        length = int(min(MAX_SYNTHETIC_CHARS, max(5, rng.lognormal(np.log(median), sigma))))
        start = int(rng.integers(0, len(stream) - length))
        out.append(f"{i}. {stream[start:start + length]}")
    return out


def select(texts: list[str], limit: int | None, n_texts: int | None, seed: int) -> list[str]:
    """A seeded sample of ``limit`` texts, or ``n_texts`` resampled (copies made unique)."""
    rng = np.random.default_rng(seed)
    if n_texts:
        picks = rng.integers(0, len(texts), size=n_texts)
        seen: dict[int, int] = {}
        out = []
        for p in picks:
            k = seen.get(p, 0)
            seen[p] = k + 1
            out.append(texts[p] if k == 0 else f"{texts[p]} ({k})")
        return out
    if limit and limit < len(texts):
        return [texts[i] for i in sorted(rng.choice(len(texts), size=limit, replace=False))]
    return texts


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data",
                   help="folder of Kaggle-format CSVs (default: ../shared/data)")
    p.add_argument("--limit", type=int, default=None, help="use a seeded sample of N texts")
    p.add_argument("--n-texts", type=int, default=None,
                   help="resample to exactly N unique texts (for the GPU target, e.g. 170000)")
    p.add_argument("--synthetic", action="store_true",
                   help="with --n-texts: generated Kaggle-length texts instead of the data files")
    p.add_argument("--device", default="auto", help="auto, cpu or cuda")
    p.add_argument("--model", default=DEFAULT_MODEL, help="sentence-transformers name or path")
    p.add_argument("--batch-size", type=int, default=None, help="default: the stage's for the device")
    p.add_argument("--chunk-size", type=int, default=None, help="default: the stage's for the device")
    p.add_argument("--repeats", type=int, default=1,
                   help="time plain and stage-cold this many times, alternating; keep the best")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", type=Path, default=RESULTS, help="markdown table to write")
    args = p.parse_args(argv)

    load = os.getloadavg()[0]
    from pipeline.embed import batch_and_chunk

    batch, chunk = batch_and_chunk(EmbedConfig(batch_size=args.batch_size, chunk_size=args.chunk_size),
                                   resolve_device(args.device))
    cfg = EmbedConfig(batch_size=batch, chunk_size=chunk)
    if args.synthetic:
        texts = synthetic_texts(args.n_texts or args.limit or 1000, args.seed)
    else:
        texts = select(load_texts(args.data, cfg), args.limit, args.n_texts, args.seed)
    device = resolve_device(args.device)
    half = cfg.half_on_gpu and device.startswith("cuda")
    model = load_model(args.model, device, None, half)
    encoder = ModelEncoder(model, cfg.batch_size, cfg.normalize, cfg.long_text)
    chars = np.array([len(t) for t in texts])
    print(f"{len(texts)} texts (median {int(np.median(chars))} chars, max {chars.max()}), "
          f"model {args.model}, device {device}{' fp16' if half else ''}, "
          f"batch {cfg.batch_size}, chunk {cfg.chunk_size}", flush=True)
    # Warm-up on the longest and the shortest texts: kernels, allocator, thread pool.
    by_len = sorted(texts, key=len)
    model.encode(by_len[-cfg.batch_size:] + by_len[:cfg.batch_size], batch_size=cfg.batch_size,
                 show_progress_bar=False)

    def sync() -> None:
        if device.startswith("cuda"):
            import torch

            torch.cuda.synchronize()

    plain_s, cold_s, plain_cpu, cold_cpu, in_encoder = [], [], [], [], []
    with tempfile.TemporaryDirectory(prefix="embed_speed-") as tmp:
        def time_plain():
            t0, c0 = time.perf_counter(), time.process_time()
            out = model.encode(texts, batch_size=cfg.batch_size, convert_to_numpy=True,
                               normalize_embeddings=cfg.normalize, show_progress_bar=False)
            sync()
            plain_s.append(time.perf_counter() - t0)
            plain_cpu.append(time.process_time() - c0)
            return out

        def timed_encoder(batch: list[str]) -> np.ndarray:
            t0 = time.perf_counter()
            out = encoder(batch)
            sync()
            in_encoder[-1] += time.perf_counter() - t0
            return out

        def time_stage(folder: Path):
            in_encoder.append(0.0)
            t0, c0 = time.perf_counter(), time.process_time()
            out, stats = embed_texts(EmbeddingCache(folder), texts, lambda: timed_encoder,
                                     cfg.chunk_size, progress=False)
            sync()
            cold_s.append(time.perf_counter() - t0)
            cold_cpu.append(time.process_time() - c0)
            assert stats.computed == len(texts), stats
            return out

        for r in range(args.repeats):
            folder = Path(tmp) / f"cold{r}"
            if r % 2 == 0:  # alternate the order so neither always runs first
                plain, stage = time_plain(), time_stage(folder)
            else:
                stage, plain = time_stage(folder), time_plain()
            print(f"  repeat {r + 1}: plain {plain_s[-1]:.2f}s, stage cold {cold_s[-1]:.2f}s",
                  flush=True)

        def no_model():
            raise AssertionError("a warm run must not need the model")

        t0, c0 = time.perf_counter(), time.process_time()
        warm, stats = embed_texts(EmbeddingCache(folder), texts, no_model, cfg.chunk_size,
                                  progress=False)
        warm_s = time.perf_counter() - t0
        warm_cpu = time.process_time() - c0
        assert stats.computed == 0
    max_diff = float(np.abs(np.asarray(plain, dtype=np.float32) - stage).max())
    np.testing.assert_array_equal(warm, stage)

    n = len(texts)
    best_p, best_c = int(np.argmin(plain_s)), int(np.argmin(cold_s))
    plain_t, cold_t = plain_s[best_p], cold_s[best_c]
    plain_c, cold_c = plain_cpu[best_p], cold_cpu[best_c]
    rows = [("plain SentenceTransformer.encode", plain_t, plain_c, "1.00", "1.00", ""),
            ("embed stage, cold cache", cold_t, cold_c, f"{cold_t / plain_t:.2f}",
             f"{cold_c / plain_c:.2f}", "1x"),
            ("embed stage, warm cache", warm_s, warm_cpu, f"{warm_s / plain_t:.4f}",
             f"{warm_cpu / plain_c:.4f}", f"{cold_t / warm_s:.0f}x")]
    lines = [
        "| run | texts | seconds | texts/s | CPU seconds | time vs plain | CPU time vs plain "
        "| warm speedup over cold |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ] + [f"| {name} | {n} | {sec:.2f} | {n / sec:,.0f} | {cpu:.2f} | {ratio} | {cratio} | {speed} |"
         for name, sec, cpu, ratio, cratio, speed in rows]
    cond = (f"Conditions: {n} unique real texts from {args.data.parent.name}/{args.data.name}/*.csv"
            f"{' resampled' if args.n_texts else ''} (median {int(np.median(chars))} chars), "
            f"model {args.model}, device {device}{' fp16' if half else ' fp32'}, batch size "
            f"{cfg.batch_size}, chunk size {cfg.chunk_size}, best of {args.repeats}, "
            f"{os.cpu_count()} CPU cores, Python {platform.python_version()}, "
            f"{time.strftime('%Y-%m-%d')}, load average before the run {load:.1f}. "
            f"Max |stage - plain| = {max_diff:.1e}. CPU seconds = this process's CPU time (all "
            "threads): less sensitive than wall time to other jobs on a shared machine.")
    overhead = [c - e for c, e in zip(cold_s, in_encoder)]
    cond += (f" Stage time outside the model's encode (hashing, dedupe, sorting, Parquet "
             f"writes, read-back): {min(overhead):.3f}-{max(overhead):.3f}s per run, "
             f"{100 * max(o / c for o, c in zip(overhead, cold_s)):.2f}% of the cold time at "
             "most; the rest of any stage/plain gap is timing noise.")
    targets = (f"Targets: cold within 10% of plain ({'met' if cold_t <= 1.1 * plain_t else 'MISSED'}: "
               f"{cold_t / plain_t:.2f}x wall, {cold_c / plain_c:.2f}x CPU), warm >= 50x faster than cold "
               f"({'met' if cold_t / warm_s >= 50 else 'MISSED'}: {cold_t / warm_s:.0f}x).")
    table = "\n".join(lines)
    print("\n" + table + "\n\n" + cond + "\n" + targets)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(f"# Embed stage speed\n\n`python bench/embed_speed.py "
                        f"{' '.join(sys.argv[1:] if argv is None else argv)}`\n\n"
                        f"{table}\n\n{cond}\n\n{targets}\n", encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
