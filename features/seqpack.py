"""Pure input building for the fine-tuned classifier: (prompt, A, B) -> one token sequence.

Layout of one sequence for an encoder (special tokens are the tokenizer's own)::

    [CLS] prompt [SEP] response A [SEP] response B [SEP]

``[CLS]`` is the tokenizer's cls token, else its bos token, else nothing; ``[SEP]`` is its
sep token, else its eos token, else the tokens of a blank line. A decoder LM (no [CLS] /
[SEP] to lean on; pooled from its last real token) gets readable markers instead, and the
sequence ends on the question, so the last token's state is the one that decides::

    <bos>## Prompt
    prompt

    ## Response A
    response A

    ## Response B
    response B

    ## Which response is better: A, B, or a tie?

Multi-turn conversations are joined in order, each turn prefixed with ``[turn k]`` when
there is more than one.

The ``max_length`` budget is shared out by :func:`allocate_budget`: the prompt gets
``prompt_share`` of it (more when the responses do not need theirs), the rest is split
evenly between A and B (one short response leaves its unused budget to the other). The
split is symmetric in A and B, so packing ``(prompt, B, A)`` gives exactly the sequence of
the position-swapped pair. A text longer than its budget keeps its first
``round(budget * head_share)`` tokens and its last tokens for the remainder
(``head_share=0`` keeps only the end: the latest turns of a long conversation).

No disk, no config, no globals: the tokenizer is passed in.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

import pandas as pd

TURN_MARKER = "[turn {k}] "
# Characters kept per part before tokenisation, per token of budget: a cheap guard against
# megabyte cells that keeps the start and the end (the token-level cut is the real one).
CHARS_PER_TOKEN_CAP = 12


# Decoder template: text before the prompt, after the prompt, after A, after B.
DECODER_MARKERS = ("## Prompt\n", "\n\n## Response A\n", "\n\n## Response B\n",
                   "\n\n## Which response is better: A, B, or a tie?")


@dataclass(frozen=True)
class Specials:
    """Token ids framing a packed sequence: ``cls`` prompt ``joints[0]`` A ``joints[1]`` B
    ``joints[2]``; without ``joints`` each of the three is ``sep``."""

    cls: tuple[int, ...]
    sep: tuple[int, ...]
    pad: int
    joints: tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]] | None = None

    @property
    def after(self) -> tuple[tuple[int, ...], tuple[int, ...], tuple[int, ...]]:
        """The ids after the prompt, after A and after B."""
        return self.joints if self.joints is not None else (self.sep, self.sep, self.sep)

    @property
    def n_tokens(self) -> int:
        """Framing tokens in one sequence: cls + what follows each of the three parts."""
        return len(self.cls) + sum(len(j) for j in self.after)


def pad_id_of(tokenizer: Any) -> int:
    """The id to pad with: the pad token, else eos (usual for decoder LMs), else sep, unk, 0."""
    for name in ("pad_token_id", "eos_token_id", "sep_token_id", "unk_token_id"):
        value = getattr(tokenizer, name, None)
        if value is not None:
            return int(value)
    return 0


def specials_of(tokenizer: Any, decoder: bool = False) -> Specials:
    """The framing ids of a Hugging Face tokenizer (see the module docstring).

    ``decoder``: the readable-marker template of a decoder LM (bos first, when the
    tokenizer has one) instead of cls / sep.
    """
    if decoder:
        def ids(text: str) -> tuple[int, ...]:
            return tuple(int(i) for i in tokenizer(text, add_special_tokens=False)["input_ids"])

        bos = () if tokenizer.bos_token_id is None else (int(tokenizer.bos_token_id),)
        head, *joints = (ids(m) for m in DECODER_MARKERS)
        eos = tokenizer.eos_token_id
        return Specials(cls=bos + head, sep=() if eos is None else (int(eos),),
                        pad=pad_id_of(tokenizer), joints=tuple(joints))
    cls_id = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    sep_id = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    if sep_id is not None:
        sep: tuple[int, ...] = (int(sep_id),)
    else:
        sep = tuple(tokenizer("\n\n", add_special_tokens=False)["input_ids"])
    pad_id = tokenizer.pad_token_id
    if pad_id is None:
        pad_id = sep_id if sep_id is not None else 0
    return Specials(cls=() if cls_id is None else (int(cls_id),), sep=sep, pad=int(pad_id))


def join_conversation(turns: Sequence[str]) -> str:
    """Turns of one side of a conversation as one text, in order.

    One turn -> the turn itself; several -> each prefixed with ``[turn k]`` (k from 1) and
    joined by blank lines, so the model can tell where a turn starts.
    """
    turns = [t if t is not None else "" for t in turns]
    if len(turns) <= 1:
        return turns[0] if turns else ""
    return "\n\n".join(TURN_MARKER.format(k=k) + t for k, t in enumerate(turns, start=1))


def head_tail_chars(text: str, max_chars: int, head_share: float) -> str:
    """``text`` cut to ``max_chars`` characters keeping its start and end (no-op if short)."""
    if len(text) <= max_chars:
        return text
    head = int(round(max_chars * head_share))
    tail = max_chars - head
    return text[:head] + " ... " + (text[-tail:] if tail > 0 else "")


def head_tail(ids: Sequence[int], budget: int, head_share: float) -> list[int]:
    """At most ``budget`` ids: all of them if they fit, else the first
    ``round(budget * head_share)`` and the last ``budget - that``."""
    ids = list(ids)
    if budget <= 0:
        return []
    if len(ids) <= budget:
        return ids
    head = min(budget, max(0, int(round(budget * head_share))))
    tail = budget - head
    return ids[:head] + (ids[len(ids) - tail:] if tail > 0 else [])


def _split_two(len_a: int, len_b: int, budget: int) -> tuple[int, int]:
    """Budgets of A and B: even halves, a short one's leftover to the other; symmetric."""
    half = budget // 2
    if len_a + len_b <= budget:
        return len_a, len_b
    if len_a <= half:
        return len_a, min(len_b, budget - len_a)
    if len_b <= half:
        return min(len_a, budget - len_b), len_b
    return half, half


