"""Multinomial logistic regression behind the learner protocol (kind ``linear``).

Dense input is standardised (mean 0, variance 1 on the training rows); in sparse CSR input
(TF-IDF blocks beside dense columns) columns within [-1, 1] keep their values and the
others are divided by their maximum absolute value, which keeps it sparse (see _Scaler).
The inverse regularisation strength C is chosen by an inner cross-validation inside the
training rows, grouped by prompt (a row and its swapped copy are one group), on
``inner_folds`` folds over the grid ``Cs``; the model is then refitted on every training
row with the chosen C. Params: ``C`` (a number skips the search), ``Cs``, ``inner_folds``,
``refine``, ``patience``, ``search_rows`` (see ``_choose_C``), ``max_iter``, ``tol``,
``equivariant``.

With swap augmentation the cross-fitting loop hands the learner each training row in both
A/B orders (``fit_pairs``). The augmented problem is invariant under exchanging A and B, so
its unique (L2-regularised) optimum is swap-equivariant: with d = (x - swap x) / 2 and
s = (x + swap x) / 2, its logits are (w.d, -w.d, t.s + c) up to a common shift, and the
augmented objective 1/2 ||W||^2 + C sum_aug loss equals, at the best split of W,
||w||^2 + ||t||^2 / 3 + 2 C sum loss over the original rows. ``equivariant: true`` (default)
fits that smaller problem directly (``_fit_pairs``: half the rows, one weight vector per
part instead of three over every column; 6-16x faster on TF-IDF, same optimum as
scikit-learn's fit of the augmented rows, checked in the tests). Such a model is exactly
swap-equivariant, so swap TTA changes nothing; it predicts from both orders
(``predict_pairs``).
"""
from __future__ import annotations

import pickle
import warnings
from typing import Any

import numpy as np
import pandas as pd

from pipeline.data import swap_labels, swap_proba
from pipeline.learners.base import N_CLASSES, full_proba

# The best C differs by four orders of magnitude between views (full embeddings of ~2k
# rows: ~3e-4; unscaled TF-IDF: ~1), so the grid is wide: decades, then the best one's
# neighbours at a third and three times it.
DEFAULTS = {"C": None, "Cs": [1e-4, 1e-3, 0.01, 0.1, 1.0, 10.0], "refine": True,
            "inner_folds": 3, "patience": 1, "search_rows": 4_000, "max_iter": 300,
            "tol": 1e-4, "equivariant": True}


