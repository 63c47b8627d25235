"""Input packing: budgets, start + end kept, turn order, A/B swap symmetry, no mutation."""
from __future__ import annotations

import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from features.seqpack import (Specials, allocate_budget, encode_pairs, head_tail,
                              head_tail_chars, join_conversation, pack_ids, specials_of)
from pipeline.data import swap_pairs


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from pipeline.models import resolve_model_path

    return AutoTokenizer.from_pretrained(resolve_model_path("all-MiniLM-L6-v2"))


@given(st.integers(0, 300), st.integers(0, 300), st.integers(0, 300), st.integers(0, 200),
       st.floats(0.0, 1.0))
def test_budget_invariants(lp, la, lb, total, share):
    p, a, b = allocate_budget(lp, la, lb, total, share)
    assert 0 <= p <= lp and 0 <= a <= la and 0 <= b <= lb
    assert p + a + b <= total
    if lp + la + lb <= total:
        assert (p, a, b) == (lp, la, lb)  # everything kept when it fits
    assert allocate_budget(lp, lb, la, total, share) == (p, b, a)  # symmetric in A and B
    if lp >= total * share:
        assert p >= int(total * share)  # the prompt always gets its share
    # No budget is wasted while some text is still cut (up to one token of an even split).
    if lp + la + lb > total:
        assert p + a + b >= total - 1


@given(st.lists(st.integers(0, 9), max_size=60), st.integers(0, 40), st.floats(0.0, 1.0))
def test_head_tail_keeps_start_and_end(ids, budget, share):
    out = head_tail(ids, budget, share)
    assert len(out) == min(len(ids), budget)
    if len(ids) <= budget:
        assert out == ids
    else:
        head = int(round(budget * share))
        assert out[:head] == ids[:head]
        assert out[head:] == ids[len(ids) - (budget - head):]


def test_head_tail_chars_keeps_both_ends():
    text = "START " + "x" * 1000 + " END"
    cut = head_tail_chars(text, 100, 0.5)
    assert cut.startswith("START") and cut.endswith("END") and len(cut) < 120
    assert head_tail_chars("short", 100, 0.5) == "short"


def test_turns_joined_in_order_with_markers():
    assert join_conversation(["only"]) == "only"
    assert join_conversation([]) == ""
    joined = join_conversation(["first", "", "third"])
    assert joined.index("[turn 1] first") < joined.index("[turn 2]") < joined.index("[turn 3] third")


def test_pack_layout_and_budget():
    sp = Specials(cls=(1,), sep=(2,), pad=0)
    out = pack_ids(list(range(10, 60)), list(range(100, 200)), [7, 7], sp, max_length=30,
                   prompt_share=0.2, head_share=0.5)
    assert len(out) == 30 and out[0] == 1 and out.count(2) == 3 and out[-1] == 2
    p_end = out.index(2)
    assert out[1] == 10 and out[p_end - 1] == 59  # the prompt's start and end
    a = out[p_end + 1:out.index(2, p_end + 1)]
    assert a[0] == 100 and a[-1] == 199  # response A's start and end
    assert out[-3:] == [7, 7, 2]
    with pytest.raises(ValueError, match="max_length"):
        pack_ids([1], [1], [1], sp, max_length=5, prompt_share=0.2, head_share=0.5)


def _frame():
    return pd.DataFrame({
        "id": ["0", "1", "2"],
        "prompt": [["Tell me about sorting. " * 40], ["hi", "and again"], []],
        "response_a": [["Use sorted(). " * 60 + "THE END"], ["one", "two"], [""]],
        "response_b": [["short"], ["three"], ["text only in b"]],
        "label": pd.array([0, 1, 2], dtype="int8"),
    })


def test_encode_pairs_budget_swap_and_purity(tokenizer):
    frame = _frame()
    before = frame.copy(deep=True)
    fwd, swp = encode_pairs(frame, tokenizer, 64, 0.25, 0.7)
    pd.testing.assert_frame_equal(frame, before)
    sp = specials_of(tokenizer)
    assert all(len(s) <= 64 and s[0] == sp.cls[0] and s.count(sp.sep[0]) == 3 for s in fwd + swp)
    assert len(fwd[0]) == 64  # long texts fill the budget
    assert tokenizer.decode(fwd[0]).split("[SEP]")[1].strip().endswith("the end")  # A's end kept
    # Packing the swapped frame gives exactly the swapped sequences.
    fwd_of_swapped, swp_of_swapped = encode_pairs(swap_pairs(frame), tokenizer, 64, 0.25, 0.7)
    assert fwd_of_swapped == swp and swp_of_swapped == fwd
    assert "[ turn 2 ] and again" in tokenizer.decode(fwd[1])
