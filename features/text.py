"""Shared preparation of the canonical frame's texts for the feature groups.

A ``TextView`` joins each conversation's turns once and caches what several groups need
(Arrow-backed string columns, normalised word lists), so computing all groups does each
expensive step once. It only reads the frame it is given.
"""
from __future__ import annotations

import re
from functools import cached_property

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

ROLES_TEXT = {"p": "prompt", "a": "response_a", "b": "response_b"}
TURN_SEP = "\n\n"
_SURROGATE = re.compile("[\ud800-\udfff]")
# Punctuation (ASCII and typographic quotes, dashes, ellipsis) becomes a space, so
# "Python." and "python" are one word. RE2 syntax (Arrow): \x{...} is a code point.
_PUNCT = r"[[:punct:]\x{2010}-\x{201F}\x{2026}]+"


def count(arr: pa.Array, pattern: str, regex: bool = True) -> np.ndarray:
    """Matches of ``pattern`` (RE2 regex, or a literal) in each text -> float64 [n]."""
    fn = pc.count_substring_regex if regex else pc.count_substring
    return np.asarray(fn(arr, pattern).to_numpy(zero_copy_only=False), dtype=np.float64)


def lengths(arr: pa.Array) -> np.ndarray:
    """Characters (code points) of each text -> float64 [n]."""
    return np.asarray(pc.utf8_length(arr).to_numpy(zero_copy_only=False), dtype=np.float64)


def _turns(cell: object) -> list[str]:
    """A cell of the canonical frame -> its turns (None / NaN / a plain string tolerated)."""
    if cell is None:
        return []
    if isinstance(cell, str):
        return [cell]
    if isinstance(cell, float) and np.isnan(cell):
        return []
    return ["" if t is None else str(t) for t in cell]


def _clean(text: str) -> str:
    if _SURROGATE.search(text):
        return text.encode("utf-16", "surrogatepass").decode("utf-16", "replace")
    return text


class TextView:
    """Read-only views of one canonical frame (columns prompt, response_a, response_b).

    Attributes (all aligned with the frame's rows, by position):
        n                       number of rows
        text[r]                 Arrow large_string array of the joined turns, r in "p", "a", "b"
        stripped[r]             the same with surrounding whitespace removed
        turns[r], null_turns[r] float arrays: number of turns, number of empty turns
        words[r]                list of lists of lower-cased words (punctuation removed)
        word_sets[r]            the same as sets (shared by structure and overlap)
    """

    def __init__(self, frame: pd.DataFrame):
        missing = [c for c in ROLES_TEXT.values() if c not in frame.columns]
        if missing:
            raise ValueError(f"feature input lacks column(s) {missing}: expected the canonical "
                             "frame of pipeline.data (id, prompt, response_a, response_b)")
        self.n = len(frame)
        self.text: dict[str, pa.Array] = {}
        self.turns: dict[str, np.ndarray] = {}
        self.null_turns: dict[str, np.ndarray] = {}
        for role, col in ROLES_TEXT.items():
            cells = [_turns(c) for c in frame[col].tolist()]
            joined = [_clean(TURN_SEP.join(t for t in turns if t)) for turns in cells]
            self.text[role] = pa.array(joined, type=pa.large_string())
            self.turns[role] = np.array([len(t) for t in cells], dtype=np.float64)
            self.null_turns[role] = np.array([sum(1 for s in t if not s.strip()) for t in cells],
                                             dtype=np.float64)

    @cached_property
    def stripped(self) -> dict[str, pa.Array]:
        """Texts without leading and trailing whitespace."""
        return {role: pc.utf8_trim_whitespace(arr) for role, arr in self.text.items()}

    @cached_property
    def words(self) -> dict[str, list[list[str]]]:
        """Lower-cased word lists per role (punctuation stripped)."""
        out = {}
        for role, arr in self.text.items():
            norm = pc.replace_substring_regex(pc.utf8_lower(arr), _PUNCT, " ")
            out[role] = [t.split() for t in norm.to_pylist()]
        return out

    @cached_property
    def word_sets(self) -> dict[str, list[set[str]]]:
        """Sets of the lower-cased words per role."""
        return {role: [set(w) for w in words] for role, words in self.words.items()}
