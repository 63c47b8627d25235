"""Embedding features from arrays: cosines, A - B difference, projection, swap invariance."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.embedding import (embedding_features, group_name, projection_matrix,
                                row_cosine)
from features.swap import column_group, column_role, swap_features

GROUP = group_name("all-MiniLM-L6-v2")


def _arrays(n=12, d=16, seed=0):
    rng = np.random.default_rng(seed)
    return {k: rng.normal(size=(n, d)).astype(np.float32)
            for k in ("prompt", "response_a", "response_b")}


def _ids(n):
    return [f"id{i}" for i in range(n)]


def test_group_name_is_safe():
    assert GROUP == "emb-all-minilm-l6-v2"
    assert "_" not in group_name("my_org_model") and "__" not in group_name("a__b")


@pytest.mark.parametrize("dims", [None, 0, 5, 16, 100])
def test_swap_invariance(dims):
    emb = _arrays()
    swapped = {"prompt": emb["prompt"], "response_a": emb["response_b"], "response_b": emb["response_a"]}
    got = embedding_features(swapped, _ids(12), GROUP, dims)
    want = swap_features(embedding_features(emb, _ids(12), GROUP, dims))
    pd.testing.assert_frame_equal(got, want, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("dims,expected", [(None, 16), (0, 0), (5, 5), (16, 16), (100, 16)])
def test_diff_dims(dims, expected):
    f = embedding_features(_arrays(), _ids(12), GROUP, dims)
    diff = [c for c in f.columns if c.startswith(f"{GROUP}__diff_e")]
    assert diff == [f"{GROUP}__diff_e{j}" for j in range(expected)]
    assert {column_group(c) for c in f.columns[1:]} == {GROUP}
    assert all(column_role(c) == "diff" for c in diff)


def test_known_values_and_raw_diff():
    emb = _arrays(n=3, d=4)
    emb["response_a"] = emb["prompt"] * 3.0  # same direction -> cos 1
    emb["response_b"] = -emb["prompt"]       # opposite -> cos -1
    f = embedding_features(emb, _ids(3), GROUP, None)
    np.testing.assert_allclose(f[f"{GROUP}__a_cos_prompt"], 1, atol=1e-6)
    np.testing.assert_allclose(f[f"{GROUP}__b_cos_prompt"], -1, atol=1e-6)
    np.testing.assert_allclose(f[f"{GROUP}__p_cos_ab"], -1, atol=1e-6)
    np.testing.assert_allclose(f[f"{GROUP}__diff_cos_prompt"], 2, atol=1e-6)
    raw = f[[f"{GROUP}__diff_e{j}" for j in range(4)]].to_numpy()
    np.testing.assert_allclose(raw, emb["response_a"] - emb["response_b"], rtol=1e-6)


def test_zero_and_nonfinite_vectors_are_safe():
    emb = _arrays(n=3, d=4)
    emb["response_a"][0] = 0
    emb["response_b"][1, 2] = np.nan
    emb["prompt"][2, 0] = np.inf
    f = embedding_features(emb, _ids(3), GROUP, 2)
    assert np.isfinite(f.drop(columns="id").to_numpy()).all()
    assert f.loc[0, f"{GROUP}__a_cos_prompt"] == 0 and f.loc[0, f"{GROUP}__p_cos_ab"] == 0


def test_projection_is_fixed_and_data_independent():
    np.testing.assert_array_equal(projection_matrix(16, 5), projection_matrix(16, 5))
    assert projection_matrix(16, 5).shape == (16, 5)
    assert not np.allclose(projection_matrix(16, 5)[:, 0], projection_matrix(16, 6)[:, 0])
    # The projected difference of a row does not depend on the other rows.
    emb = _arrays(n=12, d=16)
    full = embedding_features(emb, _ids(12), GROUP, 5)
    head = embedding_features({k: v[:3] for k, v in emb.items()}, _ids(3), GROUP, 5)
    pd.testing.assert_frame_equal(full.iloc[:3], head, rtol=1e-6, atol=1e-6)


def test_inputs_unchanged_and_bad_shapes_raise():
    emb = _arrays(n=4, d=3)
    before = {k: v.copy() for k, v in emb.items()}
    embedding_features(emb, _ids(4), GROUP, 2)
    for k in emb:
        np.testing.assert_array_equal(emb[k], before[k])
    with pytest.raises(ValueError, match="shape"):
        embedding_features(emb, _ids(5), GROUP, 2)
    with pytest.raises(ValueError, match="response_b"):
        embedding_features({"prompt": emb["prompt"], "response_a": emb["response_a"]}, _ids(4), GROUP, 2)
    with pytest.raises(ValueError, match="embed_diff_dims"):
        embedding_features(emb, _ids(4), GROUP, -1)


def test_row_cosine_matches_definition():
    rng = np.random.default_rng(1)
    x, y = rng.normal(size=(5, 7)), rng.normal(size=(5, 7))
    want = (x * y).sum(1) / np.linalg.norm(x, axis=1) / np.linalg.norm(y, axis=1)
    np.testing.assert_allclose(row_cosine(x, y), want, rtol=1e-12)
