"""Pair classifiers: a transformer backbone and a 3-way head (A, B, tie).

``build_classifier(spec)`` returns a :class:`PairClassifier` whose
``forward(input_ids, attention_mask)`` gives logits ``[batch, 3]``. Heads (``spec.head``):

- ``auto``: the model's own classification head (``AutoModelForSequenceClassification``,
  ``num_labels=3``; first-token pooler for BERT-likes, last-token for decoder LMs).
- ``mean``: ``AutoModel`` + mean of the token states over the attention mask + dropout + linear.
- ``last``: ``AutoModel`` + the state of the last real token (by the attention mask, so
  right or left padding give the same logits) + dropout + linear: the usual decoder pooling.
- ``cnn``: ``AutoModel`` + a CNN over the token states: spatial dropout (whole channels),
  two stacked 1D convolutions, masked max pooling and masked global average pooling
  concatenated, then two fully connected layers.

LoRA (``spec.lora``) wraps the backbone with peft adapters; the backbone weights are
frozen, the adapters and the head train (for ``auto`` the model's classifier is listed in
``modules_to_save``). Decoders (``spec.decoder``) get adapters on every linear layer
unless ``lora_target_modules`` names some, and position ids counted from the first real
token, so left padding changes nothing. ``spec.load_in_4bit`` loads the frozen base in
4-bit NF4 through bitsandbytes (QLoRA; CUDA only). Saved weights (:func:`save_weights`) are the whole state dict for
full fine-tuning and only the trainable tensors (adapters + head) for LoRA;
:func:`load_classifier` rebuilds the architecture from the spec and loads them.
"""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

log = logging.getLogger(__name__)

HEADS = ("auto", "mean", "last", "cnn")
NUM_LABELS = 3
# Names under which transformers' sequence classifiers keep their new, untrained layers.
_CLASSIFIER_MODULES = ("classifier", "score", "pooler")


@dataclass(frozen=True)
class ModelSpec:
    """Everything that fixes a classifier's architecture (saved beside its weights)."""

    base: str  # model name or path of the backbone (resolved by pipeline.models)
    head: str = "mean"
    dropout: float = 0.1
    cnn_channels: int = 256
    cnn_kernel: int = 3
    lora: bool = False
    lora_r: int = 16
    lora_alpha: int = 32
    lora_dropout: float = 0.05
    # None = peft's default target modules for the architecture (all linear layers for a
    # decoder or an architecture peft does not know), else these module names.
    lora_target_modules: tuple[str, ...] | None = None
    # A decoder-only LM (pipeline.models.is_decoder_model): position ids from the mask.
    decoder: bool = False
    # Frozen base weights in 4-bit NF4 (bitsandbytes, CUDA only; needs lora).
    load_in_4bit: bool = False

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if d["lora_target_modules"] is not None:
            d["lora_target_modules"] = list(d["lora_target_modules"])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelSpec":
        d = {k: v for k, v in d.items() if k in cls.__dataclass_fields__}
        if d.get("lora_target_modules") is not None:
            d["lora_target_modules"] = tuple(d["lora_target_modules"])
        return cls(**d)


