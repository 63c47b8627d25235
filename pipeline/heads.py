"""Pair classifiers: a transformer backbone and a 3-way head (A, B, tie).

``build_classifier(spec)`` returns a :class:`PairClassifier` whose
``forward(input_ids, attention_mask)`` gives logits ``[batch, 3]``. Heads (``spec.head``):

- ``auto``: the model's own classification head (``AutoModelForSequenceClassification``,
  ``num_labels=3``; first-token pooler for BERT-likes, last-token for decoder LMs).
- ``mean``: ``AutoModel`` + mean of the token states over the attention mask + dropout + linear.
- ``cnn``: ``AutoModel`` + a CNN over the token states: spatial dropout (whole channels),
  two stacked 1D convolutions, masked max pooling and masked global average pooling
  concatenated, then two fully connected layers.

LoRA (``spec.lora``) wraps the backbone with peft adapters; the backbone weights are
frozen, the adapters and the head train (for ``auto`` the model's classifier is listed in
``modules_to_save``). Saved weights (:func:`save_weights`) are the whole state dict for
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

HEADS = ("auto", "mean", "cnn")
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
    # None = peft's default target modules for the architecture, else all linear layers.
    lora_target_modules: tuple[str, ...] | None = None

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if d["lora_target_modules"] is not None:
            d["lora_target_modules"] = list(d["lora_target_modules"])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "ModelSpec":
        d = dict(d)
        if d.get("lora_target_modules") is not None:
            d["lora_target_modules"] = tuple(d["lora_target_modules"])
        return cls(**d)


def masked_mean(states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Mean of ``states`` [B, T, H] over positions where ``mask`` [B, T] is 1 -> [B, H]."""
    m = mask.unsqueeze(-1).to(states.dtype)
    return (states * m).sum(1) / m.sum(1).clamp(min=1.0)


class MeanHead(nn.Module):
    """Masked mean pooling + dropout + linear -> [B, 3]."""

    def __init__(self, hidden: int, dropout: float):
        super().__init__()
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden, NUM_LABELS)

    def forward(self, states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return self.out(self.dropout(masked_mean(states, mask)))


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
        if self.head is None:
            return self.backbone(input_ids=input_ids, attention_mask=attention_mask).logits
        states = self.backbone(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
        return self.head(states, attention_mask)

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


def _lora_wrap(backbone: nn.Module, spec: ModelSpec) -> nn.Module:
    from peft import LoraConfig, get_peft_model
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as DEFAULTS

    model_type = getattr(getattr(backbone, "config", None), "model_type", None)
    if spec.lora_target_modules is not None:
        targets: Any = list(spec.lora_target_modules)
    elif model_type in DEFAULTS:
        targets = None  # peft picks its default for this architecture (e.g. bert: query, value)
    else:
        targets = "all-linear"
    names = {n.split(".")[-1] for n, _ in backbone.named_modules()}
    modules_to_save = [m for m in _CLASSIFIER_MODULES if m in names] if spec.head == "auto" else None
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
    from pipeline.models import resolve_model_path

    base = resolve_model_path(spec.base)
    pretrained = pretrained or spec.lora
    dtype_kw = _dtype_kwargs(base_dtype if spec.lora else None)
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
        head = (MeanHead(hidden, spec.dropout) if spec.head == "mean"
                else CNNHead(hidden, spec.cnn_channels, spec.cnn_kernel, spec.dropout))
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
