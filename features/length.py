"""Length features: characters, words, tokens, lines, paragraphs, sentences, turns.

Per text (prompt -> role ``p``; responses -> ``a``/``b`` plus diff, lr, sum, min, max,
absdiff). Everything is a count over whole columns (Arrow regex), so an empty or null
text gives 0 everywhere; ``lr`` is log1p(a) - log1p(b), finite for counts >= 0.
"""
from __future__ import annotations

import functools
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from features import tokencount
from features.parallel import parallel
from features.text import ROLES_TEXT, TextView, count
from features.views import feature_frame, pair_views

GROUP = "length"
# Bump when the output of this module changes for the same input (invalidates the cache).
VERSION = 1

TokenCounter = Callable[[Sequence[str]], np.ndarray]

# RE2 patterns (Arrow): a sentence ends at . ! ? (runs count once) followed by space or end.
_SENTENCE_END = r"[.!?]+(\s|$)"
_PARAGRAPH_BREAK = r"\n[ \t]*\n\s*"


def _word_counts(view: TextView) -> np.ndarray:
    """Runs of non-whitespace (RE2 \\S+) per text of every role [3n]: the non-empty chunks,
    except in texts holding \\v, which RE2 does not count as whitespace (counted by the regex)."""
    chunks = view.chunks
    nonempty = pc.greater(pc.binary_length(chunks.dictionary), 0).to_numpy(zero_copy_only=False)
    words = chunks.sums(nonempty).astype(np.float64)
    odd = np.flatnonzero(~chunks.plain)
    if len(odd):
        words[odd] = count(pa.chunked_array(list(view.text.values())).take(pa.array(odd)), r"\S+")
    return words


def token_counts(view: TextView, count_tokens: TokenCounter) -> dict[str, np.ndarray]:
    """Token counts of every role's texts -> {role: float64 [n]}.

    A counter with ``chunk_additive`` True (features.tokencount.RustTokenCounter) counts the
    view's distinct whitespace chunks once; any other callable gets each role's texts.
    """
    if getattr(count_tokens, "chunk_additive", False):
        every = pa.chunked_array(list(view.text.values()))
        totals = tokencount.chunked_counts(view.chunks, every, count_tokens.count_chunks,
                                           count_tokens.count_whole)
        out = {role: totals[k * view.n:(k + 1) * view.n] for k, role in enumerate(ROLES_TEXT)}
    else:
        out = {role: np.asarray(count_tokens(arr.to_pylist()), dtype=np.float64)
               for role, arr in view.text.items()}
    for tokens in out.values():
        if tokens.shape != (view.n,):
            raise ValueError(f"count_tokens returned shape {tokens.shape}, expected ({view.n},)")
    return out


def _sentences(stripped: pa.Array, stripped_chars: np.ndarray) -> np.ndarray:
    nonempty = stripped_chars > 0
    # Text that does not end in punctuation still holds one (last) sentence.
    ends = np.asarray(pc.match_substring_regex(stripped, r"[.!?]$").to_numpy(zero_copy_only=False),
                      dtype=bool)
    return count(stripped, _SENTENCE_END) + (nonempty & ~ends)


def _plus_one_if_nonempty(values: np.ndarray, stripped_chars: np.ndarray) -> np.ndarray:
    return np.where(stripped_chars > 0, values + 1, 0.0)


def _counts(view: TextView) -> dict[str, dict[str, np.ndarray]]:
    """{role: {chars, words, lines, paragraphs, sentences}}, the columns counted in parallel."""
    view.chunks, view.stripped_chars  # noqa: B018 - shared by the tasks: build them first
    tasks: dict = {("all", "words"): functools.partial(_word_counts, view)}
    for role in view.text:
        stripped = view.stripped[role]
        tasks[role, "lines"] = functools.partial(count, stripped, "\n", regex=False)
        tasks[role, "paragraphs"] = functools.partial(count, stripped, _PARAGRAPH_BREAK)
        tasks[role, "sentences"] = functools.partial(_sentences, stripped, view.stripped_chars[role])
    done = parallel(tasks)
    words = done.pop(("all", "words"))
    for k, role in enumerate(ROLES_TEXT):
        done[role, "chars"] = view.chars[role]
        done[role, "words"] = words[k * view.n:(k + 1) * view.n]
        for name in ("lines", "paragraphs"):
            done[role, name] = _plus_one_if_nonempty(done[role, name], view.stripped_chars[role])
    return {role: {name: done[role, name] for name in ("chars", "words", "lines", "paragraphs",
                                                       "sentences")} for role in ROLES_TEXT}


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
    tokens = None if count_tokens is None else token_counts(view, count_tokens)
    all_counts = _counts(view)
    for role in view.text:
        counts = all_counts[role]
        if tokens is not None:
            counts["tokens"] = tokens[role]
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
