"""Soft-voting blend of member probabilities: simplex weights, temperature, nested scoring.

Pure numpy/scipy: probabilities in, probabilities and fitted parameters out. Every
probability array here is float64 [n_rows, 3] with columns [a, b, tie].

Normalisation is ours, never a metric's side effect: ``normalize_proba`` clips each
probability to [eps, 1 - eps] and divides by the row sum, so every row sums to 1 and no
log loss is infinite. ``stack.clip_eps`` (default 1e-6) caps the loss of one confidently
wrong row at -log(1e-6) = 13.8.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.optimize import minimize, minimize_scalar

N_CLASSES = 3


def normalize_proba(proba: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Clip to [eps, 1 - eps] and renormalise rows to sum to 1.

    Returns: float64 array with the same shape as ``proba``.
    """
    p = np.clip(np.asarray(proba, dtype=np.float64), eps, 1.0 - eps)
    return p / p.sum(axis=1, keepdims=True)


def softmax(logits: np.ndarray) -> np.ndarray:
    """Row-wise softmax of float logits [n, k] (max-shifted for stability)."""
    z = np.asarray(logits, dtype=np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def log_loss(y: np.ndarray, proba: np.ndarray, eps: float = 1e-6) -> float:
    """Mean multi-class log loss of integer labels ``y`` [n] under ``proba`` [n, 3]."""
    p = normalize_proba(proba, eps)
    return float(-np.mean(np.log(p[np.arange(len(y)), np.asarray(y)])))


def accuracy(y: np.ndarray, proba: np.ndarray) -> float:
    """Share of rows whose most probable class is the label."""
    return float(np.mean(np.argmax(proba, axis=1) == np.asarray(y)))


def per_class_log_loss(y: np.ndarray, proba: np.ndarray, eps: float = 1e-6) -> dict[int, float | None]:
    """Mean log loss over the rows of each true class (None for a class with no rows)."""
    p = normalize_proba(proba, eps)
    y = np.asarray(y)
    out: dict[int, float | None] = {}
    for c in range(p.shape[1]):
        rows = y == c
        out[c] = float(-np.mean(np.log(p[rows, c]))) if rows.any() else None
    return out


def apply_temperature(proba: np.ndarray, temperature: float, eps: float = 1e-6) -> np.ndarray:
    """Temperature scaling in log space: p_c^(1/T), renormalised (T > 1 softens)."""
    logp = np.log(normalize_proba(proba, eps))
    return normalize_proba(softmax(logp / temperature), eps)


@dataclass(frozen=True)
class BlendFit:
    """Fitted blend: one weight per member (on the simplex) and a temperature."""

    weights: np.ndarray
    temperature: float = 1.0

    def apply(self, probas: list[np.ndarray], eps: float = 1e-6) -> np.ndarray:
        """Weighted mean of member probabilities, then temperature; rows sum to 1."""
        return blend(probas, self.weights, self.temperature, eps)


def blend(probas: list[np.ndarray], weights: np.ndarray, temperature: float = 1.0,
          eps: float = 1e-6) -> np.ndarray:
    """Soft vote: sum_m w_m * p_m (each p_m normalised first), then temperature scaling.

    ``probas``: M arrays [n, 3]; ``weights``: [M], non-negative, summing to 1.
    Returns: float64 [n, 3], clipped and normalised.
    """
    if len(probas) != len(weights):
        raise ValueError(f"{len(probas)} members but {len(weights)} weights")
    mix = sum(w * normalize_proba(p, eps) for w, p in zip(weights, probas))
    mix = normalize_proba(mix, eps)
    if temperature != 1.0:
        mix = apply_temperature(mix, temperature, eps)
    return mix


def _fit_temperature(mix: np.ndarray, y: np.ndarray, eps: float) -> float:
    res = minimize_scalar(lambda lt: log_loss(y, apply_temperature(mix, float(np.exp(lt)), eps), eps),
                          bounds=(np.log(0.2), np.log(5.0)), method="bounded",
                          options={"xatol": 1e-4})
    t = float(np.exp(res.x))
    # The bounded search may stop near 1 without reaching it; never do worse than T = 1.
    return t if log_loss(y, apply_temperature(mix, t, eps), eps) <= log_loss(y, mix, eps) else 1.0


def fit_blend(probas: list[np.ndarray], y: np.ndarray, temperature: bool = True,
              eps: float = 1e-6) -> BlendFit:
    """Weights on the simplex (softmax-parametrised) minimising log loss, then a temperature.

    ``probas``: M member arrays [n, 3] on the same rows as labels ``y`` [n].
    Several starts (uniform and each member alone) plus the exact one-member corners are
    compared, so the fitted blend never scores worse in-sample than its best member.
    Returns: BlendFit(weights [M], temperature (1.0 when ``temperature`` is False)).
    """
    y = np.asarray(y)
    probas = [normalize_proba(p, eps) for p in probas]
    m = len(probas)
    if m == 0:
        raise ValueError("fit_blend needs at least one member")

    def weights_of(z: np.ndarray) -> np.ndarray:
        return softmax(z[None, :])[0]

    # The log loss of a soft vote reads only each member's probability of the true class:
    # loss(w) = -mean log(Q @ w), Q [n, M], with an exact gradient through the softmax.
    Q = np.stack([p[np.arange(len(y)), y] for p in probas], axis=1)

    def loss_grad(z: np.ndarray) -> tuple[float, np.ndarray]:
        w = weights_of(z)
        q = np.maximum(Q @ w, eps)
        g_w = -(Q / q[:, None]).mean(axis=0)
        return float(-np.mean(np.log(q))), w * (g_w - w @ g_w)

    candidates = [np.eye(m)[i] for i in range(m)]
    if m > 1:
        starts = [np.zeros(m)] + [4.0 * np.eye(m)[i] for i in range(m)]
        for z0 in starts:
            res = minimize(loss_grad, z0, jac=True, method="L-BFGS-B")
            candidates.append(weights_of(res.x))
    scores = [log_loss(y, blend(probas, w, 1.0, eps), eps) for w in candidates]
    weights = candidates[int(np.argmin(scores))]
    t = _fit_temperature(blend(probas, weights, 1.0, eps), y, eps) if temperature else 1.0
    return BlendFit(weights=np.asarray(weights, dtype=np.float64), temperature=t)


def nested_blend(probas: list[np.ndarray], y: np.ndarray, folds: np.ndarray,
                 temperature: bool = True, eps: float = 1e-6) -> tuple[np.ndarray, list[BlendFit]]:
    """Honest blend score: for each fold k, fit on the other folds' rows, apply to fold k.

    ``probas``: M out-of-fold member arrays [n, 3]; ``y`` [n]; ``folds`` [n] ints.
    Returns: (blended [n, 3] where row i's weights never saw row i, one BlendFit per fold
    in sorted fold order).
    """
    y = np.asarray(y)
    folds = np.asarray(folds)
    out = np.zeros((len(y), N_CLASSES))
    fits = []
    for k in np.unique(folds):
        held = folds == k
        fit = fit_blend([p[~held] for p in probas], y[~held], temperature, eps)
        out[held] = fit.apply([p[held] for p in probas], eps)
        fits.append(fit)
    return out, fits


def prior_oof(y: np.ndarray, folds: np.ndarray, eps: float = 1e-6) -> np.ndarray:
    """Class-prior baseline on the same folds: fold k gets the label shares of the others.

    Returns: float64 [n, 3], clipped and normalised (a class absent from training -> eps).
    """
    y = np.asarray(y)
    folds = np.asarray(folds)
    out = np.zeros((len(y), N_CLASSES))
    for k in np.unique(folds):
        held = folds == k
        counts = np.bincount(y[~held], minlength=N_CLASSES).astype(np.float64)
        out[held] = counts / counts.sum()
    return normalize_proba(out, eps)


# ---------------------------------------------------------------- level-2 meta-learner

SWAP_PERM = np.array([1, 0, 2])


def _meta_features(probas: list[np.ndarray], eps: float) -> np.ndarray:
    return np.hstack([np.log(normalize_proba(p, eps)) for p in probas])


@dataclass(frozen=True)
class MetaFit:
    """Level-2 multinomial logistic regression on members' log-probabilities."""

    model: object

    def apply(self, probas: list[np.ndarray], eps: float = 1e-6) -> np.ndarray:
        """Probabilities [n, 3]: the mean of both A/B orders (swap TTA), rows sum to 1."""
        p = _meta_proba(self.model, _meta_features(probas, eps))
        p_sw = _meta_proba(self.model, _meta_features([q[:, SWAP_PERM] for q in probas], eps))
        return normalize_proba(0.5 * (p + p_sw[:, SWAP_PERM]), eps)


def _meta_proba(model, X: np.ndarray) -> np.ndarray:
    out = np.zeros((len(X), N_CLASSES))
    out[:, model.classes_] = model.predict_proba(X)
    return out


def fit_meta(probas: list[np.ndarray], y: np.ndarray, C: float = 0.1, eps: float = 1e-6) -> MetaFit:
    """Fit the level-2 learner on OOF member probabilities (both A/B orders).

    ``probas``: M arrays [n, 3] on the rows of labels ``y`` [n]. Strongly regularised
    (``C``): it has 3M inputs and is fitted on OOF rows only.
    """
    from sklearn.linear_model import LogisticRegression

    y = np.asarray(y)
    X = np.vstack([_meta_features(probas, eps),
                   _meta_features([p[:, SWAP_PERM] for p in probas], eps)])
    yy = np.concatenate([y, SWAP_PERM[y]])
    model = LogisticRegression(C=C, max_iter=1000).fit(X, yy)
    return MetaFit(model=model)


def nested_meta(probas: list[np.ndarray], y: np.ndarray, folds: np.ndarray, C: float = 0.1,
                eps: float = 1e-6) -> np.ndarray:
    """Honest level-2 score: fold k predicted by a meta-learner fitted on the other folds.

    Returns: float64 [n, 3].
    """
    y = np.asarray(y)
    folds = np.asarray(folds)
    out = np.zeros((len(y), N_CLASSES))
    for k in np.unique(folds):
        held = folds == k
        fit = fit_meta([p[~held] for p in probas], y[~held], C, eps)
        out[held] = fit.apply([p[held] for p in probas], eps)
    return out
