"""Where should the level-2 learner shrink to? Variants of the default combiner on the
default members' OOF predictions (``bench/quality.py``'s candidate run), every file.

The default level-2 learner (``pipeline.blend.fit_meta``: multinomial logistic regression
on the members' log-probabilities, both A/B orders, L2 with ``stack.meta_C``) shrinks its
weights toward zero, i.e. toward the class prior. The variants keep the same inputs and
penalty but add an unpenalised offset to the logits, so strong regularisation falls back
on something better than the prior:

- ``pool``: the equal-weight log-linear pool (mean of the members' log-probabilities);
- ``best``: the log-probabilities of the member with the lowest log loss on the
  combiner's training rows;

plus the default learner with ``meta_C`` chosen per fold by an inner nested CV on the
other folds (grid 0.003-0.3), and ``axis``: a level-2 learner restricted to the two
swap-symmetric axes of each member, u_m = (log p_A - log p_B) / 2 and t_m = log p_tie -
(log p_A + log p_B) / 2, with logits (sum a_m u_m, -sum a_m u_m, sum c_m t_m + b): two
weights per member plus a tie bias (2M + 1 parameters instead of 9M + 3), swap-equivariant
by construction, L2 toward zero or toward the equal-weight pool (a_m = c_m = 1/M); and
``mix``: the default learner's probabilities mixed with the nested soft vote's,
(1 - a) meta + a soft, with a fixed or chosen per fold by an inner nested CV. Every combiner is nested: fold k is combined by one fitted
on the other folds only. Several variants are tried on the same OOF, so the best of them
is slightly optimistic; this is a probe, not a default.

    python bench/quality.py && python bench/meta_offset.py
"""
from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy.optimize import minimize

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.blend_probe import FILES, _proba, combiner_table, oof_probe_main  # noqa: E402
from pipeline.blend import SWAP_PERM, fit_meta, log_loss, nested_meta, normalize_proba  # noqa: E402
from pipeline.config import Config  # noqa: E402

RESULTS = REPO / "bench" / "results" / "meta_offset.md"
GRID = (0.003, 0.01, 0.03, 0.1)


def _logp(probas):
    return [np.log(normalize_proba(p, 1e-6)) for p in probas]


def _softmax(z):
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def fit_offset_meta(probas, y, C: float, toward: str):
    """Multinomial LR on the members' log-probs (both orders) with an unpenalised offset
    (``toward``: "pool" or "best"); objective sum of losses + ||W||^2 / (2C), as
    scikit-learn's. Returns: apply(probas) -> [n, 3] with swap TTA."""
    L = _logp(probas)
    best = int(np.argmin([-np.mean(lp[np.arange(len(y)), y]) for lp in L]))

    def offset(Lq):
        return np.mean(Lq, axis=0) if toward == "pool" else Lq[best]

    Ls = [lp[:, SWAP_PERM] for lp in L]
    X = np.vstack([np.hstack(L), np.hstack(Ls)])
    off = np.vstack([offset(L), offset(Ls)])
    Y = np.eye(3)[np.concatenate([y, SWAP_PERM[y]])]
    d = X.shape[1]

    def loss(theta):
        W, b = theta[:3 * d].reshape(d, 3), theta[3 * d:]
        z = X @ W + b + off
        z = z - z.max(axis=1, keepdims=True)
        lp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        G = np.exp(lp) - Y
        return (-(Y * lp).sum() + 0.5 * (W ** 2).sum() / C,
                np.concatenate([(X.T @ G + W / C).ravel(), G.sum(axis=0)]))

    theta = minimize(loss, np.zeros(3 * d + 3), jac=True, method="L-BFGS-B",
                     options={"maxiter": 2000}).x
    W, b = theta[:3 * d].reshape(d, 3), theta[3 * d:]

    def apply(pr):
        def one(q):
            Lq = _logp(q)
            return _softmax(np.hstack(Lq) @ W + b + offset(Lq))
        swapped = one([p[:, SWAP_PERM] for p in pr])[:, SWAP_PERM]
        return normalize_proba(0.5 * (one(pr) + swapped), 1e-6)

    return apply


def _axes(probas):
    """(u, t) [n, M]: each member's A-vs-B and tie axis of its log-probabilities."""
    L = np.stack(_logp(probas))
    return (0.5 * (L[:, :, 0] - L[:, :, 1])).T, (L[:, :, 2] - 0.5 * (L[:, :, 0] + L[:, :, 1])).T


def fit_axis_meta(probas, y, C: float, toward: str):
    """The axis learner: objective sum of losses + ||(a, c) - target||^2 / (2C), target 0
    (``toward`` "zero") or 1/M ("pool"). Returns apply(probas) -> [n, 3]."""
    u, t = _axes(probas)
    m = u.shape[1]
    target = np.full(2 * m, 0.0 if toward == "zero" else 1.0 / m)
    Y = np.eye(3)[y]

    def logits(theta, u, t):
        d = u @ theta[:m]
        return np.column_stack([d, -d, t @ theta[m:2 * m] + theta[-1]])

    def loss(theta):
        z = logits(theta, u, t)
        z = z - z.max(axis=1, keepdims=True)
        lp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
        G = np.exp(lp) - Y
        pen = theta[:2 * m] - target
        grad = np.concatenate([u.T @ (G[:, 0] - G[:, 1]), t.T @ G[:, 2], [G[:, 2].sum()]])
        grad[:2 * m] += pen / C
        return -(Y * lp).sum() + 0.5 * (pen ** 2).sum() / C, grad

    theta = minimize(loss, np.concatenate([target, [0.0]]), jac=True, method="L-BFGS-B",
                     options={"maxiter": 3000}).x
    return lambda pr: normalize_proba(_softmax(logits(theta, *_axes(pr))), 1e-6)


