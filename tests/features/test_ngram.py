"""TF-IDF view internals: hashing learns nothing, fitting sees only the given documents,
blocks swap exactly."""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from features import ngram

S = ngram.settings({"n_features": 2 ** 12, "max_features": 500, "svd_dims": 4, "min_df": 1})
TEXTS = ["the cat sat on the mat", "a dog barked loudly", "", "the cat and the dog",
         "sorting a list in python", "use sorted(xs) to copy", "café naïve ☃", "the mat"]


def test_hashed_counts_do_not_depend_on_other_texts():
    alone = ngram.hashed_counts(TEXTS[:1], S)
    together = ngram.hashed_counts(TEXTS, S)
    assert alone.shape == (1, 2 * 2 ** 12)
    assert (alone != together[:1]).nnz == 0
    assert together[2].nnz == 0  # the empty text has no n-grams


def test_fit_uses_only_the_given_documents():
    counts = ngram.hashed_counts(TEXTS, S)
    state = ngram.fit_tfidf(counts[:4], {**S, "min_df": 1})
    # A column present only in documents 4.. is not kept.
    only_later = set(counts[4:].indices) - set(counts[:4].indices)
    kept = set(state.columns[0]) | {c + S["n_features"] for c in state.columns[1]}
    assert only_later and not (only_later & kept)
    assert state.n_docs == 4


def test_transform_rows_are_normalised_and_empty_rows_zero():
    counts = ngram.hashed_counts(TEXTS, S)
    state = ngram.fit_tfidf(counts, S)
    T = ngram.transform(state, counts)
    norms = np.sqrt(np.asarray(T.multiply(T).sum(axis=1)).ravel())
    assert np.allclose(norms[[0, 1, 3]], 1.0, atol=1e-5)
    assert norms[2] == 0
    assert np.isfinite(T.data).all()


def _reference_tfidf(state, counts) -> np.ndarray:
    """The definition, dense and slow: kept columns, 1 + log tf, IDF, each analyzer's part
    L2-normalised, times 1/sqrt(2)."""
    dense = counts.toarray().astype(np.float64)
    parts = []
    for part, (cols, idf) in enumerate(zip(state.columns, state.idf)):
        block = dense[:, part * state.n_features + np.asarray(cols, dtype=np.int64)]
        block = np.where(block > 0, 1.0 + np.log(np.where(block > 0, block, 1.0)), 0.0) * idf
        norms = np.linalg.norm(block, axis=1, keepdims=True)
        parts.append(np.divide(block, norms * np.sqrt(2.0), out=np.zeros_like(block), where=norms > 0))
    return np.hstack(parts)


def test_transform_equals_the_definition_whatever_the_rows():
    """Empty rows, rows with one analyzer only, dropped columns, unsorted input indices."""
    rng = np.random.default_rng(0)
    texts = TEXTS + ["zzz", "", "q", "the the the the cat"]
    counts = ngram.hashed_counts(texts, S)
    fitted_on = ngram.fit_tfidf(counts[:5], {**S, "min_df": 2})  # most columns dropped
    words_only = ngram.settings({**S, "analyzers": ["word"]})
    word_counts = ngram.hashed_counts(texts, words_only)
    for state, c in [(ngram.fit_tfidf(counts, S), counts), (fitted_on, counts),
                     (ngram.fit_tfidf(word_counts, words_only), word_counts)]:
        T = ngram.transform(state, c)
        assert T.dtype == np.float32 and T.has_sorted_indices
        np.testing.assert_allclose(T.toarray(), _reference_tfidf(state, c), atol=1e-6)
        shuffled = c.copy()  # the same matrix with each row's entries stored out of order
        for r in range(shuffled.shape[0]):
            lo, hi = shuffled.indptr[r], shuffled.indptr[r + 1]
            order = lo + rng.permutation(hi - lo)
            shuffled.indices[lo:hi], shuffled.data[lo:hi] = shuffled.indices[order], shuffled.data[order]
        shuffled.has_sorted_indices = False
        assert (ngram.transform(state, shuffled) != T).nnz == 0
    nothing = ngram.transform(fitted_on, counts[[2, 9]])  # empty texts only
    assert nothing.shape == (2, sum(len(c) for c in fitted_on.columns)) and nothing.nnz == 0


