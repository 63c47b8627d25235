"""Embed stage: cache keys, the content-addressed chunk cache, resumption, corruption,
long-text modes (real tokenizer, fake model) and one end-to-end run with the real model."""
from __future__ import annotations

import dataclasses
import hashlib
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline import embed
from pipeline.catalog import Catalog, hash_texts
from pipeline.config import Config, EmbedConfig
from pipeline.context import RunContext
from pipeline.data import load_pairs, swap_pairs
from pipeline.embed import (EmbeddingCache, ModelEncoder, cache_key, embed_texts,
                            embeddings_for, encode_missing, frame_texts)

REPO = Path(__file__).resolve().parents[2]
DIM = 8


class CountingEncoder:
    """Deterministic fake: a text's vector depends on the text only; counts what it sees."""

    def __init__(self, fail_after_calls: int | None = None):
        self.calls: list[list[str]] = []
        self.fail_after_calls = fail_after_calls

    @staticmethod
    def vector(text: str) -> np.ndarray:
        seed = int(hashlib.sha1(text.encode("utf-8", "surrogatepass")).hexdigest()[:8], 16)
        return np.random.default_rng(seed).standard_normal(DIM).astype(np.float32)

    def __call__(self, texts: list[str]) -> np.ndarray:
        if self.fail_after_calls is not None and len(self.calls) >= self.fail_after_calls:
            raise KeyboardInterrupt("simulated kill")
        self.calls.append(list(texts))
        return np.stack([self.vector(t) for t in texts])

    @property
    def seen(self) -> list[str]:
        return [t for call in self.calls for t in call]


def _texts(n: int) -> list[str]:
    return [f"text number {i} " + "x" * (i % 7) for i in range(n)]


def _never():
    raise AssertionError("the encoder must not be created on a cache hit")


# --------------------------------------------------------------------------- keys


def test_cache_key_changes_with_what_changes_vectors():
    base = EmbedConfig()
    model = "all-MiniLM-L6-v2"
    key = cache_key(base, model)
    changed = {
        "model": cache_key(base, "someone/other-model"),
        "max_seq_length": cache_key(dataclasses.replace(base, max_seq_length=128), model),
        "normalize": cache_key(dataclasses.replace(base, normalize=False), model),
        "long_text": cache_key(dataclasses.replace(base, long_text="head_tail"), model),
        "chunk_mean": cache_key(dataclasses.replace(base, long_text="chunk_mean"), model),
        "turn_sep": cache_key(dataclasses.replace(base, turn_sep="\n"), model),
        "max_chars": cache_key(dataclasses.replace(base, max_chars=100), model),
        "version": cache_key(base, model, version=embed.CACHE_VERSION + 1),
    }
    assert all(k != key for k in changed.values()), changed
    assert len(set(changed.values())) == len(changed)
    head_tail = dataclasses.replace(base, long_text="head_tail")
    assert cache_key(dataclasses.replace(head_tail, head_share=0.3), model) != cache_key(head_tail, model)


def test_cache_key_ignores_batch_size_chunk_size_device_and_aliases():
    base = EmbedConfig()
    model = "all-MiniLM-L6-v2"
    key = cache_key(base, model)
    assert cache_key(dataclasses.replace(base, batch_size=7), model) == key
    assert cache_key(dataclasses.replace(base, chunk_size=3), model) == key
    assert cache_key(dataclasses.replace(base, half_on_gpu=False), model) == key
    # head_share only matters in head_tail mode
    assert cache_key(dataclasses.replace(base, head_share=0.9), model) == key
    for device in ("cpu", "cuda", "auto"):
        assert cache_key(dataclasses.replace(Config(), device=device).embed, model) == key
    # the model's own max_seq_length (256) and "None = the model's own" are one cache
    assert cache_key(dataclasses.replace(base, max_seq_length=256), model) == key
    assert cache_key(base, "sentence-transformers/all-MiniLM-L6-v2") == key
    assert cache_key(base, "bundled") == key


