"""Learner conformance: every registered kind honours the protocol the stack relies on."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from pipeline.learners.base import REGISTRY, digest, load_learner, make_learner

PARAMS = {"lgbm": {"num_leaves": 4, "min_data_in_leaf": 3, "learning_rate": 0.3,
                   "num_boost_round": 20, "num_threads": 1},
          "linear": {"Cs": [0.1, 1.0]},
          "xgboost": {"max_depth": 2, "min_child_weight": 1, "eta": 0.3,
                      "num_boost_round": 20, "nthread": 1}}


def data(n=90, d=6, seed=0, classes=(0, 1, 2)):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, d)).astype(np.float32)
    score = X[:, 0] - X[:, 1] + rng.normal(0, 0.5, n)
    y = np.where(score > 0.4, 0, np.where(score < -0.4, 1, 2))
    keep = np.isin(y, classes)
    return X[keep], y[keep].astype(np.int64), (np.arange(n) // 3)[keep]


def fitted(kind, X, y, groups):
    learner = make_learner(kind, PARAMS[kind])
    Xv = yv = None
    if learner.uses_inner_split:
        inner = groups % 5 == 0
        Xv, yv = X[inner], y[inner]
        X, y, groups = X[~inner], y[~inner], groups[~inner]
    return learner.fit(X, y, groups, 0, Xv, yv, feature_names=[f"f{i}" for i in range(X.shape[1])])


@pytest.mark.parametrize("kind", sorted(REGISTRY))
def test_fit_predict_shapes_and_probabilities(kind):
    X, y, g = data()
    learner = fitted(kind, X, y, g)
    p = learner.predict_proba(X[:17])
    assert p.shape == (17, 3) and p.dtype == np.float64
    assert np.allclose(p.sum(axis=1), 1) and (p >= 0).all()
    # It learned the signal: better than uniform on its training rows.
    assert -np.mean(np.log(p[np.arange(17), y[:17]])) < np.log(3)
    imp = learner.importance([f"f{i}" for i in range(X.shape[1])])
    assert imp is None or (len(imp) == X.shape[1] and (imp >= 0).all())
    assert isinstance(learner.summary(), dict)


@pytest.mark.parametrize("kind", sorted(REGISTRY))
def test_save_load_round_trip_is_equal(kind):
    X, y, g = data()
    learner = fitted(kind, X, y, g)
    data_bytes = learner.to_bytes()
    again = load_learner(kind, data_bytes, digest(data_bytes))
    assert np.array_equal(again.predict_proba(X), learner.predict_proba(X))
    with pytest.raises(ValueError, match="SHA-256"):
        load_learner(kind, data_bytes[:-5], digest(data_bytes))


@pytest.mark.parametrize("kind", sorted(REGISTRY))
@pytest.mark.parametrize("classes", [(0, 1), (0, 2), (1,)])
def test_a_class_missing_from_training_still_gives_three_columns(kind, classes):
    X, y, g = data(n=150, classes=classes)
    learner = fitted(kind, X, y, g)
    p = learner.predict_proba(X)
    assert p.shape == (len(X), 3)
    assert np.allclose(p.sum(axis=1), 1)
    for c in set(range(3)) - set(classes):
        assert (p[:, c] < 1e-3).all()


@pytest.mark.parametrize("kind", sorted(REGISTRY))
def test_sparse_input_equals_dense_input(kind):
    X, y, g = data()
    X[np.abs(X) < 0.5] = 0
    dense = fitted(kind, X, y, g)
    sparse = fitted(kind, sp.csr_matrix(X), y, g)
    if kind == "linear":  # sparse columns are not centred (nor, when mostly zero, scaled)
        assert np.abs(dense.predict_proba(X) - sparse.predict_proba(sp.csr_matrix(X))).max() < 0.2
    else:
        assert np.allclose(dense.predict_proba(X), sparse.predict_proba(sp.csr_matrix(X)), atol=1e-9)


@pytest.mark.parametrize("kind", sorted(set(REGISTRY) - {"linear"}))
def test_tree_learners_take_missing_and_infinite_values(kind):
    """NaN and +-inf cells (the project's feature groups are made finite; a tree learner
    reads them as missing or extreme) neither stop a fit nor reach the probabilities."""
    X, y, g = data()
    X[3, 0], X[5, 1], X[7, 2] = np.nan, np.inf, -np.inf
    p = fitted(kind, X, y, g).predict_proba(X)
    assert np.isfinite(p).all() and np.allclose(p.sum(axis=1), 1)


@pytest.mark.parametrize("kind", ["lgbm", "xgboost"])
def test_boosted_kinds_share_round_control_threads_config_and_summary(kind):
    """What pipeline.learners.boosted gives each GBDT: the rounds kept after early stopping
    on the inner split (at most num_boost_round; the summary says how many), the inner
    score, the thread count its params ask for, a config with threads left out (cache keys
    do not change with the machine), and the class-count guard."""
    from pipeline.learners.boosted import BoostedLearner

    X, y, g = data()
    learner = fitted(kind, X, y, g)
    assert isinstance(learner, BoostedLearner) and learner.uses_inner_split
    summary = learner.summary()
    assert 1 <= summary["best_iteration"] <= PARAMS[kind]["num_boost_round"]
    assert summary["best_iteration"] == learner.rounds_kept()
    assert np.isfinite(summary["inner_score"])
    assert learner.threads() == 1
    cfg = learner.config()
    assert cfg[learner.THREADS_PARAM] is None and cfg["num_boost_round"] == 20
    assert make_learner(kind, {**PARAMS[kind], learner.THREADS_PARAM: 3}).config() == cfg
    assert make_learner(kind, {"early_stopping": False}).uses_inner_split is False
    with pytest.raises(ValueError, match="num_class must stay 3"):
        make_learner(kind, {"num_class": 2})


def test_unknown_kind_and_params_are_errors():
    with pytest.raises(ValueError, match="unknown learner kind 'xgb'"):
        make_learner("xgb")
    with pytest.raises(ValueError, match="unknown param"):
        make_learner("linear", {"c": 1.0})
    with pytest.raises(ValueError, match="objective"):
        make_learner("lgbm", {"objective": "binary"})


def test_linear_chooses_C_on_inner_grouped_folds(monkeypatch):
    """C comes from folds of the training rows that keep each prompt group together."""
    import pipeline.learners.linear as lin

    X, y, g = data(n=120)
    seen = []
    real = lin._fit_lr

    def recording(Xs, ys, C, params, warm=None):
        seen.append((len(ys), C))
        return real(Xs, ys, C, params, warm)

    monkeypatch.setattr(lin, "_fit_lr", recording)
    learner = make_learner("linear", {"Cs": [0.01, 0.1, 1.0], "inner_folds": 3,
                                      "patience": 5, "refine": False}).fit(X, y, g, 0)
    assert learner.C in (0.01, 0.1, 1.0)
    assert set(learner.inner_scores) == {0.01, 0.1, 1.0}
    # 3 inner folds x 3 Cs on parts of the rows, then one fit on all of them with the choice.
    assert len(seen) == 10 and all(n < len(y) for n, _ in seen[:-1]) and seen[-1] == (len(y), learner.C)
    fixed = make_learner("linear", {"C": 0.5}).fit(X, y, g, 0)
    assert fixed.C == 0.5 and not fixed.inner_scores


def test_linear_search_refines_and_caps_its_rows(monkeypatch):
    import pipeline.learners.linear as lin

    X, y, g = data(n=300)
    seen = []
    real = lin._fit_lr
    monkeypatch.setattr(lin, "_fit_lr", lambda Xs, ys, C, p, warm=None: (
        seen.append(len(ys)) or real(Xs, ys, C, p, warm)))
    learner = make_learner("linear", {"search_rows": 150}).fit(X, y, g, 0)
    best_decade = min((c for c in learner.inner_scores if c in lin.DEFAULTS["Cs"]),
                      key=learner.inner_scores.get)
    assert {best_decade / 3, best_decade * 3} <= set(learner.inner_scores)
    assert learner.C == min(learner.inner_scores, key=learner.inner_scores.get)
    # The search saw at most ~150 rows (whole groups); the final fit all 300.
    assert max(seen[:-1]) <= 150 and seen[-1] == 300


# ------------------------------------------------------------------ equivariant linear fit

def pair_data(n=160, d=5, seed=0, sparse=False, ties=True):
    """Rows with a swap that negates the first d columns (a - b parts), keeps the next two
    (symmetric parts) and exchanges the last two (per-response parts)."""
    rng = np.random.default_rng(seed)
    diff = rng.normal(size=(n, d))
    sym = rng.normal(size=(n, 2)) * [1.0, 5.0] + [0.0, 3.0]
    own = rng.normal(size=(n, 2)) * 2.0 + 1.0
    X = np.hstack([diff, sym, own]).astype(np.float32)
    Xs = np.hstack([-diff, sym, own[:, ::-1]]).astype(np.float32)
    score = diff[:, 0] - 0.5 * diff[:, 1] + 0.3 * (own[:, 0] - own[:, 1]) + rng.normal(0, 0.5, n)
    y = np.where(score > 0.5, 0, np.where(score < -0.5, 1, 2))
    if not ties:
        y = np.where(score > 0, 0, 1)
    groups = np.arange(n) // 2
    if sparse:
        X[np.abs(X) < 0.7], Xs[np.abs(Xs) < 0.7] = 0, 0  # the same cells, as a swap keeps them
        X, Xs = sp.csr_matrix(X), sp.csr_matrix(Xs)
    return X, Xs, y.astype(np.int64), groups


def stack(X, Xs):
    return sp.vstack([X, Xs], format="csr") if sp.issparse(X) else np.vstack([X, Xs])


@pytest.mark.parametrize("sparse", [False, True])
@pytest.mark.parametrize("ties", [True, False])
def test_equivariant_fit_equals_sklearn_on_both_orders(sparse, ties):
    """fit_pairs reaches the optimum of scikit-learn's fit of the stacked, label-permuted
    rows (the same scaler, the same C), to solver tolerance."""
    from pipeline.data import swap_labels, swap_proba

    X, Xs, y, g = pair_data(sparse=sparse, ties=ties)
    tight = {"C": 0.7, "tol": 1e-10, "max_iter": 5000}
    pairs = make_learner("linear", tight).fit_pairs(X, Xs, y, g, 0)
    assert pairs.pair_fitted
    both = make_learner("linear", {**tight, "equivariant": False}).fit(
        stack(X, Xs), np.concatenate([y, swap_labels(y)]), np.concatenate([g, g]), 0)
    assert not both.pair_fitted
    assert np.allclose(pairs.scaler.scale, both.scaler.scale)
    reference = 0.5 * (both.predict_proba(X) + swap_proba(both.predict_proba(Xs)))
    got = pairs.predict_pairs(X, Xs)
    tol = 1e-5 if ties else 1e-3  # without ties the tie logit's intercept runs off to -inf
    assert np.abs(got - reference).max() < tol
    assert np.allclose(got.sum(axis=1), 1)


@pytest.mark.parametrize("sparse", [False, True])
def test_equivariant_fit_is_exactly_swap_symmetric_and_round_trips(sparse):
    from pipeline.data import swap_proba

    X, Xs, y, g = pair_data(sparse=sparse)
    learner = make_learner("linear", {"Cs": [0.1, 1.0]}).fit_pairs(X, Xs, y, g, 0)
    p = learner.predict_pairs(X, Xs)
    assert np.abs(p - swap_proba(learner.predict_pairs(Xs, X))).max() < 1e-12
    data_bytes = learner.to_bytes()
    again = load_learner("linear", data_bytes, digest(data_bytes))
    assert np.array_equal(again.predict_pairs(X, Xs), p)
    assert learner.C in learner.inner_scores and learner.summary()["iterations"] > 0
    names = [f"f{i}" for i in range(X.shape[1])]
    imp = learner.importance(names)
    # The signal columns (diff 0 and 1, the exchanged pair) outrank the noise (diff 2-4).
    assert imp[["f0", "f1"]].min() > imp[["f2", "f3", "f4"]].max()
    with pytest.raises(ValueError, match="predict_pairs"):
        learner.predict_proba(X)


def test_equivariant_search_matches_stacked_search_choice():
    """The C search over pairs walks the same grid as the stacked one and picks the same C
    on data where the choice is clear."""
    from pipeline.data import swap_labels

    X, Xs, y, g = pair_data(n=400, seed=3)
    params = {"Cs": [1e-4, 1e-2, 1.0, 100.0], "refine": False, "patience": 5}
    pairs = make_learner("linear", params).fit_pairs(X, Xs, y, g, 0)
    both = make_learner("linear", {**params, "equivariant": False}).fit(
        stack(X, Xs), np.concatenate([y, swap_labels(y)]), np.concatenate([g, g]), 0)
    assert pairs.C == both.C
    assert set(pairs.inner_scores) == set(both.inner_scores)


def test_equivariant_one_class_is_a_constant():
    from pipeline.data import swap_proba

    X, Xs, y, g = pair_data()
    learner = make_learner("linear", {}).fit_pairs(X, Xs, np.full(len(y), 2), g, 0)
    p = learner.predict_pairs(X, Xs)
    assert np.allclose(p, [0, 0, 1])
    assert np.allclose(p, swap_proba(p))
    # A always wins: with the swapped copies that is a two-class problem, not a constant.
    learner = make_learner("linear", {}).fit_pairs(X, Xs, np.zeros(len(y), dtype=int), g, 0)
    assert learner.constant is None and np.allclose(learner.predict_pairs(X, Xs)[:, 2], 0)
