"""Blend invariants: simplex weights, in-sample never worse than a member, nested honesty."""
from __future__ import annotations

import numpy as np
import pytest

import pipeline.blend as B


def _members(seed: int, n: int = 120, m: int = 3):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    probas = []
    for j in range(m):
        logits = rng.normal(size=(n, 3))
        logits[np.arange(n), y] += rng.uniform(0.0, 2.5)  # members of varying quality
        probas.append(B.softmax(logits * rng.uniform(0.5, 3.0)))  # and calibration
    folds = np.arange(n) % 4
    return probas, y, folds


def test_normalize_proba_rows_sum_to_one_and_are_clipped():
    p = np.array([[1.0, 0.0, 0.0], [0.2, 0.2, 0.2], [0.0, 0.0, 0.0]])
    q = B.normalize_proba(p, 1e-6)
    assert np.allclose(q.sum(axis=1), 1)
    assert (q > 0).all() and (q < 1).all()
    assert np.allclose(q[1], 1 / 3)


@pytest.mark.parametrize("seed", range(6))
def test_in_sample_blend_never_worse_than_best_member(seed):
    probas, y, _ = _members(seed)
    fit = B.fit_blend(probas, y, temperature=True)
    assert np.isclose(fit.weights.sum(), 1) and (fit.weights >= 0).all()
    blended = B.log_loss(y, fit.apply(probas))
    best = min(B.log_loss(y, p) for p in probas)
    assert blended <= best + 1e-9


@pytest.mark.parametrize("seed", range(3))
def test_fitted_weights_are_the_optimum_of_a_fine_grid(seed):
    """The exact gradient leads to the minimum: no point of a 0.01 simplex grid over three
    members scores lower than the fitted weights (up to the solver's tolerance)."""
    probas, y, _ = _members(seed)
    fit = B.fit_blend(probas, y, temperature=False)
    fitted = B.log_loss(y, fit.apply(probas))
    grid = [np.array([a, b, 100 - a - b]) / 100 for a in range(101) for b in range(101 - a)]
    best = min(B.log_loss(y, B.blend(probas, w)) for w in grid)
    assert fitted <= best + 1e-6


def test_blend_prefers_the_informative_member():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 300)
    good = np.full((300, 3), 0.1)
    good[np.arange(300), y] = 0.8
    noise = B.softmax(rng.normal(size=(300, 3)))
    fit = B.fit_blend([noise, good], y, temperature=False)
    assert fit.weights[1] > 0.9


def test_temperature_softens_overconfident_predictions():
    rng = np.random.default_rng(1)
    y = rng.integers(0, 3, 400)
    logits = rng.normal(size=(400, 3))
    logits[np.arange(400), y] += 0.8
    overconfident = B.softmax(logits * 6)
    fit = B.fit_blend([overconfident], y, temperature=True)
    assert fit.temperature > 1.5
    assert B.log_loss(y, fit.apply([overconfident])) < B.log_loss(y, overconfident)


def test_nested_blend_never_fits_on_the_fold_it_scores(monkeypatch):
    probas, y, folds = _members(3)
    marker = np.arange(len(y), dtype=float)  # row identity hidden in an unused member column
    probas = [np.column_stack([p, marker]) for p in probas]
    seen = []
    real_fit = B.fit_blend

    def recording_fit(ps, yy, temperature=True, eps=1e-6):
        seen.append(set(ps[0][:, 3].astype(int)))
        return real_fit([p[:, :3] for p in ps], yy, temperature, eps)

    monkeypatch.setattr(B, "fit_blend", recording_fit)
    original_apply = B.BlendFit.apply
    monkeypatch.setattr(B.BlendFit, "apply", lambda self, ps, eps=1e-6: original_apply(self, [p[:, :3] for p in ps], eps))
    B.nested_blend(probas, y, folds)
    assert len(seen) == len(np.unique(folds))
    for k, rows in zip(np.unique(folds), seen):
        assert rows == set(np.flatnonzero(folds != k))


def test_nested_blend_of_a_fold_does_not_depend_on_its_own_labels():
    probas, y, folds = _members(4)
    nested, _ = B.nested_blend(probas, y, folds)
    y2 = y.copy()
    y2[folds == 2] = (y2[folds == 2] + 1) % 3
    nested2, _ = B.nested_blend(probas, y2, folds)
    assert np.allclose(nested[folds == 2], nested2[folds == 2])
    assert not np.allclose(nested[folds != 2], nested2[folds != 2])


def test_prior_oof_uses_training_folds_only_and_handles_missing_class():
    y = np.array([0, 0, 1, 1, 0, 1, 0, 1])
    folds = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    p = B.prior_oof(y, folds, eps=1e-6)
    assert np.allclose(p.sum(axis=1), 1)
    assert np.allclose(p[:4, :2], 0.5, atol=1e-5)
    assert (p[:, 2] < 1e-5).all()
    y2 = y.copy()
    y2[:4] = 0  # labels of fold 0 change: fold 0's prior must not
    assert np.allclose(B.prior_oof(y2, folds)[:4], p[:4])


def test_per_class_log_loss_reports_absent_class_as_none():
    y = np.array([0, 1, 1])
    p = np.array([[0.5, 0.25, 0.25], [0.25, 0.5, 0.25], [0.1, 0.8, 0.1]])
    out = B.per_class_log_loss(y, p)
    assert out[2] is None
    assert np.isclose(out[0], -np.log(0.5))


def test_meta_learner_is_nested_swap_symmetric_and_learns_a_good_member():
    from pipeline.blend import SWAP_PERM, fit_meta, nested_meta

    rng = np.random.default_rng(0)
    n = 300
    y = rng.integers(0, 3, n)
    good = np.full((n, 3), 0.1)
    good[np.arange(n), y] = 0.8
    noise = rng.dirichlet(np.ones(3), n)
    folds = np.arange(n) % 5
    nested = nested_meta([good, noise], y, folds)
    assert nested.shape == (n, 3) and np.allclose(nested.sum(axis=1), 1)
    assert B.log_loss(y, nested) < B.log_loss(y, noise) - 0.3
    fit = fit_meta([good, noise], y)
    p = fit.apply([good, noise])
    p_sw = fit.apply([good[:, SWAP_PERM], noise[:, SWAP_PERM]])
    assert np.allclose(p, p_sw[:, SWAP_PERM], atol=1e-12)
    # Nested: fold k's predictions do not change when fold k's labels do.
    y2 = y.copy()
    y2[folds == 0] = (y2[folds == 0] + 1) % 3
    assert np.allclose(nested_meta([good, noise], y2, folds)[folds == 0], nested[folds == 0])
