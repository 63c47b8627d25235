"""Shared preparation of the canonical frame's texts for the feature groups.

A ``TextView`` joins each conversation's turns once and caches what several groups need
(Arrow-backed string columns, normalised word lists), so computing all groups does each
expensive step once. It only reads the frame it is given.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from functools import cached_property
from typing import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from features import segments
from features.parallel import parallel
from features.segments import Segmented
from features.turns import TURN_SEP, clean_text, join_turns

ROLES_TEXT = {"p": "prompt", "a": "response_a", "b": "response_b"}
# Punctuation (ASCII and typographic quotes, dashes, ellipsis) becomes a space, so
# "Python." and "python" are one word. RE2 syntax (Arrow): \x{...} is a code point.
_PUNCT = r"[[:punct:]\x{2010}-\x{201F}\x{2026}]+"
# The whitespace str.split breaks at beyond ASCII's (str.isspace: \x1c-\x1f, NEL, NBSP,
# the Unicode spaces and separators). chunk_words turns these into an ASCII space and
# splits with ascii_split_whitespace: pyarrow 26's utf8_split_whitespace gave different
# results for the same array from call to call (a 16-string case in the tests).
_WIDE_SPACE = (r"[\x{1C}-\x{1F}\x{85}\x{A0}\x{1680}\x{2000}-\x{200A}\x{2028}\x{2029}\x{202F}"
               r"\x{205F}\x{3000}]+")
# Chunks are cut at ASCII whitespace, where str.split and every whitespace-splitting
# tokenizer split too. Two exceptions are flagged per text rather than handled: RE2's
# \s (the ``words`` count) does not include \v, and BERT's normaliser deletes \v and \f
# (control characters) instead of splitting there.
_ODD_SPACE = "[\v\f]"


def count(arr: pa.Array, pattern: str, regex: bool = True) -> np.ndarray:
    """Matches of ``pattern`` (RE2 regex, or a literal) in each text -> float64 [n]."""
    fn = pc.count_substring_regex if regex else pc.count_substring
    return np.asarray(fn(arr, pattern).to_numpy(zero_copy_only=False), dtype=np.float64)


def lengths(arr: pa.Array) -> np.ndarray:
    """Characters (code points) of each text -> float64 [n]."""
    return np.asarray(pc.utf8_length(arr).to_numpy(zero_copy_only=False), dtype=np.float64)


@dataclass(frozen=True)
class Chunks:
    """Texts cut at ASCII whitespace into chunks, the distinct chunks listed once.

    Attributes:
        dictionary  Arrow large_string array of the distinct chunks ("" included when a
                    text starts or ends with whitespace or is empty)
        codes       int32 [n_chunks]: every chunk, text after text -> its dictionary index
        offsets     int64 [n_texts + 1]: text i's chunks are codes[offsets[i]:offsets[i+1]]
        plain       bool [n_texts]: the text holds no \\v or \\f (see _ODD_SPACE)
    """

    dictionary: pa.Array
    codes: np.ndarray
    offsets: np.ndarray
    plain: np.ndarray

    @cached_property
    def matrix(self):
        """Sparse [n_texts, len(dictionary)] int8 matrix: one entry per chunk occurrence
        (shares ``codes``; scipy comes with scikit-learn)."""
        import scipy.sparse

        offsets = self.offsets.astype(segments.small_dtype(int(self.offsets[-1])))
        return scipy.sparse.csr_matrix((np.ones(len(self.codes), dtype=np.int8), self.codes, offsets),
                                       shape=(len(self.offsets) - 1, len(self.dictionary)))

    def sums(self, per_chunk: np.ndarray) -> np.ndarray:
        """Integer values per distinct chunk, [len(dictionary)] or [len(dictionary), k] ->
        their sums over each text's chunks, int64 [n_texts] or [n_texts, k]."""
        # One sparse product instead of a gather as long as all chunks per column. A
        # vector goes in as a one-column matrix: scipy's matrix-vector product of the int8
        # matrix measured 4-7x slower than its matrix-matrix product (0.4-0.7 s vs 0.1 s
        # for 38M chunks), same integer result.
        values = np.asarray(per_chunk, dtype=np.int64)
        if values.ndim == 1:
            return (self.matrix @ values[:, None])[:, 0]
        return self.matrix @ values


