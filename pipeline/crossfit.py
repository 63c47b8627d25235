"""Cross-fitting of one member: folds x seeds, swap augmentation and swap TTA (pure).

For every fold k the member's views are fitted on the rows of the other folds only (a
no-op for views that learn nothing) and give the fold's matrices; for each seed a fresh
learner is fitted on those training rows, in both A/B orders when ``swap_augment`` (the
swapped copy's label permuted [a, b, tie] -> [b, a, tie], its prompt group kept). A
learner that early-stops gets an inner split of the training rows grouped by prompt,
never fold k. Fold k is predicted in both orders (the swapped prediction mapped back) and
averaged: the out-of-fold (OOF) probabilities; the test set gets the mean over all fold and
seed models. The loop knows learners only through ``pipeline.learners.base``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pandas as pd

from pipeline.blend import N_CLASSES, normalize_proba
from pipeline.data import swap_labels, swap_proba
from pipeline.learners.base import fit_threads, make_learner


@dataclass
class FoldMatrices:
    """One fold's inputs of a member: train rows, their swap, test rows, their swap."""

    X: object            # float32 ndarray or CSR [n_train, d]
    X_swapped: object
    X_test: object       # [n_test, d]
    X_test_swapped: object
    names: list[str]
    states: dict = field(default_factory=dict)   # view name -> fitted state bytes (or absent)


@dataclass
class MemberFit:
    """Cross-fitted member: OOF and test probabilities, fitted learners, importances."""

    oof: np.ndarray                        # float64 [n_train, 3], row i from models not fitted on i
    test: np.ndarray                       # float64 [n_test, 3], mean over fold/seed models
    models: dict[tuple[int, int], bytes]   # (fold, seed) -> learner.to_bytes()
    summaries: dict[tuple[int, int], dict]  # (fold, seed) -> learner.summary()
    importance: pd.Series | None           # per feature, summed over models, descending
    view_states: dict[int, dict[str, bytes]] = field(default_factory=dict)  # fold -> view -> bytes
    # The OOF prediction from the rows' own A/B order only (no TTA): with ``oof``, it shows
    # the member's position bias (pipeline.diagnostics). None in caches written before it.
    oof_single: np.ndarray | None = None
    seconds: float | None = None           # wall time of the cross-fit (not stored)

    @property
    def best_iterations(self) -> dict[tuple[int, int], int]:
        return {k: v["best_iteration"] for k, v in self.summaries.items() if "best_iteration" in v}


def _rows(M, rows: np.ndarray):
    return M[np.flatnonzero(rows)] if not isinstance(M, np.ndarray) else M[rows]


def _vstack(a, b):
    import scipy.sparse as sp

    return sp.vstack([a, b], format="csr") if sp.issparse(a) else np.concatenate([a, b])


def _augment(X, Xs, y, groups, rows, augment: bool):
    if not augment:
        return _rows(X, rows), y[rows], groups[rows]
    return (_vstack(_rows(X, rows), _rows(Xs, rows)), np.concatenate([y[rows], swap_labels(y[rows])]),
            np.concatenate([groups[rows], groups[rows]]))


