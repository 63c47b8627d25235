"""Random-weight models built from a transformers config: no download, no model hub.

For the tests (tiny decoders of each family go through the fine-tune stage on the CPU),
the benchmarks and ``bench/gpu_check.py`` (a ~1B-parameter decoder timed with LoRA).
A saved folder is an ordinary local model path: every model setting accepts it.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any

# Sizes of a small random decoder (a CPU step takes milliseconds).
TINY = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "intermediate_size": 64, "head_dim": 8}
# About 1.1B parameters in the Llama family (TinyLlama-1.1B's shape, 32k vocabulary).
ONE_B = {"hidden_size": 2048, "num_hidden_layers": 22, "num_attention_heads": 32,
         "num_key_value_heads": 4, "intermediate_size": 5632, "head_dim": 64}


def decoder_tokenizer(texts: list[str] | None = None, vocab_size: int = 400) -> Any:
    """A byte-level BPE tokenizer trained in milliseconds on ``texts`` (default: the demo
    data's), shaped like a decoder LM's: bos ``<s>`` and eos ``</s>``, no pad, cls or sep."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if texts is None:
        from pipeline.demo import DEMO_SEED, N_TRAIN, make_demo

        frame = make_demo(N_TRAIN, DEMO_SEED)
        texts = [str(t) for col in ("prompt", "response_a", "response_b") for t in frame[col]]
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                   unk_token="<unk>")


def decoder_config(arch: str, vocab_size: int, **sizes: Any) -> Any:
    """Config of a decoder LM of family ``arch`` (llama, gemma2, qwen2, mistral ...), of
    :data:`TINY` sizes unless ``sizes`` say otherwise; no pad token, like most decoders."""
    from transformers import AutoConfig

    dims = {**TINY, "max_position_embeddings": 4096, **sizes}
    return AutoConfig.for_model(arch, vocab_size=vocab_size, bos_token_id=1, eos_token_id=2,
                                pad_token_id=None, tie_word_embeddings=False, **dims)


def save_random_decoder(folder: str | Path, arch: str = "llama", tokenizer: Any = None,
                        seed: int = 0, dtype: Any = None, vocab_size: int | None = None,
                        device: str = "cpu", **sizes: Any) -> str:
    """Save a seeded random decoder LM (and ``tokenizer``, default :func:`decoder_tokenizer`)
    to ``folder``; returns the folder as a string. ``vocab_size`` (at least the
    tokenizer's) sizes the embedding like a real model's; ``dtype`` the saved weights;
    ``device`` where the random weights are drawn."""
    import torch
    from transformers import AutoModelForCausalLM

    tok = tokenizer if tokenizer is not None else decoder_tokenizer()
    torch.manual_seed(seed)
    # Room above the tokenizer's ids, as real models pad their vocabulary: a tokenizer
    # class a family maps to (Qwen2's) may add its own pad token when it is loaded.
    vocab = max(vocab_size or 0, (len(tok) // 64 + 2) * 64)
    config = decoder_config(arch, vocab, **sizes)
    with torch.device(device):  # a big model initialises much faster on a GPU
        model = AutoModelForCausalLM.from_config(config)
    if dtype is not None:
        model = model.to(dtype)
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)


def save_random_encoder(folder: str | Path, seed: int = 0) -> str:
    """Save a seeded 2-layer, 32-dim random BERT with the bundled MiniLM's tokenizer to
    ``folder`` (loads in milliseconds; usable as an embed or a fine-tune model)."""
    import torch
    from transformers import AutoTokenizer, BertConfig, BertModel

    from pipeline.models import resolve_model_path

    tok = AutoTokenizer.from_pretrained(resolve_model_path("all-MiniLM-L6-v2"))
    torch.manual_seed(seed)
    cfg = BertConfig(vocab_size=tok.vocab_size, hidden_size=32, num_hidden_layers=2,
                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=128)
    BertModel(cfg).save_pretrained(folder)
    tok.save_pretrained(folder)
    return str(folder)
