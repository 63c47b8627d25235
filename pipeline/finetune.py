"""Stage ``finetune``: a transformer pair classifier fine-tuned per fold -> OOF and test logits.

For each fold k of the shared folds (``pipeline.folds.load_or_make_folds``), a classifier
(``pipeline.heads``: backbone + "auto" / "mean" / "cnn" head, optionally LoRA) is trained
with cross-entropy and AdamW on the other folds' rows, then predicts fold k (out-of-fold
logits) and the test set. One model per seed; logits are averaged over seeds, and test
logits over folds. Inputs are packed by ``features.seqpack.encode_pairs``.

Cache layout, ``cache/finetune/<model slug>-<key>/`` (key: model id, every training
setting that changes the logits, the folds and the training data's content hash)::

    finetune.json                 model spec, packing and TTA settings (for predict_logits)
    fold<k>/seed<s>.pt            fold model weights (LoRA: adapters + head only)
    fold<k>/test-<testhash>.parquet   that fold's test logits (written before oof)
    fold<k>/metrics.json          validation log loss, time per epoch, peak memory
    fold<k>/oof.parquet           that fold's OOF logits; its presence marks the fold done
    oof.parquet                   id, fold, logit_a, logit_b, logit_tie (all folds)
    test-<testhash>.parquet       id, logit_a, logit_b, logit_tie (mean over folds)

A rerun skips finished folds (an interrupted run resumes at the first unfinished one);
``finetune.folds`` trains only some folds; ``--force`` retrains the chosen ones. A new
test file is scored with the saved fold models without retraining.

Contract for the stack (``pipeline/stack.py``)::

    member_for(ctx) -> FinetuneMember | None

None unless *every* fold of the current config / data / folds is finished and the test
logits of the current test file exist: a member never carries partial OOF (the blend
needs every training row). Training on a row subset (``finetune.max_rows`` below the
training set's size) therefore also gives None. Otherwise:

    .name       "ft_<model slug>"
    .oof        DataFrame id (str), fold (int), logit_a, logit_b, logit_tie (float32);
                every training id exactly once
    .test       DataFrame id (str), logit_a, logit_b, logit_tie; every test id once,
                the mean of the fold models' logits
    .model_dir  Path of the cache folder above; ``predict_logits(model_dir, frame, ctx)``
                scores new pairs with its fold models.

Logits are raw (softmax them to get probabilities [a, b, tie]).
"""
from __future__ import annotations

import gc
import logging
import math
import resource
import time
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Iterator, Sequence

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
from pipeline.progress import Progress

from features.seqpack import encode_pairs, specials_of
from pipeline.catalog import (CODE_VERSION, frame_hash, hash_key, read_json,
                              read_parquet_checked, slug, write_json_atomic,
                              write_parquet_atomic, write_provenance)
from pipeline.config import ConfigError, FinetuneConfig
from pipeline.data import swap_labels, swap_proba
from pipeline.heads import HEADS, ModelSpec, build_classifier, load_classifier, save_weights

log = logging.getLogger(__name__)

FINETUNE_VERSION = 2
LOGITS = ["logit_a", "logit_b", "logit_tie"]
# Settings that never change the logits, so never part of the cache key.
_NOT_IN_KEY = {"folds", "in_all", "eval_batch_size", "gradient_checkpointing", "max_rows", "model"}


@dataclass
class FinetuneMember:
    """Finished fine-tuned logits of one config (see the module docstring)."""

    name: str
    oof: pd.DataFrame
    test: pd.DataFrame
    model_dir: Path


# ----------------------------------------------------------------------------- settings

def resolve_config(cfg: FinetuneConfig) -> tuple[FinetuneConfig, bool]:
    """(``cfg`` with its by-architecture settings filled in, whether the model is a decoder LM).

    None means "by architecture" for head ("last" for a decoder, "mean" for an encoder),
    lora (on for a decoder) and group_by_length (on for a decoder). The resolved config is
    what the cache key holds, so spelling a default out keeps the same cache.
    """
    from dataclasses import replace

    from pipeline.models import is_decoder_model

    try:
        decoder = is_decoder_model(cfg.model)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"finetune.model={cfg.model!r}: cannot read its config ({exc}); give a "
                          "Hugging Face name the machine can reach or a local model folder") from None
    return replace(cfg, head=cfg.head if cfg.head is not None else ("last" if decoder else "mean"),
                   lora=cfg.lora if cfg.lora is not None else decoder,
                   group_by_length=(cfg.group_by_length if cfg.group_by_length is not None
                                    else decoder)), decoder


def model_spec(cfg: FinetuneConfig, decoder: bool = False) -> ModelSpec:
    """The architecture part of a resolved config (:func:`resolve_config`)."""
    return ModelSpec(base=cfg.model, head=cfg.head or "mean", dropout=cfg.dropout,
                     cnn_channels=cfg.cnn_channels, lora=bool(cfg.lora), lora_r=cfg.lora_r,
                     lora_alpha=cfg.lora_alpha, lora_dropout=cfg.lora_dropout,
                     lora_target_modules=cfg.lora_target_modules, decoder=decoder,
                     load_in_4bit=cfg.load_in_4bit)


