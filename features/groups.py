"""The text feature groups in one place: name -> function and code version.

Embedding groups (``emb-<slug>``, one per model) live in features.embedding because
they take arrays rather than text.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import pandas as pd

from features import length, overlap, structure
from features.length import TokenCounter
from features.text import TextView


@dataclass(frozen=True)
class TextGroup:
    name: str
    version: int
    # (view, ids, count_tokens) -> feature frame; groups that need no tokenizer ignore it.
    compute: Callable[[TextView, Sequence[str], TokenCounter | None], pd.DataFrame]
    uses_tokenizer: bool


TEXT_GROUPS: dict[str, TextGroup] = {
    g.name: g
    for g in (
        TextGroup(length.GROUP, length.VERSION,
                  lambda view, ids, tok: length.length_features(view, ids, tok), True),
        TextGroup(structure.GROUP, structure.VERSION,
                  lambda view, ids, tok: structure.structure_features(view, ids), False),
        TextGroup(overlap.GROUP, overlap.VERSION,
                  lambda view, ids, tok: overlap.overlap_features(view, ids), False),
    )
}


def text_features(frame: pd.DataFrame, groups: Sequence[str] = tuple(TEXT_GROUPS),
                  count_tokens: TokenCounter | None = None) -> pd.DataFrame:
    """All requested text groups of a canonical frame, side by side.

    Args:
        frame: canonical frame (id, prompt, response_a, response_b as lists of turns).
        groups: names from TEXT_GROUPS.
        count_tokens: texts -> token counts (for ``length``); None leaves tokens out.
    Returns: id + float32 feature columns, rows in the frame's order. ``frame`` is not
    modified.
    """
    unknown = [g for g in groups if g not in TEXT_GROUPS]
    if unknown:
        raise ValueError(f"unknown text feature group(s) {unknown}; valid: {list(TEXT_GROUPS)}")
    view = TextView(frame)
    ids = frame["id"].astype(str).tolist()
    parts = [TEXT_GROUPS[g].compute(view, ids, count_tokens) for g in groups]
    return pd.concat([parts[0]] + [p.drop(columns="id") for p in parts[1:]], axis=1)
