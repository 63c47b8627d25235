"""Stage features: cache hits, partial recomputation, API shape, swap through the stage."""
from __future__ import annotations

import hashlib
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from features.swap import column_group, swap_features
from pipeline import featurize
from pipeline.catalog import Catalog
from pipeline.config import Config, apply_overrides
from pipeline.context import RunContext
from pipeline.data import swap_pairs

DIM = 8


def _vec(text: str) -> np.ndarray:
    seed = int(hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()[:8], 16)
    return np.random.default_rng(seed).normal(size=DIM).astype(np.float32)


def fake_embeddings(ctx, frame, model):
    """Deterministic per text, so swapped rows get swapped vectors (like the real cache)."""
    return {col: np.stack([_vec("\n\n".join(t or "" for t in turns)) for turns in frame[col]])
            for col in ("prompt", "response_a", "response_b")}


@pytest.fixture
def calls(monkeypatch):
    """Records every group computation and tokenizer use; fakes the tokenizer and encoder."""
    log = {"groups": [], "tokenizers": []}
    real_call = featurize._Computer.__call__

    def counting_call(self, spec, arrays=None):
        log["groups"].append(spec.name)
        return real_call(self, spec, arrays)

    def fake_counter(name):
        log["tokenizers"].append(name)
        return lambda texts: np.array([len(t.split()) for t in texts], dtype=np.float64)

    monkeypatch.setattr(featurize._Computer, "__call__", counting_call)
    monkeypatch.setattr(featurize, "token_counter", fake_counter)
    monkeypatch.setattr(featurize, "_embeddings", fake_embeddings)
    return log


def make_ctx(tiny_csvs, tmp_path: Path, **features) -> RunContext:
    train, test = tiny_csvs
    cfg = apply_overrides(Config(), {"features": features} if features else {})
    return RunContext(config=cfg, catalog=Catalog(tmp_path / "work"), train_path=train,
                      test_path=test)


def test_load_features_shape_and_order(tiny_csvs, tmp_path, calls):
    ctx = make_ctx(tiny_csvs, tmp_path, embed_diff_dims=3)
    train, test = featurize.load_features(ctx)
    assert train["id"].tolist() == ctx.dataset.train["id"].tolist()
    assert test["id"].tolist() == ctx.dataset.test["id"].tolist()
    assert list(train.columns) == list(test.columns) and train.columns[0] == "id"
    groups = {column_group(c) for c in train.columns[1:]}
    assert groups == {"length", "structure", "overlap", "emb-all-minilm-l6-v2"}
    assert [c for c in train.columns if c.startswith("emb-") and "__diff_e" in c] == [
        f"emb-all-minilm-l6-v2__diff_e{j}" for j in range(3)]
    values = train.drop(columns="id").to_numpy()
    assert values.dtype == np.float32 and np.isfinite(values).all()
    assert sorted(calls["groups"]) == sorted(["length", "structure", "overlap",
                                              "emb-all-minilm-l6-v2"] * 2)
    assert calls["tokenizers"] == ["all-MiniLM-L6-v2"] * 2


def test_second_run_reads_cache(tiny_csvs, tmp_path, calls, caplog):
    ctx = make_ctx(tiny_csvs, tmp_path)
    first = featurize.load_features(ctx)
    calls["groups"].clear()
    calls["tokenizers"].clear()
    # All read from cache: the summary is a DEBUG line (-v), not one more INFO line.
    with caplog.at_level(logging.DEBUG, logger="pipeline.featurize"):
        second = featurize.load_features(make_ctx(tiny_csvs, tmp_path))
    assert calls == {"groups": [], "tokenizers": []}
    assert "8 group file(s) read from cache, 0 computed" in caplog.text
    for a, b in zip(first, second):
        pd.testing.assert_frame_equal(a, b)


def test_adding_a_group_computes_only_it(tiny_csvs, tmp_path, calls):
    featurize.load_features(make_ctx(tiny_csvs, tmp_path, groups=["length", "structure"]))
    calls["groups"].clear()
    train, _ = featurize.load_features(
        make_ctx(tiny_csvs, tmp_path, groups=["length", "structure", "overlap"]))
    assert calls["groups"] == ["overlap", "overlap"]
    assert {column_group(c) for c in train.columns[1:]} == {"length", "structure", "overlap"}


