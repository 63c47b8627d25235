"""Structure and style features: markdown, punctuation, diversity, repetition, refusals.

Per text (prompt -> ``p``; responses -> ``a``/``b`` plus diff, [lr], sum, min, max,
absdiff). Counts come from Arrow regexes over whole columns; diversity and repetition
are cheap per-text set operations over the shared word lists. Empty or null texts give
0 for every count and ratio (ratios use a denominator of 0 -> 0), and ``empty`` = 1.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from features.text import TextView, count, lengths
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


def _repeated_fraction(n_items: int, n_unique: int) -> float:
    """Share of items that repeat an earlier one (0 for fewer than 2 items)."""
    return 1.0 - n_unique / n_items if n_items > 1 else 0.0


def _per_text(arr: pa.Array, stripped: pa.Array, words: list[list[str]],
              word_sets: list[set[str]]) -> dict[str, np.ndarray]:
    nl, empty = pa.scalar("\n", arr.type), pa.scalar("", arr.type)
    lined = pc.binary_join_element_wise(nl, arr, empty)  # "\n" + text: see COUNT_PATTERNS
    out = {name: count(lined, pat) for name, pat in COUNT_PATTERNS.items()}
    out["code_blocks"] = np.ceil(count(arr, "```", regex=False) / 2)  # an unclosed fence opens one
    out["refusal_flag"] = (out["refusal"] > 0).astype(np.float64)
    n_words = np.fromiter((len(w) for w in words), dtype=np.float64, count=len(words))
    unique = np.fromiter((len(s) for s in word_sets), dtype=np.float64, count=len(words))
    out["lexdiv"] = safe_div(unique, n_words)
    out["rep_trigram"] = np.fromiter(
        (_repeated_fraction(len(w) - 2, len(set(zip(w, w[1:], w[2:])))) for w in words),
        dtype=np.float64, count=len(words))
    lines = [[ln for ln in map(str.strip, t.split("\n")) if ln] for t in arr.to_pylist()]
    out["rep_lines"] = np.fromiter((_repeated_fraction(len(x), len(set(x))) for x in lines),
                                   dtype=np.float64, count=len(lines))
    out["empty"] = (lengths(stripped) == 0).astype(np.float64)
    chars = lengths(arr)
    out["digits"] = count(arr, r"[0-9]")
    out["digit_share"] = safe_div(out["digits"], chars)
    out["upper_share"] = safe_div(count(arr, r"[A-Z]"), chars)
    return out


def structure_features(view: TextView, ids: Sequence[str]) -> pd.DataFrame:
    """Structure features of every row.

    Returns: id + float32 columns ``structure__{p,a,b,diff,lr,sum,min,max,absdiff}_<f>`` for
    f in COUNT_PATTERNS (headers, bullets, numbered, table_rows, bold, inline_code, links,
    numbers, questions, exclamations, colons, caps_runs, refusal, disclaimer),
    code_blocks, refusal_flag, digits, lexdiv (unique / total words), rep_trigram
    and rep_lines (share of repeated word trigrams / non-empty lines), empty, digit_share,
    upper_share. ``lr`` only for the counts in _LOG_RATIO.
    """
    per_role = {role: _per_text(view.text[role], view.stripped[role], view.words[role],
                                view.word_sets[role]) for role in ("p", "a", "b")}
    cols: dict[str, np.ndarray] = {}
    for feature, values in per_role["p"].items():
        cols[f"{GROUP}__p_{feature}"] = values
    for feature in per_role["a"]:
        cols.update(pair_views(GROUP, feature, per_role["a"][feature], per_role["b"][feature],
                               log_ratio=feature in _LOG_RATIO))
    return feature_frame(ids, cols)
