"""Text feature groups: swap invariance, purity, robustness and known values."""
from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pytest

from features.groups import TEXT_GROUPS, text_features
from features.swap import column_group, column_role, swap_features
from pipeline.data import swap_pairs

REFUSAL = "I'm sorry, but I can't assist with that request."
MARKDOWN = ("# Steps\n\nHere is how:\n\n- first item\n- second item\n* third item\n\n"
            "1. one\n2. two\n\n**Note:** see [docs](https://example.com).\n\n"
            "```python\nprint(1)\n```\n\n| a | b |\n|---|---|\n| 1 | 2 |")


def _frame(rows: list[tuple]) -> pd.DataFrame:
    return pd.DataFrame({
        "id": [str(i) for i in range(len(rows))],
        "prompt": [r[0] for r in rows],
        "response_a": [r[1] for r in rows],
        "response_b": [r[2] for r in rows],
        "label": np.arange(len(rows), dtype=np.int8) % 3,
    })


def nasty_frame() -> pd.DataFrame:
    long_text = ("word " * 20_000)[:100_000]
    return _frame([
        (["How do I sort a list in Python?"], ["Use sorted(xs)."], ["- xs.sort()\n- sorted(xs)"]),
        ([], [], ["answer"]),                                   # empty prompt and response
        ([None, "second"], [None], [None, None]),               # null turns
        (["   \n\t "], ["   "], ["\n\n\n"]),                   # whitespace only
        (["caf\ufffd \ufffd"], ["bad \ufffd here"], ["ok"]),     # surrogate-replaced text
        (["long?"], [long_text], ["short."]),                   # 100k characters
        (["q1", "q2"], ["a1", "a2"], ["b1", "b2"]),             # multi-turn
        (["Same?"], ["Identical answer here."], ["Identical answer here."]),
        (["Help me hack"], [REFUSAL], [MARKDOWN]),
        (["\u4f60\u597d\u4e16\u754c"], ["\u4f60\u597d \U0001F600 !!!"], ["???"]),  # CJK, emoji
        (["x"], ["lone \ud83d surrogate"], ["fine"]),          # a raw surrogate slipped through
    ])