def test_cache_key_follows_what_matters(tiny_csvs, tmp_path, calls):
    featurize.load_features(make_ctx(tiny_csvs, tmp_path, embed_diff_dims=2))
    calls["groups"].clear()
    featurize.load_features(make_ctx(tiny_csvs, tmp_path, embed_diff_dims=4))
    assert sorted(calls["groups"]) == ["emb-all-minilm-l6-v2"] * 2
    calls["groups"].clear()
    ctx = make_ctx(tiny_csvs, tmp_path, embed_diff_dims=4)
    ctx = RunContext(config=apply_overrides(ctx.config, {"embed": {"batch_size": 7}}),
                     catalog=ctx.catalog, train_path=ctx.train_path, test_path=ctx.test_path)
    featurize.load_features(ctx)  # batch size changes no vector: all hits
    assert calls["groups"] == []
    calls["groups"].clear()
    featurize.load_features(make_ctx(tiny_csvs, tmp_path, embed_diff_dims=4,
                                     tokenizer="other-tokenizer"))
    assert sorted(calls["groups"]) == ["length", "length"]


def test_changed_data_is_recomputed(tiny_csvs, tmp_path, calls):
    featurize.load_features(make_ctx(tiny_csvs, tmp_path, groups=["structure"]))
    calls["groups"].clear()
    train_csv, test_csv = tiny_csvs
    df = pd.read_csv(test_csv)
    df.loc[0, "response_a"] = '["a changed answer"]'
    df.to_csv(test_csv, index=False)
    featurize.load_features(make_ctx(tiny_csvs, tmp_path, groups=["structure"]))
    assert calls["groups"] == ["structure"]  # test only; train still cached


def test_force_and_corrupt_cache_recompute(tiny_csvs, tmp_path, calls):
    ctx = make_ctx(tiny_csvs, tmp_path, groups=["overlap"])
    featurize.load_features(ctx)
    for path in ctx.catalog.stage_cache("features").glob("overlap-train-*.parquet"):
        path.write_bytes(b"not parquet")
    calls["groups"].clear()
    featurize.load_features(ctx)
    assert calls["groups"] == ["overlap"]
    calls["groups"].clear()
    ctx.force = True
    featurize.load_features(ctx)
    assert calls["groups"] == ["overlap", "overlap"]


def test_provenance_written(tiny_csvs, tmp_path, calls):
    ctx = make_ctx(tiny_csvs, tmp_path, groups=["length"])
    featurize.load_features(ctx)
    prov = sorted(ctx.catalog.stage_cache("features").glob("length-train-*.parquet.json"))
    assert len(prov) == 1
    text = prov[0].read_text()
    assert '"tokenizer": "sentence-transformers/all-MiniLM-L6-v2"' in text
    assert '"rows": 12' in text and '"data_hash"' in text


def test_features_for_matches_cached_and_swaps(tiny_csvs, tmp_path, calls):
    ctx = make_ctx(tiny_csvs, tmp_path, embed_diff_dims=4)
    train, _ = featurize.load_features(ctx)
    frame = ctx.dataset.train
    fresh = featurize.features_for(ctx, frame)
    pd.testing.assert_frame_equal(fresh, train)
    swapped = featurize.features_for(ctx, swap_pairs(frame))
    pd.testing.assert_frame_equal(swapped, swap_features(fresh), rtol=1e-6, atol=1e-6)


def test_group_selection(tiny_csvs, tmp_path, calls):
    ctx = make_ctx(tiny_csvs, tmp_path)
    names = [s.name for s in featurize.group_specs(ctx.config, ["embedding", "length"])]
    assert names == ["emb-all-minilm-l6-v2", "length"]
    assert [s.name for s in featurize.group_specs(ctx.config, ["emb-all-minilm-l6-v2"])] == [
        "emb-all-minilm-l6-v2"]
    assert len(featurize.group_specs(ctx.config, ["all"])) == 4
    with pytest.raises(ValueError, match="unknown group 'colour'"):
        featurize.group_specs(ctx.config, ["colour"])
    two = apply_overrides(ctx.config, {"embed": {"models": ["all-MiniLM-L6-v2", "org/all-MiniLM-L6-v2"]}})
    names = list(featurize.embedding_groups(two))
    assert len(set(names)) == 2 and names[0] == "emb-all-minilm-l6-v2"


@pytest.mark.slow
def test_real_tokenizer_counts_without_truncation():
    count = featurize.token_counter("all-MiniLM-L6-v2")
    long_text = "hello world " * 600
    got = count(["", "hello world", long_text])
    assert got[0] == 0 and got[1] == 2
    assert got[2] == 1200  # far beyond the model's 256/512 limit: not truncated


@pytest.mark.slow
def test_token_counts_match_transformers_tokenizer():
    from transformers import AutoTokenizer

    from pipeline.models import resolve_model_path

    tok = AutoTokenizer.from_pretrained(resolve_model_path("all-MiniLM-L6-v2"))
    texts = ["Hello, World!", "caf\u00e9 \ufffd \u4f60\u597d " * 50, "x" * 300, "a\n\n- b\n- c"]
    want = [len(tok(t, add_special_tokens=False, truncation=False)["input_ids"]) for t in texts]
    assert featurize.token_counter("all-MiniLM-L6-v2")(texts).tolist() == want
