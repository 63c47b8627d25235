"""Integer sequences cut into per-row segments, and per-row set sizes without Python sets.

A *segmented* array is ``(offsets, codes)``: row ``i`` holds ``codes[offsets[i]:offsets[i+1]]``
(``offsets``: int64 [n_rows + 1] starting at 0; ``codes``: non-negative integers in
``[0, size)``, int32 where they fit: half the memory traffic of int64). The
set of a row is represented by *keys* ``row * size + code`` (int64), unique across rows,
so one whole-column numpy sort answers "how many distinct items has each row" and one
merge "how many items do row i of A and row i of B share", for all rows at once.
Everything is exact: codes are packed only when the product fits in int64, and made
dense (one code per distinct value, shared by all arrays of a call) when it would not.
"""
from __future__ import annotations

import functools
from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from features.parallel import parallel

# Packed codes stay below this, so ``a * size + b`` never overflows int64.
_KEY_LIMIT = 1 << 62

Segmented = tuple[np.ndarray, np.ndarray]  # (offsets int64 [n + 1], codes [offsets[-1]])


def row_index(offsets: np.ndarray) -> np.ndarray:
    """Segment offsets [n + 1] -> the row of every element, int64 [offsets[-1]]."""
    return np.repeat(np.arange(len(offsets) - 1, dtype=np.int64), np.diff(offsets))


