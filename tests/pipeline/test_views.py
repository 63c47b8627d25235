"""Views and multi-family members through the stage: fold-fitted TF-IDF never sees a
validation row, views are cached apart from learners, every learner x view is swap
symmetric, and a run holding every kind round-trips through --stage predict."""
from __future__ import annotations

import hashlib
import json

import numpy as np
import pandas as pd
import pytest

import pipeline.stack as S
from features import ngram
from pipeline.data import swap_proba
from tests.conftest import make_rows
from tests.pipeline.test_stack import _ctx, _fake_feature_modules

SMALL_TFIDF = {"n_features": 2 ** 16, "svd_dims": 4, "min_df": 1}


def fake_embeddings(ctx, frame, model):
    """Deterministic 8-dim unit vectors per text (a stand-in for the embed cache)."""
    out = {}
    for col in ("prompt", "response_a", "response_b"):
        vecs = []
        for turns in frame[col]:
            seed = int(hashlib.sha256("\x1e".join(t or "" for t in turns).encode("utf-8", "replace")).hexdigest()[:8], 16)
            v = np.random.default_rng(seed).normal(size=8)
            vecs.append(v / np.linalg.norm(v))
        out[col] = np.asarray(vecs, dtype=np.float32)
    return out


@pytest.fixture
def fakes(monkeypatch):
    import features.embedding  # noqa: F401 (loaded with the real features.swap before it is faked)
    import pipeline.embed

    _fake_feature_modules(monkeypatch)
    monkeypatch.setattr(pipeline.embed, "embeddings_for", fake_embeddings)


def marked_rows(n: int, start: int = 0, with_labels: bool = True) -> pd.DataFrame:
    """make_rows with a word unique to each row in its prompt and both responses."""
    rows = make_rows(n, with_labels=with_labels, start_id=start)
    for col in ("prompt", "response_a", "response_b"):
        rows[col] = [json.dumps([f"zqmark{start + i}x {col} " + " ".join(t or "" for t in json.loads(v) if t)])
                     for i, v in enumerate(rows[col])]
    return rows


def _word_column(word: str, n_features: int) -> int:
    from sklearn.feature_extraction.text import HashingVectorizer

    v = HashingVectorizer(analyzer="word", n_features=n_features, alternate_sign=False, norm=None)
    return int(v.transform([word]).indices[0])


def test_fold_fitted_tfidf_never_sees_a_validation_row(tmp_path, fakes, monkeypatch):
    marked_rows(40).to_csv(tmp_path / "train.csv", index=False)
    marked_rows(7, start=500, with_labels=False).to_csv(tmp_path / "test.csv", index=False)
    seen = {"idf": [], "svd": []}
    real_idf, real_svd = ngram.fit_idf, ngram.with_svd

    def recording_idf(docs, s):
        seen["idf"].append(set(docs.indices))
        return real_idf(docs, s)

    def recording_svd(state, svd_docs, s, seed=0):
        seen["svd"].append(set(svd_docs.indices))
        return real_svd(state, svd_docs, s, seed)

    monkeypatch.setattr(ngram, "fit_idf", recording_idf)
    monkeypatch.setattr(ngram, "with_svd", recording_svd)
    members = {"lin": {"kind": "linear", "inputs": ["tfidf"]},
               "gbm": {"kind": "lgbm", "inputs": ["tfidf"]}}
    ctx = _ctx(tmp_path, stack={"members": members, "tfidf": SMALL_TFIDF})
    S.run_stage(ctx)
    folds = pd.read_parquet(ctx.run_dir / "oof.parquet").set_index("id")["fold"]
    # The sparse and the SVD view share one IDF fit per fold; the SVD view adds its own SVD.
    assert len(seen["idf"]) == 4 and len(seen["svd"]) == 4
    nf = SMALL_TFIDF["n_features"]
    for i, present in enumerate(seen["idf"] + seen["svd"]):
        k = i % 4
        for rid, fold in folds.items():
            col = _word_column(f"zqmark{rid}x", nf)
            if fold == k:
                assert col not in present, f"fold {k}: row {rid}'s text reached the fit"
            else:
                assert col in present, f"fold {k}: training row {rid} missing from the fit"
        for rid in range(500, 507):  # test texts are never fitted on with fit: fold
            assert _word_column(f"zqmark{rid}x", nf) not in present