def test_unknown_long_text_mode_is_an_error():
    with pytest.raises(ValueError, match="truncate, head_tail, chunk_mean"):
        cache_key(dataclasses.replace(EmbedConfig(), long_text="middle"), "all-MiniLM-L6-v2")


# --------------------------------------------------------------------------- cache


def test_vectors_read_back_equal_what_was_written(tmp_path):
    folder = tmp_path / "m-key"
    texts = _texts(10)
    hashes = hash_texts(texts)
    vectors = np.stack([CountingEncoder.vector(t) for t in texts])
    cache = EmbeddingCache(folder)
    cache.add_chunk(hashes[:6], vectors[:6])
    cache.add_chunk(hashes[6:], vectors[6:])
    fresh = EmbeddingCache(folder)
    assert len(fresh) == 10 and fresh.dim == DIM
    order = [3, 3, 9, 0, 5]
    got = fresh.get([hashes[i] for i in order])
    assert got.dtype == np.float32
    np.testing.assert_array_equal(got, vectors[order])
    np.testing.assert_array_equal(cache.get(hashes), vectors)
    table = pq.read_table(fresh.chunk_files()[0])
    assert table.schema.field("vector").type == pa.list_(pa.float32(), DIM)
    with pytest.raises(KeyError, match="not in the embedding cache"):
        fresh.get(["0" * 40])


def test_missing_is_deduplicated_in_first_seen_order(tmp_path):
    cache = EmbeddingCache(tmp_path / "c")
    cache.add_chunk(["h1"], np.ones((1, DIM)))
    assert cache.missing(["h3", "h1", "h2", "h3"]) == ["h3", "h2"]


def test_add_chunk_rejects_wrong_dim_and_nan(tmp_path):
    cache = EmbeddingCache(tmp_path / "c")
    cache.add_chunk(["a"], np.ones((1, DIM)))
    with pytest.raises(ValueError, match="dim"):
        cache.add_chunk(["b"], np.ones((1, DIM + 1)))
    with pytest.raises(ValueError, match="non-finite"):
        cache.add_chunk(["c"], np.full((1, DIM), np.nan))


def test_cache_hit_never_calls_the_encoder(tmp_path):
    texts = _texts(12)
    fake = CountingEncoder()
    first, stats = embed_texts(EmbeddingCache(tmp_path / "c"), texts, lambda: fake, chunk_size=5,
                               progress=False)
    assert stats.computed == 12 and len(fake.seen) == 12
    again, stats = embed_texts(EmbeddingCache(tmp_path / "c"), texts, _never, chunk_size=5,
                               progress=False)
    assert stats.computed == 0 and stats.cached == 12
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(again, np.stack([CountingEncoder.vector(t) for t in texts]))


def test_duplicates_are_encoded_once_and_chunks_go_longest_first(tmp_path):
    texts = ["a", "bbb", "a", "cc", "bbb", "dddd", "a"]
    fake = CountingEncoder()
    n = encode_missing(EmbeddingCache(tmp_path / "c"), texts, fake, chunk_size=2, progress=False)
    assert n == 4
    assert fake.calls == [["dddd", "bbb"], ["cc", "a"]]


def test_swapped_pairs_and_repeated_prompts_encode_nothing_new(tiny_csvs, tmp_path):
    train = load_pairs(tiny_csvs[0], "train")
    cfg = EmbedConfig()

    def all_texts(frame):
        by_col = frame_texts(frame, cfg.turn_sep, cfg.max_chars)
        return [t for col in ("prompt", "response_a", "response_b") for t in by_col[col]]

    fake = CountingEncoder()
    cache = EmbeddingCache(tmp_path / "c")
    vecs, _ = embed_texts(cache, all_texts(train), lambda: fake, 4, progress=False)
    assert len(fake.seen) == len(set(fake.seen))  # duplicates (repeated responses) once
    swapped_vecs, stats = embed_texts(cache, all_texts(swap_pairs(train)), _never, 4,
                                      progress=False)
    assert stats.computed == 0
    n = len(train)
    np.testing.assert_array_equal(swapped_vecs[n:2 * n], vecs[2 * n:])  # A' = B
    repeated = train.iloc[[0, 0, 3]].reset_index(drop=True)
    _, stats = embed_texts(cache, all_texts(repeated), _never, 4, progress=False)
    assert stats.computed == 0


