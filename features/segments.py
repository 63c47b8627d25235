"""Integer sequences cut into per-row segments, and per-row set sizes without Python sets.

A *segmented* array is ``(offsets, codes)``: row ``i`` holds ``codes[offsets[i]:offsets[i+1]]``
(``offsets``: int64 [n_rows + 1] starting at 0; ``codes``: int64 in ``[0, size)``). The
set of a row is represented by *keys* ``row * size + code`` (int64), unique across rows,
so one whole-column numpy sort answers "how many distinct items has each row" and one
merge "how many items do row i of A and row i of B share", for all rows at once.
Everything is exact: codes are packed only when the product fits in int64, and made
dense (one code per distinct value, shared by all arrays of a call) when it would not.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

# Packed codes stay below this, so ``a * size + b`` never overflows int64.
_KEY_LIMIT = 1 << 62

Segmented = tuple[np.ndarray, np.ndarray]  # (offsets int64 [n + 1], codes int64 [offsets[-1]])


def row_index(offsets: np.ndarray) -> np.ndarray:
    """Segment offsets [n + 1] -> the row of every element, int64 [offsets[-1]]."""
    return np.repeat(np.arange(len(offsets) - 1, dtype=np.int64), np.diff(offsets))


def segment_sums(offsets: np.ndarray, values: np.ndarray) -> np.ndarray:
    """Sum of each row's values -> int64 [n] (0 for an empty row)."""
    cum = np.zeros(len(values) + 1, dtype=np.int64)
    np.cumsum(values, out=cum[1:])
    return cum[offsets[1:]] - cum[offsets[:-1]]


def expand(codes: np.ndarray, seg_offsets: np.ndarray,
           seg_values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Replace each code ``c`` by the run ``seg_values[seg_offsets[c]:seg_offsets[c + 1]]``.

    Returns: (run lengths int64 [len(codes)], the runs concatenated [lengths.sum()]).
    """
    starts = seg_offsets[codes]
    lengths = seg_offsets[codes + 1] - starts
    out_starts = np.cumsum(lengths) - lengths
    # Output position j of run k copies seg_values[starts[k] + j - out_starts[k]].
    src = np.repeat(starts - out_starts, lengths)
    src += np.arange(len(src), dtype=np.int64)
    return lengths, seg_values[src]


def densify(arrays: Sequence[np.ndarray]) -> tuple[list[np.ndarray], int]:
    """Integer arrays -> dense int64 codes (equal values <-> equal codes, across all the
    arrays) and the number of distinct values."""
    joined = pa.array(np.concatenate(arrays) if arrays else np.zeros(0), type=pa.int64())
    enc = pc.dictionary_encode(joined)
    codes = enc.indices.to_numpy(zero_copy_only=False).astype(np.int64)
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
    return [x * b_size + y for x, y in zip(a, b)], a_size * b_size


def ngrams(seqs: Sequence[Segmented], size: int, n: int) -> tuple[list[Segmented], int]:
    """Consecutive n-grams inside each row, as codes shared by all ``seqs``.

    A row of m codes has max(m - n + 1, 0) n-grams, in order. Returns: ([(offsets,
    n-gram codes)] one per input, the n-gram code-space size).
    """
    offsets, starts = [], []
    for off, _ in seqs:
        counts = np.maximum(np.diff(off) - (n - 1), 0)
        new_off = np.zeros(len(off), dtype=np.int64)
        np.cumsum(counts, out=new_off[1:])
        st = np.repeat(off[:-1] - new_off[:-1], counts)
        st += np.arange(len(st), dtype=np.int64)
        offsets.append(new_off)
        starts.append(st)
    codes = [c[st] for (_, c), st in zip(seqs, starts)]
    gram_size = size
    for k in range(1, n):
        codes, gram_size = combine(codes, [c[st + k] for (_, c), st in zip(seqs, starts)],
                                   gram_size, size)
    return list(zip(offsets, codes)), gram_size


def row_sets(seqs: Sequence[Segmented], size: int) -> tuple[list[np.ndarray], int]:
    """Each row's distinct codes as sorted unique keys ``row * key_size + code``.

    Returns: ([keys int64, sorted] one per input, key_size). Keys of row i in different
    inputs are comparable (same key_size and codes).
    """
    rows = max((len(off) - 1 for off, _ in seqs), default=0)
    codes = [c for _, c in seqs]
    if max(rows, 1) * size > _KEY_LIMIT:
        codes, size = densify(codes)
    out = []
    for (off, _), c in zip(seqs, codes):
        keys = np.sort(row_index(off) * size + c)
        keep = np.ones(len(keys), dtype=bool)
        np.not_equal(keys[1:], keys[:-1], out=keep[1:])
        out.append(keys[keep])
    return out, size


def set_sizes(keys: np.ndarray, size: int, n_rows: int) -> np.ndarray:
    """Distinct items per row from row_sets keys -> int64 [n_rows]."""
    return np.bincount(keys // size, minlength=n_rows)


def intersection_sizes(keys_a: np.ndarray, keys_b: np.ndarray, size: int, n_rows: int) -> np.ndarray:
    """Items row i of A and row i of B share (keys from one row_sets call) -> int64 [n_rows]."""
    # Both inputs are sorted and unique: a key seen twice in the merge is in both sets.
    merged = np.sort(np.concatenate([keys_a, keys_b]), kind="stable")
    shared = merged[1:][merged[1:] == merged[:-1]]
    return np.bincount(shared // size, minlength=n_rows)