def check_config(cfg: FinetuneConfig) -> None:
    """Raise ConfigError naming the bad finetune.* setting."""
    if cfg.head is not None and cfg.head not in HEADS:
        raise ConfigError(f"finetune.head={cfg.head!r}: expected one of {', '.join(HEADS)}")
    if cfg.padding_side not in ("right", "left"):
        raise ConfigError(f"finetune.padding_side={cfg.padding_side!r}: expected right or left")
    if cfg.load_in_4bit and cfg.lora is False:
        raise ConfigError("finetune.load_in_4bit needs LoRA (4-bit weights cannot be trained): "
                          "set finetune.lora: true or leave it unset")
    if cfg.schedule not in ("linear", "cosine"):
        raise ConfigError(f"finetune.schedule={cfg.schedule!r}: expected linear or cosine")
    if cfg.precision not in ("auto", "fp32", "bf16", "fp16"):
        raise ConfigError(f"finetune.precision={cfg.precision!r}: expected auto, fp32, bf16 or fp16")
    for name in ("batch_size", "grad_accum", "max_length", "eval_batch_size"):
        if getattr(cfg, name) < 1:
            raise ConfigError(f"finetune.{name} must be at least 1, got {getattr(cfg, name)}")
    if cfg.epochs <= 0:
        raise ConfigError(f"finetune.epochs must be positive, got {cfg.epochs}")
    if not cfg.seeds:
        raise ConfigError("finetune.seeds is empty: give at least one seed, e.g. [0]")
    for name in ("prompt_share", "head_share", "warmup_ratio"):
        if not 0.0 <= getattr(cfg, name) <= 1.0:
            raise ConfigError(f"finetune.{name} must be in [0, 1], got {getattr(cfg, name)}")


def resolve_amp(precision: str, device: str) -> tuple[torch.dtype | None, bool]:
    """(autocast dtype or None for fp32, whether a GradScaler is needed) on ``device``.

    "auto": bf16 on a GPU that supports it, else fp16 (with loss scaling); fp32 on the CPU.
    """
    cuda = device.startswith("cuda")
    if precision == "fp32" or (precision == "auto" and not cuda):
        return None, False
    if precision == "auto":
        precision = "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if precision == "bf16":
        return torch.bfloat16, False
    if precision == "fp16":
        if not cuda:
            raise ConfigError("finetune.precision=fp16 needs a GPU; use fp32 or bf16 on the CPU")
        return torch.float16, True
    raise ConfigError(f"finetune.precision={precision!r}: expected auto, fp32, bf16 or fp16")


def _autocast(device: str, dtype: torch.dtype | None):
    if dtype is None:
        return nullcontext()
    return torch.autocast(device_type="cuda" if device.startswith("cuda") else "cpu", dtype=dtype)


def load_tokenizer(model: str) -> Any:
    """The backbone's tokenizer (any HF name or local path; bundled MiniLM offline)."""
    from transformers import AutoTokenizer

    from pipeline.models import resolve_model_path

    return AutoTokenizer.from_pretrained(resolve_model_path(model))


def peak_memory_mb(device: str) -> float:
    """Peak memory so far: GPU allocations on cuda, else the process's max RSS (MiB)."""
    if device.startswith("cuda"):
        return torch.cuda.max_memory_allocated() / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def log_loss_of_logits(logits: np.ndarray, labels: np.ndarray) -> float:
    """Multi-class log loss of softmax(logits) [n, 3] against int labels [n]."""
    z = logits.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    return float(-logp[np.arange(len(labels)), labels].mean())


# ----------------------------------------------------------------------------- model loops

def collate(seqs: Sequence[Sequence[int]], pad_id: int, device: str,
            padding_side: str = "right") -> tuple[torch.Tensor, torch.Tensor]:
    """Padded (input_ids, attention_mask) [len(seqs), longest] on ``device``; padding on
    the right (default) or on the left."""
    width = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), width), dtype=torch.long)
    for i, s in enumerate(seqs):
        cols = slice(width - len(s), width) if padding_side == "left" else slice(0, len(s))
        ids[i, cols] = torch.as_tensor(s, dtype=torch.long)
        mask[i, cols] = 1
    if device.startswith("cuda"):
        return ids.pin_memory().to(device, non_blocking=True), mask.pin_memory().to(device, non_blocking=True)
    return ids.to(device), mask.to(device)


@torch.no_grad()
def predict_ids(model: torch.nn.Module, seqs: Sequence[Sequence[int]], pad_id: int, device: str,
                batch_size: int, amp_dtype: torch.dtype | None = None, desc: str = "predict",
                padding_side: str = "right") -> np.ndarray:
    """Logits float32 [len(seqs), 3] in ``seqs``' order (batches sorted by length inside)."""
    out = np.zeros((len(seqs), 3), dtype=np.float32)
    if not len(seqs):
        return out
    was_training = model.training
    model.eval()
    order = np.argsort([-len(s) for s in seqs], kind="stable")
    bar = Progress(len(order), desc, unit="seq", leave=False)
    for start in range(0, len(order), batch_size):
        idx = order[start:start + batch_size]
        bar.update(len(idx))
        ids, mask = collate([seqs[i] for i in idx], pad_id, device, padding_side)
        with _autocast(device, amp_dtype):
            logits = model(ids, mask)
        out[idx] = logits.float().cpu().numpy()
    bar.close()
    model.train(was_training)
    return out


