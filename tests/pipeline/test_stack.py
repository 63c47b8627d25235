"""Stack invariants on synthetic features: OOF coverage, no leakage, swap symmetry, caching."""
from __future__ import annotations

import json
import sys
import types

import numpy as np
import pandas as pd
import pytest

import pipeline.stack as S
from pipeline.crossfit import cross_fit_arrays, predict_tta
from pipeline.learners.base import load_learner
from pipeline.learners.lgbm import lgbm_params
from pipeline.catalog import Catalog
from pipeline.config import Config, apply_overrides
from pipeline.context import RunContext
from pipeline.data import swap_proba
from tests.conftest import install_fake_features, make_rows

FAST = {"min_data_in_leaf": 3, "num_leaves": 7, "learning_rate": 0.2, "num_threads": 1}


# ---------------------------------------------------------------- synthetic features

def synth_features(n: int, seed: int = 0, ties: bool = True) -> tuple[pd.DataFrame, np.ndarray]:
    """Arena-like features named <group>__<role>_<feature>, labels driven by the diffs."""
    rng = np.random.default_rng(seed)
    la, lb = rng.gamma(2.0, 200.0, n), rng.gamma(2.0, 200.0, n)
    sa, sb = rng.poisson(3, n).astype(float), rng.poisson(3, n).astype(float)
    df = pd.DataFrame({
        "id": [f"r{i}" for i in range(n)],
        "length__a_chars": la, "length__b_chars": lb, "length__diff_chars": la - lb,
        "length__sum_chars": la + lb,
        "structure__a_lines": sa, "structure__b_lines": sb, "structure__lr_lines": sa - sb,
        "overlap__p_prompt_len": rng.gamma(2.0, 50.0, n),
    }).astype({c: np.float32 for c in ["length__a_chars", "length__b_chars", "length__diff_chars",
                                       "length__sum_chars", "structure__a_lines", "structure__b_lines",
                                       "structure__lr_lines", "overlap__p_prompt_len"]})
    score = (la - lb) / 200 + 0.5 * (sa - sb) + rng.normal(0, 0.7, n)
    y = np.where(score > 0, 0, 1)
    if ties:
        y = np.where(np.abs(score) < 0.35, 2, y)
    return df, y.astype(np.int64)


def synth_swap(df: pd.DataFrame) -> pd.DataFrame:
    """The feature contract's swap: a <-> b exchange, diff / lr negate, others unchanged."""
    out = df.copy()
    for col in df.columns:
        if col == "id":
            continue
        group, rest = col.split("__", 1)
        role, feat = rest.split("_", 1)
        if role == "a":
            out[col] = df[f"{group}__b_{feat}"]
        elif role == "b":
            out[col] = df[f"{group}__a_{feat}"]
        elif role in ("diff", "lr"):
            out[col] = -df[col]
    return out


def _arrays(df):
    cols = [c for c in df.columns if c != "id"]
    return df[cols].to_numpy(np.float32), synth_swap(df)[cols].to_numpy(np.float32), cols


LGBM = {**FAST, "num_boost_round": 60, "early_stopping_rounds": 10}


def _cross_fit(n=120, seed=0, ties=True, seeds=(0,), n_folds=4, kind="lgbm", params=None, **kw):
    df, y = synth_features(n, seed, ties)
    test_df, _ = synth_features(30, seed + 100, ties)
    X, Xs, cols = _arrays(df)
    Xt, Xts, _ = _arrays(test_df)
    ids = df["id"].to_numpy()
    folds = np.arange(n) % n_folds
    groups = np.arange(n) // 2  # pairs of rows share a prompt
    fit = cross_fit_arrays(kind, LGBM if params is None else params, X, Xs, Xt, Xts, cols, y,
                           folds, groups, seeds=seeds, **kw)
    return fit, dict(df=df, y=y, X=X, Xs=Xs, Xt=Xt, Xts=Xts, ids=ids, folds=folds,
                     groups=groups, cols=cols)