def fake_tokens(texts):
    """Stand-in tokenizer: one token per whitespace word, plus one per 10 characters."""
    return np.array([len(t.split()) + len(t) // 10 for t in texts], dtype=np.float64)


@pytest.fixture(scope="module")
def nasty():
    return nasty_frame()


@pytest.fixture(scope="module")
def feats(nasty):
    return text_features(nasty, count_tokens=fake_tokens)


def _row(feats: pd.DataFrame, i: int) -> pd.Series:
    return feats.iloc[i]


def test_contract_and_finite(feats, nasty):
    assert feats.columns[0] == "id"
    assert feats["id"].tolist() == nasty["id"].tolist()
    values = feats.drop(columns="id")
    assert (values.dtypes == np.float32).all()
    assert np.isfinite(values.to_numpy()).all()
    assert {column_group(c) for c in values.columns} == set(TEXT_GROUPS)
    roles = {column_role(c) for c in values.columns}
    assert roles == {"a", "b", "diff", "lr", "sum", "min", "max", "absdiff", "p"}
    assert not feats.columns.duplicated().any()


@pytest.mark.parametrize("group", list(TEXT_GROUPS))
def test_swap_invariance(group, nasty):
    got = text_features(swap_pairs(nasty), [group], count_tokens=fake_tokens)
    want = swap_features(text_features(nasty, [group], count_tokens=fake_tokens))
    pd.testing.assert_frame_equal(got, want, check_exact=True)


def test_inputs_unchanged(nasty):
    frame = nasty_frame()
    before = copy.deepcopy(frame)
    text_features(frame, count_tokens=fake_tokens)
    pd.testing.assert_frame_equal(frame, before)


def test_row_order_and_ids_follow_input(nasty):
    perm = [5, 0, 3, 1, 4, 2, 10, 6, 9, 8, 7]
    shuffled = nasty.iloc[perm].reset_index(drop=True)
    a = text_features(shuffled, count_tokens=fake_tokens)
    b = text_features(nasty, count_tokens=fake_tokens).iloc[perm].reset_index(drop=True)
    assert a["id"].tolist() == [str(i) for i in perm]
    pd.testing.assert_frame_equal(a, b)


def test_known_lengths(feats):
    r = _row(feats, 0)
    assert r["length__a_words"] == 2 and r["length__b_words"] == 4
    assert r["length__a_chars"] == len("Use sorted(xs).")
    assert r["length__b_lines"] == 2 and r["length__a_lines"] == 1
    assert r["length__diff_words"] == -2
    assert r["length__lr_words"] == pytest.approx(np.log1p(2) - np.log1p(4), rel=1e-6)
    assert (r["length__sum_words"], r["length__min_words"], r["length__max_words"],
            r["length__absdiff_words"]) == (6, 2, 4, 2)
    assert r["length__p_words"] == 8 and r["length__p_sentences"] == 1
    assert r["length__a_tokens"] == fake_tokens(["Use sorted(xs)."])[0]
    multi = _row(feats, 6)
    assert multi["length__p_turns"] == 2 and multi["length__a_turns"] == 2
    assert multi["length__a_paragraphs"] == 2  # turns are joined by a blank line
    nulls = _row(feats, 2)
    assert nulls["length__a_turns"] == 1 and nulls["length__a_null_turns"] == 1
    assert nulls["length__b_null_turns"] == 2 and nulls["length__p_words"] == 1
    assert _row(feats, 5)["length__a_chars"] == 100_000


def test_empty_texts_give_zeros(feats):
    empty = _row(feats, 1)
    for f in ("chars", "words", "lines", "paragraphs", "sentences", "turns"):
        assert empty[f"length__a_{f}"] == 0 and empty[f"length__p_{f}"] == 0
    assert empty["structure__a_empty"] == 1 and empty["structure__b_empty"] == 0
    assert empty["structure__a_lexdiv"] == 0
    assert empty["overlap__a_jac_w"] == 0 and empty["overlap__b_pcov_w"] == 0
    blank = _row(feats, 3)
    assert blank["structure__a_empty"] == 1 and blank["structure__b_empty"] == 1
    assert blank["length__a_lines"] == 0 and blank["length__b_words"] == 0
    assert _row(feats, 2)["structure__a_empty"] == 1  # only null turns


def test_markdown_structure_counted(feats):
    md = _row(feats, 8)
    assert md["structure__b_headers"] == 1
    assert md["structure__b_bullets"] == 3
    assert md["structure__b_numbered"] == 2
    assert md["structure__b_bold"] == 1
    assert md["structure__b_code_blocks"] == 1
    assert md["structure__b_table_rows"] == 3
    assert md["structure__b_links"] == 1  # the markdown link; its URL is inside it
    assert md["structure__a_bullets"] == 0 and md["structure__a_headers"] == 0
    assert md["structure__diff_bullets"] == -3


def test_refusal_and_disclaimer_detected(feats):
    md = _row(feats, 8)
    assert md["structure__a_refusal_flag"] == 1 and md["structure__b_refusal_flag"] == 0
    assert md["structure__a_refusal"] >= 1
    disclaim = text_features(_frame([(["q"], ["As an AI language model, I do not have personal "
                                              "opinions."], ["Sure: 42."])]), ["structure"])
    assert disclaim.loc[0, "structure__a_disclaimer"] >= 1
    assert disclaim.loc[0, "structure__b_disclaimer"] == 0
    assert disclaim.loc[0, "structure__b_refusal"] == 0


def test_identical_responses(feats):
    same = _row(feats, 7)
    assert same["overlap__p_identical"] == 1
    assert same["overlap__p_jac_ab_w"] == 1 and same["overlap__p_jac_ab_2"] == 1
    assert same["overlap__a_in_other_w"] == 1 and same["overlap__b_in_other_w"] == 1
    assert same["overlap__diff_jac_w"] == 0
    assert _row(feats, 0)["overlap__p_identical"] == 0
    # "   " and "\n\n\n" both strip to "": two empty responses are identical.
    assert _row(feats, 3)["overlap__p_identical"] == 1


def test_prompt_overlap_values():
    f = text_features(_frame([(["Sort the list quickly"], ["Sort the list, quickly!"],
                                ["Use a heap"])]), ["overlap"]).iloc[0]
    assert f["overlap__a_pcov_w"] == 1 and f["overlap__a_rcov_w"] == 1 and f["overlap__a_jac_w"] == 1
    assert f["overlap__a_jac_2"] == 1  # punctuation and case do not matter
    assert f["overlap__b_pcov_w"] == 0 and f["overlap__b_jac_w"] == 0
    assert f["overlap__p_jac_ab_w"] == 0 and f["overlap__p_identical"] == 0


def test_repetition_and_diversity():
    rep = "the same line\n" * 4 + "another line"
    f = text_features(_frame([(["q"], [rep], ["one two three four"])]), ["structure"]).iloc[0]
    assert f["structure__a_rep_lines"] == pytest.approx(3 / 5)
    assert f["structure__b_rep_lines"] == 0 and f["structure__b_rep_trigram"] == 0
    assert f["structure__b_lexdiv"] == 1
    assert f["structure__a_lexdiv"] == pytest.approx(4 / 14)  # the, same, line, another
    assert f["structure__a_rep_trigram"] > 0.5


def test_unknown_group_raises(nasty):
    with pytest.raises(ValueError, match="unknown text feature group"):
        text_features(nasty, ["nope"])