def tta_combine(forward_logits: np.ndarray, swapped_logits: np.ndarray) -> np.ndarray:
    """Mean of the forward logits and the swapped input's logits mapped back [a, b, tie]."""
    return ((forward_logits + swap_proba(swapped_logits)) / 2).astype(np.float32)


def predict_pairs(model: torch.nn.Module, forward: Sequence[Sequence[int]],
                  swapped: Sequence[Sequence[int]], pad_id: int, device: str, batch_size: int,
                  tta: bool, amp_dtype: torch.dtype | None = None, desc: str = "predict",
                  padding_side: str = "right") -> np.ndarray:
    """Logits [n, 3] of packed pairs; with ``tta`` averaged with the swapped order's."""
    logits = predict_ids(model, forward, pad_id, device, batch_size, amp_dtype, desc, padding_side)
    if not tta:
        return logits
    return tta_combine(logits, predict_ids(model, swapped, pad_id, device, batch_size,
                                           amp_dtype, desc + " (swapped)", padding_side))


def _param_groups(model: torch.nn.Module, lr: float, head_lr: float, weight_decay: float) -> list[dict]:
    """AdamW groups: no decay on biases and norms; the new head at its own learning rate."""
    groups: dict[tuple[bool, bool], list] = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        parts = set(name.split("."))
        is_head = name.startswith("head.") or bool(parts & {"classifier", "score"})
        decay = p.ndim >= 2
        groups.setdefault((is_head, decay), []).append(p)
    return [{"params": ps, "lr": head_lr if is_head else lr,
             "weight_decay": weight_decay if decay else 0.0}
            for (is_head, decay), ps in groups.items()]


# Batches per pool that group_by_length sorts by length before cutting.
LENGTH_POOL_BATCHES = 64


def _micro_batches(n: int, batch_size: int, total: int, rng: np.random.Generator,
                   lengths: Sequence[int] | None = None) -> list[np.ndarray]:
    """``total`` index batches: a fresh permutation per epoch, cut into batch_size chunks.

    With ``lengths`` (group by length) each epoch's permutation is cut into pools of
    LENGTH_POOL_BATCHES batches, each pool sorted by length and cut, and the epoch's
    batches shuffled: batches of similar lengths (less padding), still in random order.
    """
    batches: list[np.ndarray] = []
    while len(batches) < total:
        perm = rng.permutation(n)
        if lengths is None:
            batches.extend(perm[i:i + batch_size] for i in range(0, n, batch_size))
            continue
        pool = batch_size * LENGTH_POOL_BATCHES
        epoch = []
        for start in range(0, n, pool):
            chunk = perm[start:start + pool]
            chunk = chunk[np.argsort([-lengths[j] for j in chunk], kind="stable")]
            epoch.extend(chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size))
        batches.extend(epoch[i] for i in rng.permutation(len(epoch)))
    return batches[:total]


