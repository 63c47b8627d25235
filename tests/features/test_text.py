"""features.text: Chunks.sums equals per-text sums of the chunks' values, for a value
vector and for a matrix of value columns."""
from __future__ import annotations

import re

import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from features.text import whitespace_chunks

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
