"""Structure and style features: markdown, punctuation, diversity, repetition, refusals.

Per text (prompt -> ``p``; responses -> ``a``/``b`` plus diff, [lr], sum, min, max,
absdiff). Counts come from Arrow regexes over whole columns; diversity and repetition
are per-row set sizes over the shared word codes (features.segments), all rows at once.
Empty or null texts give 0 for every count and ratio (ratios use a denominator of 0 ->
0), and ``empty`` = 1.
"""
from __future__ import annotations

import functools
from typing import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from features import segments
from features.parallel import parallel
from features.text import ROLES_TEXT, TextView, count, nonempty_items
from features.views import feature_frame, pair_views, safe_div

GROUP = "structure"
VERSION = 2  # 2: word splitting no longer uses pyarrow's nondeterministic utf8_split_whitespace

_APOS = "['\u2019]"
# Count features: name -> RE2 pattern, counted per text. Line-start patterns match after
# "\n" and count as over "\n" + text (see _count): RE2's (?m)^ is several times slower
# over Arrow arrays.
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
# Patterns that never match whitespace: their count in a text is the sum of their counts
# in its whitespace chunks, so each distinct chunk (TextView.chunks) is searched once.
# name -> (pattern, is a regex); "fences", "digits" and "upper" feed code_blocks,
# digits / digit_share and upper_share.
# (Single-character literals such as "?" are cheaper to find in the texts themselves.)
_CHUNK_COUNTS: dict[str, tuple[str, bool]] = {
    "numbers": (COUNT_PATTERNS["numbers"], True), "caps_runs": (COUNT_PATTERNS["caps_runs"], True),
    "fences": ("```", False), "digits": (r"[0-9]", True), "upper": (r"[A-Z]", True),
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
    codes = enc.indices.to_numpy(zero_copy_only=False)
    (lines,), _ = segments.row_sets([(offsets, codes)], max(len(enc.dictionary), 1),
                                    with_keys=False)
    n_unique = lines.sizes
    return np.diff(offsets).astype(np.float64), n_unique.astype(np.float64)


def _count(arr: pa.Array, pattern: str) -> np.ndarray:
    """Matches of a COUNT_PATTERNS pattern in "\n" + text, per text -> float64 [n].

    A pattern starting with "\n" counts its matches in the text, plus one where the text
    itself starts with the rest of the pattern (an anchored, cheap match). No pattern's
    match ends at a newline, so a match at the start never hides a later one.
    """
    out = count(arr, pattern)
    if pattern.startswith(r"\n"):
        starts = pc.match_substring_regex(arr, "^" + pattern[2:]).to_numpy(zero_copy_only=False)
        out += np.asarray(starts, dtype=np.float64)
    return out


def _per_text(view: TextView, role: str, counted: dict) -> dict[str, np.ndarray]:
    out = {name: counted[role, name] for name in COUNT_PATTERNS}
    out["code_blocks"] = np.ceil(counted[role, "fences"] / 2)  # an unclosed fence opens one
    out["refusal_flag"] = (out["refusal"] > 0).astype(np.float64)
    n_words = np.diff(view.words.seqs[role][0]).astype(np.float64)
    unique = view.word_sets.sizes[role]
    out["lexdiv"] = safe_div(unique, n_words)
    out["rep_trigram"] = _repeated_fraction(
        n_words - 2, view.trigram_counts[role])
    out["rep_lines"] = _repeated_fraction(*counted[role, "lines"])
    out["empty"] = (view.stripped_chars[role] == 0).astype(np.float64)
    chars = view.chars[role]
    out["digits"] = counted[role, "digits"]
    out["digit_share"] = safe_div(out["digits"], chars)
    out["upper_share"] = safe_div(counted[role, "upper"], chars)
    return out


def _chunk_counts(view: TextView) -> dict[str, np.ndarray]:
    """_CHUNK_COUNTS name -> matches per text of every role (ROLES_TEXT order) [3n]."""
    dictionary = view.chunks.dictionary
    per_chunk = np.stack([count(dictionary, pattern, regex) for pattern, regex in
                          _CHUNK_COUNTS.values()], axis=1) if len(dictionary) else \
        np.zeros((0, len(_CHUNK_COUNTS)))
    sums = view.chunks.sums(per_chunk.astype(np.int64)).astype(np.float64)
    return {name: sums[:, j] for j, name in enumerate(_CHUNK_COUNTS)}


def _count_tasks(view: TextView) -> dict:
    """(role or "all", name) -> task: every count and line set, to run in parallel."""
    tasks: dict = {("all", "chunks"): functools.partial(_chunk_counts, view)}
    for role, arr in view.text.items():
        for name, pattern in COUNT_PATTERNS.items():
            if name not in _CHUNK_COUNTS:
                tasks[role, name] = functools.partial(_count, arr, pattern)
        tasks[role, "lines"] = functools.partial(_line_sets, arr)
    return tasks


def _counted(view: TextView) -> dict:
    """(role, name) -> counts of every _count_tasks task."""
    out = {}
    for (role, name), values in parallel(_count_tasks(view)).items():
        if role == "all":
            out.update({(r, name): counts[k * view.n:(k + 1) * view.n]
                        for name, counts in values.items() for k, r in enumerate(ROLES_TEXT)})
        else:
            out[role, name] = values
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
    counted = _counted(view)
    per_role = {role: _per_text(view, role, counted) for role in ("p", "a", "b")}
    cols: dict[str, np.ndarray] = {}
    for feature, values in per_role["p"].items():
        cols[f"{GROUP}__p_{feature}"] = values
    for feature in per_role["a"]:
        cols.update(pair_views(GROUP, feature, per_role["a"][feature], per_role["b"][feature],
                               log_ratio=feature in _LOG_RATIO))
    return feature_frame(ids, cols)