# --------------------------------------------------------------------------- resumption


def test_resume_after_interruption_encodes_only_the_remaining_chunks(tmp_path):
    texts = _texts(10)
    folder = tmp_path / "c"
    killed = CountingEncoder(fail_after_calls=2)
    with pytest.raises(KeyboardInterrupt):
        embed_texts(EmbeddingCache(folder), texts, lambda: killed, chunk_size=3, progress=False)
    done = set(killed.seen)
    assert len(done) == 6 and len(EmbeddingCache(folder).chunk_files()) == 2
    rerun = CountingEncoder()
    vecs, stats = embed_texts(EmbeddingCache(folder), texts, lambda: rerun, chunk_size=3,
                              progress=False)
    assert stats.computed == 4 and stats.cached == 6
    assert set(rerun.seen) == set(texts) - done
    np.testing.assert_array_equal(vecs, np.stack([CountingEncoder.vector(t) for t in texts]))


def test_texts_another_process_wrote_while_this_one_waited_are_read_not_encoded(tmp_path, monkeypatch):
    """The embed cache goes through pipeline.artifacts: read, lock the model folder, read
    again, encode only what is still missing."""
    import contextlib

    from pipeline import artifacts

    texts = _texts(7)
    folder = tmp_path / "c"
    other = CountingEncoder()
    real_lock = artifacts.file_lock
    locks = []

    @contextlib.contextmanager
    def contended(path):  # another process fills texts 0-3 while this one waits
        locks.append(Path(path))
        EmbeddingCache(folder).add_chunk(hash_texts(texts[:4]), other(texts[:4]))
        with real_lock(path):
            yield

    monkeypatch.setattr(artifacts, "file_lock", contended)
    mine = CountingEncoder()
    vecs, stats = embed_texts(EmbeddingCache(folder), texts, lambda: mine, chunk_size=3,
                              progress=False)
    assert locks == [folder.with_name("c.lock")]  # one lock for the folder, all chunks
    # Chunks go longest first: texts 6, 5, 4 | 3, 2, 1 | 0. The first chunk is still
    # missing; the others were written meanwhile and are read.
    assert sorted(mine.seen) == sorted(texts[4:]) and stats.computed == 3
    np.testing.assert_array_equal(vecs, np.stack([CountingEncoder.vector(t) for t in texts]))
    # Nothing missing once the lock is held: the encoder is never built.
    folder2 = tmp_path / "d"

    @contextlib.contextmanager
    def filled(path):
        EmbeddingCache(folder2).add_chunk(hash_texts(texts), other(texts))
        with real_lock(path):
            yield

    monkeypatch.setattr(artifacts, "file_lock", filled)
    _, stats = embed_texts(EmbeddingCache(folder2), texts, _never, chunk_size=3, progress=False)
    assert stats.computed == 0


def test_stale_temp_file_of_a_killed_writer_is_removed_and_ignored(tmp_path):
    folder = tmp_path / "c"
    folder.mkdir()
    stale = folder / ".chunk-0123456789abcdef-3.parquet.abc.tmp"
    stale.write_bytes(b"half a file")
    stale_json = tmp_path / ".c.json.xyz.tmp"  # killed while writing the provenance beside it
    stale_json.write_text("{")
    _, stats = embed_texts(EmbeddingCache(folder), _texts(3), CountingEncoder, 2, progress=False)
    assert stats.computed == 3 and not stale.exists() and not stale_json.exists()


# --------------------------------------------------------------------------- corruption


def _truncate(path: Path, cache: EmbeddingCache) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _flip_byte(path: Path, cache: EmbeddingCache) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 3] ^= 0xFF  # inside the vector data page: caught by the page CRC
    path.write_bytes(bytes(data))


