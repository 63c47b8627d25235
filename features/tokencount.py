"""Exact token counts of many texts, tokenizing each distinct whitespace chunk once.

For a tokenizer that splits at every whitespace character before anything else looks
at the text (BERT's WordPiece, WordLevel with a whitespace pre-tokenizer, ...), the
count of a text is the sum of the counts of its ASCII-whitespace-separated chunks. Texts
repeat most chunks ("the", "is", "```"), so counting the distinct chunks of a column
and summing per text does a small fraction of the tokenizer's work. Whether a tokenizer
has that property is decided when the counter is made: its pipeline must be made of
parts known to keep it (below) *and* the counts of a fixed sample of tricky texts must
agree both ways; otherwise every text is tokenized whole. Either way counts are exact
(no special tokens, no truncation).
"""
from __future__ import annotations

import json
from typing import Callable, Sequence

import numpy as np
import pyarrow as pa

from features.text import Chunks, whitespace_chunks

# Pre-tokenizers that split at every whitespace character (and so at every chunk
# boundary); the other allowed ones only split further inside a piece.
_WHITESPACE_SPLITTERS = {"BertPreTokenizer", "Whitespace", "WhitespaceSplit"}
_INNER_SPLITTERS = {"Punctuation", "Digits"}
# Normalizers that map each character (or combining sequence) on its own: none of them
# moves text across whitespace. (BERT's also deletes control characters such as \v and
# \f: texts holding those are counted whole, see Chunks.plain.)
_LOCAL_NORMALIZERS = {"BertNormalizer", "Lowercase", "NFD", "NFKD", "NFC", "NFKC", "StripAccents"}
# Distinct chunks per pre-tokenized input, inputs per tokenizer call (chunks are short),
# and whole texts per call.
_CHUNK_GROUP = 4096
_GROUPS_PER_CALL = 32
_TEXT_BATCH = 2048


def _parts(node: dict | None, kind: str) -> list[str]:
    """Type names of a normalizer / pre-tokenizer, Sequences flattened."""
    if node is None:
        return []
    if node.get("type") == "Sequence":
        return [t for child in node.get(kind, []) for t in _parts(child, kind)]
    return [node.get("type", "?")]


def structure_allows_chunks(tokenizer) -> tuple[bool, str]:
    """Whether ``tokenizer``'s (a tokenizers.Tokenizer) pipeline keeps counts additive over
    whitespace chunks, by its parts. Returns (ok, reason)."""
    spec = json.loads(tokenizer.to_str())
    norms = _parts(spec.get("normalizer"), "normalizers")
    pres = _parts(spec.get("pre_tokenizer"), "pretokenizers")
    bad_norm = [t for t in norms if t not in _LOCAL_NORMALIZERS]
    if bad_norm:
        return False, f"normalizer {bad_norm} may act across whitespace"
    if not any(t in _WHITESPACE_SPLITTERS for t in pres):
        return False, f"pre-tokenizer {pres or None} does not split at whitespace first"
    bad_pre = [t for t in pres if t not in _WHITESPACE_SPLITTERS | _INNER_SPLITTERS]
    if bad_pre:
        return False, f"pre-tokenizer {bad_pre} may act across whitespace"
    spaced = [a["content"] for a in spec.get("added_tokens", [])
              if not a["content"] or any(c in a["content"] for c in " \t\n\r\v\f")]
    if spaced:
        return False, f"added token(s) {spaced[:3]} contain whitespace"
    return True, "pipeline parts split at whitespace first: " + ", ".join(norms + pres)


def probe_texts(n_random: int = 300, seed: int = 0) -> list[str]:
    """Tricky texts for the additivity check: whitespace of every kind, punctuation, case,
    accents and combining marks, CJK, emoji, control characters, very long words, special
    token names, plus ``n_random`` seeded random mixtures of them."""
    fixed = [
        "", " ", "\n\n", "Hello, World!", "  leading and trailing  ", "a\tb\nc\r\nd  e",
        "multiple     spaces", "don't can't won't", "caf\u00e9 na\u00efve r\u00e9sum\u00e9",
        "e\u0301 \u0301a \u0308", "\u03a3\u0391\u03a3 \u039f\u0394\u039f\u03a3 \u03c3\u03b1\u03c2",
        "\u4f60\u597d\u4e16\u754c \u4e2d\u6587text \u3053\u3093\u306b\u3061\u306f",
        "\U0001F600 \U0001F680x \u2764\ufe0f", "a\u00a0b\u2003c\u3000d\u200be\u2028f\x85g",
        "x" * 150, "supercalifragilistic" * 8 + " tail", "\x00a\x01 b\x1f c\x7f",
        "a\vb c\fd \v \f", "[CLS] [SEP] [MASK]x [UNK] [PAD]", "<|endoftext|> <s></s>",
        "$1,000.00 3.14159 2024-11-24", "https://example.com/a?b=c&d=e#f",
        "def f(x):\n    return x**2  # comment", "\u0130stanbul \ufb01 \uff21\uff22\uff23",
        "\u00a8\u00b4 \u00a8x", "##ing ##s", "\ufffd \ufffd\ufffd", "ok.\n\n- a\n- b\n\n```py\nx\n```",
    ]
    pieces = [w for t in fixed for w in t.split()] + [
        " ", "  ", "\t", "\n", "\r\n", "\v", "\f", "\u00a0", "\u2003", "\u3000", "\x85",
        ".", ",", "!?", "...", "'", "\u2019", "-", "\u2014", "(", ")", "\u0301", "\u4e2d",
        "\U0001F600", "A", "word", "Words", "123", "x" * 120]
    rng = np.random.default_rng(seed)
    rand = ["".join(rng.choice(pieces, size=int(rng.integers(1, 40)))) for _ in range(n_random)]
    return fixed + rand