def allocate_budget(len_p: int, len_a: int, len_b: int, total: int,
                    prompt_share: float) -> tuple[int, int, int]:
    """Token budgets (prompt, a, b) for texts of these lengths in ``total`` tokens.

    Returns: each budget <= its text's length, their sum <= total; everything kept when it
    fits; the prompt gets ``floor(total * prompt_share)`` or more when the responses need
    less than the rest; swapping ``len_a`` and ``len_b`` swaps the answer.
    """
    if total <= 0:
        return 0, 0, 0
    p_share = int(math.floor(total * prompt_share))
    p = min(len_p, max(p_share, total - (len_a + len_b)))
    a, b = _split_two(len_a, len_b, total - p)
    return p, a, b


def pack_ids(p_ids: Sequence[int], a_ids: Sequence[int], b_ids: Sequence[int],
             specials: Specials, max_length: int, prompt_share: float,
             head_share: float) -> list[int]:
    """One packed sequence (list of at most ``max_length`` ids) from the three parts' ids."""
    room = max_length - specials.n_tokens
    if room < 3:
        raise ValueError(f"finetune.max_length={max_length} leaves no room for text after "
                         f"{specials.n_tokens} framing tokens (special tokens, markers); use at least {specials.n_tokens + 3}")
    bp, ba, bb = allocate_budget(len(p_ids), len(a_ids), len(b_ids), room, prompt_share)
    after_p, after_a, after_b = (list(j) for j in specials.after)
    return (list(specials.cls) + head_tail(p_ids, bp, head_share) + after_p
            + head_tail(a_ids, ba, head_share) + after_a + head_tail(b_ids, bb, head_share) + after_b)


def _tokenize(tokenizer: Any, texts: list[str]) -> list[list[int]]:
    if not texts:
        return []
    # verbose=False: we cut long texts ourselves, so the "longer than the model" warning is noise.
    return list(tokenizer(texts, add_special_tokens=False, truncation=False,
                          verbose=False)["input_ids"])


def encode_pairs(frame: pd.DataFrame, tokenizer: Any, max_length: int, prompt_share: float,
                 head_share: float, decoder: bool = False) -> tuple[list[list[int]], list[list[int]]]:
    """Packed token ids of every pair, in both orders.

    ``frame``: the canonical frame (prompt, response_a, response_b as lists of turns);
    ``decoder``: pack with the decoder template (module docstring).
    Returns: (forward, swapped), each a list of ``len(frame)`` id lists; ``forward[i]``
    packs (prompt, A, B) and ``swapped[i]`` packs (prompt, B, A) of row i. The frame is
    not modified.
    """
    if not 0.0 <= prompt_share <= 1.0 or not 0.0 <= head_share <= 1.0:
        raise ValueError(f"prompt_share={prompt_share} and head_share={head_share} must be in [0, 1]")
    specials = specials_of(tokenizer, decoder)
    cap = max(64, CHARS_PER_TOKEN_CAP * max_length)
    parts = {}
    for col in ("prompt", "response_a", "response_b"):
        texts = [head_tail_chars(join_conversation(list(t)), cap, head_share) for t in frame[col]]
        parts[col] = _tokenize(tokenizer, texts)
    forward, swapped = [], []
    for p, a, b in zip(parts["prompt"], parts["response_a"], parts["response_b"]):
        forward.append(pack_ids(p, a, b, specials, max_length, prompt_share, head_share))
        swapped.append(pack_ids(p, b, a, specials, max_length, prompt_share, head_share))
    return forward, swapped
