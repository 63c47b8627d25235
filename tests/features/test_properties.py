"""Property-based tests (hypothesis) of the pure feature functions on arbitrary text.

For any frame of conversations - empty, whitespace-only, None turns, raw lone surrogates
(before and after the loader's cleaning), very long texts, emoji / CJK - every text group
and the embedding group (random vectors, zero rows included):

* never raises, and produces no NaN/inf, not even *before* feature_frame's nan_to_num
  safety net (a NaN that the net silently turns into 0 would be a bug the net hides);
* follows the naming contract, float32, one row per input row in input order;
* maps under an A/B swap exactly as features.swap.swap_features documents
  (a_x <-> b_x, diff/lr negate, the rest unchanged);
* computes row i from row i only (a row's features do not depend on its neighbours, which
  is what lets an edited CSV row invalidate only that row);
* leaves its input frame untouched.

A fake token counter stands in for the tokenizer, so no model loads.
"""
from __future__ import annotations

import contextlib
import copy
import json
from unittest import mock

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from features import embedding as emb_mod
from features import length, overlap, structure
from features.groups import TEXT_GROUPS, text_features
from features.swap import ROLES, column_role, swap_features
from features.views import feature_frame
from pipeline.data import parse_turns, swap_pairs

PROFILE = settings(max_examples=60, deadline=None,
                   suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# ------------------------------------------------------------------ strategies

LONG = ("word " * 12_000) + "end."          # ~60k characters, 12k words
SPECIALS = [
    "", " ", "\n\n\t  \n", "\u00a0\u2003", LONG, "# Title\n\n- a\n- b\n\n```py\nx\n```",
    "\U0001F600\U0001F680 \u4f60\u597d\u4e16\u754c\u3002\u3053\u3093\u306b\u3061\u306f",
    "lone \ud83d surrogate", "\udc00", "pair \ud83d\ude00 ok", "I'm sorry, but I can't help.",
    "...!!!???", "1. one\n2. two\n| a | b |\n|---|---|", "\x00\x01\x1f", "A" * 500,
]
_chars = st.characters(codec="utf-8", exclude_categories=("Cs",))  # no surrogates here...
_surrogate = st.sampled_from(["\ud800", "\udbff", "\udc00", "\udfff", "\ud83d"])  # ...they come here
_text = st.one_of(
    st.text(_chars, max_size=60),
    st.sampled_from(SPECIALS),
    st.lists(st.one_of(st.text(_chars, max_size=8), _surrogate, st.sampled_from(SPECIALS[:4])),
             max_size=6).map("".join),
)
_turn = st.one_of(st.none(), _text)
_turns = st.lists(_turn, max_size=3)


@st.composite
def frames(draw, max_rows: int = 4) -> pd.DataFrame:
    """A canonical frame: id, prompt/response_a/response_b as lists of turns, label.

    Half of the rows go through the CSV parser (JSON cell -> parse_turns: None -> "",
    surrogates replaced), the others keep raw None turns and raw lone surrogates.
    """
    n = draw(st.integers(1, max_rows))
    cols: dict[str, list] = {"prompt": [], "response_a": [], "response_b": []}
    for _ in range(n):
        parsed = draw(st.booleans())
        for col in cols:
            turns = draw(_turns)
            if parsed:
                turns = parse_turns(json.dumps(turns, ensure_ascii=True))
            cols[col].append(turns)
    return pd.DataFrame({"id": [f"r{i}" for i in range(n)], **cols,
                         "label": np.arange(n, dtype=np.int8) % 3})


def fake_tokens(texts) -> np.ndarray:
    """Stand-in tokenizer: one token per whitespace word plus one per 4 characters."""
    return np.array([len(t.split()) + len(t) // 4 for t in texts], dtype=np.float64)


@contextlib.contextmanager
def no_nan_before_safety_net():
    """Make every group's feature_frame call fail if a raw value is NaN/inf."""
    def checked(ids, cols):
        for name, values in cols.items():
            arr = np.asarray(values, dtype=np.float64)
            assert np.isfinite(arr).all(), f"{name} has non-finite raw values {arr}"
        return feature_frame(ids, cols)

    with contextlib.ExitStack() as stack:
        for module in (length, structure, overlap, emb_mod):
            stack.enter_context(mock.patch.object(module, "feature_frame", checked))
        yield


def _check_contract(feats: pd.DataFrame, ids: list[str]) -> None:
    assert feats.columns[0] == "id" and feats["id"].tolist() == ids
    values = feats.drop(columns="id")
    assert (values.dtypes == np.float32).all()
    assert np.isfinite(values.to_numpy()).all()
    assert all(column_role(c) in ROLES for c in values.columns)
    assert not feats.columns.duplicated().any()


def _assert_same(got: pd.DataFrame, want: pd.DataFrame) -> None:
    assert list(got.columns) == list(want.columns)
    assert got["id"].tolist() == want["id"].tolist()
    np.testing.assert_array_equal(got.drop(columns="id").to_numpy(),
                                  want.drop(columns="id").to_numpy())


# ------------------------------------------------------------------ text groups


@PROFILE
@given(frames())
def test_text_groups_never_raise_or_give_nan_and_swap_as_documented(frame):
    before = copy.deepcopy(frame)
    with no_nan_before_safety_net():
        feats = text_features(frame, count_tokens=fake_tokens)
        swapped = text_features(swap_pairs(frame), count_tokens=fake_tokens)
    _check_contract(feats, frame["id"].tolist())
    pd.testing.assert_frame_equal(frame, before)  # input untouched
    _assert_same(swapped, swap_features(feats))
    # Involution: swapping the features twice gives them back.
    _assert_same(swap_features(swap_features(feats)), feats)


@PROFILE
@given(frames(max_rows=4), st.data())
def test_a_rows_features_depend_only_on_that_row(frame, data):
    i = data.draw(st.integers(0, len(frame) - 1))
    whole = text_features(frame, count_tokens=fake_tokens)
    alone = text_features(frame.iloc[[i]].reset_index(drop=True), count_tokens=fake_tokens)
    _assert_same(alone, whole.iloc[[i]].reset_index(drop=True))


@PROFILE
@given(frames(max_rows=3))
def test_counts_are_non_negative_and_ratios_bounded(frame):
    feats = text_features(frame, count_tokens=fake_tokens).drop(columns="id")
    for col in feats.columns:
        role = column_role(col)
        if role in ("a", "b", "sum", "min", "max", "absdiff", "p") and "words_vs_prompt" not in col:
            assert (feats[col] >= 0).all(), col
        if col.split("__")[0] == "overlap" or col.endswith(("_share", "_lexdiv", "_rep_trigram",
                                                            "_rep_lines")):
            if role in ("a", "b", "min", "max", "p"):
                assert (feats[col] <= 1.0 + 1e-6).all(), col


def test_every_text_group_is_covered():
    # If a group is added, the properties above cover it through text_features; the
    # NaN guard must patch its module too.
    assert set(TEXT_GROUPS) == {length.GROUP, structure.GROUP, overlap.GROUP}


# ------------------------------------------------------------------ embedding group

_dims = st.integers(1, 24)


@st.composite
def embeddings(draw):
    """({prompt, response_a, response_b} -> float32 [n, d], n) with zero rows mixed in."""
    n = draw(st.integers(1, 6))
    d = draw(_dims)
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    out = {}
    for key in ("prompt", "response_a", "response_b"):
        arr = rng.standard_normal((n, d)).astype(np.float32) * draw(
            st.sampled_from([1e-30, 1e-3, 1.0, 1e3, 1e30]))
        zero_rows = draw(st.lists(st.integers(0, n - 1), max_size=n))
        arr[zero_rows] = 0.0
        out[key] = arr
    if draw(st.booleans()):  # identical A and B
        out["response_b"] = out["response_a"].copy()
    return out, n


@PROFILE
@given(embeddings(), st.one_of(st.none(), st.integers(0, 30)))
def test_embedding_group_never_nan_and_swaps_as_documented(emb_n, dims):
    emb, n = emb_n
    ids = [f"r{i}" for i in range(n)]
    before = {k: v.copy() for k, v in emb.items()}
    with no_nan_before_safety_net():
        feats = emb_mod.embedding_features(emb, ids, "emb-x", dims)
        swapped = emb_mod.embedding_features(
            {"prompt": emb["prompt"], "response_a": emb["response_b"],
             "response_b": emb["response_a"]}, ids, "emb-x", dims)
    _check_contract(feats, ids)
    for k in emb:
        np.testing.assert_array_equal(emb[k], before[k])
    cos = feats[[c for c in feats.columns if "cos" in c and column_role(c) in ("a", "b", "p")]]
    assert ((cos >= -1.0) & (cos <= 1.0)).all().all()
    # Zero vectors: cosine 0 with everything.
    zero_a = ~emb["response_a"].any(axis=1)
    assert (feats.loc[zero_a, "emb-x__a_cos_prompt"] == 0).all()
    got, want = swapped.drop(columns="id").to_numpy(), swap_features(feats).drop(columns="id").to_numpy()
    # Projected diff dims: (B - A) R vs -((A - B) R) differ only by float rounding.
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6 * max(1.0, np.abs(want).max()))
