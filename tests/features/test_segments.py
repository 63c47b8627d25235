"""features.segments: per-row set sizes, intersections, n-grams and expansion equal the
plain-Python set answers, including when codes must be densified to fit int64 keys."""
from __future__ import annotations

from unittest import mock

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from features import segments

PROFILE = settings(max_examples=80, deadline=None)

_rows = st.lists(st.lists(st.integers(0, 6), max_size=12), min_size=1, max_size=8)


def _segmented(rows: list[list[int]], scale: int = 1) -> segments.Segmented:
    offsets = np.zeros(len(rows) + 1, dtype=np.int64)
    np.cumsum([len(r) for r in rows], out=offsets[1:])
    codes = np.array([c * scale for r in rows for c in r], dtype=np.int64)
    return offsets, codes


@PROFILE
@given(st.lists(_rows, min_size=2, max_size=2).filter(lambda x: len(x[0]) == len(x[1])),
       st.sampled_from([1, 2**40]))
def test_sets_and_intersections_match_python_sets(pair, scale):
    a_rows, b_rows = pair
    n = len(a_rows)
    # scale 2**40 makes row * size overflow int64, so row_sets must densify the codes.
    size = 7 * scale
    seqs = [_segmented(a_rows, scale), _segmented(b_rows, scale)]
    (sa, sb), key_size = segments.row_sets(seqs, size)
    ka, kb = sa.keys, sb.keys
    assert sa.sizes.tolist() == [len(set(r)) for r in a_rows]
    assert sb.sizes.tolist() == [len(set(r)) for r in b_rows]
    assert (np.diff(ka) > 0).all() and len(ka) == sa.sizes.sum() == sa.n_groups
    grouped, _ = segments.row_sets(seqs, size, with_keys=False, with_groups=True)
    for got, rows in zip(grouped, (a_rows, b_rows)):
        assert got.keys is None and got.sizes.tolist() == [len(set(r)) for r in rows]
        pairs = [(i, c) for i, r in enumerate(rows) for c in r]
        # Same (row, code) <-> same group id; ids are dense and increase with the row.
        assert len(set(zip(pairs, got.groups.tolist()))) == len(set(pairs)) == got.n_groups
        assert sorted(set(got.groups.tolist())) == list(range(got.n_groups))
        row_of = [i for i, r in enumerate(rows) for _ in r]
        assert all(g1 < g2 for (r1, g1) in zip(row_of, got.groups) for (r2, g2)
                   in zip(row_of, got.groups) if r1 < r2)
    want = [len(set(x) & set(y)) for x, y in zip(a_rows, b_rows)]
    assert segments.intersection_sizes(ka, kb, key_size, n).tolist() == want


@PROFILE
@given(st.lists(_rows, min_size=2, max_size=2).filter(lambda x: len(x[0]) == len(x[1])),
       st.integers(1, 4), st.sampled_from([7, 2**31 - 1]))
def test_ngrams_are_shared_exact_codes(pair, n, size):
    seqs = [_segmented(r) for r in pair]
    codes, gram_size = segments.ngram_codes(seqs, size, n)
    grams = [segments.within_rows(off, c, n) for (off, _), c in zip(seqs, codes)]
    decoded = []
    for (off, codes), rows in zip(grams, pair):
        got_rows = [codes[off[i]:off[i + 1]].tolist() for i in range(len(rows))]
        want_rows = [list(zip(*[r[k:] for k in range(n)])) for r in rows]
        assert [len(g) for g in got_rows] == [len(w) for w in want_rows]
        assert all(0 <= c < gram_size for g in got_rows for c in g)
        decoded.append((got_rows, want_rows))
    # Same n-gram <-> same code, across both inputs.
    pairs = {(c, w) for got, want in decoded for g, ws in zip(got, want) for c, w in zip(g, ws)}
    assert len({c for c, _ in pairs}) == len({w for _, w in pairs}) == len(pairs)


@PROFILE
@given(_rows)
def test_distinct_per_row_of_row_major_codes(rows):
    offsets, codes = _segmented(rows)
    row_major = codes + 100 * np.repeat(np.arange(len(rows)), [len(r) for r in rows])
    assert segments.distinct_per_row(offsets, row_major).tolist() == [len(set(r)) for r in rows]


_small_rows = st.lists(st.lists(st.integers(0, 6), max_size=4), min_size=1, max_size=3)


@PROFILE
@given(st.one_of(st.tuples(_rows, st.just(False)), st.tuples(_small_rows, st.just(True))),
       st.integers(1, 4))
def test_row_local_ngrams_count_distinct_ngrams(case, n):
    rows, tiny_limit = case
    offsets, codes = _segmented(rows)
    (words,), _ = segments.row_sets([(offsets, codes)], 7, with_groups=True)
    # A key limit of 150 sends n_groups * width**(n - 1) over it (the densifying fallback)
    # while up to 12 items still pack after densifying.
    limit = 150 if tiny_limit else segments._KEY_LIMIT
    with mock.patch.object(segments, "_KEY_LIMIT", limit):
        grams = segments.row_local_ngrams(offsets, words.groups, words.sizes, n)
        got = segments.distinct_per_row(*segments.within_rows(offsets, grams, n))
    assert got.tolist() == [len(set(zip(*[r[k:] for k in range(n)]))) for r in rows]


def test_combine_densifies_instead_of_overflowing():
    a = [np.array([2**40, 5, 2**40], dtype=np.int64)]
    b = [np.array([2**40 - 1, 2**40 - 1, 3], dtype=np.int64)]
    (codes,), size = segments.combine(a, b, 2**41, 2**41)
    assert size <= 2**62 and len(set(codes.tolist())) == 3 and codes.min() >= 0


@PROFILE
@given(st.lists(st.lists(st.integers(-5, 5), max_size=5), min_size=1, max_size=6),
       st.lists(st.integers(0, 5), max_size=20))
def test_expand_and_segment_sums(runs, picks):
    seg_off, seg_values = _segmented(runs)
    codes = np.array([p % len(runs) for p in picks], dtype=np.int64)
    lengths, values = segments.expand(codes, seg_off, seg_values)
    assert lengths.tolist() == [len(runs[c]) for c in codes]
    assert values.tolist() == [v for c in codes for v in runs[c]]
    assert segments.segment_sums(seg_off, seg_values).tolist() == [sum(r) for r in runs]


def test_grouped_sort_checks_the_largest_key_not_the_last():
    # One row whose last key is small but whose first key needs 62 bits: packing the
    # position under every key would overflow int64, so the exact argsort path must run.
    off = np.array([0, 3], dtype=np.int64)
    keys = np.array([2**61 + 5, 7, 3], dtype=np.int64)
    sorted_keys, groups = segments._sort_with_groups(off, keys.copy())
    assert sorted_keys.tolist() == sorted(keys.tolist())
    new = np.ones(3, dtype=bool)
    new[1:] = sorted_keys[1:] != sorted_keys[:-1]
    assert groups(new).tolist() == [2, 1, 0]  # dense ids in sorted order, at original places