def nested_mix(probas, y, folds, meta_C: float, alpha=None):
    """(1 - a) * level-2 + a * soft vote (temperature-scaled, as the default soft vote),
    each fitted on the other folds; a fixed, or (None) the a in [0, 1] minimising the
    log loss of the two combiners' inner nested predictions on the other folds.
    Returns ([n, 3], the a per fold)."""
    from scipy.optimize import minimize_scalar

    from pipeline.blend import fit_blend, nested_blend

    out, picks = np.zeros((len(y), 3)), []
    for k in np.unique(folds):
        tr = folds != k
        sub = [p[tr] for p in probas]
        a = alpha
        if a is None:
            im = nested_meta(sub, y[tr], folds[tr], meta_C)
            isv, _ = nested_blend(sub, y[tr], folds[tr])
            a = float(minimize_scalar(lambda t: log_loss(y[tr], (1 - t) * im + t * isv),
                                      bounds=(0.0, 1.0), method="bounded",
                                      options={"xatol": 1e-3}).x)
        picks.append(round(a, 2))
        held = [p[~tr] for p in probas]
        out[~tr] = ((1 - a) * fit_meta(sub, y[tr], meta_C).apply(held)
                    + a * fit_blend(sub, y[tr]).apply(held))
    return out, picks


def nested(probas, y, folds, fit):
    out = np.zeros((len(y), 3))
    for k in np.unique(folds):
        held = folds == k
        out[held] = fit([p[~held] for p in probas], y[~held])([p[held] for p in probas])
    return out


def nested_meta_cv(probas, y, folds):
    """The default learner, meta_C chosen per fold by nested CV on the other folds."""
    out, picks = np.zeros((len(y), 3)), []
    for k in np.unique(folds):
        tr = folds != k
        sub = [p[tr] for p in probas]
        scores = [log_loss(y[tr], nested_meta(sub, y[tr], folds[tr], C)) for C in GRID]
        C = GRID[int(np.argmin(scores))]
        picks.append(C)
        out[~tr] = fit_meta(sub, y[tr], C).apply([p[~tr] for p in probas])
    return out, picks


def run_file(stem: str, workdir: Path, members: list[str], meta_C: float) -> dict:
    oof = pd.read_parquet(workdir / "runs" / f"quality-candidates-{stem}" / "oof.parquet")
    y = oof["label"].to_numpy().astype(np.int64)
    folds = oof["fold"].to_numpy().astype(np.int64)
    probas = [_proba(oof, n) for n in members]
    rows = {f"level-2, meta_C {meta_C} (default)": log_loss(y, nested_meta(probas, y, folds, meta_C))}
    cv, picks = nested_meta_cv(probas, y, folds)
    rows["level-2, meta_C by inner nested CV"] = log_loss(y, cv)
    for toward in ("pool", "best"):
        for C in GRID:
            rows[f"level-2 shrunk toward the {toward}, C {C}"] = log_loss(
                y, nested(probas, y, folds,
                          lambda pr, yy, C=C, t=toward: fit_offset_meta(pr, yy, C, t)))
    for toward in ("zero", "pool"):
        for C in (0.01, 0.03, 0.1, 1.0):
            rows[f"axis learner toward {toward}, C {C}"] = log_loss(
                y, nested(probas, y, folds,
                          lambda pr, yy, C=C, t=toward: fit_axis_meta(pr, yy, C, t)))
    for a in (0.1, 0.25):
        rows[f"level-2 mixed with the soft vote, a {a}"] = log_loss(
            y, nested_mix(probas, y, folds, meta_C, a)[0])
    mixed, alphas = nested_mix(probas, y, folds, meta_C)
    rows["level-2 mixed with the soft vote, a by inner nested CV"] = log_loss(y, mixed)
    return {"file": stem, "rows": rows, "picks": picks, "alphas": alphas}


def table(workdir: Path, load: str) -> list[str] | None:
    cfg = Config().stack
    members = list(cfg.members)
    results = []
    for stem in FILES:
        if (workdir / "runs" / f"quality-candidates-{stem}" / "oof.parquet").is_file():
            results.append(run_file(stem, workdir, members, cfg.meta_C))
            print(stem, "done", flush=True)
        else:
            print(f"skip {stem}: run bench/quality.py first")
    if not results:
        return None
    lines = combiner_table(
        "# Where the level-2 learner shrinks to (issue #10)",
        f"Written {time.strftime('%Y-%m-%d %H:%M')} by `python bench/meta_offset.py` from "
        f"the OOF predictions of `bench/quality.py`'s candidate run ({platform.machine()}, "
        f"{os.cpu_count()} CPU cores, load {load}). Members: {', '.join(members)} (the "
        "defaults). OOF log loss, prompt-grouped 5 folds, every combiner nested. "
        f"{len(results[0]['rows'])} combiners on the same OOF: the best is slightly optimistic.",
        results)
    lines += ["", "meta_C picked per fold by the inner CV: " + "; ".join(
        f"{r['file']} {', '.join(map(str, r['picks']))}" for r in results)]
    lines += ["", "Mixing weight a picked per fold by the inner CV: " + "; ".join(
        f"{r['file']} {', '.join(map(str, r['alphas']))}" for r in results)]
    return lines


def main(argv=None) -> int:
    return oof_probe_main(argv, __doc__.split("\n")[0], RESULTS, table)


if __name__ == "__main__":
    sys.exit(main())
