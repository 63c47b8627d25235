"""Structure and style features: markdown, punctuation, diversity, repetition, refusals.

Per text (prompt -> ``p``; responses -> ``a``/``b`` plus diff, [lr], sum, min, max,
absdiff). Counts come from Arrow regexes over whole columns; diversity and repetition
are per-row set sizes over the shared word codes (features.segments), all rows at once.
Empty or null texts give 0 for every count and ratio (ratios use a denominator of 0 ->
0), and ``empty`` = 1.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from features import segments
from features.text import RowSets, TextView, count, lengths, nonempty_items
from features.views import feature_frame, pair_views, safe_div

GROUP = "structure"
VERSION = 1

_APOS = "['\u2019]"
# Count features: name -> RE2 pattern, counted per text. Line-start patterns match after
# "\n" and run on "\n" + text: RE2's (?m)^ is several times slower over Arrow arrays.
COUNT_PATTERNS: dict[str, str] = {
    "headers": r"\n[ \t]{0,3}#{1,6}[ \t]+\S",
    "bullets": r"\n[ \t]*[-*+\x{2022}][ \t]+\S",
    "numbered": r"\n[ \t]*[0-9]{1,3}[.)][ \t]+\S",
    "table_rows": r"\n[ \t]*\|[^\n]*\|",
    "bold": r"\*\*[^*\n]+\*\*|__[^_\n]+__",
    "inline_code": r"`[^`\n]+`",
    "links": r"\[[^\]\n]+\]\([^)\s]+\)|https?://\S+",
    "numbers": r"[0-9]+",
    "questions": r"\?",
    "exclamations": r"!",
    "colons": r":",
    "caps_runs": r"[A-Z]{2,}",
    "refusal": (
        r"(?i)(?:i" + _APOS + r"m|i am) sorry,? but|i apologi[sz]e,? but"
        r"|i (?:cannot|can" + _APOS + r"?t|can not|won" + _APOS + r"?t|will not|must decline)"
        r"|i(?:" + _APOS + r"m| am) (?:not able|unable) to"
        r"|(?:cannot|can" + _APOS + r"?t|unable to) (?:assist|help) with"
        r"|(?:cannot|can" + _APOS + r"?t|not able to) (?:provide|fulfill|comply)"
        r"|against my (?:programming|guidelines|policy|policies)"
        r"|not (?:appropriate|ethical) (?:for me )?to"
    ),
    "disclaimer": (
        r"(?i)as an ai|as a (?:large )?language model|i(?:" + _APOS + r"m| am) (?:just |only )?an ai"
        r"|i (?:don" + _APOS + r"?t|do not) have (?:personal|real-time|access|the ability)"
        r"|my (?:knowledge|training) (?:cutoff|cut-off|data)"
        r"|consult (?:a|an|your) (?:doctor|physician|lawyer|professional|expert|healthcare)"
        r"|(?:it" + _APOS + r"s|it is) important to (?:note|remember)|please note that"
        r"|not a substitute for"
    ),
}
# Counts that get a log-ratio view (the rest are rare flags or ratios).
_LOG_RATIO = {"bullets", "numbered", "bold", "numbers", "digits", "questions", "exclamations",
              "colons", "code_blocks", "headers", "table_rows", "caps_runs"}


def _repeated_fraction(n_items: np.ndarray, n_unique: np.ndarray) -> np.ndarray:
    """Share of items that repeat an earlier one, per text (0 for fewer than 2 items)."""
    many = n_items > 1
    return np.where(many, 1.0 - n_unique / np.where(many, n_items, 1), 0.0)


def _line_sets(arr: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """(non-empty stripped lines, distinct ones) per text, float64 [n] each."""
    split = pc.split_pattern(arr, "\n")
    # utf8_trim_whitespace strips the same characters as str.strip (tests/features).
    lists = pa.ListArray.from_arrays(split.offsets, pc.utf8_trim_whitespace(pc.list_flatten(split)))
    offsets, lines = nonempty_items(lists)
    enc = pc.dictionary_encode(lines)
    codes = enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    (keys,), size = segments.row_sets([(offsets, codes)], max(len(enc.dictionary), 1))
    n_unique = segments.set_sizes(keys, size, len(arr))
    return np.diff(offsets).astype(np.float64), n_unique.astype(np.float64)


def _per_text(view: TextView, role: str, trigram_sets: RowSets) -> dict[str, np.ndarray]:
    arr, stripped = view.text[role], view.stripped[role]
    nl, empty = pa.scalar("\n", arr.type), pa.scalar("", arr.type)
    lined = pc.binary_join_element_wise(nl, arr, empty)  # "\n" + text: see COUNT_PATTERNS
    out = {name: count(lined, pat) for name, pat in COUNT_PATTERNS.items()}
    out["code_blocks"] = np.ceil(count(arr, "```", regex=False) / 2)  # an unclosed fence opens one
    out["refusal_flag"] = (out["refusal"] > 0).astype(np.float64)
    n_words = np.diff(view.words.seqs[role][0]).astype(np.float64)
    unique = segments.set_sizes(view.word_sets.keys[role], view.word_sets.size, view.n)
    out["lexdiv"] = safe_div(unique, n_words)
    out["rep_trigram"] = _repeated_fraction(
        n_words - 2, segments.set_sizes(trigram_sets.keys[role], trigram_sets.size, view.n))
    out["rep_lines"] = _repeated_fraction(*_line_sets(arr))
    out["empty"] = (lengths(stripped) == 0).astype(np.float64)
    chars = lengths(arr)
    out["digits"] = count(arr, r"[0-9]")
    out["digit_share"] = safe_div(out["digits"], chars)
    out["upper_share"] = safe_div(count(arr, r"[A-Z]"), chars)
    return out


def _trigram_sets(view: TextView) -> RowSets:
    grams, size = segments.ngrams(list(view.words.seqs.values()), view.words.size, 3)
    keys, key_size = segments.row_sets(grams, size)
    return RowSets(dict(zip(view.words.seqs, keys)), key_size)


def structure_features(view: TextView, ids: Sequence[str]) -> pd.DataFrame:
    """Structure features of every row.

    Returns: id + float32 columns ``structure__{p,a,b,diff,lr,sum,min,max,absdiff}_<f>`` for
    f in COUNT_PATTERNS (headers, bullets, numbered, table_rows, bold, inline_code, links,
    numbers, questions, exclamations, colons, caps_runs, refusal, disclaimer),
    code_blocks, refusal_flag, digits, lexdiv (unique / total words), rep_trigram
    and rep_lines (share of repeated word trigrams / non-empty lines), empty, digit_share,
    upper_share. ``lr`` only for the counts in _LOG_RATIO.
    """
    trigrams = _trigram_sets(view)
    per_role = {role: _per_text(view, role, trigrams) for role in ("p", "a", "b")}
    cols: dict[str, np.ndarray] = {}
    for feature, values in per_role["p"].items():
        cols[f"{GROUP}__p_{feature}"] = values
    for feature in per_role["a"]:
        cols.update(pair_views(GROUP, feature, per_role["a"][feature], per_role["b"][feature],
                               log_ratio=feature in _LOG_RATIO))
    return feature_frame(ids, cols)