# ---------------------------------------------------------------- pure cross-fitting

def test_oof_covers_every_row_and_sums_to_one():
    fit, d = _cross_fit()
    assert fit.oof.shape == (len(d["y"]), 3)
    assert np.allclose(fit.oof.sum(axis=1), 1)
    assert (fit.oof > 0).all()
    assert set(fit.models) == {(k, 0) for k in range(4)}
    assert np.allclose(fit.test.sum(axis=1), 1)
    # It learned something: better than the uniform 1.0986.
    from pipeline.blend import log_loss
    assert log_loss(d["y"], fit.oof) < 1.0


@pytest.mark.parametrize("refit", [False, True])
def test_no_validation_row_ever_reaches_a_booster(monkeypatch, refit):
    """LightGBM's own fits (early stopping and refit included) never see fold k's rows.

    The row index rides along as the last feature column, so the recorder reads which rows
    each booster was given."""
    import pipeline.learners.lgbm as L

    calls = []
    real = L.train_booster

    def recording(params, X, y, ids, Xv, yv, idsv, *args, **kw):
        rows = set(np.asarray(X)[:, -1].astype(int))
        vrows = set(np.asarray(Xv)[:, -1].astype(int)) if Xv is not None else set()
        calls.append((rows, vrows, len(y)))
        return real(params, X, y, ids, Xv, yv, idsv, *args, **kw)

    monkeypatch.setattr(L, "train_booster", recording)
    df, y = synth_features(120, 0)
    X, Xs, cols = _arrays(df)
    idx = np.arange(120, dtype=np.float32)[:, None]
    X, Xs = np.hstack([X, idx]), np.hstack([Xs, idx])
    folds, groups = np.arange(120) % 4, np.arange(120) // 2
    seeds = (0, 1)
    cross_fit_arrays("lgbm", {**LGBM, "refit": refit}, X, Xs, X[:5], Xs[:5], cols + ["row"], y,
                     folds, groups, seeds=seeds)
    per_model = 2 if refit else 1
    assert len(calls) == 4 * len(seeds) * per_model
    for i, (train_rows, valid_rows, n_rows) in enumerate(calls):
        k = i // (len(seeds) * per_model)  # models are fitted fold by fold
        held = set(np.flatnonzero(folds == k))
        assert not (train_rows & held), f"fold {k}: validation rows in the training data"
        assert not (valid_rows & held), f"fold {k}: validation rows in the early-stopping data"
        if refit and i % 2 == 1:
            assert not valid_rows and train_rows == set(range(120)) - held
            continue
        # Swap augmentation: every training row appears twice (both orders).
        assert n_rows == 2 * len(train_rows)
        assert train_rows | valid_rows == set(range(120)) - held
        assert valid_rows, "early stopping should use an inner split"
        # Inner split grouped by prompt: no group on both sides.
        assert not ({groups[r] for r in train_rows} & {groups[r] for r in valid_rows})


def test_without_early_stopping_fit_uses_all_training_rows(monkeypatch):
    import pipeline.learners.lgbm as L

    calls = []
    real = L.train_booster
    monkeypatch.setattr(L, "train_booster", lambda p, X, y, ids, Xv, yv, idsv, *a, **k: (
        calls.append((len(y), Xv)) or real(p, X, y, ids, Xv, yv, idsv, *a, **k)))
    _, d = _cross_fit(params={**LGBM, "early_stopping": False}, swap_augment=False)
    for k, (n_rows, valid) in enumerate(calls):
        assert valid is None
        assert n_rows == (d["folds"] != k).sum()