def predict_orders(learner, X, X_swapped, tta: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """(p from the given order only, p as predicted: with ``tta`` the mean of both orders,
    the swapped one mapped back), each [n, 3].

    A learner fitted on pairs (``pair_fitted``) predicts from both orders whatever ``tta``
    says: it is exactly swap-equivariant, so both are its prediction.
    """
    if getattr(learner, "pair_fitted", False):
        p = learner.predict_pairs(X, X_swapped)
        return p, p
    p = learner.predict_proba(X)
    if tta and X_swapped is not None:
        return p, 0.5 * (p + swap_proba(learner.predict_proba(X_swapped)))
    return p, p


def predict_tta(learner, X, X_swapped, tta: bool = True) -> np.ndarray:
    """Probabilities [n, 3] as the member predicts them (see predict_orders)."""
    return predict_orders(learner, X, X_swapped, tta)[1]


def uses_pairs(learner, swap_augment: bool) -> bool:
    """Whether ``learner`` is fitted with ``fit_pairs`` (both orders given as pairs)."""
    return (swap_augment and not learner.uses_inner_split
            and bool(getattr(learner, "fits_pairs", lambda: False)()))


def inner_split(groups: np.ndarray, fraction: float, seed) -> np.ndarray:
    """Boolean mask [n]: rows whose group is drawn into the inner early-stopping split.

    At least one group goes to each side when there are two or more groups.
    """
    uniq = np.unique(groups)
    if len(uniq) < 2:
        raise ValueError("early stopping needs at least two prompt groups in a training fold; "
                         "set stack.early_stopping: false for such tiny data")
    n_inner = int(round(fraction * len(uniq)))
    n_inner = min(max(n_inner, 1), len(uniq) - 1)
    chosen = np.random.default_rng(seed).choice(uniq, size=n_inner, replace=False)
    return np.isin(groups, chosen)


@dataclass
class FitResult:
    """What one (fold, seed) fit gives back to the driver (arrays and bytes only)."""

    fold: int
    seed: int
    single: np.ndarray             # [n_held, 3] from the rows' own order (no TTA)
    pred: np.ndarray               # [n_held, 3] as the member predicts (TTA)
    test: np.ndarray | None        # [n_test, 3], or None without test rows
    model: bytes
    summary: dict
    importance: pd.Series | None


def fit_one(kind: str, params: dict, fm: FoldMatrices, y: np.ndarray, groups: np.ndarray,
            folds: np.ndarray, k: int, seed: int, swap_augment: bool, swap_tta: bool,
            inner_valid_fraction: float, threads: int | None = None) -> FitResult:
    """One unit of cross-fitting (pure; runs wherever the executor puts it): a fresh
    learner fitted on the rows outside fold ``k`` with ``seed``, predicting fold k and the
    test rows. Every input comes in as an argument, the seed and the thread count of a
    learner with threads of its own (``threads``, None: its usual) included, so the
    result does not depend on the process it ran in."""
    with fit_threads(threads):
        return _fit_one(kind, params, fm, y, groups, folds, k, seed, swap_augment, swap_tta,
                        inner_valid_fraction)


def _fit_one(kind: str, params: dict, fm: FoldMatrices, y: np.ndarray, groups: np.ndarray,
             folds: np.ndarray, k: int, seed: int, swap_augment: bool, swap_tta: bool,
             inner_valid_fraction: float) -> FitResult:
    n = len(y)
    held = folds == k
    train_rows = ~held
    learner = make_learner(kind, params)
    if learner.uses_inner_split:
        inner = inner_split(groups[train_rows], inner_valid_fraction, seed=(int(seed), int(k)))
        inner_mask = np.zeros(n, dtype=bool)
        inner_mask[np.flatnonzero(train_rows)[inner]] = True
        fit_rows = train_rows & ~inner_mask
        Xv, yv, _ = _augment(fm.X, fm.X_swapped, y, groups, inner_mask, swap_augment)
    else:
        fit_rows, Xv, yv = train_rows, None, None
    if uses_pairs(learner, swap_augment):
        learner.fit_pairs(_rows(fm.X, fit_rows), _rows(fm.X_swapped, fit_rows), y[fit_rows],
                          groups[fit_rows], int(seed), feature_names=fm.names)
    else:
        Xf, yf, gf = _augment(fm.X, fm.X_swapped, y, groups, fit_rows, swap_augment)
        learner.fit(Xf, yf, gf, int(seed), Xv, yv, feature_names=fm.names)
    single, pred = predict_orders(learner, _rows(fm.X, held), _rows(fm.X_swapped, held), swap_tta)
    n_test = fm.X_test.shape[0] if fm.X_test is not None else 0
    test = predict_tta(learner, fm.X_test, fm.X_test_swapped, swap_tta) if n_test else None
    return FitResult(int(k), int(seed), single, pred, test, learner.to_bytes(),
                     learner.summary(), learner.importance(fm.names))


def cross_fit(kind: str, params: dict, fold_matrices: Callable[[int, np.ndarray], FoldMatrices],
              y: np.ndarray, folds: np.ndarray, groups: np.ndarray, n_test: int, *,
              seeds: tuple[int, ...] = (0,), swap_augment: bool = True, swap_tta: bool = True,
              inner_valid_fraction: float = 0.15, progress=None, executor=None,
              name: str = "member", builds_views: bool = True) -> MemberFit:
    """K-fold cross-fitting of one member (pure: matrices in, MemberFit out).

    ``fold_matrices(k, train_rows)`` returns the member's matrices for fold k, every view
    fitted on ``train_rows`` (bool [n]) only; y: int labels [n] (0 a, 1 b, 2 tie); folds:
    int [n]; groups: int [n] prompt groups. Each (fold, seed) fit is one unit (``fit_one``,
    named "<name> fold k seed s") of ``executor`` (pipeline.executors; None = in this
    process); fold matrices are built here, one fold ahead of the fits where the executor
    runs units elsewhere, and results are summed in (fold, seed) order, so the outcome is
    the same on every executor. Returns: MemberFit; OOF rows of fold k come only from
    models that never saw fold k, not even for early stopping or choosing C.

    While the last unit of a fold runs, the next fold's matrices are built (on the local
    engine's helper thread, or in the driver): with ``builds_views`` (``fold_matrices``
    fits views per fold) that unit's learner runs one thread fewer than its CPUs
    (``fit_threads``), so that a LightGBM fit on every core does not oversubscribe the
    machine beside it (2 cores: lgbm_tfidf at 10,000 rows 95 s -> 77 s). The rule does not
    depend on the executor, so neither do the results.
    """
    from pipeline.executors.base import Unit
    from pipeline.executors.local import LocalExecutor

    ex = executor if executor is not None else LocalExecutor()
    y = np.asarray(y, dtype=np.int64)
    groups = np.asarray(groups)
    folds = np.asarray(folds)
    n = len(y)
    oof = np.zeros((n, N_CLASSES))
    oof_single = np.zeros((n, N_CLASSES))
    test = np.zeros((n_test, N_CLASSES))
    models, summaries, view_states = {}, {}, {}
    importance = None
    fold_ids = np.unique(folds)
    template = make_learner(kind, params)
    cpus = float(getattr(template, "threads", lambda: 1)())
    shared = [ex.share(a) for a in (y, groups, folds)]

    # (A member's own num_threads is LightGBM's count whatever fit_threads says.)
    spare = builds_views and cpus >= 2 and params.get("num_threads") is None

    def units():
        for i, k in enumerate(fold_ids):
            fm = fold_matrices(int(k), folds != k)
            view_states[int(k)] = fm.states
            # Workers get the matrices without the fitted states' bytes (the driver keeps them).
            handle = ex.share(FoldMatrices(fm.X, fm.X_swapped, fm.X_test, fm.X_test_swapped,
                                           fm.names))
            for j, seed in enumerate(seeds):
                beside_build = spare and j == len(seeds) - 1 and i < len(fold_ids) - 1
                yield Unit(f"{name} fold {int(k)} seed {int(seed)}",
                           (kind, params, handle, *shared, int(k), int(seed), swap_augment,
                            swap_tta, inner_valid_fraction,
                            int(cpus) - 1 if beside_build else None), cpus=cpus)

    for r in ex.map(fit_one, units()):
        held = folds == r.fold
        oof[held] += r.pred / len(seeds)
        oof_single[held] += r.single / len(seeds)
        if n_test:
            test += r.test / (len(seeds) * len(fold_ids))
        models[(r.fold, r.seed)] = r.model
        summaries[(r.fold, r.seed)] = r.summary
        if r.importance is not None:
            importance = r.importance if importance is None else importance.add(r.importance,
                                                                                 fill_value=0.0)
        if progress is not None:
            progress.update(1)
    if importance is not None:
        importance = importance.sort_values(ascending=False)
    return MemberFit(oof=normalize_proba(oof, 1e-12),
                     test=normalize_proba(test, 1e-12) if n_test else test,
                     models=models, summaries=summaries, importance=importance,
                     view_states=view_states, oof_single=normalize_proba(oof_single, 1e-12))


def cross_fit_arrays(kind: str, params: dict, X, X_swapped, X_test, X_test_swapped,
                     names: list[str], y, folds, groups, **kw) -> MemberFit:
    """cross_fit for fixed matrices (views that learn nothing): the same arrays every fold."""
    fm = FoldMatrices(X, X_swapped, X_test, X_test_swapped, list(names))
    return cross_fit(kind, params, lambda k, rows: fm, y, folds, groups, X_test.shape[0],
                     builds_views=False, **kw)