def whitespace_chunks(arrays: pa.Array | Sequence[pa.Array], pieces: int = 2) -> Chunks:
    """Cut texts (Arrow string arrays without nulls, taken one after another) at ASCII
    whitespace -> Chunks.

    Each array is cut into ``pieces`` row ranges that are split and dictionary-encoded in
    parallel; the dictionaries are then unified, so the result does not depend on it.
    """
    arrays = [arrays] if isinstance(arrays, pa.Array) else list(arrays)
    parts = []
    for arr in arrays:
        arr = arr.cast(pa.large_string()) if arr.type != pa.large_string() else arr
        step = -(-len(arr) // pieces) if len(arr) else 1
        parts += [arr.slice(start, step) for start in range(0, len(arr), step)]

    def encode(arr: pa.Array) -> tuple:
        split = pc.ascii_split_whitespace(arr)
        odd = pc.match_substring_regex(arr, _ODD_SPACE).to_numpy(zero_copy_only=False)
        return (pc.dictionary_encode(pc.list_flatten(split)),
                split.offsets.to_numpy().astype(np.int64), np.asarray(odd, dtype=bool))

    done = list(parallel({k: functools.partial(encode, arr) for k, arr in enumerate(parts)}).values())
    if not done:
        return Chunks(pa.array([], pa.large_string()), np.zeros(0, np.int32),
                      np.zeros(1, np.int64), np.zeros(0, bool))
    unified = pa.chunked_array([enc for enc, _, _ in done]).unify_dictionaries()
    offsets = [np.zeros(1, dtype=np.int64)]
    for _, off, _ in done:
        offsets.append(off[1:] + offsets[-1][-1])
    return Chunks(dictionary=unified.chunk(0).dictionary,
                  codes=np.concatenate([c.indices.to_numpy(zero_copy_only=False)
                                        for c in unified.chunks]),
                  offsets=np.concatenate(offsets),
                  plain=~np.concatenate([odd for _, _, odd in done]))


def chunk_words(chunks: pa.Array) -> tuple[np.ndarray, pa.Array]:
    """Words of each distinct chunk: lower-cased, punctuation becomes a space, split.

    Returns: (offsets int64 [len(chunks) + 1], flat Arrow array of the words).
    """
    norm = pc.replace_substring_regex(pc.utf8_lower(chunks), _PUNCT, " ")
    norm = pc.replace_substring_regex(norm, _WIDE_SPACE, " ")
    # Unlike str.split, Arrow keeps an empty string for leading / trailing whitespace.
    return nonempty_items(pc.ascii_split_whitespace(norm))


def nonempty_items(lists: pa.Array) -> tuple[np.ndarray, pa.Array]:
    """An Arrow list<string> array [n] -> (offsets int64 [n + 1], its non-empty strings, flat)."""
    flat = pc.list_flatten(lists)
    keep = np.asarray(pc.greater(pc.binary_length(flat), 0).to_numpy(zero_copy_only=False),
                      dtype=bool)
    rows = segments.row_index(lists.offsets.to_numpy().astype(np.int64))[keep]
    offsets = np.zeros(len(lists) + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=len(lists)), out=offsets[1:])
    return offsets, flat.filter(pa.array(keep))


@dataclass(frozen=True)
class Coded:
    """Per-role segmented codes (features.segments) in one shared code space."""

    seqs: dict[str, Segmented]
    size: int


@dataclass(frozen=True)
class RowSets:
    """Per role: each row's number of distinct items and their sorted keys (segments.row_sets,
    one key size)."""

    sizes: dict[str, np.ndarray]
    keys: dict[str, np.ndarray]
    size: int