def train_model(model: torch.nn.Module, forward: Sequence[Sequence[int]],
                swapped: Sequence[Sequence[int]], labels: np.ndarray, cfg: FinetuneConfig,
                pad_id: int, device: str, seed: int, desc: str = "train") -> dict[str, Any]:
    """Train ``model`` in place on packed pairs with cross-entropy and AdamW.

    With ``cfg.swap_augment`` every micro-batch holds each pair in both orders (labels
    permuted for the swapped copy), so both are in the same optimiser step. Warmup then
    linear / cosine decay, gradient accumulation and clipping, autocast per
    ``cfg.precision`` (loss scaling for fp16). Returns: {"steps", "epoch_seconds": [...],
    "train_loss": last running loss, "seconds"}.
    """
    from transformers import get_scheduler

    amp_dtype, use_scaler = resolve_amp(cfg.precision, device)
    rng = np.random.default_rng(seed)
    per_epoch = math.ceil(len(forward) / cfg.batch_size)
    total_micro = max(1, math.ceil(cfg.epochs * per_epoch))
    total_steps = math.ceil(total_micro / cfg.grad_accum)
    head_lr = cfg.head_lr if cfg.head_lr is not None else cfg.lr
    optimizer = torch.optim.AdamW(_param_groups(model, cfg.lr, head_lr, cfg.weight_decay),
                                  lr=cfg.lr, fused=device.startswith("cuda") or None)
    scheduler = get_scheduler(cfg.schedule, optimizer,
                              num_warmup_steps=int(round(cfg.warmup_ratio * total_steps)),
                              num_training_steps=total_steps)
    scaler = torch.amp.GradScaler("cuda", enabled=use_scaler)
    trainable = [p for p in model.parameters() if p.requires_grad]
    labels = np.asarray(labels, dtype=np.int64)
    model.train()
    optimizer.zero_grad(set_to_none=True)
    running, epoch_seconds, steps = None, [], 0
    t_start = t_epoch = time.perf_counter()
    bar = Progress(total_micro, desc, unit="batch", leave=False)
    lengths = [len(s) for s in forward] if cfg.group_by_length else None
    for i, idx in enumerate(_micro_batches(len(forward), cfg.batch_size, total_micro, rng, lengths)):
        seqs = [forward[j] for j in idx]
        y = labels[idx]
        if cfg.swap_augment:
            seqs += [swapped[j] for j in idx]
            y = np.concatenate([y, swap_labels(y)])
        ids, mask = collate(seqs, pad_id, device, cfg.padding_side)
        target = torch.as_tensor(y, device=device)
        with _autocast(device, amp_dtype):
            logits = model(ids, mask)
        loss = F.cross_entropy(logits.float(), target)
        scaler.scale(loss / cfg.grad_accum).backward()
        last = i + 1 == total_micro
        if (i + 1) % cfg.grad_accum == 0 or last:
            if cfg.max_grad_norm > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(trainable, cfg.max_grad_norm)
            scaler.step(optimizer)
            scaler.update()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            steps += 1
        value = float(loss.detach())
        running = value if running is None else 0.9 * running + 0.1 * value
        bar.update(1)
        bar.set_postfix(loss=f"{running:.4f}", lr=f"{scheduler.get_last_lr()[0]:.2e}")
        if (i + 1) % per_epoch == 0 or last:
            epoch_seconds.append(time.perf_counter() - t_epoch)
            log.info("%s: epoch %d (%d micro-batches) in %.1fs, running loss %.4f", desc,
                     len(epoch_seconds), (i % per_epoch) + 1, epoch_seconds[-1], running)
            t_epoch = time.perf_counter()
    bar.close()
    return {"steps": steps, "epoch_seconds": epoch_seconds, "train_loss": running,
            "seconds": time.perf_counter() - t_start}


# ----------------------------------------------------------------------------- planning

@dataclass
class Plan:
    """What the stage (and member_for) work on for the current config and data."""

    cfg: FinetuneConfig
    train: pd.DataFrame  # the rows used (max_rows applied), with a fold column
    test: pd.DataFrame
    n_folds: int
    key: str
    model_dir: Path
    test_hash: str
    full_coverage: bool  # the rows used are the whole training set
    decoder: bool = False  # the model is a decoder LM (template, position ids, defaults)
    key_parts: tuple = ()  # what ``key`` hashes (the "finetune-fold" artifacts' key)

    def fold_dir(self, k: int) -> Path:
        return self.model_dir / f"fold{k}"

    def fold_test_path(self, k: int) -> Path:
        return self.fold_dir(k) / f"test-{self.test_hash}.parquet"

    @property
    def oof_path(self) -> Path:
        return self.model_dir / "oof.parquet"

    @property
    def test_path(self) -> Path:
        return self.model_dir / f"test-{self.test_hash}.parquet"

    @property
    def name(self) -> str:
        return f"ft_{slug(self.cfg.model)}"


def key_config(cfg: FinetuneConfig) -> dict[str, Any]:
    """The finetune settings that change the logits (cache key; never batch-free settings
    like eval_batch_size, which folds to train, or gradient checkpointing)."""
    from pipeline.models import model_id

    d = {k: v for k, v in asdict(cfg).items() if k not in _NOT_IN_KEY}
    d["model_id"] = model_id(cfg.model)
    return d


def make_plan(ctx) -> Plan:
    """Rows, folds, cache key and folder for the current context."""
    from pipeline.folds import load_or_make_folds

    check_config(ctx.config.finetune)
    cfg, decoder = resolve_config(ctx.config.finetune)
    full = ctx.dataset.train
    n_folds = ctx.config.stack.n_folds
    folds = load_or_make_folds(ctx.catalog, full, n_folds, ctx.config.stack.fold_seed)
    train = full.assign(id=full["id"].astype(str)).merge(folds, on="id", how="left", validate="1:1")
    if train["fold"].isna().any():
        raise ValueError("finetune: some training ids have no fold; delete cache/folds and rerun")
    if cfg.max_rows is not None:
        if cfg.max_rows < 1:
            raise ConfigError(f"finetune.max_rows must be at least 1, got {cfg.max_rows}")
        train = train.iloc[:cfg.max_rows].reset_index(drop=True)
    ctx.require_test()
    test = ctx.dataset.test.assign(id=ctx.dataset.test["id"].astype(str))
    data_hash = frame_hash(train[["id", "prompt", "response_a", "response_b", "label"]])
    folds_hash = frame_hash(train[["id", "fold"]])
    key_parts = ("finetune", FINETUNE_VERSION, key_config(cfg), n_folds,
                 ctx.config.stack.fold_seed, folds_hash, data_hash)
    key = hash_key(*key_parts)
    model_dir = ctx.catalog.stage_cache("finetune") / f"{slug(cfg.model)}-{key}"
    test_hash = frame_hash(test[["id", "prompt", "response_a", "response_b"]])
    return Plan(cfg=cfg, train=train, test=test, n_folds=n_folds, key=key, model_dir=model_dir,
                test_hash=test_hash, full_coverage=len(train) == len(full), decoder=decoder,
                key_parts=key_parts)