def _log_loss(y: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(p, 1e-12, 1.0)
    return float(-np.mean(np.log(p[np.arange(len(y)), y] / p.sum(axis=1))))


# Below this many training rows a fit runs on one thread.
SMALL_FIT_ROWS = 10_000


def _column_maxabs(X) -> np.ndarray:
    """float64 [n_columns]: the largest absolute value of each column of a sparse X."""
    X = X.tocsr()
    out = np.zeros(X.shape[1])
    np.maximum.at(out, X.indices, np.abs(X.data).astype(np.float64))
    return out


class _Scaler:
    """Column scaling fitted on training rows.

    Dense input is standardised. Sparse input (TF-IDF blocks, possibly beside dense
    columns) keeps every column whose values lie in [-1, 1] (TF-IDF weights, cosines,
    unit-vector components: already on one scale) and divides the others (counts) by their
    maximum absolute value; nothing is centred, so the matrix stays sparse. Standardising
    TF-IDF columns instead made rare or common n-grams as loud as the length of an answer
    (HH-RLHF harmless, one fold: 0.642 with the 135 mostly non-zero columns standardised,
    0.626 unscaled; HH-RLHF helpful OOF 0.72 with every column scaled to its spread).
    """

    def fit(self, X) -> "_Scaler":
        import scipy.sparse as sp

        if sp.issparse(X):
            maxabs = _column_maxabs(X)
            scale = np.where(maxabs > 1.0, maxabs, 1.0)
            self.mean = None
        else:
            X = np.asarray(X, dtype=np.float64)
            self.mean = X.mean(axis=0)
            scale = X.std(axis=0)
        self.scale = np.where(scale > 0, scale, 1.0)
        return self

    def fit_pairs(self, X, X_swapped) -> "_Scaler":
        """The statistics of ``fit`` on the rows of X and X_swapped stacked (without
        stacking them): swap-symmetric, so scaling commutes with the A/B swap."""
        import scipy.sparse as sp

        if sp.issparse(X):
            maxabs = np.maximum(_column_maxabs(X), _column_maxabs(X_swapped))
            scale = np.where(maxabs > 1.0, maxabs, 1.0)
            self.mean = None
        else:
            X, Xs = np.asarray(X, dtype=np.float64), np.asarray(X_swapped, dtype=np.float64)
            self.mean = 0.5 * (X.mean(axis=0) + Xs.mean(axis=0))
            scale = np.sqrt(0.5 * (((X - self.mean) ** 2).mean(axis=0)
                                   + ((Xs - self.mean) ** 2).mean(axis=0)))
        self.scale = np.where(scale > 0, scale, 1.0)
        return self

    def pair_parts(self, X, X_swapped):
        """``_pair_parts`` of the scaled X and X_swapped, scaled after the split (the
        statistics are swap-symmetric, so d / scale and (s - mean) / scale are the parts of
        the scaled rows): no scaled copies of X and X_swapped are made."""
        D, S = _pair_parts(X, X_swapped)
        inv = 1.0 / self.scale
        if self.mean is None:  # sparse: D and S are fresh float64 copies, scale in place
            if not np.all(self.scale == 1.0):
                D.data *= inv[D.indices]
                S.data *= inv[S.indices]
            return D, S
        return D * inv, (S - self.mean) * inv

    def transform(self, X):
        import scipy.sparse as sp

        if sp.issparse(X):
            X = X.tocsr()
            if self.mean is None and np.all(self.scale == 1.0):
                return X
            out = X.astype(np.float64)  # a copy: scale its values column by column
            out.data *= (1.0 / self.scale)[out.indices]
            return out
        X = np.asarray(X, dtype=np.float64)
        return (X - self.mean) / self.scale if self.mean is not None else X / self.scale

def _fit_lr(X, y: np.ndarray, C: float, params: dict, warm=None):
    from threadpoolctl import threadpool_limits

    # Small fits run faster on one BLAS/OpenMP thread: a fit of 300 rows spent most of its
    # time synchronising threads (0.10 s with 2 threads, 0.04 s with one).
    if X.shape[0] < SMALL_FIT_ROWS:
        with threadpool_limits(1):
            return _fit_lr_threads(X, y, C, params, warm)
    return _fit_lr_threads(X, y, C, params, warm)


def _fit_lr_threads(X, y: np.ndarray, C: float, params: dict, warm=None):
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=C, max_iter=int(params["max_iter"]), tol=float(params["tol"]),
                               solver="lbfgs", warm_start=warm is not None)
    if warm is not None:
        model.coef_, model.intercept_, model.classes_ = warm
    with warnings.catch_warnings():
        # Non-convergence at max_iter is expected on the weakest regularisation of the grid;
        # the inner score decides whether that C is any good.
        warnings.simplefilter("ignore")
        model.fit(X, y)
    return model


def _pair_parts(X, X_swapped):
    """(D, S) = ((X - X_swapped) / 2, (X + X_swapped) / 2) as float64 (CSR without the
    exact zeros where the parts cancel, so their non-zeros add up to about X's)."""
    import scipy.sparse as sp

    if sp.issparse(X):
        X, X_swapped = X.astype(np.float64), X_swapped.astype(np.float64)
        D, S = (X - X_swapped).tocsr(), (X + X_swapped).tocsr()
        for M in (D, S):
            M.data *= 0.5
            M.eliminate_zeros()
        return D, S
    X, X_swapped = np.asarray(X, dtype=np.float64), np.asarray(X_swapped, dtype=np.float64)
    return 0.5 * (X - X_swapped), 0.5 * (X + X_swapped)


