"""Word and character n-gram TF-IDF of prompt, response A and response B (pure).

Two steps, so that the expensive one is data-independent and can be cached and the
fitted one is cheap enough to redo inside every fold:

1. ``hashed_counts``: term counts of word n-grams and character n-grams (within word
   boundaries), hashed into a fixed number of columns. Nothing is learned from the data.
2. ``fit_idf`` (on the training rows' documents only): which columns to keep (document
   frequency >= min_df, at most max_features of the most frequent) and their IDF weights;
   ``with_svd`` adds a TruncatedSVD for dense consumers (``fit_tfidf`` does both).
   ``transform`` applies a fitted state.

``pair_blocks`` turns the three roles into the features a member reads, with their A/B
swap: the A - B block negates under a swap, A + B and cos(A, B) stay, cos(P, A) and
cos(P, B) exchange.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

DEFAULTS = {
    "analyzers": ["word", "char"],  # which n-grams: words and/or characters
    "word_ngrams": [1, 2],    # word n-gram range (lower-cased, sklearn's token pattern)
    "char_ngrams": [3, 5],    # character n-gram range, within word boundaries
    "n_features": 2 ** 20,    # hashed columns per analyzer
    "max_chars": 4000,        # characters of each text read (a cap for very long cells)
    "min_df": 2,              # keep n-grams in at least this many training documents
    "max_features": 100_000,  # and at most this many (the most frequent) per analyzer
    "sublinear_tf": True,     # 1 + log(tf)
    "svd_dims": 64,           # dense (SVD) mode: components fitted on A and B documents
    "svd_max_docs": 12_000,   # of at most this many of them, drawn at random (a speed cap
                              # above every shared benchmark file's 10,752)
    "blocks": ["diff", "sum"],  # which of A - B, A + B a pair's features hold
}
# The settings hashed_counts reads; the others act on its output.
HASHING_KEYS = ("analyzers", "word_ngrams", "char_ngrams", "n_features", "max_chars")


def settings(overrides: dict | None = None) -> dict:
    """DEFAULTS with ``overrides``; ValueError naming an unknown key."""
    overrides = dict(overrides or {})
    unknown = set(overrides) - set(DEFAULTS)
    if unknown:
        raise ValueError(f"tfidf: unknown setting(s) {sorted(unknown)}; known: {sorted(DEFAULTS)}")
    return {**DEFAULTS, **overrides}


def _vectorizers(s: dict):
    from sklearn.feature_extraction.text import HashingVectorizer

    common = dict(n_features=int(s["n_features"]), alternate_sign=False, norm=None,
                  lowercase=True, dtype=np.float32)
    unknown = set(s["analyzers"]) - {"word", "char"}
    if unknown or not s["analyzers"]:
        raise ValueError(f"tfidf: analyzers must be a non-empty subset of [word, char], got {s['analyzers']}")
    out = []
    if "word" in s["analyzers"]:
        out.append(HashingVectorizer(analyzer="word", ngram_range=tuple(s["word_ngrams"]), **common))
    if "char" in s["analyzers"]:
        out.append(HashingVectorizer(analyzer="char_wb", ngram_range=tuple(s["char_ngrams"]), **common))
    return out


def hashed_counts(texts: list[str], s: dict):
    """Term counts of ``texts``: float32 CSR [len(texts), k * n_features], one block of
    hashed columns per analyzer (word, then char). A text that occurs several times (a
    prompt asked again, a response repeated across pairs) is hashed once."""
    import scipy.sparse as sp

    first: dict[str, int] = {}
    inverse = np.fromiter((first.setdefault(t[: int(s["max_chars"])], len(first)) for t in texts),
                          dtype=np.int64, count=len(texts))
    distinct = list(first)
    counts = sp.hstack([v.transform(distinct) for v in _vectorizers(s)], format="csr")
    return counts if len(distinct) == len(texts) else counts[inverse]


@dataclass
class TfidfState:
    """A fitted TF-IDF: kept columns per analyzer, their IDF, optional SVD components."""

    columns: list[np.ndarray]          # per analyzer: int indices into its hashed columns
    idf: list[np.ndarray]              # per analyzer: float32 [len(columns)]
    n_features: int
    sublinear_tf: bool
    svd: np.ndarray | None = None      # float32 [n_kept_total, svd_dims] or None
    n_docs: int = 0
    extra: dict = field(default_factory=dict)


def fit_idf(docs, s: dict) -> TfidfState:
    """Column selection and IDF fitted on ``docs`` (CSR counts [n_docs, k * n_features]).

    Returns: TfidfState without SVD. Nothing here depends on ``blocks`` or the SVD
    settings, so views that differ only in those can share one fit.
    """
    n_feat = int(s["n_features"])
    columns, idf = [], []
    n = docs.shape[0]
    for part in range(docs.shape[1] // n_feat):
        block = docs[:, part * n_feat:(part + 1) * n_feat]
        df = np.bincount(block.indices, minlength=n_feat) if block.nnz else np.zeros(n_feat, int)
        keep = np.flatnonzero(df >= int(s["min_df"]))
        if len(keep) > int(s["max_features"]):
            order = np.lexsort((keep, -df[keep]))  # most frequent first, ties by column
            keep = np.sort(keep[order[: int(s["max_features"])]])
        columns.append(keep)
        idf.append((np.log((1.0 + n) / (1.0 + df[keep])) + 1.0).astype(np.float32))
    return TfidfState(columns=columns, idf=idf, n_features=n_feat,
                      sublinear_tf=bool(s["sublinear_tf"]), n_docs=n)


def with_svd(state: TfidfState, svd_docs, s: dict, seed: int = 0) -> TfidfState:
    """A copy of ``state`` with a TruncatedSVD fitted on the TF-IDF of ``svd_docs`` (counts
    of the A and B texts of the same training rows; at most ``svd_max_docs`` of them, drawn
    with ``seed``). ``svd_dims`` 0 gives the state unchanged."""
    import dataclasses

    if int(s["svd_dims"]) <= 0:
        return state
    from sklearn.decomposition import TruncatedSVD

    cap = s.get("svd_max_docs")
    if cap is not None and svd_docs.shape[0] > int(cap):
        pick = np.sort(np.random.default_rng(seed).choice(svd_docs.shape[0], int(cap), replace=False))
        svd_docs = svd_docs[pick]
    X = transform(state, svd_docs)
    k = int(min(int(s["svd_dims"]), max(1, min(X.shape) - 1)))
    svd = TruncatedSVD(n_components=k, algorithm="randomized", n_iter=4, random_state=seed)
    svd.fit(X)
    return dataclasses.replace(state, svd=svd.components_.T.astype(np.float32))


def fit_tfidf(docs, s: dict, svd_docs=None, seed: int = 0) -> TfidfState:
    """``fit_idf`` on ``docs``, then ``with_svd`` on ``svd_docs`` unless it is None."""
    state = fit_idf(docs, s)
    return state if svd_docs is None else with_svd(state, svd_docs, s, seed)


def transform(state: TfidfState, counts):
    """TF-IDF of ``counts`` under a fitted state: float32 CSR [n, n_kept]; each analyzer's
    part is L2-normalised and scaled by 1/sqrt(2), so a non-empty row has norm <= 1.

    One pass over the non-zeros (a column map instead of sparse fancy indexing), with the
    row structure kept as it is: the kept entries' row pointers come from a running count,
    and each (row, analyzer) segment's norm from one ``reduceat`` over the stored order
    (a row's columns are sorted and analyzers are column ranges, so each row holds its
    analyzers' segments one after the other; where a segment starts is a binary search
    per row). Kept columns stay in order, so row indices stay sorted. The log of
    sublinear tf is taken only for counts other than 1, and the norm divides in place.
    """
    import scipy.sparse as sp

    counts = counts.tocsr()
    if not counts.has_sorted_indices:
        counts = counts.sorted_indices()
    n, n_parts = counts.shape[0], len(state.columns)
    bounds = np.cumsum([0] + [len(c) for c in state.columns])
    width, nnz = int(bounds[-1]), counts.nnz
    colmap = np.full(n_parts * state.n_features, -1, dtype=np.int32)
    for part, cols in enumerate(state.columns):
        colmap[part * state.n_features + np.asarray(cols, dtype=np.int64)] = \
            np.arange(bounds[part], bounds[part + 1], dtype=np.int32)
    new = colmap[counts.indices[:nnz]]
    keep = new >= 0
    kept = np.zeros(nnz + 1, dtype=np.int64)
    np.cumsum(keep, out=kept[1:])
    indptr = kept[counts.indptr]
    cols = new[keep]
    total = len(cols)
    if total == 0:
        return sp.csr_matrix((n, width), dtype=np.float32)
    idf = np.concatenate([np.asarray(i, dtype=np.float32) for i in state.idf])
    data = counts.data[:nnz][keep].astype(np.float32, copy=False)  # a new array (mask)
    if state.sublinear_tf:
        # 1 + log(tf), computed where tf != 1 only (log 1 = 0: most n-grams occur once).
        more = np.flatnonzero(data != 1.0)
        data[more] = 1.0 + np.log(data[more])
    data *= idf[cols]
    # Segment starts, row by row: the row's start, then where each later analyzer begins
    # (a vectorised binary search within each row's sorted columns).
    starts = [indptr[:-1]]
    for part in range(1, n_parts):
        starts.append(_first_at_least(cols, indptr, int(bounds[part])))
    seg = np.stack(starts, axis=1).ravel()
    lengths = np.diff(np.append(seg, total))
    sums = np.add.reduceat(np.square(data, dtype=np.float64), np.minimum(seg, total - 1))
    sums[lengths == 0] = 0.0  # reduceat gives an empty segment its next element
    # x / (norm * sqrt 2) in float64, rounded into the float32 array (no float64 copy).
    np.divide(data, np.repeat(np.sqrt(sums) * np.sqrt(2.0), lengths), out=data,
              casting="unsafe")
    return sp.csr_matrix((data, cols, indptr), shape=(n, width))


def _first_at_least(cols: np.ndarray, indptr: np.ndarray, value: int) -> np.ndarray:
    """Per row r, the first position in [indptr[r], indptr[r + 1]) whose column is >= value
    (indptr[r + 1] when none): columns are sorted within a row."""
    lo, hi = indptr[:-1].copy(), indptr[1:].copy()
    while True:
        open_ = lo < hi
        if not open_.any():
            return lo
        mid = (lo + hi) // 2
        below = np.zeros(len(lo), dtype=bool)
        below[open_] = cols[mid[open_]] < value
        lo = np.where(below, mid + 1, lo)
        hi = np.where(open_ & ~below, mid, hi)


def _row_dot(x, y) -> np.ndarray:
    return np.asarray(x.multiply(y).sum(axis=1)).ravel().astype(np.float32)


def pair_blocks(state: TfidfState, p, a, b, dense: bool, blocks=("diff", "sum")):
    """Features of pairs from the counts of their prompt ``p``, A ``a`` and B ``b``.

    Returns: (X, X_swapped, names). Sparse mode (``dense`` False, no SVD needed): CSR
    [A - B | A + B | cos(P,A), cos(P,B), cos(A,B)]. Dense mode: float32 [SVD(A) - SVD(B) |
    SVD(A) + SVD(B) | the three cosines]. ``blocks`` picks which of the difference and sum
    blocks are there. X_swapped is the same rows with A and B exchanged.
    """
    import scipy.sparse as sp

    tp, ta, tb = (transform(state, c) for c in (p, a, b))
    cos = np.column_stack([_row_dot(tp, ta), _row_dot(tp, tb), _row_dot(ta, tb)])
    cos_sw = cos[:, [1, 0, 2]]
    cos_names = ["tfidf__a_cos_prompt", "tfidf__b_cos_prompt", "tfidf__p_cos_ab"]
    if dense:
        if state.svd is None:
            raise ValueError("tfidf dense mode needs a state fitted with svd_docs")
        za, zb = np.asarray(ta @ state.svd), np.asarray(tb @ state.svd)
    else:
        za, zb = ta, tb
    parts, parts_sw, names = [], [], []
    tag = "svd" if dense else ""
    for block in blocks:
        if block == "diff":
            d = za - zb
            parts.append(d), parts_sw.append(-d if dense else None)
        elif block == "sum":
            d = za + zb
            parts.append(d), parts_sw.append(d)
        else:
            raise ValueError(f"tfidf: blocks must be diff and/or sum, got {block!r}")
        names += [f"tfidf__{block}_{tag}{i}" for i in range(d.shape[1])]
    names += cos_names
    if dense:
        return (np.hstack(parts + [cos]).astype(np.float32),
                np.hstack(parts_sw + [cos_sw]).astype(np.float32), names)
    X = sp.hstack([sp.csr_matrix(x) for x in parts] + [sp.csr_matrix(cos)], format="csr")
    # The swapped rows differ only in signs and in the order of the two prompt cosines.
    Xs = X.copy()
    width = sum(x.shape[1] for x in parts)
    sign = np.concatenate([np.full(x.shape[1], -1.0 if b == "diff" else 1.0, np.float32)
                           for b, x in zip(blocks, parts)] + [np.ones(3, np.float32)])
    Xs.data *= sign[Xs.indices]
    column_of = np.concatenate([np.arange(width), [width + 1, width, width + 2]])
    Xs.indices = column_of.astype(Xs.indices.dtype)[Xs.indices]
    Xs.has_sorted_indices = False
    Xs.sort_indices()
    return X, Xs, names