def test_pair_blocks_swap_is_the_blocks_of_the_swapped_pair():
    counts = ngram.hashed_counts(TEXTS, S)
    p, a, b = counts[[0, 1, 2]], counts[[3, 4, 5]], counts[[6, 7, 0]]
    for dense in (False, True):
        state = ngram.fit_tfidf(counts, S, svd_docs=sp.vstack([a, b]) if dense else None)
        X, Xs, names = ngram.pair_blocks(state, p, a, b, dense)
        Y, Ys, _ = ngram.pair_blocks(state, p, b, a, dense)
        to = (lambda m: m.toarray()) if not dense else np.asarray
        assert X.shape[1] == len(names)
        assert np.allclose(to(Xs), to(Y), atol=1e-6)
        assert np.allclose(to(Ys), to(X), atol=1e-6)


def test_analyzers_and_blocks_settings():
    words = ngram.settings({**S, "analyzers": ["word"]})
    assert ngram.hashed_counts(TEXTS, words).shape == (len(TEXTS), 2 ** 12)
    counts = ngram.hashed_counts(TEXTS, S)
    state = ngram.fit_tfidf(counts, S)
    p, a, b = counts[[0, 1]], counts[[3, 4]], counts[[6, 7]]
    X, Xs, names = ngram.pair_blocks(state, p, a, b, dense=False, blocks=["diff"])
    full, _, _ = ngram.pair_blocks(state, p, a, b, dense=False)
    assert X.shape[1] == len(names) and full.shape[1] == 2 * X.shape[1] - 3
    assert np.allclose(Xs.toarray()[:, :-3], -X.toarray()[:, :-3])
    import pytest

    with pytest.raises(ValueError, match="analyzers"):
        ngram.hashed_counts(TEXTS, {**S, "analyzers": ["bytes"]})
    with pytest.raises(ValueError, match="unknown setting"):
        ngram.settings({"ngram": 3})


def test_svd_is_fitted_on_at_most_svd_max_docs(monkeypatch):
    from sklearn.decomposition import TruncatedSVD

    counts = ngram.hashed_counts(TEXTS * 3, S)
    seen = []
    real = TruncatedSVD.fit
    monkeypatch.setattr(TruncatedSVD, "fit", lambda self, X, y=None: seen.append(X.shape[0]) or real(self, X))
    capped = ngram.fit_tfidf(counts, {**S, "svd_max_docs": 10}, svd_docs=counts, seed=1)
    full = ngram.fit_tfidf(counts, {**S, "svd_max_docs": None}, svd_docs=counts, seed=1)
    assert seen == [10, len(TEXTS) * 3]
    assert capped.svd.shape == full.svd.shape
    # The draw depends on the seed only: refitting gives the same components.
    again = ngram.fit_tfidf(counts, {**S, "svd_max_docs": 10}, svd_docs=counts, seed=1)
    assert np.array_equal(again.svd, capped.svd)


def test_repeated_texts_are_hashed_once_with_the_same_rows(monkeypatch):
    from sklearn.feature_extraction.text import HashingVectorizer

    texts = TEXTS + TEXTS[:3] + [TEXTS[0]]
    seen = []
    real = HashingVectorizer.transform
    monkeypatch.setattr(HashingVectorizer, "transform", lambda self, X: seen.append(len(X)) or real(self, X))
    counts = ngram.hashed_counts(texts, S)
    assert seen == [len(TEXTS), len(TEXTS)]  # each analyzer saw each distinct text once
    monkeypatch.setattr(HashingVectorizer, "transform", real)
    one_by_one = sp.vstack([ngram.hashed_counts([t], S) for t in texts], format="csr")
    assert counts.shape == one_by_one.shape and (counts != one_by_one).nnz == 0


def test_first_at_least_searches_each_row_alone():
    # rows: [1 5 9], [], [7], [2 3], [8 9 12 15]
    cols = np.array([1, 5, 9, 7, 2, 3, 8, 9, 12, 15])
    indptr = np.array([0, 3, 3, 4, 6, 10])
    for value in range(0, 17):
        got = ngram._first_at_least(cols, indptr, value)
        want = [next((i for i in range(indptr[r], indptr[r + 1]) if cols[i] >= value), indptr[r + 1])
                for r in range(5)]
        assert got.tolist() == want, value
