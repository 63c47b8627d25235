"""CPU embedding backends side by side (issue #13): speed, vectors, and what the stack makes of them.

For each of torch fp32, onnx, onnx int8, openvino, openvino int8 (``embed.backend`` /
``embed.quantize``) with the bundled MiniLM on the CPU:

- texts/s on the same seeded sample of real texts (``--limit``, default 1,000) of
  ``../shared/data``, best of ``--repeats`` passes, the export (made once per model and
  cached) done before timing; the ratio to torch fp32 from the same run;
- the mean and the worst cosine between each text's vector and torch fp32's;
- with ``--stack FILE ...``: the OOF log loss of the default stack (``run_pipeline.py
  --stage all``, same folds, same everything but the backend) on each file, and its change
  against torch.

Target (issue #13): >= 3x torch fp32 texts/s with mean cosine >= 0.99 and OOF log loss
within 0.003; the winner would become the CPU default.

    python bench/embed_backends.py --stack ../shared/data/lfqa_test.csv ../shared/data/pandalm_test.csv
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from embed_speed import load_texts  # noqa: E402

from pipeline.config import EmbedConfig  # noqa: E402
from pipeline.embed import model_encoder  # noqa: E402

RESULTS = REPO / "bench" / "results" / "embed_backends.md"
CANDIDATES = [("torch", "none"), ("onnx", "none"), ("onnx", "int8"), ("openvino", "none"),
              ("openvino", "int8")]


def stack_oof(train: Path, backend: str, quantize: str, workdir: Path) -> float:
    """OOF log loss of the default stack on ``train`` with this backend (own experiment)."""
    name = f"{backend}-{quantize}-{train.stem}"
    config = workdir / f"{name}.yaml"
    config.write_text(f"embed:\n  backend: {backend}\n  quantize: {quantize}\n", encoding="utf-8")
    cmd = [sys.executable, str(REPO / "run_pipeline.py"), "--stage", "all", "--train", str(train),
           "--test", str(train), "--workdir", str(workdir), "--config", str(config), "--device", "cpu"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stderr[-3000:]}")
    return json.loads((workdir / "runs" / name / "metrics.json").read_text())["oof_log_loss"]


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    p.add_argument("--limit", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--stack", type=Path, nargs="*", default=[], help="files for the OOF comparison")
    p.add_argument("--workdir", type=Path, default=Path("/tmp/prefstack-embed-backends"))
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)

    load = os.getloadavg()[0]
    texts = load_texts(args.data, EmbedConfig())
    rng = np.random.default_rng(args.seed)
    texts = [texts[i] for i in sorted(rng.choice(len(texts), size=min(args.limit, len(texts)),
                                                 replace=False))]
    root = args.workdir / "cache" / "models"
    encoders = {}
    for backend, quantize in CANDIDATES:
        t0 = time.perf_counter()
        enc = model_encoder(EmbedConfig(backend=backend, quantize=quantize), "all-MiniLM-L6-v2", "cpu", root)
        enc(texts[:32])  # export (once, cached) and warm-up
        encoders[(backend, quantize)] = enc
        print(f"{backend} {quantize}: ready in {time.perf_counter() - t0:.1f}s", flush=True)
    seconds = {c: [] for c in CANDIDATES}
    vectors = {}
    for r in range(args.repeats):  # interleaved, so load changes hit every candidate alike
        for c in (CANDIDATES if r % 2 == 0 else CANDIDATES[::-1]):
            t0 = time.perf_counter()
            vectors[c] = encoders[c](texts)
            seconds[c].append(time.perf_counter() - t0)
    ref = vectors[("torch", "none")]
    base = min(seconds[("torch", "none")])
    oof: dict = {}
    for path in args.stack:
        for c in CANDIDATES:
            oof[(path.name, c)] = stack_oof(path, *c, args.workdir)
            print(f"{path.name} {c}: OOF {oof[(path.name, c)]:.4f}", flush=True)
    head = "| backend | quantize | texts/s | x torch fp32 | mean cosine | worst cosine |"
    head += "".join(f" OOF {p.name} (change) |" for p in args.stack)
    lines = [head, "|---|---|---:|---:|---:|---:|" + "---:|" * len(args.stack)]
    for c in CANDIDATES:
        best = min(seconds[c])
        cos = (vectors[c] * ref).sum(axis=1)
        row = (f"| {c[0]} | {c[1]} | {len(texts) / best:.0f} | {base / best:.2f} | {cos.mean():.5f} | "
               f"{cos.min():.5f} |")
        for path in args.stack:
            value = oof[(path.name, c)]
            row += f" {value:.4f} ({value - oof[(path.name, ('torch', 'none'))]:+.4f}) |"
        lines.append(row)
    table = "\n".join(lines)
    cond = (f"{len(texts)} real texts sampled (seed {args.seed}) from {args.data}, all-MiniLM-L6-v2 "
            f"(max 256 tokens), CPU, {os.cpu_count()} cores, best of {args.repeats} interleaved "
            f"passes, {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}, load average before "
            f"the run {load:.1f}. OOF: the default stack (--stage all) on each file as train and test, "
            "same folds; only embed.backend / embed.quantize differ.")
    print("\n" + table + "\n\n" + cond)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(f"# CPU embedding backends\n\n`python bench/embed_backends.py "
                        f"{' '.join(sys.argv[1:] if argv is None else argv)}`\n\n{table}\n\n{cond}\n",
                        encoding="utf-8")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
