"""The whole-column (Arrow + numpy) word, line and set features equal plain Python.

The references below are the straightforward per-text definitions (str.split, Python
sets, re) that the vectorised code in features.text / structure / overlap / length must
reproduce exactly, on arbitrary text: every kind of whitespace, punctuation runs, case,
CJK, control characters, empty and None turns.
"""
from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pyarrow.compute as pc
from hypothesis import given, settings
from hypothesis import strategies as st

from features.length import length_features
from features.overlap import overlap_features
from features.structure import structure_features
from features.text import _PUNCT, TextView, _join_arrow, _join_python
from tests.features.test_properties import frames

PROFILE = settings(max_examples=60, deadline=None)

_WS = [" ", "  ", "\t", "\n", "\r\n", "\v", "\f", "\x1c", "\x85", "\u00a0", "\u2003", "\u3000",
       "\u2028", "\n \n"]
_BITS = ["a", "A", "the", "The", "cat", "x.", "...", "--", "'s", "\u2019", "\u2026", "!?",
         "\u00c9t\u00e9", "\u03a3", "\u4e2d\u6587", "\U0001F600", "\x00", "```", "- ", "1.", "**b**",
         "ABC", "42", "`", "::", "Q?"]
_wordy = st.lists(st.sampled_from(_WS + _BITS), max_size=30).map("".join)


@st.composite
def wordy_frames(draw) -> pd.DataFrame:
    n = draw(st.integers(1, 5))
    cell = st.lists(st.one_of(st.none(), _wordy), max_size=3)
    return pd.DataFrame({"id": [str(i) for i in range(n)],
                         **{c: [draw(cell) for _ in range(n)]
                            for c in ("prompt", "response_a", "response_b")}})


def ref_words(view: TextView, role: str) -> list[list[str]]:
    norm = pc.replace_substring_regex(pc.utf8_lower(view.text[role]), _PUNCT, " ")
    return [t.split() for t in norm.to_pylist()]


def _ratio(num, den):
    return num / den if den else 0.0


def _repeated(n_items, n_unique):
    return 1.0 - n_unique / n_items if n_items > 1 else 0.0