def test_shared_idf_fit_gives_the_state_of_a_fit_of_its_own():
    """A view's state built on the shared IDF fit equals the one-step fit, sparse and SVD."""
    from pipeline.views import TfidfView

    texts = [f"w{i % 7} w{i % 5} common text {i % 3}" for i in range(60)]
    counts = ngram.hashed_counts(texts, ngram.settings(SMALL_TFIDF))
    prep = (counts, 20)
    rows = np.arange(20) % 4 != 0
    for dense in (False, True):
        view = TfidfView(SMALL_TFIDF, "fold", dense)
        one = view.fit(prep, rows, None, 0)
        shared = view.fit_on(view.base.fit(prep, rows, None, 0), prep, rows, None, 0)
        direct = ngram.fit_tfidf(counts[np.flatnonzero(np.tile(rows, 3))], view.settings,
                                 svd_docs=counts[20:][np.flatnonzero(np.tile(rows, 2))] if dense else None)
        for state in (one, shared):
            assert all(np.array_equal(x, y) for x, y in zip(state.columns, direct.columns))
            assert all(np.array_equal(x, y) for x, y in zip(state.idf, direct.idf))
            assert (state.svd is None) == (not dense)
            if dense:
                assert np.array_equal(state.svd, direct.svd)
    # Views differing only in blocks or SVD settings share the base key; min_df does not.
    keys = {TfidfView({**SMALL_TFIDF, **o}, "fold", d).base.key()["settings"]["min_df"]
            for o, d in [({}, True), ({"blocks": ["diff"]}, False), ({"svd_dims": 8}, True)]}
    assert keys == {1}
    assert (TfidfView(SMALL_TFIDF, "fold", True).base.key()
            == TfidfView({**SMALL_TFIDF, "blocks": ["diff"], "svd_dims": 8}, "fold", False).base.key())
    assert (TfidfView(SMALL_TFIDF, "fold", True).base.key()
            != TfidfView({**SMALL_TFIDF, "min_df": 2}, "fold", True).base.key())


def test_fit_all_is_transductive_and_labelled(tmp_path, fakes, monkeypatch):
    marked_rows(40).to_csv(tmp_path / "train.csv", index=False)
    marked_rows(7, start=500, with_labels=False).to_csv(tmp_path / "test.csv", index=False)
    seen = []
    real = ngram.fit_idf
    monkeypatch.setattr(ngram, "fit_idf", lambda docs, s: seen.append(docs.shape[0]) or real(docs, s))
    members = {"lin_all": {"kind": "linear", "inputs": [{"tfidf": {"fit": "all"}}]}}
    ctx = _ctx(tmp_path, stack={"members": members, "tfidf": SMALL_TFIDF})
    S.run_stage(ctx)
    assert seen == [3 * (40 + 7)]  # once, on every train and test text
    metrics = json.loads((ctx.run_dir / "metrics.json").read_text())
    assert metrics["transductive_members"] == ["lin_all"]
    assert "transductive" in (ctx.run_dir / "report.md").read_text()