def _wrong_row_count(path: Path, cache: EmbeddingCache) -> None:
    digest, rows = re.match(r"chunk-(\w+)-(\d+)\.parquet", path.name).groups()
    path.rename(path.with_name(f"chunk-{digest}-{int(rows) + 1}.parquet"))


def _wrong_dim(path: Path, cache: EmbeddingCache) -> None:
    table = pq.read_table(path)
    hashes = table.column("text_hash").to_pylist()
    vecs = np.ones((len(hashes), DIM + 2), dtype=np.float32)
    pq.write_table(pa.table({"text_hash": hashes, "vector": pa.FixedSizeListArray.from_arrays(
        pa.array(vecs.ravel()), DIM + 2)}), path)


def _wrong_schema(path: Path, cache: EmbeddingCache) -> None:
    table = pq.read_table(path)
    pq.write_table(pa.table({"text_hash": table.column("text_hash"),
                             "vector": pa.array([[0.0] * DIM] * table.num_rows,
                                                type=pa.list_(pa.float64()))}), path)


def _other_hashes(path: Path, cache: EmbeddingCache) -> None:
    table = pq.read_table(path)
    hashes = [h[::-1] for h in table.column("text_hash").to_pylist()]
    pq.write_table(table.set_column(0, "text_hash", pa.array(hashes)), path)


@pytest.mark.parametrize("corrupt", [_truncate, _flip_byte, _wrong_row_count, _wrong_dim,
                                     _wrong_schema, _other_hashes])
def test_corrupt_chunk_is_detected_deleted_and_recomputed(tmp_path, caplog, corrupt):
    texts = _texts(9)
    folder = tmp_path / "c"
    embed_texts(EmbeddingCache(folder), texts, CountingEncoder, chunk_size=3, progress=False)
    chunks = EmbeddingCache(folder).chunk_files()
    assert len(chunks) == 3
    victim_hashes = pq.read_table(chunks[1]).column("text_hash").to_pylist()
    corrupt(chunks[1], EmbeddingCache(folder))
    rerun = CountingEncoder()
    with caplog.at_level(logging.WARNING, logger="pipeline.embed"):
        vecs, stats = embed_texts(EmbeddingCache(folder), texts, lambda: rerun, chunk_size=3,
                                  progress=False)
    assert "invalid" in caplog.text and "recomputed" in caplog.text
    assert sorted(hash_texts(rerun.seen)) == sorted(victim_hashes)
    assert stats.computed == 3
    np.testing.assert_array_equal(vecs, np.stack([CountingEncoder.vector(t) for t in texts]))
    assert len(EmbeddingCache(folder).chunk_files()) == 3


# --------------------------------------------------------------------------- long texts


class FakeST:
    """SentenceTransformer stand-in: the real bundled tokenizer, a recording encode()."""

    def __init__(self, max_seq_length: int = 32):
        from transformers import AutoTokenizer

        from pipeline.models import resolve_model_path

        self.tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("all-MiniLM-L6-v2"))
        self.max_seq_length = max_seq_length
        self.seen: list[str] = []

    def encode(self, texts, normalize_embeddings=False, **kwargs):
        self.seen += list(texts)
        vecs = np.stack([CountingEncoder.vector(t) for t in texts])
        if normalize_embeddings:
            vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
        return vecs


@pytest.fixture(scope="module")
def fake_st():
    return FakeST()


LONG = " ".join(f"word{i}" for i in range(100))  # ~200+ tokens, budget 30


def test_head_tail_keeps_start_and_end_within_the_budget(fake_st):
    fake_st.seen.clear()
    enc = ModelEncoder(fake_st, batch_size=4, normalize=True, long_text="head_tail")
    out = enc(["short text", LONG])
    assert out.shape == (2, DIM) and out.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, rtol=1e-5)
    short, cut = fake_st.seen
    assert short == "short text"
    assert cut.startswith("word0 word1") and cut.endswith("word98 word99")
    assert embed.HEAD_TAIL_SEP in cut
    n_tokens = len(fake_st.tokenizer(cut, add_special_tokens=False)["input_ids"])
    assert n_tokens <= 30 + 1  # budget 32 - 2 special tokens, +1 at the seam


