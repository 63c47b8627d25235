"""features.tokencount: chunk-summed token counts are exact, and tokenizers for which they
would not be are detected (by their parts, or by the probe texts) and counted whole.

Tokenizers are built in-process with the ``tokenizers`` library (no download).
"""
from __future__ import annotations

import string

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from features import tokencount
from features.length import token_counts
from features.text import TextView, whitespace_chunks
from features.tokencount import RustTokenCounter

PROFILE = settings(max_examples=60, deadline=None)
CORPUS = ["The cat sat on the mat.", "Hello, world! How are you?", "caf\u00e9 na\u00efve \u4f60\u597d",
          "def f(x):\n    return x ** 2", "  spaced   out  text  ", "numbers 123 456.78"] * 5
TRICKY = ["", " ", "a\vb", "ab\vcd ef", "x\fy", "  two  spaces  ", "Hello,World!!", "\u4f60\u597d\u4e16\u754c",
          "\u00c9T\u00c9 e\u0301t\u00e9", "\x00\x01 \x1f", "z" * 130, "[CLS]cat [CLS] cat", "\u00a0a\u3000b\x85",
          "tab\tnew\nline\r\nend", "\U0001F600\U0001F600 !", "\u03a3\u0391\u03a3"]


def wordpiece() -> Tokenizer:
    """A tiny BERT-style tokenizer: BertNormalizer, BertPreTokenizer, WordPiece."""
    vocab = {"[UNK]": 0, "[CLS]": 1}
    for w in ["the", "cat", "sat", "on", "mat", "hello", "world", "how", "are", "you", "caf", "spaced"]:
        vocab.setdefault(w, len(vocab))
    for c in string.ascii_lowercase + string.digits + string.punctuation + "\u4f60\u597d":
        vocab.setdefault(c, len(vocab))
        vocab.setdefault("##" + c, len(vocab))
    tok = Tokenizer(models.WordPiece(vocab, unk_token="[UNK]", max_input_chars_per_word=100))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.add_special_tokens(["[CLS]"])
    return tok


def trained_bpe(pre_tokenizer) -> Tokenizer:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet() if isinstance(pre_tokenizer, pre_tokenizers.ByteLevel) else []
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=120, special_tokens=["<unk>"],
                                                        initial_alphabet=alphabet))
    return tok


def direct(tok: Tokenizer, texts) -> list[int]:
    return [len(tok.encode(t, add_special_tokens=False)) for t in texts]


_text = st.one_of(st.text(st.characters(codec="utf-8", exclude_categories=("Cs",)), max_size=40),
                  st.lists(st.sampled_from(TRICKY + [" ", "\n", "\t", "\v", "the", "cat."]),
                           max_size=12).map("".join))


@pytest.fixture(scope="module")
def bert_counter() -> RustTokenCounter:
    return RustTokenCounter(wordpiece())


def test_bert_like_tokenizer_takes_the_chunk_path(bert_counter):
    assert bert_counter.chunk_additive, bert_counter.reason
    assert "probe texts" in bert_counter.reason
    assert bert_counter(TRICKY).tolist() == direct(bert_counter.tokenizer, TRICKY)


@PROFILE
@given(st.lists(_text, max_size=8))
def test_chunk_sums_equal_whole_text_counts(bert_counter, texts):
    assert bert_counter(texts).tolist() == direct(bert_counter.tokenizer, texts)


def test_vertical_tab_texts_are_counted_whole(bert_counter):
    # BERT's normaliser deletes \v and \f ("the\vcat" -> "thecat": the ##c ##a ##t), so the
    # chunks "the" + "cat" would give another count; such texts are flagged, counted whole.
    texts = ["the\vcat", "x\fyz the"]
    chunks = whitespace_chunks(pa.array(texts))
    assert not chunks.plain.any()
    assert direct(bert_counter.tokenizer, ["the\vcat", "the", "cat"]) == [4, 1, 1]
    assert bert_counter(texts).tolist() == direct(bert_counter.tokenizer, texts)


def test_token_counts_through_the_view_match(bert_counter):
    frame = pd.DataFrame({"id": ["0", "1", "2"], "prompt": [["The cat"], ["a\vb", "c"], []],
                          "response_a": [["Hello,world"], [None], ["  x  "]],
                          "response_b": [["\u4f60\u597d"], ["z" * 130], ["tab\tnew"]]})
    view = TextView(frame)
    got = token_counts(view, bert_counter)
    for role, arr in view.text.items():
        assert got[role].tolist() == direct(bert_counter.tokenizer, arr.to_pylist())
    plain = token_counts(view, lambda texts: np.array(direct(bert_counter.tokenizer, texts)))
    assert all(plain[r].tolist() == got[r].tolist() for r in got)


def test_byte_level_tokenizer_is_counted_whole():
    tok = trained_bpe(pre_tokenizers.ByteLevel(add_prefix_space=False))
    counter = RustTokenCounter(tok)
    assert not counter.chunk_additive and "pre-tokenizer" in counter.reason
    assert counter(TRICKY[1:]).tolist() == direct(tok, TRICKY[1:])


def test_added_token_with_whitespace_is_counted_whole():
    tok = wordpiece()
    tok.add_tokens(["the cat"])
    counter = RustTokenCounter(tok)
    assert not counter.chunk_additive and "added token" in counter.reason
    assert counter(["the cat sat"]).tolist() == direct(tok, ["the cat sat"]) == [2]


def test_probe_texts_catch_what_the_parts_check_misses(monkeypatch):
    # Metaspace turns each space into a piece of the next word: not additive. Pretend its
    # parts passed, and the probe must still refuse the chunk path.
    tok = trained_bpe(pre_tokenizers.Metaspace())
    monkeypatch.setattr(tokencount, "structure_allows_chunks", lambda t: (True, "forced"))
    counter = RustTokenCounter(tok)
    assert not counter.chunk_additive and "probe texts differ" in counter.reason
    assert counter(["a  b", " x"]).tolist() == direct(tok, ["a  b", " x"])


@pytest.mark.slow
@PROFILE
@given(st.lists(_text, max_size=8))
def test_bundled_minilm_tokenizer_chunk_sums_are_exact(texts):
    from pipeline.featurize import token_counter

    counter = token_counter("all-MiniLM-L6-v2")
    assert counter.chunk_additive, counter.reason
    assert counter(texts).tolist() == counter.count_whole(texts).tolist()


def test_a_failing_chunk_count_falls_back_to_whole_texts(monkeypatch):
    def broken(self, chunks):
        raise TypeError("word id None")

    monkeypatch.setattr(RustTokenCounter, "count_chunks", broken)
    counter = RustTokenCounter(wordpiece())
    assert not counter.chunk_additive and "counting chunks failed" in counter.reason
    assert counter(["the cat"]).tolist() == [2]