def segment_sums(offsets: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Sum of each row's values -> int64 [n] (0 for an empty row); offsets[-1] == len(values)."""
    out = np.zeros(len(offsets) - 1, dtype=np.int64)
    starts = offsets[:-1]
    nonempty = offsets[1:] > starts
    if nonempty.any():
        # reduceat sums from each start to the next one given: empty rows are left out.
        out[nonempty] = np.add.reduceat(values, starts[nonempty], dtype=np.int64)
    return out


def expand(codes: np.ndarray, seg_offsets: np.ndarray,
           seg_values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Replace each code ``c`` by the run ``seg_values[seg_offsets[c]:seg_offsets[c + 1]]``.

    Returns: (run lengths [len(codes)], the runs concatenated [lengths.sum()], dtype of
    seg_values).
    """
    seg_len = np.diff(seg_offsets).astype(small_dtype(seg_offsets[-1]))
    lengths = seg_len[codes]
    total = int(lengths.sum(dtype=np.int64))
    out = np.empty(total, dtype=seg_values.dtype)
    if total == 0:
        return lengths, out
    # Most runs are one item long: place every first item, then the second items of the
    # longer runs, and so on (no index array as long as the output).
    first = seg_values[np.minimum(seg_offsets[:-1], len(seg_values) - 1)]
    pos = np.cumsum(lengths, dtype=small_dtype(total))
    pos -= lengths
    idx = np.flatnonzero(lengths)
    out[pos[idx]] = first[codes[idx]]
    k = 1
    idx = idx[lengths[idx] > k]
    while len(idx):
        out[pos[idx] + k] = seg_values[seg_offsets[codes[idx]] + k]
        k += 1
        idx = idx[lengths[idx] > k]
    return lengths, out


def small_dtype(max_value: int) -> type:
    """int32 when values up to ``max_value`` fit, else int64."""
    return np.int32 if max_value < 2**31 - 1 else np.int64


def densify(arrays: Sequence[np.ndarray]) -> tuple[list[np.ndarray], int]:
    """Integer arrays -> dense int32 codes (equal values <-> equal codes, across all the
    arrays) and the number of distinct values."""
    joined = pa.array(np.concatenate(arrays) if arrays else np.zeros(0), type=pa.int64())
    enc = pc.dictionary_encode(joined)
    codes = enc.indices.to_numpy(zero_copy_only=False)
    cuts = np.cumsum([0] + [len(a) for a in arrays])
    return [codes[cuts[i]:cuts[i + 1]] for i in range(len(arrays))], max(len(enc.dictionary), 1)


def combine(a: Sequence[np.ndarray], b: Sequence[np.ndarray], a_size: int,
            b_size: int) -> tuple[list[np.ndarray], int]:
    """Exact codes of the pairs ``(a[k][j], b[k][j])`` and their code-space size."""
    if a_size * b_size > _KEY_LIMIT:
        a, a_size = densify(a)
        b, b_size = densify(b)
        if a_size * b_size > _KEY_LIMIT:  # more than 2**31 distinct values on both sides
            raise OverflowError("too many distinct items to pack into int64 keys")
    return [x.astype(np.int64) * b_size + y for x, y in zip(a, b)], a_size * b_size


def ngram_codes(seqs: Sequence[Segmented], size: int, n: int) -> tuple[list[np.ndarray], int]:
    """Codes of the n items starting at every position (ignoring row ends), shared by all
    ``seqs``: array k has max(len - n + 1, 0) codes. Returns (codes, code-space size)."""
    codes = [c for _, c in seqs]
    gram_size = size
    for k in range(1, n):
        codes, gram_size = combine([g[:-1] for g in codes], [c[k:] for _, c in seqs],
                                   gram_size, size)
    return codes, gram_size


def within_rows(offsets: np.ndarray, codes: np.ndarray, n: int) -> Segmented:
    """ngram_codes of one segmented array -> only the n-grams inside a row, segmented.

    A row of m items has max(m - n + 1, 0) n-grams, in order.
    """
    total = int(offsets[-1])
    keep = np.ones(total, dtype=bool)
    for k in range(1, n):  # the last n - 1 positions of each row start no n-gram
        tail = offsets[1:] - k
        keep[tail[tail >= offsets[:-1]]] = False
    counts = np.maximum(np.diff(offsets) - (n - 1), 0)
    new_off = np.zeros(len(offsets), dtype=np.int64)
    np.cumsum(counts, out=new_off[1:])
    return new_off, codes[keep[:len(codes)]]


def ngrams(seqs: Sequence[Segmented], size: int, n: int) -> tuple[list[Segmented], int]:
    """Consecutive n-grams inside each row, as codes shared by all ``seqs``.

    A row of m codes has max(m - n + 1, 0) n-grams, in order. Returns: ([(offsets,
    n-gram codes)] one per input, the n-gram code-space size).
    """
    codes, gram_size = ngram_codes(seqs, size, n)
    return [within_rows(off, c, n) for (off, _), c in zip(seqs, codes)], gram_size


def row_sets(seqs: Sequence[Segmented], size: int) -> tuple[list[np.ndarray], int]:
    """Each row's distinct codes as sorted unique keys ``row * key_size + code``.

    Returns: ([keys int64, sorted] one per input, key_size). Keys of row i in different
    inputs are comparable (same key_size and codes).
    """
    rows = max((len(off) - 1 for off, _ in seqs), default=0)
    codes = [c for _, c in seqs]
    if max(rows, 1) * size > _KEY_LIMIT:
        codes, size = densify(codes)

    def distinct(off: np.ndarray, c: np.ndarray) -> np.ndarray:
        keys = row_index(off) * size + c
        keys.sort()
        keep = np.ones(len(keys), dtype=bool)
        np.not_equal(keys[1:], keys[:-1], out=keep[1:])
        return keys[keep]

    out = parallel({k: functools.partial(distinct, off, c)
                    for k, ((off, _), c) in enumerate(zip(seqs, codes))})
    return list(out.values()), size


def set_sizes(keys: np.ndarray, size: int, n_rows: int) -> np.ndarray:
    """Distinct items per row from row_sets keys -> int64 [n_rows]."""
    return np.bincount(keys // size, minlength=n_rows)


def intersection_sizes(keys_a: np.ndarray, keys_b: np.ndarray, size: int, n_rows: int) -> np.ndarray:
    """Items row i of A and row i of B share (keys from one row_sets call) -> int64 [n_rows]."""
    # Both inputs are sorted and unique: a key seen twice in the merge is in both sets.
    merged = np.sort(np.concatenate([keys_a, keys_b]), kind="stable")
    shared = merged[1:][merged[1:] == merged[:-1]]
    return np.bincount(shared // size, minlength=n_rows)
