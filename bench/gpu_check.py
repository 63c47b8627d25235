"""The GPU check (issue #13): three timed parts on one CUDA machine, one results file.

    (a) embed   170,000 Kaggle-length synthetic texts (bench/embed_speed.py's set) through
                the embed stage's own path (hash, chunk, encode, Parquet) with the bundled
                MiniLM in fp16: texts/s (target: all of them in under 60 s).
    (b) demo    ``run_pipeline.py --demo --device cuda``: every stage, the fine-tune stage
                included (finetune.in_all is on for a GPU), in a fresh workdir: seconds per
                stage, OOF log loss of the blend and of the fine-tuned member.
    (c) decoder a random-weight Llama-family decoder of about 1.1B parameters (built from a
                config: the GPU machine has no model hub), saved and loaded through the
                fine-tune stage's own builder (last-token head, LoRA r 16 on every linear
                layer, bf16), trained with ``pipeline.finetune.train_model`` on 1,024-token
                pairs in both orders: tokens/s, model FLOP utilisation, peak memory; once
                without and once with gradient checkpointing.

Each part runs on its own: a failure is recorded with its error and the next part runs.
Results go to ``--out`` (markdown) and the same path with ``.json``, rewritten after each
part, so a run cut short still leaves what it measured.

    bash bench/gpu_check.sh                 # on a CUDA machine, under 8 minutes
    bash bench/gpu_check.sh --tiny          # CPU, seconds: the same code on tiny sizes

Model FLOPs per token of (c): 4 N + 12 L T d, where N = the decoder's non-embedding
weights (forward 2 N, backward 2 N for the input gradients: the frozen base has no weight
gradients and LoRA's are negligible), L layers, T tokens per sequence, d = heads x head
dim (attention: 4 L T d forward, 8 L T d backward). Recomputation by gradient
checkpointing is not counted (the usual MFU convention). Utilisation is given against the
H200 / H100 SXM datasheet's dense bf16 rate, 989 TFLOP/s, and against 790 TFLOP/s, the
8192^3 bf16 matrix product measured on this workplace's H200.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

RESULTS = REPO / "bench" / "results" / "gpu_check.md"
DATASHEET_BF16_TFLOPS = 989.0
MEASURED_BF16_TFLOPS = 790.0

# Sizes of each part: the real check and the --tiny one (CPU, seconds).
SIZES = {
    "full": {"embed_texts": 170_000, "embed_batch": 512, "embed_chunk": 16_384, "seq_len": 1024, "pairs_per_step": 8,
             "timed_steps": 8, "warmup_steps": 2, "decoder": "ONE_B", "vocab": 32_000},
    "tiny": {"embed_texts": 48, "embed_batch": 16, "embed_chunk": 2048, "seq_len": 128, "pairs_per_step": 2,
             "timed_steps": 2, "warmup_steps": 1, "decoder": "TINY", "vocab": 512},
}


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        import torch

        torch.cuda.synchronize()


# ----------------------------------------------------------------------------- (a) embed

def part_embed(size: dict, device: str, work: Path) -> dict:
    from embed_speed import synthetic_texts

    from pipeline.config import DEFAULT_MODEL, EmbedConfig
    from pipeline.embed import EmbeddingCache, ModelEncoder, embed_texts, load_model

    cfg = EmbedConfig()
    t0 = time.perf_counter()
    texts = synthetic_texts(size["embed_texts"], seed=0)
    gen_s = time.perf_counter() - t0
    half = bool(cfg.half_on_gpu and device.startswith("cuda"))
    t0 = time.perf_counter()
    model = load_model(DEFAULT_MODEL, device, None, half)
    load_s = time.perf_counter() - t0
    encoder = ModelEncoder(model, size["embed_batch"], cfg.normalize, cfg.long_text)
    encoder(texts[:size["embed_batch"]])  # warm-up: kernels, allocator
    _sync(device)
    t0 = time.perf_counter()
    vectors, stats = embed_texts(EmbeddingCache(work / "embed-cache"), texts, lambda: encoder,
                                 size["embed_chunk"], progress=False)
    _sync(device)
    seconds = time.perf_counter() - t0
    assert stats.computed == len(texts) and len(vectors) == len(texts)
    chars = [len(t) for t in texts]
    return {"texts": len(texts), "mean_chars": round(sum(chars) / len(chars)),
            "model": DEFAULT_MODEL, "precision": "fp16" if half else "fp32",
            "max_seq_length": int(model.max_seq_length), "batch_size": size["embed_batch"],
            "chunk_size": size["embed_chunk"], "fast_tokenizer_path": bool(encoder._fast_ok()),
            "seconds": round(seconds, 2), "texts_per_s": round(len(texts) / seconds),
            "target_s": 60, "met": seconds < 60, "model_load_s": round(load_s, 1),
            "text_generation_s": round(gen_s, 1)}


# ----------------------------------------------------------------------------- (b) demo

def _tiny_demo_config(work: Path) -> Path:
    """--tiny: the demo with random tiny models (a BERT to embed, a Llama to fine-tune) and
    one small stack member, so every stage runs on the CPU in seconds."""
    import yaml

    from pipeline.randmodels import save_random_decoder, save_random_encoder

    bert = save_random_encoder(work / "tiny-bert")
    llama = save_random_decoder(work / "tiny-llama", "llama")
    config = {"name": "demo-tiny", "embed": {"models": [bert], "max_seq_length": 64},
              "finetune": {"model": llama, "max_length": 160, "batch_size": 16, "in_all": True,
                           "lr": 1e-3, "head_lr": 1e-3},
              "stack": {"members": {"lgbm_all": {"kind": "lgbm", "inputs": ["all"]}},
                        "num_boost_round": 20, "early_stopping": False}}
    path = work / "demo-tiny.yaml"
    path.write_text(yaml.safe_dump(config), encoding="utf-8")
    return path


def part_demo(size: dict, device: str, work: Path, tiny: bool, log_copy: Path | None = None) -> dict:
    cmd = [sys.executable, str(REPO / "run_pipeline.py"), "--demo", "--device", device,
           "--workdir", str(work / "demo-work")]
    if tiny:
        cmd += ["--config", str(_tiny_demo_config(work))]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True,
                          env={**os.environ, "PYTHONUNBUFFERED": "1"})
    seconds = time.perf_counter() - t0
    log = proc.stdout + proc.stderr
    (work / "demo.log").write_text(log, encoding="utf-8")
    if log_copy is not None:
        log_copy.write_text(log, encoding="utf-8")
    if proc.returncode != 0:
        raise RuntimeError(f"run_pipeline.py exited {proc.returncode}:\n" + log[-3000:])
    stages = {}
    for line in log.splitlines():
        if "== stage " in line and " finished in " in line:
            name = line.split("== stage ")[1].split()[0]
            stages[name] = float(line.rsplit(" finished in ", 1)[1].rstrip("s"))
    runs = sorted((work / "demo-work" / "runs").glob("*/metrics.json"))
    metrics = json.loads(runs[-1].read_text()) if runs else {}
    ft = metrics.get("finetune_member")
    members = metrics.get("members", {})
    if "finetune" not in stages or not ft:
        raise RuntimeError("the demo ran without a fine-tuned member: stages "
                           f"{sorted(stages)}, finetune_member {ft!r}")
    return {"seconds": round(seconds, 1), "stage_seconds": stages,
            "oof_log_loss": metrics.get("oof_log_loss"),
            "finetune_member": ft, "finetune_oof_log_loss": members.get(ft, {}).get("oof_log_loss"),
            "members": sorted(members)}


# ----------------------------------------------------------------------------- (c) decoder

def _flops_per_token(config, seq_len: int) -> tuple[float, int]:
    """(model FLOPs per trained token, non-embedding weights N); module docstring."""
    hidden, layers = config.hidden_size, config.num_hidden_layers
    heads = config.num_attention_heads
    head_dim = getattr(config, "head_dim", None) or hidden // heads
    kv = getattr(config, "num_key_value_heads", heads)
    inter = config.intermediate_size
    per_layer = hidden * heads * head_dim * 2 + hidden * kv * head_dim * 2 + 3 * hidden * inter
    n = layers * per_layer
    return 4.0 * n + 12.0 * layers * seq_len * heads * head_dim, n


def _time_training(folder: str, size: dict, device: str, checkpointing: bool) -> dict:
    import numpy as np
    import torch

    import pipeline.finetune as FT
    from pipeline.config import FinetuneConfig
    from pipeline.heads import build_classifier

    T, pairs = size["seq_len"], size["pairs_per_step"]
    cfg = FinetuneConfig(model=folder, head="last", lora=True, batch_size=pairs, epochs=1.0,
                         lr=1e-4, warmup_ratio=0.0, precision="auto", swap_augment=True,
                         group_by_length=False, gradient_checkpointing=checkpointing)
    spec = FT.model_spec(cfg, decoder=True)  # LoRA r 16, alpha 32 on every linear layer
    amp, _ = FT.resolve_amp(cfg.precision, device)
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    model = build_classifier(spec, base_dtype=amp, pad_token_id=2)
    if checkpointing:
        model.enable_gradient_checkpointing()
    model.to(device)
    build_s = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    vocab = model.backbone.get_base_model().config.vocab_size

    def rows(n):  # full-length sequences: every token counts, no padding
        fwd = [list(rng.integers(3, min(vocab, 30_000), size=T)) for _ in range(n)]
        return fwd, [list(s) for s in fwd], rng.integers(0, 3, size=n)

    f, s, y = rows(pairs * size["warmup_steps"])
    FT.train_model(model, f, s, y, cfg, 2, device, seed=0, desc="warm-up")
    f, s, y = rows(pairs * size["timed_steps"])
    _sync(device)
    stats = FT.train_model(model, f, s, y, cfg, 2, device, seed=1, desc="timed")
    _sync(device)
    seconds = stats["seconds"]
    tokens = 2 * pairs * size["timed_steps"] * T  # both orders of every pair
    flops, n = _flops_per_token(model.backbone.get_base_model().config, T)
    tps = tokens / seconds
    n_all = sum(p.numel() for p in model.parameters())
    n_train = sum(p.numel() for p in model.parameters() if p.requires_grad)
    out = {"gradient_checkpointing": checkpointing, "seq_len": T,
           "sequences_per_step": 2 * pairs, "timed_steps": size["timed_steps"],
           "seconds": round(seconds, 2), "tokens_per_s": round(tps),
           "model_tflops_per_s": round(tps * flops / 1e12, 1),
           "mfu_vs_datasheet": round(tps * flops / 1e12 / DATASHEET_BF16_TFLOPS, 3),
           "mfu_vs_measured": round(tps * flops / 1e12 / MEASURED_BF16_TFLOPS, 3),
           "params_total": n_all, "params_non_embedding": n, "params_trainable": n_train,
           "flops_per_token": flops, "precision": str(amp).replace("torch.", "") if amp else "fp32",
           "build_s": round(build_s, 1), "final_loss": stats["train_loss"]}
    if device.startswith("cuda"):
        out["peak_memory_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 1)
    del model
    return out


def part_decoder(size: dict, device: str, work: Path) -> dict:
    import torch

    from pipeline import randmodels

    sizes = getattr(randmodels, size["decoder"])
    t0 = time.perf_counter()
    folder = randmodels.save_random_decoder(work / "decoder", "llama", vocab_size=size["vocab"],
                                            dtype=torch.bfloat16, device=device, **sizes)
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    made_s = time.perf_counter() - t0
    runs = [_time_training(folder, size, device, checkpointing=False),
            _time_training(folder, size, device, checkpointing=True)]
    return {"architecture": "llama (random weights)", "sizes": sizes,
            "model_made_and_saved_s": round(made_s, 1), "runs": runs}


# ----------------------------------------------------------------------------- report

def _markdown(results: dict) -> str:
    env = results["environment"]
    lines = [f"# GPU check ({'tiny, ' if results['tiny'] else ''}{env['device_name']})", "",
             f"`bash bench/gpu_check.sh{' --tiny' if results['tiny'] else ''}` on "
             f"{env['date']}: {env['device_name']}, torch {env['torch']}, transformers "
             f"{env['transformers']}, {env['cpu_count']} CPU cores, Python {env['python']}.", ""]
    e = results["parts"].get("embed", {})
    lines.append("## (a) embed")
    lines.append(f"- {e['texts']:,} synthetic Kaggle-length texts (mean {e['mean_chars']} chars), "
                 f"{e['model']} {e['precision']}, max {e['max_seq_length']} tokens, batch "
                 f"{e['batch_size']}, chunk {e.get('chunk_size')}: **{e['seconds']} s, {e['texts_per_s']:,} texts/s** (target "
                 f"under {e['target_s']} s: {'met' if e['met'] else 'MISSED'})"
                 if "texts" in e else f"- failed: {e.get('error', 'not run')}")
    d = results["parts"].get("demo", {})
    lines += ["", "## (b) demo with the fine-tune stage"]
    lines.append(f"- `run_pipeline.py --demo --device {results['device']}`: {d['seconds']} s in all; "
                 "stages " + ", ".join(f"{k} {v:.1f} s" for k, v in d["stage_seconds"].items())
                 + f"; OOF log loss {d['oof_log_loss']:.4f} (fine-tuned member {d['finetune_member']}"
                 f" alone {d['finetune_oof_log_loss']:.4f})"
                 if "seconds" in d else f"- failed: {d.get('error', 'not run')}")
    c = results["parts"].get("decoder", {})
    lines += ["", "## (c) decoder LoRA fine-tuning steps"]
    if "runs" in c:
        r0 = c["runs"][0]
        lines.append(f"- {c['architecture']}, {r0['params_total'] / 1e9:.2f}B parameters "
                     f"({r0['params_non_embedding'] / 1e9:.2f}B non-embedding, "
                     f"{r0['params_trainable'] / 1e6:.1f}M trainable: LoRA r 16 on every linear "
                     f"layer + head), {r0['precision']}, {r0['seq_len']} tokens, "
                     f"{r0['sequences_per_step']} sequences per step (each pair in both orders)")
        lines += ["", "| gradient checkpointing | tokens/s | model TFLOP/s | MFU vs 989 | "
                  "MFU vs 790 measured | peak memory GiB |", "|---|---:|---:|---:|---:|---:|"]
        for r in c["runs"]:
            lines.append(f"| {'on' if r['gradient_checkpointing'] else 'off'} | "
                         f"{r['tokens_per_s']:,} | {r['model_tflops_per_s']} | "
                         f"{r['mfu_vs_datasheet']:.1%} | {r['mfu_vs_measured']:.1%} | "
                         f"{r.get('peak_memory_gib', 'n/a')} |")
    else:
        lines.append(f"- failed: {c.get('error', 'not run')}")
    lines += ["", f"Total {results.get('total_s', 0):.0f} s."]
    return "\n".join(lines) + "\n"


def _environment(device: str) -> dict:
    import torch
    import transformers

    name = torch.cuda.get_device_name(0) if device.startswith("cuda") else platform.processor() or "CPU"
    return {"device_name": name, "torch": torch.__version__, "transformers": transformers.__version__,
            "cpu_count": os.cpu_count(), "python": platform.python_version(),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
            "load_average": round(os.getloadavg()[0], 1)}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--tiny", action="store_true", help="tiny sizes on the CPU: seconds, for CI")
    p.add_argument("--device", default=None, help="cuda (default) or cpu (default with --tiny)")
    p.add_argument("--parts", default="embed,demo,decoder", help="comma-separated parts to run")
    p.add_argument("--out", type=Path, default=None,
                   help=f"markdown results (default {RESULTS.relative_to(REPO)}; with --tiny a "
                        "temporary folder)")
    args = p.parse_args(argv)
    from pipeline.models import hf_offline_if_no_hub, resolve_device

    hf_offline_if_no_hub()
    device = resolve_device(args.device or ("cpu" if args.tiny else "cuda"))
    size = SIZES["tiny" if args.tiny else "full"]
    work = Path(tempfile.mkdtemp(prefix="gpu_check-"))
    out = args.out or (work / "gpu_check.md" if args.tiny else RESULTS)
    results: dict = {"tiny": args.tiny, "device": device, "environment": _environment(device),
                     "parts": {}}
    t_all = time.perf_counter()
    runners = {"embed": lambda: part_embed(size, device, work),
               "demo": lambda: part_demo(size, device, work, args.tiny,
                                         out.with_name(out.stem + "_demo.log")),
               "decoder": lambda: part_decoder(size, device, work)}
    failed = []
    for name in [n.strip() for n in args.parts.split(",") if n.strip()]:
        if name not in runners:
            p.error(f"unknown part {name!r}: choose from {', '.join(runners)}")
        print(f"== gpu_check: {name} ...", flush=True)
        t0 = time.perf_counter()
        try:
            results["parts"][name] = runners[name]()
        except Exception as exc:  # noqa: BLE001 - one part's failure must not stop the others
            traceback.print_exc()
            results["parts"][name] = {"error": f"{type(exc).__name__}: {exc}"[:2000]}
            failed.append(name)
        print(f"== gpu_check: {name} in {time.perf_counter() - t0:.1f}s: "
              f"{json.dumps(results['parts'][name])[:1500]}", flush=True)
        results["total_s"] = round(time.perf_counter() - t_all, 1)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.with_suffix(".json").write_text(json.dumps(results, indent=2), encoding="utf-8")
        out.write_text(_markdown(results), encoding="utf-8")
    print("\n" + out.read_text(encoding="utf-8"))
    print(f"wrote {out} and {out.with_suffix('.json')}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
