"""Length features: characters, words, tokens, lines, paragraphs, sentences, turns.

Per text (prompt -> role ``p``; responses -> ``a``/``b`` plus diff, lr, sum, min, max,
absdiff). Everything is a count over whole columns (Arrow regex), so an empty or null
text gives 0 everywhere; ``lr`` is log1p(a) - log1p(b), finite for counts >= 0.
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from features.text import TextView, count, lengths
from features.views import feature_frame, pair_views

GROUP = "length"
# Bump when the output of this module changes for the same input (invalidates the cache).
VERSION = 1

TokenCounter = Callable[[Sequence[str]], np.ndarray]

# RE2 patterns (Arrow): a sentence ends at . ! ? (runs count once) followed by space or end.
_SENTENCE_END = r"[.!?]+(\s|$)"
_PARAGRAPH_BREAK = r"\n[ \t]*\n\s*"


def _counts(arr: pa.Array, stripped: pa.Array) -> dict[str, np.ndarray]:
    nonempty = lengths(stripped) > 0
    # Text that does not end in punctuation still holds one (last) sentence.
    ends = np.asarray(pc.match_substring_regex(stripped, r"[.!?]$").to_numpy(zero_copy_only=False),
                      dtype=bool)
    return {
        "chars": lengths(arr),
        "words": count(arr, r"\S+"),
        "lines": np.where(nonempty, count(stripped, "\n", regex=False) + 1, 0.0),
        "paragraphs": np.where(nonempty, count(stripped, _PARAGRAPH_BREAK) + 1, 0.0),
        "sentences": count(stripped, _SENTENCE_END) + (nonempty & ~ends),
    }


def length_features(view: TextView, ids: Sequence[str],
                    count_tokens: TokenCounter | None) -> pd.DataFrame:
    """Length features of every row.

    Args:
        view: TextView of the canonical frame.
        ids: the frame's ids, in row order.
        count_tokens: texts -> token counts [n] (the embedding model's tokenizer, no
            truncation); None leaves out the ``tokens`` feature.
    Returns: id + float32 columns ``length__{p,a,b,diff,lr,sum,min,max,absdiff}_<feature>``
    for chars, words, tokens, lines, paragraphs, sentences, turns, null_turns.
    """
    per_role = {}
    for role, arr in view.text.items():
        counts = _counts(arr, view.stripped[role])
        if count_tokens is not None:
            tokens = np.asarray(count_tokens(arr.to_pylist()), dtype=np.float64)
            if tokens.shape != (view.n,):
                raise ValueError(f"count_tokens returned shape {tokens.shape}, expected ({view.n},)")
            counts["tokens"] = tokens
        counts["turns"] = view.turns[role]
        counts["null_turns"] = view.null_turns[role]
        per_role[role] = counts
    cols: dict[str, np.ndarray] = {}
    for feature, values in per_role["p"].items():
        cols[f"{GROUP}__p_{feature}"] = values
    for feature in per_role["a"]:
        cols.update(pair_views(GROUP, feature, per_role["a"][feature], per_role["b"][feature],
                               log_ratio=True))
    # Response length relative to the prompt's (log-ratio of words), per response.
    p_words = np.log1p(per_role["p"]["words"])
    cols.update(pair_views(GROUP, "words_vs_prompt", np.log1p(per_role["a"]["words"]) - p_words,
                           np.log1p(per_role["b"]["words"]) - p_words))
    return feature_frame(ids, cols)