def masked_mean(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``states`` [B, T, H] over positions where ``mask`` [B, T] is 1 -> [B, H]."""
    keep = mask.unsqueeze(-1).bool()
    # where, not a product: a padded position's state may be inf / nan (fully masked rows).
    total = torch.where(keep, states, torch.zeros((), dtype=states.dtype, device=states.device)).sum(1)
    return total / keep.sum(1).clamp(min=1).to(states.dtype)


def last_real(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """State of the last position where ``mask`` [B, T] is 1 -> [B, H] (either padding side)."""
    positions = torch.arange(mask.shape[1], device=mask.device)
    last = (mask.bool() * positions).argmax(dim=1)
    return states[torch.arange(states.shape[0], device=states.device), last]


def position_ids_of(mask: torch.Tensor) -> torch.Tensor:
    """Position of each token counted from the sequence's first real token (0 on padding)."""
    return (mask.long().cumsum(dim=1) - 1).clamp(min=0)


class MeanHead(nn.Module):
    """Masked mean pooling + dropout + linear -> [B, 3]."""

    pool = staticmethod(masked_mean)

    def __init__(self, hidden: int, dropout: float):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden, NUM_LABELS)

    def forward(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.out(self.dropout(self.pool(states, mask)))


class LastHead(MeanHead):
    """Last real token's state + dropout + linear -> [B, 3]."""

    pool = staticmethod(last_real)


class CNNHead(nn.Module):
    """Spatial dropout, 2 x (Conv1d + ReLU), [masked max ; masked mean] pooling, 2 FC -> [B, 3]."""

    def __init__(self, hidden: int, channels: int, kernel: int, dropout: float):
        super().__init__()
        # Dropout1d on [B, H, T] zeroes whole hidden channels across all positions.
        self.spatial_dropout = nn.Dropout1d(dropout)
        pad = kernel // 2
        self.conv1 = nn.Conv1d(hidden, channels, kernel, padding=pad)
        self.conv2 = nn.Conv1d(channels, channels, kernel, padding=pad)
        self.act = nn.ReLU()
        self.fc = nn.Sequential(nn.Linear(2 * channels, channels), nn.ReLU(), nn.Dropout(dropout),
                                nn.Linear(channels, NUM_LABELS))

    def forward(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        keep = mask.unsqueeze(1).bool()  # [B, 1, T]
        # Padded positions are zeroed before each convolution so that, seen through the
        # kernel, they look like the convolution's own zero padding: the logits do not
        # depend on what (or how much) padding follows a sequence.
        x = self.spatial_dropout(states.transpose(1, 2)) * keep
        x = self.act(self.conv1(x)) * keep
        x = self.act(self.conv2(x))  # [B, C, T]; odd kernels keep T
        neg = torch.finfo(x.dtype).min
        max_pool = x.masked_fill(~keep, neg).amax(dim=2)
        mean_pool = masked_mean(x.transpose(1, 2), mask)
        return self.fc(torch.cat([max_pool, mean_pool], dim=1))


class PairClassifier(nn.Module):
    """Backbone + head; ``forward(input_ids, attention_mask) -> logits [B, 3]``."""

    def __init__(self, spec: ModelSpec, backbone: nn.Module, head: nn.Module | None):
        super().__init__()
        self.spec = spec
        self.backbone = backbone
        self.head = head

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        extra = {"position_ids": position_ids_of(attention_mask)} if self.spec.decoder else {}
        out = self.backbone(input_ids=input_ids, attention_mask=attention_mask, **extra)
        if self.head is None:
            return out.logits
        states = out.last_hidden_state
        if self.head_dtype is not None and states.dtype != self.head_dtype:
            states = states.to(self.head_dtype)
        return self.head(states, attention_mask)

    @property
    def head_dtype(self) -> torch.dtype | None:
        if self.head is None:
            return None
        return next(self.head.parameters()).dtype

    def to(self, *args, **kwargs):  # noqa: D102 - nn.Module.to, except a 4-bit base stays put
        if self.spec.load_in_4bit:
            if self.head is not None:
                self.head.to(*args, **kwargs)
            return self
        return super().to(*args, **kwargs)

    def enable_gradient_checkpointing(self) -> None:
        """Recompute activations in the backward pass (less memory, ~30% slower)."""
        model = self.backbone
        base = model.get_base_model() if hasattr(model, "get_base_model") else model
        enable = getattr(base, "activation_checkpointing_enable", None) or base.gradient_checkpointing_enable
        if not getattr(base, "supports_gradient_checkpointing", False):
            raise ValueError(f"{type(base).__name__} does not support gradient checkpointing; "
                             "set finetune.gradient_checkpointing: false")
        # Non-reentrant checkpointing works with frozen inputs (LoRA) without extra hooks.
        enable({"use_reentrant": False})

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """What must be saved: all tensors, or only the trainable ones under LoRA."""
        state = self.state_dict()
        if not self.spec.lora:
            return state
        trainable = {n for n, p in self.named_parameters() if p.requires_grad}
        return {k: v for k, v in state.items() if k in trainable}


def _dtype_kwargs(dtype: torch.dtype | None) -> dict[str, Any]:
    """``dtype=`` for transformers >= 4.56, ``torch_dtype=`` before."""
    if dtype is None:
        return {}
    import transformers
    major, minor = (int(x) for x in transformers.__version__.split(".")[:2])
    return {"dtype": dtype} if (major, minor) >= (4, 56) else {"torch_dtype": dtype}


def four_bit_problem(device: str) -> str | None:
    """Why 4-bit base weights cannot be used here, or None when they can."""
    if not device.startswith("cuda"):
        return (f"finetune.load_in_4bit needs a CUDA GPU (bitsandbytes 4-bit kernels); the device "
                f"is {device}: set finetune.load_in_4bit: false (bf16 LoRA) or run on a GPU")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        return "finetune.load_in_4bit needs bitsandbytes: pip install bitsandbytes"
    return None


def _four_bit_kwargs(spec: ModelSpec, compute_dtype: torch.dtype | None) -> dict[str, Any]:
    """``from_pretrained`` arguments of a 4-bit NF4 base (QLoRA) on the current CUDA device."""
    problem = four_bit_problem("cuda" if torch.cuda.is_available() else "cpu")
    if problem:
        raise ValueError(problem)
    if not spec.lora:
        raise ValueError("finetune.load_in_4bit needs LoRA (4-bit weights cannot be trained): "
                         "set finetune.lora: true")
    from transformers import BitsAndBytesConfig

    quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4",
                               bnb_4bit_use_double_quant=True,
                               bnb_4bit_compute_dtype=compute_dtype or torch.bfloat16)
    return {"quantization_config": quant, "device_map": {"": torch.cuda.current_device()}}


def _lora_wrap(backbone: nn.Module, spec: ModelSpec) -> nn.Module:
    from peft import LoraConfig, get_peft_model
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as DEFAULTS

    model_type = getattr(getattr(backbone, "config", None), "model_type", None)
    if spec.lora_target_modules is not None:
        targets: Any = list(spec.lora_target_modules)
        if targets == ["all-linear"]:
            targets = "all-linear"
    elif spec.decoder:
        targets = "all-linear"  # what wins on this task for decoders (LoRA on every projection)
    elif model_type in DEFAULTS:
        targets = None  # peft picks its default for this architecture (e.g. bert: query, value)
    else:
        targets = "all-linear"
    names = {n.split(".")[-1] for n, _ in backbone.named_modules()}
    modules_to_save = [m for m in _CLASSIFIER_MODULES if m in names] if spec.head == "auto" else None
    if spec.load_in_4bit:
        from peft import prepare_model_for_kbit_training

        backbone = prepare_model_for_kbit_training(backbone, use_gradient_checkpointing=False)
    config = LoraConfig(r=spec.lora_r, lora_alpha=spec.lora_alpha, lora_dropout=spec.lora_dropout,
                        target_modules=targets, modules_to_save=modules_to_save,
                        task_type="SEQ_CLS" if spec.head == "auto" else None)
    wrapped = get_peft_model(backbone, config)
    n_train = sum(p.numel() for p in wrapped.parameters() if p.requires_grad)
    n_all = sum(p.numel() for p in wrapped.parameters())
    log.info("LoRA r=%d on %s: %d of %d backbone parameters trainable", spec.lora_r,
             targets or f"peft defaults for {model_type}", n_train, n_all)
    return wrapped


def build_classifier(spec: ModelSpec, pretrained: bool = True,
                     base_dtype: torch.dtype | None = None, pad_token_id: int | None = None) -> PairClassifier:
    """A :class:`PairClassifier` for ``spec``.

    ``pretrained=False`` builds the architecture from the backbone's config only (weights
    then come from :func:`load_classifier`; LoRA always loads the pretrained base since
    only adapters are saved). ``base_dtype`` loads frozen LoRA base weights in half
    precision; trainable tensors stay float32.
    """
    from transformers import AutoConfig, AutoModel, AutoModelForSequenceClassification

    if spec.head not in HEADS:
        raise ValueError(f"finetune.head={spec.head!r}: expected one of {', '.join(HEADS)}")
    from pipeline.models import quiet_loading, resolve_model_path

    base = resolve_model_path(spec.base)
    quiet_loading()
    pretrained = pretrained or spec.lora
    # Trained weights stay float32 whatever the checkpoint holds (a bf16 / fp16 file would
    # otherwise load as such and train without fp32 master weights); only a frozen LoRA
    # base is loaded in half precision.
    dtype_kw = _dtype_kwargs((base_dtype or torch.float32) if spec.lora else torch.float32)
    if spec.load_in_4bit:
        dtype_kw.update(_four_bit_kwargs(spec, base_dtype))
    if spec.head == "auto":
        config = AutoConfig.from_pretrained(base, num_labels=NUM_LABELS)
        if getattr(config, "pad_token_id", None) is None and pad_token_id is not None:
            config.pad_token_id = pad_token_id  # decoder LMs find the last token through it
        cls = AutoModelForSequenceClassification
        backbone = (cls.from_pretrained(base, config=config, **dtype_kw) if pretrained
                    else cls.from_config(config))
        head = None
    else:
        backbone = (AutoModel.from_pretrained(base, **dtype_kw) if pretrained
                    else AutoModel.from_config(AutoConfig.from_pretrained(base)))
        hidden = int(backbone.config.hidden_size)
        if spec.head == "mean":
            head: nn.Module = MeanHead(hidden, spec.dropout)
        elif spec.head == "last":
            head = LastHead(hidden, spec.dropout)
        else:
            head = CNNHead(hidden, spec.cnn_channels, spec.cnn_kernel, spec.dropout)
    if spec.lora:
        backbone = _lora_wrap(backbone, spec)
    return PairClassifier(spec, backbone, head)


def save_weights(model: PairClassifier, path: str | Path) -> None:
    """Save the trainable state (see the module docstring) to ``path`` atomically."""
    from pipeline.catalog import atomic_path

    state = {k: v.detach().to("cpu").contiguous() for k, v in model.trainable_state_dict().items()}
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def load_classifier(spec: ModelSpec, path: str | Path, device: str = "cpu",
                    base_dtype: torch.dtype | None = None, pad_token_id: int | None = None) -> PairClassifier:
    """Rebuild the classifier of ``spec`` and load weights saved by :func:`save_weights`."""
    model = build_classifier(spec, pretrained=False, base_dtype=base_dtype, pad_token_id=pad_token_id)
    state = torch.load(path, map_location="cpu", weights_only=True)
    result = model.load_state_dict(state, strict=not spec.lora)
    if result.unexpected_keys:
        raise ValueError(f"{path}: weights do not match the model ({len(result.unexpected_keys)} "
                         f"unexpected, e.g. {result.unexpected_keys[:3]}); was it saved by another config?")
    return model.to(device).eval()