def _pair_logits(theta: np.ndarray, D, S) -> np.ndarray:
    """Logits [n, 3] = (w.d, -w.d, t.s + c) of theta = [w (p), t (p), c] (c = -inf: a
    model fitted without ties)."""
    p = D.shape[1]
    m = np.asarray(D @ theta[:p]).ravel()
    q = np.asarray(S @ theta[p:2 * p]).ravel() + theta[-1] if np.isfinite(theta[-1]) else \
        np.full(len(m), -np.inf)
    return np.column_stack([m, -m, q])


def _fit_pairs(D, S, y: np.ndarray, C: float, params: dict, x0: np.ndarray | None = None):
    """theta minimising mean loss + (||w||^2 + ||t||^2 / 3) / (2 C n) over the pairs: the
    augmented problem of scikit-learn's LogisticRegression (its mean-scaled objective,
    L-BFGS with its gtol / ftol / maxls) reduced to its swap-equivariant optimum. ``x0``: a
    previous theta to start from. Returns (theta [2 p + 1], iterations).

    Without ties among the labels scikit-learn fits a binary model (one weight vector v on
    a - b, penalty ||v||^2 / 2): here v = 2 w, so the penalty is ||w||^2 / (C n), t = 0 and
    the tie logit is -inf (probability 0, as scikit-learn's missing class).
    """
    from scipy.optimize import minimize
    from scipy.special import logsumexp

    n, p = D.shape
    # Columns that are zero in every row keep a zero weight: optimise over the others only
    # (L-BFGS's own work grows with the length of its vector).
    dcols, scols = _active_columns(D), _active_columns(S)
    D, S = D[:, dcols], S[:, scols]
    pd_, ps = len(dcols), len(scols)
    Y = np.zeros((n, N_CLASSES))
    Y[np.arange(n), y] = 1.0
    binary = not Y[:, 2].any()
    DT, ST = D.T, S.T
    lam = 1.0 / (float(C) * n)

    def objective(x):
        w = x[:pd_]
        m = np.asarray(D @ w).ravel()
        if binary:
            Z = np.column_stack([m, -m])
            lse = logsumexp(Z, axis=1)
            R = (np.exp(Z - lse[:, None]) - Y[:, :2]) / n
            loss = float(np.mean(lse - (Z * Y[:, :2]).sum(axis=1)))
            grad = np.asarray(DT @ (R[:, 0] - R[:, 1])).ravel() + 2.0 * lam * w
            return loss + lam * (w @ w), grad
        t = x[pd_:pd_ + ps]
        Z = np.column_stack([m, -m, np.asarray(S @ t).ravel() + x[-1]])
        lse = logsumexp(Z, axis=1)
        R = (np.exp(Z - lse[:, None]) - Y) / n
        gq = R[:, 2]
        grad = np.concatenate([np.asarray(DT @ (R[:, 0] - R[:, 1])).ravel() + lam * w,
                               np.asarray(ST @ gq).ravel() + (lam / 3.0) * t, [gq.sum()]])
        loss = float(np.mean(lse - (Z * Y).sum(axis=1)))
        return loss + 0.5 * lam * (w @ w + t @ t / 3.0), grad

    start = np.zeros(pd_ + ps + 1)
    if x0 is not None and np.isfinite(x0[-1]):
        start[:pd_], start[pd_:pd_ + ps], start[-1] = x0[dcols], x0[p + scols], x0[-1]
    res = minimize(objective, start[:pd_] if binary else start, jac=True, method="L-BFGS-B",
                   options={"maxiter": int(params["max_iter"]), "maxls": 50,
                            "gtol": float(params["tol"]), "ftol": 64 * np.finfo(float).eps})
    theta = np.zeros(2 * p + 1)
    theta[dcols] = res.x[:pd_]
    if binary:
        theta[-1] = -np.inf
    else:
        theta[p + scols], theta[-1] = res.x[pd_:pd_ + ps], res.x[-1]
    return theta, int(res.nit)


