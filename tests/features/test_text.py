"""features.text: Chunks.sums equals per-text sums of the chunks' values, for a value
vector and for a matrix of value columns."""
from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from hypothesis import given, settings
from hypothesis import strategies as st

from features.text import chunk_words, whitespace_chunks

_texts = st.lists(st.text(alphabet="ab \n\t", max_size=20), min_size=1, max_size=8)


@settings(max_examples=60, deadline=None)
@given(_texts, st.integers(0, 2**32))
def test_chunk_sums_match_python_sums(texts, seed):
    chunks = whitespace_chunks(pa.array(texts, type=pa.large_string()))
    words = chunks.dictionary.to_pylist()
    rng = np.random.default_rng(seed)
    values = rng.integers(-5, 6, (len(words), 3))
    value_of = {w: values[k] for k, w in enumerate(words)}
    # str.split drops the empty chunks Arrow keeps at the ends: add them back by hand.
    expected = np.array([sum((value_of[c] for c in _chunks(t)), np.zeros(3, np.int64))
                         for t in texts])
    vector = chunks.sums(values[:, 0])
    assert vector.shape == (len(texts),) and vector.dtype == np.int64
    assert vector.tolist() == expected[:, 0].tolist()
    assert chunks.sums(values).tolist() == expected.tolist()


def _chunks(text: str) -> list[str]:
    """Arrow's ascii_split_whitespace in Python: a cut at every run of whitespace."""
    return re.split(r"[ \n\t]+", text)


# Found by the feature property test: pyarrow 26's utf8_split_whitespace split this array
# differently from call to call (a " " word appeared and vanished), so the features of one
# frame changed between runs.
_SPLIT_CASE = ["word", "end ", "v ", "\ufffd", "\U0009d403z\xbb\x04\U000af07a", "b", " ",
               "\xfe\x8d\xefwv\xb8\xf6 \U00055fc0\x1fm\xe9\xb1", "1 ", "one", "2 ", "two", " ",
               "a", "b", " "]


def _python_words(chunks: list[str]) -> list[list[str]]:
    from features.text import _PUNCT

    norm = pc.replace_substring_regex(pc.utf8_lower(pa.array(chunks, pa.large_string())), _PUNCT, " ")
    return [t.split() for t in norm.to_pylist()]


def _chunk_words(chunks: list[str]) -> list[list[str]]:
    offsets, flat = chunk_words(pa.array(chunks, pa.large_string()))
    words = flat.to_pylist()
    return [words[offsets[i]:offsets[i + 1]] for i in range(len(chunks))]


def test_chunk_words_are_the_same_every_call_and_split_like_str_split():
    want = _python_words(_SPLIT_CASE)
    for _ in range(200):
        assert _chunk_words(_SPLIT_CASE) == want


def test_chunk_words_break_at_every_character_str_split_breaks_at():
    spaces = [c for c in map(chr, range(0x110000)) if c.isspace()]
    chunks = [f"x{c}y" for c in spaces] + [f"{c}{c}" for c in spaces] + ["".join(spaces)]
    assert _chunk_words(chunks) == _python_words(chunks)
    assert _chunk_words(chunks)[: len(spaces)] == [["x", "y"]] * len(spaces)


@settings(max_examples=80, deadline=None)
@given(st.lists(st.text(max_size=12), min_size=1, max_size=12))
def test_chunk_words_match_str_split_on_any_text(chunks):
    chunks = [c.encode("utf-8", "replace").decode("utf-8") for c in chunks]  # no surrogates
    assert _chunk_words(chunks) == _python_words(chunks)