class RustTokenCounter:
    """Texts -> exact token counts of a ``tokenizers.Tokenizer`` (truncation and padding off).

    Attributes:
        chunk_additive  True when counts are summed over distinct whitespace chunks
        reason          why (or why not), for the log
    Call it with a sequence of str -> float64 [n]; ``count_chunks(array)`` counts each
    element of an Arrow string array (used with TextView.chunks.dictionary).
    """

    def __init__(self, tokenizer, probe: Sequence[str] | None = None):
        self.tokenizer = tokenizer
        self._encode = getattr(tokenizer, "encode_batch_fast", tokenizer.encode_batch)
        self.chunk_additive, self.reason = structure_allows_chunks(tokenizer)
        if self.chunk_additive:
            texts = list(probe_texts() if probe is None else probe)
            failure = self._probe(texts)
            self.chunk_additive = failure is None
            self.reason = failure or (f"{self.reason}; chunk sums equal whole-text counts on "
                                      f"{len(texts)} probe texts")

    def _probe(self, texts: list[str]) -> str | None:
        """Why chunk-summed counts of ``texts`` differ from whole-text counts, or None."""
        try:
            chunked = self._chunked(pa.array(texts, type=pa.large_string()))
        except Exception as exc:  # noqa: BLE001 - any failure means: count texts whole
            return f"counting chunks failed on the probe texts ({exc!r})"
        bad = np.flatnonzero(self.count_whole(texts) != chunked)
        if len(bad):
            return (f"counts of {len(bad)} of {len(texts)} probe texts differ when summed "
                    f"over chunks, e.g. {texts[bad[0]]!r}")
        return None

    def count_whole(self, texts: Sequence[str], batch: int = _TEXT_BATCH) -> np.ndarray:
        """Token counts of the texts, each tokenized whole -> float64 [n]."""
        out = np.zeros(len(texts), dtype=np.float64)
        for start in range(0, len(texts), batch):
            part = list(texts[start:start + batch])
            out[start:start + len(part)] = [len(e) for e in self._encode(part, add_special_tokens=False)]
        return out

    def count_chunks(self, chunks: pa.Array) -> np.ndarray:
        """Token counts of each element of an Arrow string array -> int64 [len(chunks)].

        Chunks go to the tokenizer as pre-tokenized "words", _CHUNK_GROUP per input: each
        word is normalised and pre-tokenized on its own, exactly as if it were a text, and
        the tokens' word ids say which chunk each came from. One Encoding per group rather
        than per chunk saves most of the per-call cost on short chunks.
        """
        out = np.zeros(len(chunks), dtype=np.int64)
        step = _CHUNK_GROUP * _GROUPS_PER_CALL
        for start in range(0, len(chunks), step):
            words = chunks.slice(start, step).to_pylist()
            groups = [words[i:i + _CHUNK_GROUP] for i in range(0, len(words), _CHUNK_GROUP)]
            encodings = self.tokenizer.encode_batch(groups, is_pretokenized=True,
                                                    add_special_tokens=False)
            for k, (group, enc) in enumerate(zip(groups, encodings)):
                ids = np.fromiter(enc.word_ids, dtype=np.int64, count=len(enc.word_ids))
                begin = start + k * _CHUNK_GROUP
                out[begin:begin + len(group)] = np.bincount(ids, minlength=len(group))
        return out

    def _chunked(self, texts: pa.Array) -> np.ndarray:
        return chunked_counts(whitespace_chunks(texts), texts, self.count_chunks, self.count_whole)

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        if not self.chunk_additive:
            return self.count_whole(texts)
        return self._chunked(pa.array(list(texts), type=pa.large_string()))


def chunked_counts(chunks: Chunks, texts: pa.Array | pa.ChunkedArray, count_chunks: Callable[[pa.Array], np.ndarray],
                   count_whole: Callable[[Sequence[str]], np.ndarray]) -> np.ndarray:
    """Token counts of ``texts`` (the Arrow array ``chunks`` was cut from) -> float64 [n].

    Sums the counts of each text's chunks; texts that are not Chunks.plain (\\v or \\f
    inside) are counted whole instead.
    """
    per_chunk = np.asarray(count_chunks(chunks.dictionary), dtype=np.int64)
    totals = chunks.sums(per_chunk).astype(np.float64)
    odd = np.flatnonzero(~chunks.plain)
    if len(odd):
        totals[odd] = count_whole(texts.take(pa.array(odd)).to_pylist())
    return totals