def ref_features(view: TextView) -> dict[str, list[float]]:
    """The word / line / set features by their per-text definitions."""
    words = {r: ref_words(view, r) for r in ("p", "a", "b")}
    out: dict[str, list[float]] = {}
    for r in ("p", "a", "b"):
        texts = view.text[r].to_pylist()
        out[f"length__{r}_words"] = [len(re.findall(r"[^\t\n\f\r ]+", t)) for t in texts]
        out[f"structure__{r}_lexdiv"] = [_ratio(len(set(w)), len(w)) for w in words[r]]
        out[f"structure__{r}_rep_trigram"] = [
            _repeated(len(w) - 2, len(set(zip(w, w[1:], w[2:])))) for w in words[r]]
        lines = [[ln for ln in map(str.strip, t.split("\n")) if ln] for t in texts]
        out[f"structure__{r}_rep_lines"] = [_repeated(len(x), len(set(x))) for x in lines]
        # Counted per distinct whitespace chunk (structure._CHUNK_COUNTS).
        for name, pattern in (("numbers", "[0-9]+"), ("questions", r"\?"), ("exclamations", "!"),
                              ("colons", ":"), ("caps_runs", "[A-Z]{2,}"), ("digits", "[0-9]")):
            out[f"structure__{r}_{name}"] = [len(re.findall(pattern, t)) for t in texts]
        out[f"structure__{r}_code_blocks"] = [-(-t.count("```") // 2) for t in texts]
        out[f"structure__{r}_upper_share"] = [_ratio(len(re.findall("[A-Z]", t)), len(t))
                                              for t in texts]
    for i in range(view.n):
        p, a, b = (words[r][i] for r in ("p", "a", "b"))
        for kind, (ps, as_, bs) in (("w", (set(p), set(a), set(b))),
                                     ("2", tuple(set(zip(x, x[1:])) for x in (p, a, b)))):
            for role, rs, other in (("a", as_, bs), ("b", bs, as_)):
                inter = len(ps & rs)
                out.setdefault(f"overlap__{role}_pcov_{kind}", []).append(_ratio(inter, len(ps)))
                out.setdefault(f"overlap__{role}_rcov_{kind}", []).append(_ratio(inter, len(rs)))
                out.setdefault(f"overlap__{role}_jac_{kind}", []).append(
                    _ratio(inter, len(ps) + len(rs) - inter))
                if kind == "w":
                    out.setdefault(f"overlap__{role}_in_other_w", []).append(
                        _ratio(len(rs & other), len(rs)))
            out.setdefault(f"overlap__p_jac_ab_{kind}", []).append(
                _ratio(len(as_ & bs), len(as_ | bs)))
    return out


def _check(frame: pd.DataFrame) -> None:
    view = TextView(frame)
    ids = frame["id"].astype(str).tolist()
    got = pd.concat([length_features(view, ids, None), structure_features(view, ids),
                     overlap_features(view, ids)], axis=1)
    for name, want in ref_features(TextView(frame)).items():
        np.testing.assert_array_equal(got[name].to_numpy(), np.asarray(want, dtype=np.float32),
                                      err_msg=name)
    # Word codes: one code per distinct word, across all roles.
    pairs = set()
    for role, (off, codes) in view.words.seqs.items():
        ref = ref_words(view, role)
        assert np.diff(off).tolist() == [len(w) for w in ref]
        pairs |= {(int(c), w) for c, w in zip(codes, (w for ws in ref for w in ws))}
    assert len({c for c, _ in pairs}) == len({w for _, w in pairs}) == len(pairs)


@PROFILE
@given(wordy_frames())
def test_word_features_match_python_on_whitespace_heavy_text(frame):
    _check(frame)


@PROFILE
@given(frames(max_rows=4))
def test_word_features_match_python_on_arbitrary_text(frame):
    _check(frame)


def test_word_features_known_values():
    frame = pd.DataFrame({"id": ["0"], "prompt": [["The cat, the CAT!\vsat"]],
                          "response_a": [["a b a b a b\n x \n\n x"]], "response_b": [[None, ""]]})
    _check(frame)
    view = TextView(frame)
    assert np.diff(view.words.seqs["p"][0]).tolist() == [5]  # the cat the cat sat
    got = structure_features(view, ["0"])
    assert got["structure__p_lexdiv"][0] == np.float32(3 / 5)
    assert got["structure__a_rep_trigram"][0] == np.float32(1 - 4 / 6)  # 8 words, 4 of 6 trigrams new
    assert got["structure__a_rep_lines"][0] == np.float32(1 - 2 / 3)


@PROFILE
@given(frames(max_rows=4))
def test_arrow_turn_joining_matches_python(frame):
    for col in ("prompt", "response_a", "response_b"):
        cells = frame[col].tolist()
        fast = _join_arrow(cells)
        slow = _join_python(cells)
        if fast is None:  # lone surrogates: Arrow cannot hold them, Python cleans them
            assert any("\ud800" <= ch <= "\udfff" for c in cells for t in (c or []) if t for ch in t)
            continue
        assert fast[0].to_pylist() == slow[0].to_pylist()
        assert fast[1].tolist() == slow[1].tolist() and fast[2].tolist() == slow[2].tolist()


def test_cells_arrow_cannot_take_go_through_python():
    assert _join_arrow([["a"], "plain string"]) is None
    assert _join_arrow([["a"], float("nan")]) is None
    assert _join_arrow([["a", 3]]) is None
    view = TextView(pd.DataFrame({"prompt": ["plain", float("nan")], "response_a": [["x", 3], None],
                                  "response_b": [["lone \ud83d"], []]}))
    assert view.text["p"].to_pylist() == ["plain", ""] and view.turns["p"].tolist() == [1, 0]
    assert view.text["a"].to_pylist() == ["x\n\n3", ""]
    assert view.text["b"].to_pylist() == ["lone \ufffd", ""]