def test_changing_a_learner_param_refits_no_view(tmp_path, fakes, monkeypatch):
    members = {"lin": {"kind": "linear", "inputs": ["tfidf", "embedding-full", "length"]},
               "gbm": {"kind": "lgbm", "inputs": ["tfidf", "length"]}}
    S.run_stage(_ctx(tmp_path, stack={"members": members, "tfidf": SMALL_TFIDF}))
    counts = {"fit": 0, "svd": 0, "hash": 0}
    real_fit, real_svd, real_hash = ngram.fit_idf, ngram.with_svd, ngram.hashed_counts
    monkeypatch.setattr(ngram, "fit_idf", lambda *a, **k: counts.__setitem__("fit", counts["fit"] + 1) or real_fit(*a, **k))
    monkeypatch.setattr(ngram, "with_svd", lambda *a, **k: counts.__setitem__("svd", counts["svd"] + 1) or real_svd(*a, **k))
    monkeypatch.setattr(ngram, "hashed_counts", lambda *a, **k: counts.__setitem__("hash", counts["hash"] + 1) or real_hash(*a, **k))
    changed = {"lin": {**members["lin"], "params": {"C": 0.3}},
               "gbm": {**members["gbm"], "params": {"num_leaves": 3}}}
    ctx = _ctx(tmp_path, stack={"members": changed, "tfidf": SMALL_TFIDF})
    S.run_stage(ctx)
    metrics = json.loads((ctx.run_dir / "metrics.json").read_text())
    assert metrics["cache_hits"] == {"lin": False, "gbm": False}  # both learners refitted
    assert counts == {"fit": 0, "svd": 0, "hash": 0}  # ... every view read back
    assert (metrics["view_fits"]["view_hits"], metrics["view_fits"]["view_fits"]) == (8, 0)
    # Each member's share of the view time is reported; they add up to the total.
    shares = metrics["view_fits"]["member_view_seconds"]
    assert set(shares) == {"lin", "gbm"} and all(v >= 0 for v in shares.values())
    assert abs(sum(shares.values()) - metrics["view_fits"]["view_seconds"]) < 0.02
    S.run_stage(ctx)  # both members from the cache: no view time of theirs
    metrics = json.loads((ctx.run_dir / "metrics.json").read_text())
    assert metrics["view_fits"]["member_view_seconds"] == {"lin": 0.0, "gbm": 0.0}
    # A view setting does refit that view.
    S.run_stage(_ctx(tmp_path, stack={"members": changed, "tfidf": {**SMALL_TFIDF, "min_df": 2}}))
    # (the two members' views share one IDF fit per fold; the SVD view adds its SVD)
    assert (counts["fit"], counts["svd"], counts["hash"]) == (4, 4, 0)


ALL_KINDS = {
    "gbm_len": ["length"],
    "lin_len": {"kind": "linear", "inputs": ["length"]},
    "gbm_tfidf": {"kind": "lgbm", "inputs": ["tfidf", "length"]},
    "lin_tfidf": {"kind": "linear", "inputs": ["tfidf"]},
    "lin_tfidf_all": {"kind": "linear", "inputs": [{"tfidf": {"fit": "all"}}]},
    "gbm_emb": {"kind": "lgbm", "inputs": ["embedding-full"]},
    "lin_emb": {"kind": "linear", "inputs": ["embedding-full", "structure"]},
    "lin_emb_diff": {"kind": "linear", "inputs": [{"embedding-full": {"blocks": ["diff", "absdiff", "cos"]}}]},
    "xgb_tfidf": {"kind": "xgboost", "inputs": ["tfidf", "length"], "params": {"num_boost_round": 40}},
}


def test_every_learner_and_view_is_swap_symmetric(tmp_path, fakes):
    """p(x) == permute(p(swap x)) for every member kind x view, with augmentation and TTA."""
    train = make_rows(40)
    test = make_rows(9, with_labels=False, start_id=500)
    swapped = test.assign(id=test["id"] + 100, response_a=test["response_b"],
                          response_b=test["response_a"])
    train.to_csv(tmp_path / "train.csv", index=False)
    pd.concat([test, swapped]).to_csv(tmp_path / "test.csv", index=False)
    ctx = _ctx(tmp_path, stack={"members": ALL_KINDS, "tfidf": SMALL_TFIDF})
    inp = S.prepare_inputs(ctx)
    for name, spec in ALL_KINDS.items():
        fit = S.fit_member_cached(ctx, S.member_spec(name, spec), inp).fit
        assert np.abs(fit.test[:9] - swap_proba(fit.test[9:])).max() < 1e-9, name