def test_chunk_mean_averages_token_windows(fake_st):
    fake_st.seen.clear()
    enc = ModelEncoder(fake_st, batch_size=4, normalize=False, long_text="chunk_mean")
    out = enc(["short text", LONG])
    windows = fake_st.seen[1:]
    tok = fake_st.tokenizer
    assert fake_st.seen[0] == "short text" and len(windows) > 3
    assert windows[0].startswith("word0") and windows[-1].endswith("word99")
    # windows tile the text, cut between words
    assert " ".join(windows).split() == LONG.split()
    assert all(len(tok(w, add_special_tokens=False)["input_ids"]) <= 30 for w in windows)
    np.testing.assert_allclose(out[0], CountingEncoder.vector("short text"), rtol=1e-6)
    weights = np.array([len(tok(w, add_special_tokens=False)["input_ids"]) for w in windows])
    expected = (np.stack([CountingEncoder.vector(w) for w in windows]) * weights[:, None]).sum(0)
    np.testing.assert_allclose(out[1], expected / weights.sum(), rtol=1e-4, atol=1e-6)
    normed = ModelEncoder(fake_st, 4, normalize=True, long_text="chunk_mean")(["short", LONG])
    np.testing.assert_allclose(np.linalg.norm(normed, axis=1), 1.0, rtol=1e-5)


# --------------------------------------------------------------------------- context API


def _ctx(tiny_csvs, workdir: Path, **embed_overrides) -> RunContext:
    cfg = Config()
    cfg = dataclasses.replace(cfg, embed=dataclasses.replace(cfg.embed, **embed_overrides))
    return RunContext(config=cfg, catalog=Catalog(workdir), train_path=tiny_csvs[0],
                      test_path=tiny_csvs[1], device_request="cpu")


def test_embeddings_for_aligns_rows_and_computes_only_new_texts(tiny_csvs, tmp_path, monkeypatch):
    fake = CountingEncoder()
    monkeypatch.setattr(embed, "model_encoder", lambda cfg, model, device, export_root=None: fake)
    ctx = _ctx(tiny_csvs, tmp_path / "work", chunk_size=4)
    train = ctx.dataset.train
    out = embeddings_for(ctx, train, "all-MiniLM-L6-v2")
    assert set(out) == {"prompt", "response_a", "response_b"}
    by_col = frame_texts(train, ctx.config.embed.turn_sep, ctx.config.embed.max_chars)
    for col, vecs in out.items():
        assert vecs.shape == (len(train), DIM) and vecs.dtype == np.float32
        np.testing.assert_array_equal(vecs, np.stack([fake.vector(t) for t in by_col[col]]))
    n_train = len(fake.seen)
    test = ctx.dataset.test  # the fixture's test rows repeat training texts
    embeddings_for(ctx, test, "all-MiniLM-L6-v2")
    assert len(fake.seen) == n_train
    fresh = test.copy()
    fresh["prompt"] = [["a prompt never seen before"]] + list(fresh["prompt"].iloc[1:])
    out = embeddings_for(ctx, fresh, "all-MiniLM-L6-v2")
    assert fake.seen[n_train:] == ["a prompt never seen before"]
    np.testing.assert_array_equal(out["prompt"][0], fake.vector("a prompt never seen before"))


def test_run_stage_force_recomputes_and_warm_run_loads_nothing(tiny_csvs, tmp_path, monkeypatch,
                                                              caplog):
    fake = CountingEncoder()
    monkeypatch.setattr(embed, "model_encoder", lambda cfg, model, device, export_root=None: fake)
    ctx = _ctx(tiny_csvs, tmp_path / "work")
    embed.run_stage(ctx)
    first = len(fake.seen)
    assert first > 0
    monkeypatch.setattr(embed, "model_encoder", lambda *a: _never())
    with caplog.at_level(logging.INFO, logger="pipeline.embed"):
        embed.run_stage(ctx)
    assert f"all {first} texts cached for model all-MiniLM-L6-v2, nothing to encode" in caplog.text
    monkeypatch.setattr(embed, "model_encoder", lambda cfg, model, device, export_root=None: fake)
    ctx.force = True
    embed.run_stage(ctx)
    assert len(fake.seen) == 2 * first


