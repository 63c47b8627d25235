"""Multinomial logistic regression behind the learner protocol (kind ``linear``).

Dense input is standardised (mean 0, variance 1 on the training rows); in sparse CSR input
(TF-IDF blocks beside dense columns) columns within [-1, 1] keep their values and the
others are divided by their maximum absolute value, which keeps it sparse (see _Scaler).
The inverse regularisation strength C is chosen by an inner cross-validation inside the
training rows, grouped by prompt (a row and its swapped copy are one group), on
``inner_folds`` folds over the grid ``Cs``; the model is then refitted on every training
row with the chosen C. Params: ``C`` (a number skips the search), ``Cs``, ``inner_folds``,
``refine``, ``patience``, ``search_rows`` (see ``_choose_C``), ``max_iter``, ``tol``.
"""
from __future__ import annotations

import pickle
import warnings
from typing import Any

import numpy as np
import pandas as pd

from pipeline.learners.base import N_CLASSES, full_proba

# The best C differs by four orders of magnitude between views (full embeddings of ~2k
# rows: ~3e-4; unscaled TF-IDF: ~1), so the grid is wide: decades, then the best one's
# neighbours at a third and three times it.
DEFAULTS = {"C": None, "Cs": [1e-4, 1e-3, 0.01, 0.1, 1.0, 10.0], "refine": True,
            "inner_folds": 3, "patience": 1, "search_rows": 4_000, "max_iter": 300,
            "tol": 1e-4}


def _log_loss(y: np.ndarray, p: np.ndarray) -> float:
    p = np.clip(p, 1e-12, 1.0)
    return float(-np.mean(np.log(p[np.arange(len(y)), y] / p.sum(axis=1))))


# Below this many training rows a fit runs on one thread.
SMALL_FIT_ROWS = 10_000


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
            maxabs = np.asarray(abs(X).max(axis=0).todense()).ravel().astype(np.float64)
            scale = np.where(maxabs > 1.0, maxabs, 1.0)
            self.mean = None
        else:
            X = np.asarray(X, dtype=np.float64)
            self.mean = X.mean(axis=0)
            scale = X.std(axis=0)
        self.scale = np.where(scale > 0, scale, 1.0)
        return self

    def transform(self, X):
        import scipy.sparse as sp

        if sp.issparse(X):
            return (X @ sp.diags(1.0 / self.scale)).tocsr()
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


class LinearLearner:
    """Standardised multinomial logistic regression with C chosen by inner grouped CV."""

    kind = "linear"
    VERSION = 5  # bump when a change of code changes fitted models
    uses_inner_split = False
    accepts_sparse = True
    suffix = ".pkl"

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

    def config(self) -> dict:
        """Every param this learner fits with (defaults resolved) and the code version:
        part of cache keys."""
        return {**self.params, "version": self.VERSION}

    def _choose_C(self, X, y: np.ndarray, groups: np.ndarray, seed: int = 0) -> float:
        """The C with the lowest mean inner log loss.

        On at most ``search_rows`` training rows (whole prompt groups drawn with ``seed``;
        with C multiplying the data term, the same C suits more rows of the same kind),
        ``inner_folds`` prompt-grouped folds. The grid ``Cs`` is walked from the strongest
        regularisation up, each fit warm-starting the next, until the loss has risen
        ``patience`` times in a row (it is unimodal in C in practice); with ``refine``, the
        best C's neighbours at a third and three times it are tried too.
        """
        from sklearn.model_selection import GroupKFold

        Cs = sorted(float(c) for c in self.params["Cs"])
        groups = np.asarray(groups)
        uniq = np.unique(groups)
        cap = self.params["search_rows"]
        if cap is not None and len(y) > int(cap):
            rng = np.random.default_rng(seed)
            order = rng.permutation(uniq)
            sizes = np.bincount(np.searchsorted(uniq, groups), minlength=len(uniq))[
                np.searchsorted(uniq, order)]
            chosen = order[: max(2, int(np.searchsorted(np.cumsum(sizes), int(cap))))]
            keep = np.flatnonzero(np.isin(groups, chosen))
            X, y, groups = X[keep], y[keep], groups[keep]
        k = min(int(self.params["inner_folds"]), len(np.unique(groups)))
        if len(Cs) == 1 or k < 2:
            return Cs[len(Cs) // 2]
        splits = [(tr, va) for tr, va in GroupKFold(n_splits=k).split(np.zeros(len(y)), y, groups)
                  if len(np.unique(y[tr])) >= 2]
        if not splits:
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
            self.inner_scores[C] = loss / len(splits)
            return self.inner_scores[C]

        best, worse = None, 0
        for C in Cs:
            loss = inner_loss(C, True)
            if best is None or loss < self.inner_scores[best]:
                best, worse = C, 0
            else:
                worse += 1
                if worse >= int(self.params["patience"]):
                    break
        if self.params["refine"]:
            for C in (best / 3.0, best * 3.0):
                if C not in self.inner_scores:
                    inner_loss(C, False)
            best = min(self.inner_scores, key=self.inner_scores.get)
        return best

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

    def predict_proba(self, X) -> np.ndarray:
        if self.constant is not None:
            return np.tile(self.constant, (X.shape[0], 1))
        p = full_proba(self.model.predict_proba(self.scaler.transform(X)), self.classes)
        return p / p.sum(axis=1, keepdims=True)

    def to_bytes(self) -> bytes:
        return pickle.dumps({"params": self.params, "scaler": self.scaler, "model": self.model,
                             "classes": self.classes, "constant": self.constant, "C": self.C},
                            protocol=pickle.HIGHEST_PROTOCOL)

    @classmethod
    def from_bytes(cls, data: bytes) -> "LinearLearner":
        state = pickle.loads(data)  # noqa: S301 (our own file, SHA-256 checked by load_learner)
        out = cls(state["params"])
        out.scaler, out.model, out.classes = state["scaler"], state["model"], state["classes"]
        out.constant, out.C = state["constant"], state["C"]
        return out

    def importance(self, feature_names: list[str]) -> pd.Series | None:
        if self.model is None:
            return None
        # Coefficients act on scaled features, so their sizes are comparable.
        return pd.Series(np.abs(self.model.coef_).mean(axis=0), index=feature_names)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"C": self.C}
        if self.inner_scores:
            out["inner_score"] = min(self.inner_scores.values())
        return out
