"""Text in one place: class labels, cleaning of lone surrogates, and turn joining.

Every consumer (data loading, text features, embedding, the fine-tune packer, outputs and
reports) uses these, so a conversation is joined one way and cleaned once, and the class
names are written once. Pure: no I/O, no config.
"""
from __future__ import annotations

import re
from typing import Iterable

# Column order of every probability array: A wins, B wins, tie.
CLASS_NAMES = ("a", "b", "tie")
# Default separator between the turns of one side of a conversation (embed.turn_sep).
TURN_SEP = "\n\n"

_SURROGATE = re.compile("[\ud800-\udfff]")


def clean_text(text: str) -> str:
    """``text`` with lone UTF-16 surrogates replaced by U+FFFD (valid pairs are joined);
    they break UTF-8 and Parquet, and about 1% of Kaggle rows hold one."""
    if not _SURROGATE.search(text):
        return text
    return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")


def join_turns(turns: Iterable[str | None], sep: str = TURN_SEP) -> str:
    """A conversation's turns as one string, in order; empty and None turns skipped."""
    return sep.join(t for t in turns if t)
