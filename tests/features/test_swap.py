"""The column naming contract and swap_features."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from features.swap import ROLES, column_group, column_name, column_role, swap_features


def _frame() -> pd.DataFrame:
    rng = np.random.default_rng(0)
    cols = {"id": ["x", "y", "z"]}
    for role in ROLES:
        cols[f"length__{role}_words"] = rng.normal(size=3).astype(np.float32)
    cols["emb-all-minilm-l6-v2__diff_e0"] = rng.normal(size=3).astype(np.float32)
    cols["emb-all-minilm-l6-v2__p_cos_ab"] = rng.normal(size=3).astype(np.float32)
    return pd.DataFrame(cols)


def test_group_and_role_parse():
    assert column_group("length__a_words") == "length"
    assert column_role("length__a_words") == "a"
    assert column_role("overlap__absdiff_jac_w") == "absdiff"
    assert column_group("emb-all-minilm-l6-v2__diff_e12") == "emb-all-minilm-l6-v2"
    assert column_role("emb-all-minilm-l6-v2__diff_e12") == "diff"
    assert column_name("structure", "p", "bold") == "structure__p_bold"


@pytest.mark.parametrize("bad", ["words", "length_a_words", "length__q_words", "length__a_", "__a_x"])
def test_bad_names_raise(bad):
    with pytest.raises(ValueError, match="naming contract"):
        column_role(bad)


def test_swap_exchanges_negates_keeps():
    df = _frame()
    before = df.copy()
    sw = swap_features(df)
    pd.testing.assert_frame_equal(df, before)  # input untouched
    assert list(sw.columns) == list(df.columns)
    assert (sw["length__a_words"] == df["length__b_words"]).all()
    assert (sw["length__b_words"] == df["length__a_words"]).all()
    for role in ("diff", "lr"):
        assert (sw[f"length__{role}_words"] == -df[f"length__{role}_words"]).all()
    for role in ("sum", "min", "max", "absdiff", "p"):
        assert (sw[f"length__{role}_words"] == df[f"length__{role}_words"]).all()
    assert (sw["emb-all-minilm-l6-v2__diff_e0"] == -df["emb-all-minilm-l6-v2__diff_e0"]).all()
    assert (sw["id"] == df["id"]).all()
    pd.testing.assert_frame_equal(swap_features(sw), df)  # an involution


def test_swap_needs_partner_column():
    df = _frame().drop(columns="length__b_words")
    with pytest.raises(ValueError, match="partner"):
        swap_features(df)