def _active_columns(M) -> np.ndarray:
    """Indices of the columns of M with a non-zero value."""
    import scipy.sparse as sp

    if sp.issparse(M):
        return np.flatnonzero(np.bincount(M.indices, minlength=M.shape[1]))
    return np.flatnonzero(np.any(M != 0, axis=0))


def _pair_proba(theta: np.ndarray, D, S) -> np.ndarray:
    Z = _pair_logits(theta, D, S)
    Z -= Z.max(axis=1, keepdims=True)
    P = np.exp(Z)
    return P / P.sum(axis=1, keepdims=True)


def _subsample_groups(groups: np.ndarray, cap, seed: int) -> np.ndarray | None:
    """Indices of the rows of whole prompt groups (drawn with ``seed``) adding up to about
    ``cap`` rows, or None when there are no more than ``cap`` rows."""
    if cap is None or len(groups) <= int(cap):
        return None
    uniq = np.unique(groups)
    order = np.random.default_rng(seed).permutation(uniq)
    sizes = np.bincount(np.searchsorted(uniq, groups), minlength=len(uniq))[
        np.searchsorted(uniq, order)]
    chosen = order[: max(2, int(np.searchsorted(np.cumsum(sizes), int(cap))))]
    return np.flatnonzero(np.isin(groups, chosen))


def _inner_splits(y: np.ndarray, groups: np.ndarray, k: int) -> list:
    """Prompt-grouped (train, valid) index pairs whose training part holds two classes."""
    from sklearn.model_selection import GroupKFold

    k = min(int(k), len(np.unique(groups)))
    if k < 2:
        return []
    return [(tr, va) for tr, va in GroupKFold(n_splits=k).split(np.zeros(len(y)), y, groups)
            if len(np.unique(y[tr])) >= 2]