def _logit_frame(ids: Sequence[str], logits: np.ndarray, fold: int | None = None) -> pd.DataFrame:
    df = pd.DataFrame({"id": pd.Series(list(ids), dtype=str)})
    if fold is not None:
        df["fold"] = np.full(len(df), fold, dtype=np.int8)
    for j, col in enumerate(LOGITS):
        df[col] = logits[:, j].astype(np.float32)
    return df


def _read_logits(path: Path, rows: int, with_fold: bool = False) -> pd.DataFrame | None:
    cols = ["id"] + (["fold"] if with_fold else []) + LOGITS
    df = read_parquet_checked(path, expected_rows=rows, columns=cols)
    if df is not None:
        df["id"] = df["id"].astype(str)
    return df


# ----------------------------------------------------------------------------- stage

def _write_spec(plan: Plan) -> None:
    cfg = plan.cfg
    write_json_atomic(plan.model_dir / "finetune.json", {
        "name": plan.name, "key": plan.key, "code_version": CODE_VERSION,
        "spec": model_spec(cfg, plan.decoder).to_dict(),
        "pack": {"max_length": cfg.max_length, "prompt_share": cfg.prompt_share,
                 "head_share": cfg.head_share, "decoder": plan.decoder},
        "padding_side": cfg.padding_side,
        "swap_tta": cfg.swap_tta, "precision": cfg.precision, "n_folds": plan.n_folds,
        "seeds": list(cfg.seeds), "config": key_config(cfg),
    })


def _score_with_saved(plan: Plan, k: int, test_fwd, test_swp, pad_id: int, device: str) -> np.ndarray:
    """Test logits of fold k from its saved seed models (a new test file, no retraining)."""
    cfg = plan.cfg
    amp_dtype, _ = resolve_amp(cfg.precision, device)
    logits = []
    for seed in cfg.seeds:
        model = load_classifier(model_spec(cfg, plan.decoder), plan.fold_dir(k) / f"seed{seed}.pt",
                                device, base_dtype=amp_dtype, pad_token_id=pad_id)
        logits.append(predict_pairs(model, test_fwd, test_swp, pad_id, device, cfg.eval_batch_size,
                                    cfg.swap_tta, amp_dtype, desc=f"fold {k} test",
                                    padding_side=cfg.padding_side))
        del model
    return np.mean(logits, axis=0).astype(np.float32)