@pytest.mark.parametrize("blend", ["soft_vote", "meta"])
def test_predict_round_trip_for_a_run_holding_every_kind(tmp_path, fakes, blend):
    from pipeline import predict

    ctx = _ctx(tmp_path, stack={"members": ALL_KINDS, "tfidf": SMALL_TFIDF, "blend": blend})
    S.run_stage(ctx)
    manifest = json.loads((ctx.run_dir / "models" / "manifest.json").read_text())
    assert {m["kind"] for m in manifest["members"].values()} == {"lgbm", "linear", "xgboost"}
    assert manifest["blend"] == blend
    out = tmp_path / "preds.csv"
    predict.run_stage(_ctx(tmp_path, name="other", run_name="t", out_path=out))
    preds = pd.read_csv(out, dtype={"id": str})
    sub = pd.read_csv(ctx.run_dir / "submission.csv", dtype={"id": str})
    assert np.allclose(preds.iloc[:, 1:].to_numpy(), sub.iloc[:, 1:].to_numpy(), atol=1e-6)

    # A damaged saved view state stops predict with a message naming it.
    from pipeline.data import DataError

    state = next((ctx.run_dir / "models" / "lin_tfidf").glob("view-tfidf_fold0.pkl"))
    state.write_bytes(state.read_bytes()[:-10])
    with pytest.raises(DataError, match="view-tfidf_fold0.pkl does not match the SHA-256"):
        predict.run_stage(_ctx(tmp_path, name="other", run_name="t", out_path=out))


def test_bad_member_inputs_are_named(tmp_path, fakes):
    for members, match in [
        ({"m": {"kind": "linear", "inputs": ["lenght"]}}, "unknown feature group"),
        ({"m": {"kind": "linear", "inputs": [{"tfidf": {"fit": "sometimes"}}]}}, "fit must be"),
        ({"m": {"kind": "linear", "inputs": [{"tfidf": {"ngrams": 3}}]}}, "unknown setting"),
        ({"m": {"kind": "linear", "inputs": [{"embedding-full": {"blocks": ["sum"]}}]}}, "blocks must be"),
        ({"m": {"kind": "linear", "inputs": [{"embedding-full": {"block": ["diff"]}}]}}, "unknown setting"),
        ({"m": {"kind": "linear", "inputs": ["all"], "params": {"alpha": 1}}}, "unknown param"),
        ({"blend": ["all"]}, "reserved name"),
    ]:
        with pytest.raises(ValueError, match=match):
            S.run_stage(_ctx(tmp_path, stack={"members": members}))


def test_embedding_blocks_are_columns_of_the_full_view(tmp_path, fakes):
    """A blocks choice holds exactly those columns of the full view (swapped rows too), and
    the full set keeps the cache key it had before blocks existed."""
    from pipeline.views import EMBEDDING_BLOCKS, EmbeddingFullView, Source

    ctx = _ctx(tmp_path)
    frame = pd.DataFrame({c: [[f"{c} {i}"] for i in range(12)] for c in ("prompt", "response_a", "response_b")})
    src = Source("train", frame, [], np.zeros((12, 0), np.float32), np.zeros((12, 0), np.float32))
    full = EmbeddingFullView(["m1", "m2"], {"m1": {}, "m2": {}})
    X, X_sw = full.prepare(ctx, src)
    assert X.shape == (12, 2 * (5 * 8 + 3)) and full.key() == {"view": "embedding-full",
                                                               "models": ["m1", "m2"], "embed": {"m1": {}, "m2": {}}}
    part = EmbeddingFullView(["m1", "m2"], {"m1": {}, "m2": {}}, blocks=["cos", "diff"])
    Y, Y_sw = part.prepare(ctx, src)
    cols = [full.names.index(n) for n in part.names]
    assert part.names[:3] == ["embfull0__a_cos_prompt", "embfull0__b_cos_prompt", "embfull0__p_cos_ab"]
    assert len(cols) == Y.shape[1] == 2 * (8 + 3)
    assert np.array_equal(Y, X[:, cols]) and np.array_equal(Y_sw, X_sw[:, cols])
    assert part.key()["blocks"] == ["cos", "diff"] != full.key().get("blocks")
    # Swapped rows: diff negates, the prompt cosines exchange.
    assert np.allclose(Y_sw[:, 3:11], -Y[:, 3:11]) and np.array_equal(Y_sw[:, [1, 0, 2]], Y[:, :3])
    assert EMBEDDING_BLOCKS == ("p", "a", "b", "diff", "absdiff", "cos")