def _turns(cell: object) -> list[str]:
    """A cell of the canonical frame -> its turns (None / NaN / a plain string tolerated)."""
    if cell is None:
        return []
    if isinstance(cell, str):
        return [cell]
    if isinstance(cell, float) and np.isnan(cell):
        return []
    return ["" if t is None else str(t) for t in cell]


def _join_python(cells: list, sep: str = TURN_SEP) -> tuple[pa.Array, np.ndarray, np.ndarray]:
    """Cells -> (joined non-empty turns, turns, empty or None turns) per row."""
    turns = [_turns(c) for c in cells]
    joined = [clean_text(join_turns(ts, sep)) for ts in turns]
    return (pa.array(joined, type=pa.large_string()),
            np.array([len(t) for t in turns], dtype=np.float64),
            np.array([sum(1 for s in t if not s.strip()) for t in turns], dtype=np.float64))


def _join_arrow(cells: list, sep: str = TURN_SEP) -> tuple[pa.Array, np.ndarray, np.ndarray] | None:
    """_join_python in Arrow when every cell is a list of str / None (or None), else None.

    Cells holding a plain string, NaN, a non-string turn or a lone surrogate (not valid
    UTF-8) are left to _join_python.
    """
    if any(isinstance(c, str) for c in cells):  # Arrow would read "abc" as ["a", "b", "c"]
        return None
    try:
        lists = pa.array(cells, type=pa.list_(pa.large_string()))
    except (pa.ArrowException, TypeError, ValueError, UnicodeError):
        return None
    flat = pc.list_flatten(lists)  # null turns stay as nulls; null cells have no turns
    rows = segments.row_index(lists.offsets.to_numpy().astype(np.int64))
    trimmed = pc.utf8_length(pc.utf8_trim_whitespace(flat))
    blank = np.asarray(pc.fill_null(pc.equal(trimmed, 0), True).to_numpy(zero_copy_only=False),
                       dtype=bool)
    keep = np.asarray(pc.fill_null(pc.greater(pc.binary_length(flat), 0), False)
                      .to_numpy(zero_copy_only=False), dtype=bool)
    offsets = np.zeros(len(cells) + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows[keep], minlength=len(cells)), out=offsets[1:])
    kept = pa.LargeListArray.from_arrays(pa.array(offsets), flat.filter(pa.array(keep)))
    n_turns = np.asarray(pc.fill_null(pc.list_value_length(lists), 0).to_numpy(zero_copy_only=False),
                         dtype=np.float64)
    return (pc.binary_join(kept, pa.scalar(sep, pa.large_string())), n_turns,
            np.bincount(rows[blank], minlength=len(cells)).astype(np.float64))


