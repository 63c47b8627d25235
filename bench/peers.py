"""Simple peers the stack is measured against: what a Kaggle competitor writes in an
afternoon, each with A/B swap augmentation and swap TTA, on the project's shared folds.

- ``length_lr``: logistic regression on characters, words and lines of A and B and their
  log ratios (C chosen by inner grouped CV).
- ``tfidf_lgbm``: word (1-2) and char (3-5) TF-IDF (scikit-learn's TfidfVectorizer) of
  prompt, A and B fitted on the training fold, TruncatedSVD(64) fitted on its A and B
  texts, [A-B, A+B] of the SVD vectors, prompt-response and A-B TF-IDF cosines and length
  counts, LightGBM multiclass with default parameters and early stopping on an inner
  grouped split.
- ``emb_lr``: the full frozen embedding vectors [p, a, b, a-b, |a-b|, cos(p,a), cos(p,b)],
  standardised, multinomial logistic regression with C by inner grouped CV.

They reuse the project's cross-fitting loop (``pipeline.crossfit``: folds x seeds, swap
augmentation and TTA) so that every column of the quality table sees the same rows in the
same way; their features and vectorisers are their own.
"""
from __future__ import annotations

import numpy as np

from pipeline.crossfit import FoldMatrices, cross_fit, cross_fit_arrays
from pipeline.data import TEXT_COLUMNS, join_turns


def _texts(frame):
    return {c: [join_turns(t, "\n\n") for t in frame[c]] for c in TEXT_COLUMNS}


def _lengths(texts: list[str]) -> np.ndarray:
    return np.array([[len(t), len(t.split()), t.count("\n") + 1 if t else 0] for t in texts],
                    dtype=np.float64)


def length_matrices(frame):
    """(X, X_swapped): chars/words/lines of A and B, and log1p ratios [n, 9]."""
    t = _texts(frame)
    a, b = _lengths(t["response_a"]), _lengths(t["response_b"])
    lr = np.log1p(a) - np.log1p(b)
    return (np.hstack([a, b, lr]).astype(np.float32), np.hstack([b, a, -lr]).astype(np.float32))


def length_lr(train, test, y, folds, groups, **kw):
    X, Xs = length_matrices(train)
    Xt, Xts = length_matrices(test)
    return cross_fit_arrays("linear", {}, X, Xs, Xt, Xts, [f"f{i}" for i in range(9)], y, folds,
                            groups, **kw)


def emb_matrices(e: dict):
    from features.embedding import row_cosine

    p, a, b = (np.asarray(e[c], dtype=np.float32) for c in TEXT_COLUMNS)
    ca, cb = row_cosine(p, a)[:, None], row_cosine(p, b)[:, None]
    X = np.hstack([p, a, b, a - b, np.abs(a - b), ca, cb]).astype(np.float32)
    Xs = np.hstack([p, b, a, b - a, np.abs(a - b), cb, ca]).astype(np.float32)
    return X, Xs


def emb_lr(train_emb: dict, test_emb: dict, y, folds, groups, **kw):
    X, Xs = emb_matrices(train_emb)
    Xt, Xts = emb_matrices(test_emb)
    return cross_fit_arrays("linear", {}, X, Xs, Xt, Xts, [f"e{i}" for i in range(X.shape[1])],
                            y, folds, groups, **kw)


def tfidf_lgbm(train, test, y, folds, groups, svd_dims: int = 64, **kw):
    import scipy.sparse as sp
    from sklearn.decomposition import TruncatedSVD
    from sklearn.feature_extraction.text import TfidfVectorizer

    tr, te = _texts(train), _texts(test)
    len_tr = [_lengths(tr[c]) for c in ("response_a", "response_b")]
    len_te = [_lengths(te[c]) for c in ("response_a", "response_b")]

    def block(vecs, svd, t, lens):
        P, A, B = (sp.hstack([v.transform([s[:4000] for s in t[c]]) for v in vecs], format="csr") / np.sqrt(2)
                   for c in TEXT_COLUMNS)
        za, zb = A @ svd.components_.T, B @ svd.components_.T
        dot = lambda x, z: np.asarray(x.multiply(z).sum(axis=1)).ravel()  # noqa: E731
        cos = np.column_stack([dot(P, A), dot(P, B), dot(A, B)])
        la, lb = lens
        X = np.hstack([za - zb, za + zb, cos, la, lb, la - lb])
        Xs = np.hstack([zb - za, za + zb, cos[:, [1, 0, 2]], lb, la, lb - la])
        return X.astype(np.float32), Xs.astype(np.float32)

    def fold_matrices(k, rows):
        idx = np.flatnonzero(rows)
        docs = [tr[c][i][:4000] for c in TEXT_COLUMNS for i in idx]
        vecs = [TfidfVectorizer(analyzer="word", ngram_range=(1, 2), min_df=2, max_features=20000,
                                sublinear_tf=True).fit(docs),
                TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), min_df=2, max_features=30000,
                                sublinear_tf=True).fit(docs)]
        ab = sp.vstack([sp.hstack([v.transform([tr[c][i][:4000] for i in idx]) for v in vecs])
                        for c in ("response_a", "response_b")], format="csr") / np.sqrt(2)
        svd = TruncatedSVD(n_components=min(svd_dims, ab.shape[1] - 1), random_state=0).fit(ab)
        X, Xs = block(vecs, svd, tr, len_tr)
        Xt, Xts = block(vecs, svd, te, len_te)
        return FoldMatrices(X, Xs, Xt, Xts, [f"t{i}" for i in range(X.shape[1])])

    return cross_fit("lgbm", {}, fold_matrices, y, folds, groups, len(test), **kw)