class LinearLearner:
    """Standardised multinomial logistic regression with C chosen by inner grouped CV."""

    kind = "linear"
    VERSION = 6  # bump when a change of code changes fitted models
    uses_inner_split = False
    accepts_sparse = True
    suffix = ".pkl"
    importance_label = "mean |coefficient| on scaled features (summed over models)"

    def __init__(self, params: dict):
        unknown = set(params) - set(DEFAULTS)
        if unknown:
            raise ValueError(f"linear learner: unknown param(s) {sorted(unknown)}; "
                             f"known: {sorted(DEFAULTS)}")
        self.params = {**DEFAULTS, **params}
        self.scaler: _Scaler | None = None
        self.model = None
        self.classes = np.arange(N_CLASSES)
        self.constant: np.ndarray | None = None
        self.C: float | None = None
        self.inner_scores: dict[float, float] = {}
        self.theta: np.ndarray | None = None  # the equivariant fit's [w, t, c], or None
        self.n_iter: int | None = None

    @property
    def pair_fitted(self) -> bool:
        """Fitted by ``fit_pairs``: predicts with ``predict_pairs`` only."""
        return self.theta is not None

    def fits_pairs(self) -> bool:
        """Whether ``fit_pairs`` (rather than ``fit`` on both orders stacked) is used."""
        return bool(self.params["equivariant"])

    def config(self) -> dict:
        """Every param this learner fits with (defaults resolved) and the code version:
        part of cache keys."""
        return {**self.params, "version": self.VERSION}

    def _search(self, inner_loss) -> float:
        """The C of ``Cs`` with the lowest ``inner_loss(C, chain)``.

        The grid is walked from the strongest regularisation up, each fit warm-starting the
        next (``chain``), until the loss has risen ``patience`` times in a row (it is
        unimodal in C in practice); with ``refine``, the best C's neighbours at a third and
        three times it are tried too.
        """
        best, worse = None, 0
        for C in sorted(float(c) for c in self.params["Cs"]):
            self.inner_scores[C] = inner_loss(C, True)
            if best is None or self.inner_scores[C] < self.inner_scores[best]:
                best, worse = C, 0
            else:
                worse += 1
                if worse >= int(self.params["patience"]):
                    break
        if self.params["refine"]:
            for C in (best / 3.0, best * 3.0):
                if C not in self.inner_scores:
                    self.inner_scores[C] = inner_loss(C, False)
            best = min(self.inner_scores, key=self.inner_scores.get)
        return best

    def _choose_C(self, X, y: np.ndarray, groups: np.ndarray, seed: int = 0) -> float:
        """The C with the lowest mean inner log loss (scikit-learn fits of the given rows).

        On at most ``search_rows`` training rows (whole prompt groups drawn with ``seed``;
        with C multiplying the data term, the same C suits more rows of the same kind),
        ``inner_folds`` prompt-grouped folds, each scaled on its own training rows.
        """
        Cs = sorted(float(c) for c in self.params["Cs"])
        groups = np.asarray(groups)
        keep = _subsample_groups(groups, self.params["search_rows"], seed)
        if keep is not None:
            X, y, groups = X[keep], y[keep], groups[keep]
        splits = _inner_splits(y, groups, self.params["inner_folds"])
        if len(Cs) == 1 or not splits:
            return Cs[len(Cs) // 2]
        scaled = []
        for tr, va in splits:
            scaler = _Scaler().fit(X[tr])
            scaled.append((scaler.transform(X[tr]), scaler.transform(X[va])))
        warm: list = [None] * len(splits)

        def inner_loss(C: float, chain: bool) -> float:
            loss = 0.0
            for i, ((tr, va), (Xtr, Xva)) in enumerate(zip(splits, scaled)):
                model = _fit_lr(Xtr, y[tr], C, self.params, warm[i] if chain else None)
                if chain:
                    warm[i] = (model.coef_, model.intercept_, model.classes_)
                loss += _log_loss(y[va], full_proba(model.predict_proba(Xva), model.classes_))
            return loss / len(splits)

        return self._search(inner_loss)

    def _choose_C_pairs(self, D, S, y: np.ndarray, groups: np.ndarray, seed: int = 0) -> float:
        """``_choose_C`` for the equivariant fit: the same search on at most
        ``search_rows`` / 2 pairs (both orders counted, as before), scaled once on the
        fold's training rows (label-free column statistics)."""
        Cs = sorted(float(c) for c in self.params["Cs"])
        groups = np.asarray(groups)
        cap = self.params["search_rows"]
        keep = _subsample_groups(groups, None if cap is None else int(cap) // 2, seed)
        if keep is not None:
            D, S, y, groups = D[keep], S[keep], y[keep], groups[keep]
        splits = _inner_splits(y, groups, self.params["inner_folds"])
        if len(Cs) == 1 or not splits:
            return Cs[len(Cs) // 2]
        parts = [(D[tr], S[tr], D[va], S[va]) for tr, va in splits]
        warm: list = [None] * len(splits)

        def inner_loss(C: float, chain: bool) -> float:
            loss = 0.0
            for i, ((tr, va), (Dtr, Str, Dva, Sva)) in enumerate(zip(splits, parts)):
                theta, _ = _fit_pairs(Dtr, Str, y[tr], C, self.params, warm[i] if chain else None)
                if chain:
                    warm[i] = theta
                loss += _log_loss(y[va], _pair_proba(theta, Dva, Sva))
            return loss / len(splits)

        return self._search(inner_loss)

    def fit(self, X, y, groups, seed, X_valid=None, y_valid=None, feature_names=None):
        """Choose C on inner grouped folds of (X, y), then fit on all of it. Returns self."""
        y = np.asarray(y, dtype=np.int64)
        present = np.unique(y)
        if len(present) < 2:
            # One class only: logistic regression is undefined; predict its share.
            self.constant = np.bincount(y, minlength=N_CLASSES) / len(y)
            return self
        if self.params["C"] is not None:
            self.C = float(self.params["C"])
        else:
            self.C = self._choose_C(X, y, np.asarray(groups), seed)
        self.scaler = _Scaler().fit(X)
        self.model = _fit_lr(self.scaler.transform(X), y, self.C, self.params)
        self.classes = self.model.classes_
        return self

    def fit_pairs(self, X, X_swapped, y, groups, seed, feature_names=None):
        """Fit on training rows X [n, d] in both A/B orders (X_swapped: the same rows
        swapped; labels y of X's order), equivalent to ``fit`` on the 2n rows stacked with
        permuted labels: the scaler's statistics are those of the stacked rows, and the
        equivariant optimum is the stacked problem's (see the module docstring)."""
        y = np.asarray(y, dtype=np.int64)
        both = np.concatenate([y, swap_labels(y)])
        if len(np.unique(both)) < 2:
            self.constant = np.bincount(both, minlength=N_CLASSES) / len(both)
            return self
        self.scaler = _Scaler().fit_pairs(X, X_swapped)
        D, S = self.scaler.pair_parts(X, X_swapped)
        if self.params["C"] is not None:
            self.C = float(self.params["C"])
        else:
            self.C = self._choose_C_pairs(D, S, y, np.asarray(groups), seed)
        self.theta, self.n_iter = _fit_pairs(D, S, y, self.C, self.params)
        return self

    def predict_pairs(self, X, X_swapped) -> np.ndarray:
        """Probabilities [n, 3] of rows X given in both orders: for a ``fit_pairs`` model,
        p(X) and the swap-mapped p(X_swapped) are the same, so this is also the TTA mean."""
        if self.constant is not None:
            p = np.tile(self.constant, (X.shape[0], 1))
            return 0.5 * (p + swap_proba(p))
        if self.theta is None:
            return 0.5 * (self.predict_proba(X) + swap_proba(self.predict_proba(X_swapped)))
        D, S = self.scaler.pair_parts(X, X_swapped)
        return _pair_proba(self.theta, D, S)

    def predict_proba(self, X) -> np.ndarray:
        if self.theta is not None:
            raise ValueError("a linear model fitted on both A/B orders (equivariant) predicts "
                             "with predict_pairs(X, X_swapped)")
        if self.constant is not None:
            return np.tile(self.constant, (X.shape[0], 1))
        p = full_proba(self.model.predict_proba(self.scaler.transform(X)), self.classes)
        return p / p.sum(axis=1, keepdims=True)

    def to_bytes(self) -> bytes:
        return pickle.dumps({"params": self.params, "scaler": self.scaler, "model": self.model,
                             "classes": self.classes, "constant": self.constant, "C": self.C,
                             "theta": self.theta, "n_iter": self.n_iter},
                            protocol=pickle.HIGHEST_PROTOCOL)

    @classmethod
    def from_bytes(cls, data: bytes) -> "LinearLearner":
        state = pickle.loads(data)  # noqa: S301 (our own file, SHA-256 checked by load_learner)
        out = cls(state["params"])
        out.scaler, out.model, out.classes = state["scaler"], state["model"], state["classes"]
        out.constant, out.C = state["constant"], state["C"]
        out.theta, out.n_iter = state.get("theta"), state.get("n_iter")
        return out

    def importance(self, feature_names: list[str]) -> pd.Series | None:
        if self.theta is not None:
            # |w| acts on the antisymmetric part of a column, |t| on its symmetric part.
            p = len(feature_names)
            return pd.Series(np.abs(self.theta[:p]) + np.abs(self.theta[p:2 * p]),
                             index=feature_names)
        if self.model is None:
            return None
        # Coefficients act on scaled features, so their sizes are comparable.
        return pd.Series(np.abs(self.model.coef_).mean(axis=0), index=feature_names)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"C": self.C}
        if self.n_iter is not None:
            out["iterations"] = self.n_iter
        if self.inner_scores:
            out["inner_score"] = min(self.inner_scores.values())
        return out