def test_swap_tta_prediction_is_symmetric():
    fit, d = _cross_fit()
    learner = load_learner("lgbm", fit.models[(0, 0)])
    p = predict_tta(learner, d["Xt"], d["Xts"])
    p_swapped = predict_tta(learner, d["Xts"], d["Xt"])
    assert np.allclose(p, swap_proba(p_swapped), atol=1e-9)
    # The member's averaged test predictions are symmetric too.
    df, y = synth_features(120, 0)
    X, Xs, cols = _arrays(df)
    both = cross_fit_arrays("lgbm", LGBM, X, Xs, np.concatenate([d["Xt"], d["Xts"]]),
                            np.concatenate([d["Xts"], d["Xt"]]), cols, y, np.arange(120) % 4,
                            np.arange(120) // 2)
    m = len(d["Xt"])
    assert np.allclose(both.test[:m], swap_proba(both.test[m:]), atol=1e-9)


def test_no_tie_training_set_still_gives_three_columns():
    fit, d = _cross_fit(ties=False)
    assert not (d["y"] == 2).any()
    for p in (fit.oof, fit.test):
        assert p.shape[1] == 3
        assert np.allclose(p.sum(axis=1), 1)
        assert (p[:, 2] < 1e-3).all()


def test_select_columns_by_group():
    cols = ["id", "length__a_chars", "structure__a_lines", "embedding__diff_0"]
    assert S.select_columns(cols, ["all"]) == cols[1:]
    assert S.select_columns(cols, ["length", "structure"]) == cols[1:3]
    with pytest.raises(ValueError, match="unknown feature group"):
        S.select_columns(cols, ["lenght"])


def test_member_spec_forms():
    assert S.member_spec("m", ["length"]) == S.MemberSpec("m", "lgbm", ["length"], {})
    assert S.member_spec("m", {"groups": ["all"], "params": {"num_leaves": 7}}) == \
        S.MemberSpec("m", "lgbm", ["all"], {"num_leaves": 7})
    assert S.member_spec("m", {"kind": "linear", "inputs": ["tfidf", "length"]}) == \
        S.MemberSpec("m", "linear", ["tfidf", "length"], {})
    assert S.member_spec("m", {"kind": "linear", "inputs": {"tfidf": {"fit": "all"}}}).inputs == \
        [{"tfidf": {"fit": "all"}}]
    with pytest.raises(ValueError, match="stack.members.m"):
        S.member_spec("m", {"group": ["all"]})
    with pytest.raises(ValueError, match="unknown learner kind 'xgb'"):
        S.member_spec("m", {"kind": "xgb", "inputs": ["all"]})
    assert S.member_spec("m", {"inputs": ["all"], "seeds": [3, 1]}).seeds == (3, 1)
    assert S.member_spec("m", {"inputs": ["all"]}).seeds is None
    for bad in ([], [1, 1], [0.5], "0", [True]):
        with pytest.raises(ValueError, match="stack.members.m.seeds"):
            S.member_spec("m", {"inputs": ["all"], "seeds": bad})


def test_lgbm_params_refuse_other_objectives():
    assert lgbm_params({"num_leaves": 5}, 3)["seed"] == 3
    with pytest.raises(ValueError, match="objective"):
        lgbm_params({"objective": "binary"}, 0)


# ---------------------------------------------------------------- the stage, with fake features

def _fake_feature_modules(monkeypatch, finetune: bool = False):
    """Stand-ins for pipeline.featurize / features.swap (and pipeline.finetune) per the contracts."""

    def feats_of(frame: pd.DataFrame) -> pd.DataFrame:
        la = np.array([sum(map(len, t)) for t in frame["response_a"]], dtype=np.float32)
        lb = np.array([sum(map(len, t)) for t in frame["response_b"]], dtype=np.float32)
        lp = np.array([sum(map(len, t)) for t in frame["prompt"]], dtype=np.float32)
        return pd.DataFrame({"id": frame["id"].astype(str), "length__a_chars": la,
                             "length__b_chars": lb, "length__diff_chars": la - lb,
                             "structure__p_prompt": lp})

    install_fake_features(monkeypatch, feats_of, synth_swap)
    ft = types.ModuleType("pipeline.finetune")
    if finetune:
        def logits_of(frame, labels=None):
            rng = np.random.default_rng(0)
            z = rng.normal(size=(len(frame), 3))
            if labels is not None:
                z[np.arange(len(frame)), labels] += 2.0  # an informative member
            return z

        def member_for(ctx):
            tr, te = ctx.dataset.train, ctx.dataset.test
            from pipeline.folds import load_or_make_folds
            folds = load_or_make_folds(ctx.catalog, tr, ctx.config.stack.n_folds, ctx.config.stack.fold_seed)
            z = logits_of(tr, tr["label"].to_numpy())
            zt = logits_of(te)
            oof = pd.DataFrame({"id": tr["id"], "fold": folds["fold"], "logit_a": z[:, 0],
                                "logit_b": z[:, 1], "logit_tie": z[:, 2]})
            test = pd.DataFrame({"id": te["id"], "logit_a": zt[:, 0], "logit_b": zt[:, 1],
                                 "logit_tie": zt[:, 2]})
            return types.SimpleNamespace(name="ft_fake", oof=oof, test=test, model_dir="/nowhere")

        ft.member_for = member_for
        ft.predict_logits = lambda model_dir, frame, ctx: logits_of(frame)
    else:
        ft.member_for = lambda ctx: None
    monkeypatch.setitem(sys.modules, "pipeline.finetune", ft)


def _ctx(tmp_path, name="t", stack=None, n_train=40, **kw):
    train, test = tmp_path / "train.csv", tmp_path / "test.csv"
    if not train.exists():
        make_rows(n_train).to_csv(train, index=False)
    if not test.exists():
        make_rows(7, with_labels=False, start_id=500).to_csv(test, index=False)
    # The default members read views the fake features lack (tfidf, embedding-full, overlap).
    stack = {"n_folds": 4, "lgbm_params": FAST, "num_boost_round": 40,
             "early_stopping_rounds": 10, "members": {"lgbm_all": ["all"]}, **(stack or {})}
    cfg = apply_overrides(Config(), {"name": name, "stack": stack})
    return RunContext(config=cfg, catalog=Catalog(tmp_path / "work"), train_path=train,
                      test_path=test, **kw)


def test_stage_writes_valid_outputs_and_reuses_cache(tmp_path, monkeypatch):
    _fake_feature_modules(monkeypatch)
    members = {"lgbm_all": ["all"], "lgbm_len": ["length"]}
    ctx = _ctx(tmp_path, stack={"members": members})
    S.run_stage(ctx)
    run = ctx.run_dir
    sub = pd.read_csv(run / "submission.csv", dtype={"id": str})
    assert list(sub["id"]) == [str(i) for i in range(500, 507)]
    assert np.allclose(sub.iloc[:, 1:].sum(axis=1), 1)
    oof = pd.read_parquet(run / "oof.parquet")
    assert sorted(oof["id"]) == sorted(str(i) for i in range(40)) and oof["id"].is_unique
    metrics = json.loads((run / "metrics.json").read_text())
    for key in ("oof_log_loss", "oof_accuracy", "members", "per_class_log_loss", "blend_weights",
                "prior_log_loss", "config", "timing", "oof_log_loss_in_sample_blend"):
        assert key in metrics
    assert set(metrics["members"]) == set(members)
    assert metrics["cache_hits"] == {"lgbm_all": False, "lgbm_len": False}
    manifest = json.loads((run / "models" / "manifest.json").read_text())
    assert len(manifest["members"]["lgbm_all"]["models"]) == 4
    for png in ("calibration.png", "confusion.png", "importance.png", "blend_weights.png"):
        assert (run / png).stat().st_size > 1000
    assert "nested" in (run / "report.md").read_text()

    # Same config again: every member from the cache, nothing trained.
    import pipeline.learners.lgbm as L
    monkeypatch.setattr(L, "train_booster", lambda *a, **k: pytest.fail("cache miss"))
    S.run_stage(_ctx(tmp_path, stack={"members": members}))
    assert json.loads((run / "metrics.json").read_text())["cache_hits"] == {"lgbm_all": True, "lgbm_len": True}

    # One member's params change: only that member is refitted.
    calls = []
    monkeypatch.setattr(L, "train_booster", lambda *a, **k: calls.append(1) or real_train(*a, **k))
    changed = {"lgbm_all": ["all"], "lgbm_len": {"groups": ["length"], "params": {"num_leaves": 3}}}
    S.run_stage(_ctx(tmp_path, stack={"members": changed}))
    assert json.loads((run / "metrics.json").read_text())["cache_hits"] == {"lgbm_all": True, "lgbm_len": False}
    assert len(calls) == 4


from pipeline.crossfit import cross_fit as real_cross_fit  # noqa: E402
from pipeline.learners.lgbm import train_booster as real_train  # noqa: E402


def test_a_members_own_seeds_replace_stack_seeds_for_it_only(tmp_path, monkeypatch):
    from pipeline import predict

    _fake_feature_modules(monkeypatch)
    members = {"lgbm_all": ["all"], "lgbm_len": ["length"]}
    ctx = _ctx(tmp_path, stack={"members": members})
    S.run_stage(ctx)
    # seeds [0] is stack.seeds' default: the member's cache entry is the same one.
    same = {**members, "lgbm_len": {"inputs": ["length"], "seeds": [0]}}
    S.run_stage(_ctx(tmp_path, stack={"members": same}))
    assert json.loads((ctx.run_dir / "metrics.json").read_text())["cache_hits"] == \
        {"lgbm_all": True, "lgbm_len": True}
    seeds = []
    monkeypatch.setattr(S, "cross_fit", lambda *a, **k: seeds.append(k["seeds"]) or real_cross_fit(*a, **k))
    three = {**members, "lgbm_len": {"inputs": ["length"], "seeds": [0, 1, 2]}}
    S.run_stage(_ctx(tmp_path, stack={"members": three}))
    metrics = json.loads((ctx.run_dir / "metrics.json").read_text())
    assert metrics["cache_hits"] == {"lgbm_all": True, "lgbm_len": False} and seeds == [(0, 1, 2)]
    member_dirs = sorted((tmp_path / "work" / "cache" / "stack").glob("lgbm_len-*/meta.json"))
    counts = sorted(len(json.loads(m.read_text())["models"]) for m in member_dirs)
    assert counts == [4, 12]  # 4 folds x 1 seed (before), 4 folds x 3 seeds (now)
    # --stage predict reads every (fold, seed) model of the run back.
    out = tmp_path / "preds.csv"
    predict.run_stage(_ctx(tmp_path, name="other", run_name="t", out_path=out))
    preds = pd.read_csv(out, dtype={"id": str})
    sub = pd.read_csv(ctx.run_dir / "submission.csv", dtype={"id": str})
    assert np.allclose(preds.iloc[:, 1:].to_numpy(), sub.iloc[:, 1:].to_numpy(), atol=1e-6)


def test_predict_reproduces_the_submission_and_blends_finetune(tmp_path, monkeypatch):
    from pipeline import predict

    _fake_feature_modules(monkeypatch, finetune=True)
    # A member that sees only the (uninformative) prompt length, so the fake fine-tuned
    # member, which knows the labels, should dominate the blend.
    ctx = _ctx(tmp_path, stack={"members": {"lgbm_prompt": ["structure"]}})
    S.run_stage(ctx)
    metrics = json.loads((ctx.run_dir / "metrics.json").read_text())
    assert metrics["finetune_member"] == "ft_fake"
    assert metrics["blend_weights"]["ft_fake"] > 0.5  # the informative member dominates
    out = tmp_path / "preds.csv"
    pctx = _ctx(tmp_path, name="other", run_name="t", out_path=out)  # config comes from the run
    predict.run_stage(pctx)
    preds = pd.read_csv(out, dtype={"id": str})
    sub = pd.read_csv(ctx.run_dir / "submission.csv", dtype={"id": str})
    assert list(preds.columns) == list(sub.columns)
    assert np.allclose(preds.iloc[:, 1:].to_numpy(), sub.iloc[:, 1:].to_numpy(), atol=1e-6)


def test_finetune_member_with_partial_oof_is_left_out(tmp_path, monkeypatch, caplog):
    _fake_feature_modules(monkeypatch, finetune=True)
    real_member_for = sys.modules["pipeline.finetune"].member_for

    def partial(ctx):
        m = real_member_for(ctx)
        m.oof = m.oof[m.oof["fold"] == 0]
        return m

    sys.modules["pipeline.finetune"].member_for = partial
    ctx = _ctx(tmp_path)
    S.run_stage(ctx)
    metrics = json.loads((ctx.run_dir / "metrics.json").read_text())
    assert metrics["finetune_member"] is None
    assert "left out of the blend" in caplog.text


def test_stage_with_no_tie_labels(tmp_path, monkeypatch):
    _fake_feature_modules(monkeypatch)
    train = tmp_path / "train.csv"
    rows = make_rows(40)
    tie = rows["winner_tie"] == 1
    rows.loc[tie, "winner_tie"] = 0
    rows.loc[tie, "winner_model_a"] = 1
    rows.to_csv(train, index=False)
    ctx = _ctx(tmp_path)
    S.run_stage(ctx)
    sub = pd.read_csv(ctx.run_dir / "submission.csv")
    assert sub.shape[1] == 4
    assert np.allclose(sub.iloc[:, 1:].sum(axis=1), 1)
    assert (sub["winner_tie"] < 1e-3).all()
    metrics = json.loads((ctx.run_dir / "metrics.json").read_text())
    assert metrics["per_class_log_loss"]["tie"] is None


# ---------------------------------------------------------------- threads beside the helper

def test_the_fit_beside_the_next_folds_view_build_runs_one_thread_fewer(monkeypatch):
    """While the last unit of a fold fits, the next fold's views are built: that unit's
    LightGBM runs one thread fewer than its CPUs, on every executor (so results do not
    depend on it); a member without fold-fitted views or with its own num_threads keeps
    its count."""
    import pipeline.crossfit as C
    from pipeline.executors.local import LocalExecutor

    monkeypatch.setattr("os.cpu_count", lambda: 4)
    seen = []
    real = C._fit_one

    def recording(kind, params, *args):  # the count a 50,000-row fit of the unit would get
        seen.append(lgbm_params(params, 0, n_rows=50_000)["num_threads"])
        return real(kind, params, *args)

    monkeypatch.setattr(C, "_fit_one", recording)
    df, y = synth_features(90, 0, True)
    X, Xs, cols = _arrays(df)
    fm = C.FoldMatrices(X, Xs, X[:5], Xs[:5], cols)
    params = {k: v for k, v in LGBM.items() if k != "num_threads"}

    def run(params, builds_views, prefetch=True):
        seen.clear()
        C.cross_fit("lgbm", params, lambda k, rows: fm, y, np.arange(90) % 3, np.arange(90) // 2,
                    5, seeds=(0, 1), executor=LocalExecutor(prefetch=prefetch),
                    builds_views=builds_views)
        return list(seen)

    # folds 0, 1, 2 x seeds 0, 1: the seed-1 units of folds 0 and 1 run beside a build
    assert run(params, True) == [4, 3, 4, 3, 4, 4]
    assert run(params, True, prefetch=False) == [4, 3, 4, 3, 4, 4]
    assert run(params, False) == [4] * 6
    assert run({**params, "num_threads": 2}, True) == [2] * 6
    assert lgbm_params({}, 0, n_rows=500)["num_threads"] == 1  # small fits: one thread, always
