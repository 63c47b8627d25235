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
from dataclasses import dataclass
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

    Returns: (run lengths [len(codes)], the runs concatenated [lengths.sum()] with the
    dtype of seg_values).
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
    out = []
    for x, y in zip(a, b):
        packed = x.astype(np.int64)
        packed *= b_size
        packed += y
        out.append(packed)
    return out, a_size * b_size


def ngram_codes(seqs: Sequence[Segmented], size: int, n: int) -> tuple[list[np.ndarray], int]:
    """Codes of the n items starting at every position (ignoring row ends), shared by all
    ``seqs``: array k has max(len - n + 1, 0) codes. Returns (codes, code-space size)."""
    codes = [c for _, c in seqs]
    gram_size = size
    for k in range(1, n):
        codes, gram_size = combine([g[:-1] for g in codes], [c[k:] for _, c in seqs],
                                   gram_size, size)
    return codes, gram_size


def row_local_ngrams(offsets: np.ndarray, groups: np.ndarray, sizes: np.ndarray,
                     n: int) -> np.ndarray:
    """Row-major codes of the n items starting at every position (row ends ignored, as in
    ngram_codes), from row_sets group ids and per-row distinct counts ``sizes``.

    The first item keeps its (row, item) group id, the others their rank among the row's
    distinct items, so codes stay below n_groups * max(sizes)**(n - 1): independent of
    the vocabulary's size. Equal codes <-> same row and same n items.
    """
    width = max(int(sizes.max(initial=1)), 1)
    n_groups = int(sizes.sum())
    total = len(groups)
    if n_groups * width ** (n - 1) > _KEY_LIMIT:
        (codes,), _ = ngram_codes([(offsets, groups)], max(n_groups, 1), n)
        return codes
    base = np.zeros(len(sizes), dtype=np.int64)
    np.cumsum(sizes[:-1], out=base[1:])
    local = np.repeat(base, np.diff(offsets))
    np.subtract(groups, local, out=local)
    m = max(total - n + 1, 0)
    codes = groups[:m].astype(np.int64)
    for k in range(1, n):
        codes *= width
        codes += local[k:k + m]
    return codes


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


@dataclass(frozen=True)
class RowSet:
    """The distinct codes of every row of one segmented array (see row_sets)."""

    sizes: np.ndarray  # int64 [n]: distinct codes per row
    keys: np.ndarray | None  # sorted unique keys row * key_size + code (with_keys)
    groups: np.ndarray | None  # per element: dense id of its (row, code), row-major (with_groups)
    n_groups: int  # number of distinct (row, code) pairs


def row_sets(seqs: Sequence[Segmented], size: int, with_keys: bool = True,
             with_groups: bool = False) -> tuple[list[RowSet], int]:
    """Each row's distinct codes: how many, as sorted unique keys ``row * key_size + code``
    and, with ``with_groups``, a dense id per element of its (row, code) pair.

    Returns: ([RowSet] one per input, key_size). Keys of row i in different inputs are
    comparable (same key_size and codes); group ids are dense and increase with the row
    (see row_local_ngrams).
    """
    rows = max((len(off) - 1 for off, _ in seqs), default=0)
    codes = [c for _, c in seqs]
    if max(rows, 1) * size > _KEY_LIMIT:
        codes, size = densify(codes)

    def distinct(off: np.ndarray, c: np.ndarray) -> RowSet:
        keys = row_index(off)
        keys *= size
        keys += c
        groups = None
        if with_groups:
            keys, groups = _sort_with_groups(off, keys)
        else:
            keys.sort()  # row-major keys: every row keeps its place, so ``off`` still applies
        new = np.ones(len(keys), dtype=bool)
        np.not_equal(keys[1:], keys[:-1], out=new[1:])
        if groups is not None:
            groups = groups(new)
        return RowSet(segment_sums(off, new), keys[new] if with_keys else None, groups,
                      int(new.sum()))

    done = parallel({k: functools.partial(distinct, off, c)
                     for k, ((off, _), c) in enumerate(zip(seqs, codes))})
    return list(done.values()), size


def _sort_with_groups(off: np.ndarray, keys: np.ndarray):
    """Sort row-major keys; also return a function: new-key flags (in sorted order) ->
    dense group id of every element in its original position. ``keys`` is reused (its
    contents are lost)."""
    lengths = np.diff(off)
    pos_bits = int(lengths.max(initial=1)).bit_length()
    top = int(keys.max()) if len(keys) else 0  # the last key need not be the largest
    if top.bit_length() + pos_bits <= 62:
        # Pack each element's position in its row under its key: one plain (fast) sort
        # then also says where every sorted element came from.
        # In place where the caller's arrays allow: each 8-byte temporary as long as the
        # words is memory touched for the first time in a fresh process, which costs
        # about as much as the arithmetic (measured on 2 cores: 0.1-0.2 s each at 38M).
        starts = np.repeat(off[:-1], lengths)
        packed = keys
        packed <<= pos_bits
        local = np.arange(len(keys), dtype=np.int64)
        local -= starts
        packed += local
        del local
        packed.sort()
        origin = packed & ((1 << pos_bits) - 1)
        origin += starts  # sorting kept every row in its place
        del starts
        packed >>= pos_bits
        sorted_keys = packed
    else:
        origin = np.argsort(keys)
        sorted_keys = keys[origin]

    def groups(new: np.ndarray) -> np.ndarray:
        out = np.empty(len(new), dtype=small_dtype(len(new)))
        ids = np.cumsum(new, dtype=out.dtype)
        ids -= 1
        out[origin] = ids
        return out

    return sorted_keys, groups


def distinct_per_row(offsets: np.ndarray, codes: np.ndarray) -> np.ndarray:
    """Distinct codes per row when codes are already row-major (every code of row i is
    below every code of row i + 1) -> int64 [n]."""
    codes = np.sort(codes)
    new = np.ones(len(codes), dtype=bool)
    np.not_equal(codes[1:], codes[:-1], out=new[1:])
    return segment_sums(offsets, new)


def intersection_sizes(keys_a: np.ndarray, keys_b: np.ndarray, size: int, n_rows: int) -> np.ndarray:
    """Items row i of A and row i of B share (keys from one row_sets call) -> int64 [n_rows]."""
    # Both inputs are sorted and unique: a key seen twice in the merge is in both sets.
    merged = np.sort(np.concatenate([keys_a, keys_b]), kind="stable")
    shared = merged[1:][merged[1:] == merged[:-1]]
    return np.bincount(shared // size, minlength=n_rows)