class TextView:
    """Read-only views of one canonical frame (columns prompt, response_a, response_b).

    Attributes (all aligned with the frame's rows, by position):
        n                       number of rows
        text[r]                 Arrow large_string array of the joined turns, r in "p", "a", "b"
        stripped[r]             the same with surrounding whitespace removed
        chars[r], stripped_chars[r]  float arrays: characters of text[r] / stripped[r]
        turns[r], null_turns[r] float arrays: number of turns, number of empty turns
        chunks                  Chunks of all texts, roles one after another (p, a, b)
        words                   Coded: each text's lower-cased words (punctuation removed,
                                split at whitespace) as word codes shared by the roles
        word_sets, bigram_sets  RowSets: each row's distinct words / word bigrams per role
        trigram_counts[r]       int64 arrays: distinct word trigrams per text
    """

    def __init__(self, frame: pd.DataFrame, turn_sep: str = TURN_SEP):
        missing = [c for c in ROLES_TEXT.values() if c not in frame.columns]
        if missing:
            raise ValueError(f"feature input lacks column(s) {missing}: expected the canonical "
                             "frame of pipeline.data (id, prompt, response_a, response_b)")
        self.n = len(frame)
        self._word_groups: dict[str, segments.RowSet] = {}
        self.text: dict[str, pa.Array] = {}
        self.turns: dict[str, np.ndarray] = {}
        self.null_turns: dict[str, np.ndarray] = {}
        for role, col in ROLES_TEXT.items():
            cells = frame[col].tolist()
            joined = _join_arrow(cells, turn_sep)
            if joined is None:
                joined = _join_python(cells, turn_sep)
            self.text[role], self.turns[role], self.null_turns[role] = joined

    @cached_property
    def stripped(self) -> dict[str, pa.Array]:
        """Texts without leading and trailing whitespace."""
        return {role: pc.utf8_trim_whitespace(arr) for role, arr in self.text.items()}

    @cached_property
    def chars(self) -> dict[str, np.ndarray]:
        """Characters of each text, float64 [n] per role."""
        return {role: lengths(arr) for role, arr in self.text.items()}

    @cached_property
    def stripped_chars(self) -> dict[str, np.ndarray]:
        """Characters of each stripped text, float64 [n] per role (0: empty or blank)."""
        return {role: lengths(arr) for role, arr in self.stripped.items()}

    @cached_property
    def chunks(self) -> Chunks:
        """Chunks of the texts of every role, concatenated in ROLES_TEXT order."""
        return whitespace_chunks(list(self.text.values()))

    def role_chunks(self, role: str) -> Segmented:
        """(offsets [n + 1], chunk codes) of one role's texts."""
        k = list(ROLES_TEXT).index(role)
        off = self.chunks.offsets[k * self.n:(k + 1) * self.n + 1]
        return off - off[0], self.chunks.codes[off[0]:off[-1]]

    @cached_property
    def words(self) -> Coded:
        """Lower-cased words (punctuation stripped) of every text, as shared word codes."""
        # A chunk's words do not depend on its neighbours, so each distinct chunk is
        # normalised and split once, then every occurrence is replaced by its words.
        seg_off, flat = chunk_words(self.chunks.dictionary)
        enc = pc.dictionary_encode(flat)
        seg_codes = enc.indices.to_numpy(zero_copy_only=False)

        def role_words(role: str) -> Segmented:
            off, codes = self.role_chunks(role)
            lengths, word_codes = segments.expand(codes, seg_off, seg_codes)
            word_off = np.zeros(self.n + 1, dtype=np.int64)
            np.cumsum(segments.segment_sums(off, lengths), out=word_off[1:])
            return word_off, word_codes

        return Coded(parallel({role: functools.partial(role_words, role) for role in ROLES_TEXT}),
                     len(enc.dictionary))

    @cached_property
    def word_sets(self) -> RowSets:
        """Each row's distinct words per role."""
        sets, size = segments.row_sets(list(self.words.seqs.values()), self.words.size,
                                       with_groups=True)
        self._word_groups = {r: x for r, x in zip(ROLES_TEXT, sets)}
        return RowSets({r: x.sizes for r, x in zip(ROLES_TEXT, sets)},
                       {r: x.keys for r, x in zip(ROLES_TEXT, sets)}, size)

    @cached_property
    def bigram_sets(self) -> RowSets:
        """Each row's distinct word bigrams (consecutive words of one text) per role."""
        seqs = list(self.words.seqs.values())
        codes, size = segments.ngram_codes(seqs, self.words.size, 2)
        bigrams = parallel({k: functools.partial(segments.within_rows, off, c, 2)
                            for k, ((off, _), c) in enumerate(zip(seqs, codes))})
        sets, key_size = segments.row_sets(list(bigrams.values()), size)
        return RowSets({r: x.sizes for r, x in zip(ROLES_TEXT, sets)},
                       {r: x.keys for r, x in zip(ROLES_TEXT, sets)}, key_size)

    @cached_property
    def trigram_counts(self) -> dict[str, np.ndarray]:
        """Distinct word trigrams per text of each role, int64 [n]."""
        self.word_sets  # noqa: B018 - sets self._word_groups

        def count(role: str) -> np.ndarray:
            off = self.words.seqs[role][0]
            words = self._word_groups[role]
            return segments.distinct_per_row(*segments.within_rows(
                off, segments.row_local_ngrams(off, words.groups, words.sizes, 3), 3))

        return parallel({r: functools.partial(count, r) for r in ROLES_TEXT})
