"""Property-based tests (hypothesis) of the text parser: it never raises, always returns
clean UTF-8-encodable strings, and round-trips any list of ordinary strings."""
from __future__ import annotations

import json

import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from pipeline.data import clean_text, join_turns, parse_turns

# Any code point, lone surrogates included (they occur in ~1% of Kaggle rows).
any_text = st.text(alphabet=st.characters(min_codepoint=0, max_codepoint=0x10FFFF), max_size=200)
long_text = st.builds(lambda s, n: s * n, st.text(min_size=1, max_size=5), st.integers(1000, 20000))
turn = st.one_of(any_text, st.none(), st.just(""), st.just("   \n\t"), long_text,
                 st.integers(), st.floats(allow_nan=False, allow_infinity=False),
                 st.lists(any_text, max_size=3))
SETTINGS = settings(max_examples=300, deadline=None)


def _is_clean(s: str) -> bool:
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


@SETTINGS
@given(st.lists(turn, max_size=6))
def test_parse_any_json_list_never_raises_and_is_clean(turns):
    for ensure_ascii in (True, False):
        try:
            cell = json.dumps(turns, ensure_ascii=ensure_ascii)
        except UnicodeEncodeError:
            continue
        parsed = parse_turns(cell)
        assert isinstance(parsed, list) and len(parsed) == len(turns)
        assert all(isinstance(t, str) and _is_clean(t) for t in parsed)
        pa.array(parsed, type=pa.string())  # Parquet-safe


@SETTINGS
@given(any_text)
def test_parse_any_cell_text_never_raises(cell):
    parsed = parse_turns(cell)
    assert all(isinstance(t, str) and _is_clean(t) for t in parsed)
    _is_clean(join_turns(parsed))


@SETTINGS
@given(st.lists(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=50), max_size=5))
def test_ordinary_strings_round_trip(turns):
    assert parse_turns(json.dumps(turns)) == turns


@SETTINGS
@given(any_text)
def test_clean_text_is_idempotent_and_keeps_length_of_clean_text(s):
    once = clean_text(s)
    assert clean_text(once) == once
    assert _is_clean(once)