# --------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_cli_end_to_end_with_the_real_model_then_warm(tiny_csvs, tmp_path):
    workdir = tmp_path / "work"
    cmd = [sys.executable, str(REPO / "run_pipeline.py"), "--stage", "embed", "--device", "cpu",
           "--train", str(tiny_csvs[0]), "--test", str(tiny_csvs[1]), "--workdir", str(workdir)]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"}
    cold = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert cold.returncode == 0, cold.stderr
    m = re.search(r"(\d+) unique: 0 cached, (\d+) computed", cold.stderr)
    assert m and m.group(1) == m.group(2), cold.stderr
    unique = int(m.group(1))
    folders = [p for p in (workdir / "cache" / "embed").iterdir() if p.is_dir()]
    assert len(folders) == 1 and folders[0].name.startswith("all-MiniLM-L6-v2-")
    cache = EmbeddingCache(folders[0])
    assert len(cache) == unique and cache.dim == 384
    vecs = cache.get(list(cache._index))
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, rtol=1e-4)

    warm = subprocess.run(cmd, capture_output=True, text=True, cwd=REPO, env=env, timeout=300)
    assert warm.returncode == 0, warm.stderr
    assert (f"all {unique} texts cached for model all-MiniLM-L6-v2, nothing to encode"
            in warm.stderr), warm.stderr
    assert "loaded" not in warm.stderr and "computed" not in warm.stderr


# ------------------------------------------------------------------ fast tokenisation path

FAST_TEXTS = ["", "   ", "x", "  Leading and trailing  ", "UPPER lower MiXeD", "ünïcödé ✓",
              "word " * 600, "tab\tand\nnewline", "short"] + [f"text {i} " * (i % 37) for i in range(60)]


@pytest.mark.slow
@pytest.mark.parametrize("pool", [False, True])
def test_fast_tokenisation_path_gives_the_vectors_of_encode(monkeypatch, pool):
    import os

    from pipeline.embed import ModelEncoder, load_model

    model = load_model("all-MiniLM-L6-v2", "cpu", None, False)
    plain = np.asarray(model.encode(FAST_TEXTS, batch_size=8, normalize_embeddings=True))
    enc = ModelEncoder(model, 8, True, "truncate")
    enc.TOKENIZE_PART = 16  # several parts: the next one is tokenised while this one encodes
    if pool:
        enc.POOL_MIN_TEXTS, enc.TOKENIZE_WORKERS = 10, 1
        monkeypatch.setattr(os, "cpu_count", lambda: 2)
    fast = enc(FAST_TEXTS)
    assert enc._fast_ok() is True
    assert (getattr(enc, "_workers", None) is not None) == pool
    assert fast.shape == plain.shape
    np.testing.assert_allclose(fast, plain, atol=1e-5)


@pytest.mark.slow
def test_fast_path_is_off_when_our_features_differ_from_the_models(monkeypatch):
    import pipeline.embed as E

    model = E.load_model("all-MiniLM-L6-v2", "cpu", None, False)
    real = E._st_features
    monkeypatch.setattr(E, "_st_features", lambda texts, *a: {
        k: v + 1 if k == "input_ids" else v for k, v in real(texts, *a).items()})
    enc = E.ModelEncoder(model, 8, True, "truncate")
    out = enc(FAST_TEXTS[:12])
    assert enc._fast_ok() is False
    np.testing.assert_allclose(out, model.encode(FAST_TEXTS[:12], batch_size=8,
                                                 normalize_embeddings=True), atol=1e-5)