def _fold_rows(plan: Plan, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(training rows, validation rows) of fold k; ValueError when either is empty."""
    is_val = plan.train["fold"].to_numpy() == k
    tr, va = np.flatnonzero(~is_val), np.flatnonzero(is_val)
    if not len(va) or not len(tr):
        raise ValueError(f"fold {k} has {len(va)} validation and {len(tr)} training rows of the "
                         f"{len(plan.train)} used; raise finetune.max_rows or lower stack.n_folds")
    return tr, va


def train_seed(plan: Plan, k: int, seed: int, packed: dict, pad_id: int, device: str) -> dict:
    """One unit of the stage (pipeline.executors): fold k trained with ``seed``; its
    weights are saved (by the unit itself, atomically: a fold model can be gigabytes, so
    it is not sent back) and its validation and test logits returned.

    Returns: {"seed", "stats", "val": float [n_val, 3], "test": float [n_test, 3],
    "peak_mb"}.
    """
    from pipeline.catalog import unit_may_write

    cfg = plan.cfg
    tr, va = _fold_rows(plan, k)
    log.info("finetune: fold %d seed %d: training on %d rows (%s)", k, seed, len(tr), device)
    amp_dtype, _ = resolve_amp(cfg.precision, device)
    labels = plan.train["label"].to_numpy()
    fwd, swp = packed["train"]
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    torch.manual_seed(seed)
    model = build_classifier(model_spec(cfg, plan.decoder), base_dtype=amp_dtype, pad_token_id=pad_id)
    if cfg.gradient_checkpointing:
        model.enable_gradient_checkpointing()
    if cfg.freeze_embeddings and not cfg.lora:
        model.backbone.get_input_embeddings().requires_grad_(False)
    model.to(device)
    stats = train_model(model, [fwd[i] for i in tr], [swp[i] for i in tr], labels[tr], cfg,
                        pad_id, device, seed, desc=f"fold {k} seed {seed}")
    with unit_may_write():
        save_weights(model, plan.fold_dir(k) / f"seed{seed}.pt")
    val = predict_pairs(model, [fwd[i] for i in va], [swp[i] for i in va], pad_id, device,
                        cfg.eval_batch_size, cfg.swap_tta, amp_dtype, desc=f"fold {k} val",
                        padding_side=cfg.padding_side)
    test = predict_pairs(model, *packed["test"], pad_id, device, cfg.eval_batch_size,
                         cfg.swap_tta, amp_dtype, desc=f"fold {k} test",
                         padding_side=cfg.padding_side)
    stats["val_logloss"] = log_loss_of_logits(val, labels[va])
    peak = peak_memory_mb(device)
    del model
    gc.collect()
    if device.startswith("cuda"):
        torch.cuda.empty_cache()
    return {"seed": seed, "stats": stats, "val": val, "test": test, "peak_mb": peak}


def _fold_result(plan: Plan, k: int, results: list[dict], device: str) -> dict:
    """Fold k's seeds trained: its (seed-averaged) validation and test logits and metrics."""
    tr, va = _fold_rows(plan, k)
    labels = plan.train["label"].to_numpy()
    seed_stats = [{"seed": r["seed"], **r["stats"]} for r in results]
    val = np.mean([r["val"] for r in results], axis=0)
    metrics = {"fold": k, "n_train": len(tr), "n_val": len(va), "device": device,
               "val_logloss": log_loss_of_logits(val, labels[va]),
               "peak_memory_mb": round(max(r["peak_mb"] for r in results), 1),
               "peak_memory_kind": "cuda max_memory_allocated" if device.startswith("cuda")
               else "process max RSS", "seeds": seed_stats}
    epochs = [round(s, 1) for st in seed_stats for s in st["epoch_seconds"]]
    log.info("finetune: fold %d: val log loss %.4f (%d rows), epochs took %s s, peak memory "
             "%.0f MiB (%s)", k, metrics["val_logloss"], len(va), epochs,
             metrics["peak_memory_mb"], metrics["peak_memory_kind"])
    return {"val": val, "test": np.mean([r["test"] for r in results], axis=0), "metrics": metrics}


def _fold_oof(plan: Plan, k: int) -> pd.DataFrame | None:
    """Fold k's OOF logits when the fold is finished (every one of its rows), else None."""
    rows = int((plan.train["fold"].to_numpy() == k).sum())
    return _read_logits(plan.fold_dir(k) / "oof.parquet", rows, with_fold=True)


def _fold_logits(plan: Plan, k: int) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """(OOF logits, test logits) of fold k finished and scored on this test file, else None."""
    oof = _fold_oof(plan, k)
    test = _read_logits(plan.fold_test_path(k), len(plan.test)) if oof is not None else None
    return None if test is None else (oof, test)


def read_fold(path: Path, meta: dict):
    """Reader of kind "finetune-fold" (``path`` is the plan's fold folder)."""
    return _fold_logits(meta["plan"], meta["fold"])


def write_fold(path: Path, result: dict, meta: dict) -> None:
    """Writer of kind "finetune-fold": test logits, then (a trained fold) metrics and OOF
    logits, written last: their presence marks the fold finished. The seed weights are
    already there (written by the units)."""
    plan, k = meta["plan"], meta["fold"]
    write_parquet_atomic(plan.fold_test_path(k), _logit_frame(plan.test["id"], result["test"]))
    if result.get("val") is None:  # trained earlier: only this test file was scored
        return
    write_json_atomic(path / "metrics.json", result["metrics"])
    _, va = _fold_rows(plan, k)
    oof_path = path / "oof.parquet"
    write_parquet_atomic(oof_path, _logit_frame(plan.train["id"].to_numpy()[va], result["val"], fold=k))
    write_provenance(oof_path, key_config(plan.cfg), rows=len(va), fold=k, key=plan.key)


def _fold_items(plan: Plan, folds: list[int]) -> list:
    from pipeline.artifacts import Item

    return [Item(names={"model": slug(plan.cfg.model), "fold": k}, key=plan.key_parts,
                 meta={"plan": plan, "fold": k}) for k in folds]


def _compute_folds(ctx, plan: Plan, folds: list[int], retrain: bool, packing) -> Iterator[dict]:
    """Results of ``folds`` in order: a fold trained before (its OOF logits are there and
    ``retrain`` is off) scores this test file with its saved models; the others train
    every seed as units of the run's executor (on a Ray cluster with GPUs, K folds on K
    GPUs at once), each fold's result given as soon as its last seed is back."""
    import os

    from pipeline.executors.base import Unit

    trained = {k for k in folds if not retrain and _fold_oof(plan, k) is not None}
    to_train = [k for k in folds if k not in trained]
    for k in to_train:
        _fold_rows(plan, k)  # an empty fold fails before anything trains
    packed, pad_id = packing()
    seeds = iter(())
    if to_train:  # (an engine is started only for training)
        ex = ctx.executor
        device, gpus = ctx.unit_device()
        cpus = 1.0 if gpus else float(os.cpu_count() or 1)
        shared = ex.share(packed)
        units = [Unit(f"finetune fold {k} seed {seed}", (plan, k, seed, shared, pad_id, device),
                      cpus=cpus, gpus=gpus) for k in to_train for seed in plan.cfg.seeds]
        log.info("finetune: %d unit(s) to train on the %s engine: fold(s) %s x seed(s) %s",
                 len(units), ex.name, ", ".join(map(str, to_train)),
                 ", ".join(map(str, plan.cfg.seeds)))
        seeds = iter(ex.map(train_seed, units))
    for k in folds:
        if k in trained:
            log.info("finetune: fold %d trained earlier; scoring this test file with its saved "
                     "models", k)
            yield {"test": _score_with_saved(plan, k, *packed["test"], pad_id, ctx.device)}
        else:
            yield _fold_result(plan, k, [next(seeds) for _ in plan.cfg.seeds], device)


def _assemble(plan: Plan) -> tuple[pd.DataFrame, pd.DataFrame] | None:
    """All folds' logits -> oof.parquet and test-<hash>.parquet; None if a fold is missing."""
    oofs, tests = [], []
    for k in range(plan.n_folds):
        got = _fold_logits(plan, k)
        if got is None:
            return None
        oof, test = got
        oofs.append(oof)
        tests.append(test.set_index("id").loc[plan.test["id"], LOGITS].to_numpy())
    oof = pd.concat(oofs, ignore_index=True)
    ids = plan.train["id"]
    if len(oof) != len(ids) or set(oof["id"]) != set(ids):
        raise RuntimeError(f"finetune: OOF logits in {plan.model_dir} do not cover each training "
                           "id exactly once; delete that folder and rerun")
    oof = oof.set_index("id").loc[ids].reset_index()
    test = _logit_frame(plan.test["id"], np.mean(tests, axis=0))
    write_parquet_atomic(plan.oof_path, oof)
    write_provenance(plan.oof_path, key_config(plan.cfg), rows=len(oof), key=plan.key)
    write_parquet_atomic(plan.test_path, test)
    write_provenance(plan.test_path, key_config(plan.cfg), rows=len(test), key=plan.key,
                     test_hash=plan.test_hash)
    return oof, test


def run_stage(ctx) -> None:
    """Train the unfinished folds (those in finetune.folds), then write the logits."""
    from pipeline.models import hf_offline_if_no_hub

    hf_offline_if_no_hub()
    t0 = time.perf_counter()
    plan = make_plan(ctx)
    cfg, device = plan.cfg, ctx.device
    if cfg.load_in_4bit:
        from pipeline.heads import four_bit_problem

        problem = four_bit_problem(device)
        if problem:
            raise ConfigError(problem)
    plan.model_dir.mkdir(parents=True, exist_ok=True)
    _write_spec(plan)
    wanted = set(range(plan.n_folds)) if cfg.folds is None else set(cfg.folds)
    unknown = sorted(wanted - set(range(plan.n_folds)))
    if unknown:
        raise ConfigError(f"finetune.folds {unknown} out of range: folds are 0..{plan.n_folds - 1}")
    log.info("finetune: %s (%s), head %s%s, %d training rows%s, %d test rows, device %s, cache %s",
             cfg.model, "decoder LM" if plan.decoder else "encoder", cfg.head,
             " + LoRA" + (" (4-bit base)" if cfg.load_in_4bit else "") if cfg.lora else "", len(plan.train),
             "" if plan.full_coverage else f" (first {cfg.max_rows}: max_rows)", len(plan.test),
             device, plan.model_dir)
    state: dict = {}

    def packing() -> tuple[dict, int]:  # tokenized once, only if some fold is computed
        if not state:
            t_pack = time.perf_counter()
            tokenizer = load_tokenizer(cfg.model)
            pack = dict(tokenizer=tokenizer, max_length=cfg.max_length,
                        prompt_share=cfg.prompt_share, head_share=cfg.head_share,
                        decoder=plan.decoder)
            state["packed"] = {"train": encode_pairs(plan.train, **pack),
                               "test": encode_pairs(plan.test, **pack)}
            state["pad_id"] = specials_of(tokenizer, plan.decoder).pad
            log.info("finetune: packed %d train and %d test pairs (max_length %d) in %.1fs",
                     len(plan.train), len(plan.test), cfg.max_length, time.perf_counter() - t_pack)
        return state["packed"], state["pad_id"]

    from pipeline.artifacts import get_or_compute_many

    finished = {k for k in range(plan.n_folds) if _fold_oof(plan, k) is not None}
    for k in sorted(set(range(plan.n_folds)) - wanted - finished):
        log.info("finetune: fold %d not in finetune.folds, skipped", k)
    # --force retrains the folds asked for; a finished fold outside them only scores a
    # new test file with its saved models.
    for folds, retrain in ((sorted(wanted) if ctx.force else [], True),
                           (sorted((set(range(plan.n_folds)) - wanted) & finished if ctx.force
                                   else wanted | finished), False)):
        if not folds:
            continue
        items = _fold_items(plan, folds)

        def settled(i: int, obj, hit: bool, seconds: float, folds=folds) -> None:
            if hit:
                log.info("finetune: fold %d finished earlier (cached), skipped", folds[i])

        get_or_compute_many(
            ctx.catalog, "finetune-fold", items, force=retrain, on_result=settled,
            compute=lambda todo, folds=folds, retrain=retrain: _compute_folds(
                ctx, plan, [folds[i] for i in todo], retrain, packing))
    result = _assemble(plan)
    if result is None:
        finished = [k for k in range(plan.n_folds)
                    if (plan.fold_dir(k) / "oof.parquet").is_file()]
        log.warning("finetune: folds %s of %d finished; OOF logits are partial, so the stack "
                    "will not use this member until every fold is trained (rerun without "
                    "--folds to finish) [%.1fs]", finished, plan.n_folds, time.perf_counter() - t0)
        return
    oof, _ = result
    score = log_loss_of_logits(oof[LOGITS].to_numpy(), plan.train.set_index("id").loc[oof["id"], "label"].to_numpy())
    write_json_atomic(ctx.run_dir / "finetune" / "member.json", {
        "name": plan.name, "model_dir": str(plan.model_dir), "key": plan.key,
        "oof_logloss": score, "rows": len(oof), "full_coverage": plan.full_coverage,
        "folds": {k: read_json(plan.fold_dir(k) / "metrics.json").get("val_logloss")
                  for k in range(plan.n_folds) if (plan.fold_dir(k) / "metrics.json").is_file()},
    })
    log.info("finetune: OOF log loss %.4f over %d rows; logits in %s (%.1fs)", score, len(oof),
             plan.model_dir, time.perf_counter() - t0)


def member_for(ctx) -> FinetuneMember | None:
    """The finished fine-tuned member of the current config, or None (module docstring)."""
    if ctx.config.finetune.max_rows is not None and ctx.config.finetune.max_rows < len(ctx.dataset.train):
        log.info("finetune: finetune.max_rows=%d is below the %d training rows, so no member "
                 "covers every row", ctx.config.finetune.max_rows, len(ctx.dataset.train))
        return None
    try:
        plan = make_plan(ctx)
    except ConfigError as exc:
        log.warning("finetune: no member (%s)", exc)
        return None
    oof = _read_logits(plan.oof_path, len(plan.train), with_fold=True)
    test = _read_logits(plan.test_path, len(plan.test))
    if oof is None or test is None:
        model_dir = Path(plan.model_dir)
        others = sorted(d.name for d in model_dir.parent.glob(f"{model_dir.name.rsplit('-', 1)[0]}-*")
                        if d != model_dir and (d / Path(plan.oof_path).name).is_file())
        if others:
            # The user trained one, but under other settings: say so, it is not blended.
            log.warning("finetune: a fine-tuned %s exists for other settings (%s) but not for "
                        "this config's (%s), so none is blended; run --stage finetune with "
                        "this config, or use the settings it was trained with",
                        plan.name, ", ".join(others[:3]), model_dir.name)
        else:
            log.info("finetune: no finished logits for this config in %s (run --stage finetune "
                     "with every fold)", plan.model_dir)
        return None
    log.info("finetune: member %s read from %s", plan.name, plan.model_dir)
    return FinetuneMember(name=plan.name, oof=oof, test=test, model_dir=plan.model_dir)


def predict_logits(model_dir: str | Path, frame: pd.DataFrame, ctx) -> np.ndarray:
    """Logits float32 [len(frame), 3] of new pairs from the saved fold models in ``model_dir``.

    ``frame``: canonical frame (prompt, response_a, response_b). The mean over every
    finished fold's seed models, with swap TTA as at training time (finetune.json).
    """
    model_dir = Path(model_dir)
    meta_path = model_dir / "finetune.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path} not found: {model_dir} is not a finetune model "
                                "folder (run --stage finetune first)")
    meta = read_json(meta_path)
    spec = ModelSpec.from_dict(meta["spec"])
    weights = sorted(p for k in range(meta["n_folds"]) if (model_dir / f"fold{k}" / "oof.parquet").is_file()
                     for p in (model_dir / f"fold{k}").glob("seed*.pt"))
    if not weights:
        raise FileNotFoundError(f"{model_dir}: no finished fold models; run --stage finetune")
    device = ctx.device
    amp_dtype, _ = resolve_amp(meta.get("precision", "auto"), device)
    tokenizer = load_tokenizer(spec.base)
    pad_id = specials_of(tokenizer, meta["pack"].get("decoder", False)).pad
    fwd, swp = encode_pairs(frame, tokenizer, **meta["pack"])
    side = meta.get("padding_side", "right")
    batch = ctx.config.finetune.eval_batch_size
    total = np.zeros((len(frame), 3), dtype=np.float64)
    for path in weights:
        model = load_classifier(spec, path, device, base_dtype=amp_dtype, pad_token_id=pad_id)
        total += predict_pairs(model, fwd, swp, pad_id, device, batch, meta["swap_tta"], amp_dtype,
                               desc=f"{path.parent.name}/{path.stem}", padding_side=side)
        del model
    log.info("finetune: scored %d pairs with %d saved models from %s", len(frame), len(weights), model_dir)
    return (total / len(weights)).astype(np.float32)
