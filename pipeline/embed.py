"""Stage ``embed``: frozen sentence embeddings of prompt, response A and response B.

For every model in ``cfg.embed.models`` each text (the turns joined with ``turn_sep``,
cut to ``max_chars`` characters) is embedded once by a frozen model (``model.eval()``,
``torch.inference_mode``) on ``ctx.device``: half precision on a GPU when
``half_on_gpu``, float32 on the CPU, same code either way.

Cache (content-addressed)
    ``cache/embed/<model slug>-<key>/chunk-<digest>-<rows>.parquet`` and, beside the folder,
    ``<model slug>-<key>.json`` (provenance: key parts, dimension, rows, code version).
    ``key`` hashes everything that changes a vector: the model id, max_seq_length, the
    model's pooling / normalisation modules, ``normalize``, ``long_text`` (and its
    parameter), ``turn_sep``, ``max_chars`` and ``CACHE_VERSION``; never the batch size,
    chunk size or device. (The device's precision is left out on purpose: fp16 vectors from
    a GPU differ from fp32 CPU ones by about 1e-3, which we accept so that a GPU run and a
    CPU run share one cache.) Inside a folder a text is stored once, under the sha1 of its
    text, so a second experiment, a test file repeating training prompts, or swapped A/B
    order encode nothing they already have.

    Chunk layout: ``text_hash`` string, ``vector`` fixed_size_list<float32>[dim] (one
    contiguous float buffer, so 60k rows read back as a numpy view in well under a
    second). Pages carry Parquet CRC checksums. A chunk's file name states its row count
    and a digest of its ``text_hash`` column; a chunk that is unreadable, fails its page
    checksums, has another schema or dimension, or whose rows do not match its name is
    logged as a warning, deleted and its texts recomputed - never silently read.

Resumable
    Missing texts are deduplicated, sorted longest first (the slowest batches, and a GPU
    out-of-memory error, come at once) and encoded ``chunk_size`` at a time; each chunk is
    written atomically as soon as it is computed, so a killed run loses at most one chunk.
    A run with nothing new does not load the model at all.

Long texts (``long_text``)
    ``truncate``    the model keeps the first ``max_seq_length`` tokens (the default).
    ``head_tail``   a text over the token budget keeps its first ``head_share`` of the
                    budget and its last tokens, joined by " ... " (cut on the tokenizer's
                    character offsets, so the text is never re-decoded; the re-tokenised
                    cut can differ from the budget by a token at the seam, which the
                    model's own truncation absorbs).
    ``chunk_mean``  a text over the budget is split into windows of at most budget tokens
                    (cut between words where possible); each window is embedded (L2-normalised when ``normalize``), the windows are
                    averaged weighted by their token counts, and the mean is renormalised.
    The budget is ``max_seq_length`` minus the tokenizer's special tokens.
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import logging
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.catalog import (atomic_path, hash_key, hash_texts, provenance_path,
                              read_json, slug, write_provenance)
from pipeline.config import ConfigError, EmbedConfig
from pipeline.embed_backends import key_parts
from pipeline.data import TEXT_COLUMNS, DataError, join_turns
from pipeline.models import model_id, quiet_loading, resolve_model_path
from pipeline.progress import Progress

log = logging.getLogger(__name__)

# Bump when the way vectors are computed changes (invalidates every embed cache).
CACHE_VERSION = 1
LONG_TEXT_MODES = ("truncate", "head_tail", "chunk_mean")
HEAD_TAIL_SEP = " ... "

Encoder = Callable[[list[str]], np.ndarray]

_CHUNK_NAME = re.compile(r"^chunk-([0-9a-f]{16})-(\d+)\.parquet$")


# --------------------------------------------------------------------------- cache key


def _local_model_file(model: str, name: str) -> Path | None:
    path = Path(resolve_model_path(model))
    return path / name if (path / name).is_file() else None


def _model_max_seq_length(model: str) -> int | None:
    """The model's own max_seq_length when its folder is local (read without loading it)."""
    cfg_file = _local_model_file(model, "sentence_bert_config.json")
    if cfg_file is None:
        return None
    return read_json(cfg_file).get("max_seq_length")


def _pooling_signature(model: str) -> object:
    """The model's module types and pooling config when local, else "model-default"."""
    modules_file = _local_model_file(model, "modules.json")
    if modules_file is None:
        return "model-default"
    modules = read_json(modules_file)
    signature = []
    for module in modules:
        entry = {"type": module.get("type", "")}
        if "Pooling" in entry["type"]:
            pool_cfg = _local_model_file(model, f"{module.get('path', '')}/config.json")
            entry["config"] = read_json(pool_cfg) if pool_cfg else None
        signature.append(entry)
    return signature


def cache_key_parts(cfg: EmbedConfig, model: str, version: int = CACHE_VERSION) -> dict:
    """Everything that changes a vector of ``model`` under ``cfg`` (nothing else).

    Returns: JSON-serialisable dict (model id, max_seq_length, pooling, normalize,
    long_text [+ head_share], turn_sep, max_chars, version).
    """
    if cfg.long_text not in LONG_TEXT_MODES:
        raise ValueError(f"embed.long_text = {cfg.long_text!r} is not one of "
                         f"{', '.join(LONG_TEXT_MODES)}: fix the experiment file")
    long_text: object = cfg.long_text
    if cfg.long_text == "head_tail":
        long_text = {"mode": "head_tail", "head_share": cfg.head_share}
    return {
        "model": model_id(model),
        "max_seq_length": cfg.max_seq_length or _model_max_seq_length(model),
        "pooling": _pooling_signature(model),
        "normalize": cfg.normalize,
        "long_text": long_text,
        "turn_sep": cfg.turn_sep,
        "max_chars": cfg.max_chars,
        "version": version,
        **key_parts(cfg.backend, cfg.quantize),
    }


def cache_key(cfg: EmbedConfig, model: str, version: int = CACHE_VERSION) -> str:
    """Short hex key of :func:`cache_key_parts`."""
    return hash_key(cache_key_parts(cfg, model, version))


def cache_folder(cache_root: Path, cfg: EmbedConfig, model: str) -> Path:
    """``<cache_root>/<model slug>-<key>``: the one folder holding ``model``'s vectors."""
    return Path(cache_root) / f"{slug(model)}-{cache_key(cfg, model)}"


# --------------------------------------------------------------------------- cache


class CorruptChunk(Exception):
    """A chunk file that must not be read (the message says why)."""


def _digest(hashes: Sequence[str]) -> str:
    return hashlib.sha1("\n".join(hashes).encode("ascii")).hexdigest()[:16]


class EmbeddingCache:
    """Vectors of one (model, key) folder, indexed by text hash.

    Chunks are read lazily on first use; invalid chunks are deleted with a warning.
    """

    def __init__(self, folder: str | Path, key: dict | None = None):
        self.folder = Path(folder)
        self.key = key or {}
        self._index: dict[str, int] | None = None
        self._blocks: list[np.ndarray] = []
        self._matrix: np.ndarray | None = None
        self._dim: int | None = None
        self._n_rows = 0

    # -- paths
    @property
    def provenance(self) -> Path:
        return provenance_path(self.folder)

    @property
    def lock_path(self) -> Path:
        return self.folder.with_name(self.folder.name + ".lock")

    def chunk_files(self) -> list[Path]:
        """The chunk files present (sorted by name; temp files excluded)."""
        if not self.folder.is_dir():
            return []
        return sorted(self.folder.glob("chunk-*.parquet"))

    # -- reading
    def reload(self) -> None:
        """Forget what was read; the next access reads the folder again."""
        self._index = None
        self._blocks = []
        self._matrix = None
        self._n_rows = 0

    def _expected_dim(self) -> int | None:
        if self.provenance.is_file():
            try:
                return int(read_json(self.provenance)["dim"])
            except (ValueError, KeyError, TypeError):
                log.warning("embed cache: %s is unreadable; taking the dimension from the chunks",
                            self.provenance)
        return None

    def _read_chunk(self, path: Path, dim: int | None) -> tuple[list[str], np.ndarray]:
        match = _CHUNK_NAME.match(path.name)
        if not match:
            raise CorruptChunk("the name does not state its digest and row count")
        digest, rows = match.group(1), int(match.group(2))
        try:
            table = pq.read_table(path, page_checksum_verification=True)
        except Exception as exc:  # noqa: BLE001 - any read failure means "recompute"
            raise CorruptChunk(f"unreadable Parquet ({type(exc).__name__}: {exc})") from None
        schema = table.schema
        vtype = schema.field("vector").type if "vector" in schema.names else None
        htype = schema.field("text_hash").type if "text_hash" in schema.names else None
        if (schema.names != ["text_hash", "vector"]
                or not (pa.types.is_string(htype) or pa.types.is_large_string(htype))
                or not pa.types.is_fixed_size_list(vtype) or vtype.value_type != pa.float32()):
            raise CorruptChunk(f"wrong schema {schema.to_string(show_schema_metadata=False)!r}")
        if dim is not None and vtype.list_size != dim:
            raise CorruptChunk(f"vectors have {vtype.list_size} dimensions, the cache {dim}")
        if table.num_rows != rows:
            raise CorruptChunk(f"{table.num_rows} rows, the file name says {rows}")
        if table.column("text_hash").null_count or table.column("vector").null_count:
            raise CorruptChunk("null values")
        hashes = table.column("text_hash").to_pylist()
        if _digest(hashes) != digest:
            raise CorruptChunk("its text hashes do not match the digest in its name")
        flat = table.column("vector").combine_chunks().flatten()
        vectors = flat.to_numpy(zero_copy_only=False).reshape(rows, vtype.list_size)
        if not np.isfinite(vectors).all():
            raise CorruptChunk("non-finite vectors")
        return hashes, vectors

    def _load(self) -> None:
        if self._index is not None:
            return
        index: dict[str, int] = {}
        blocks: list[np.ndarray] = []
        dim = self._expected_dim()
        offset = 0
        for path in self.chunk_files():
            try:
                hashes, vectors = self._read_chunk(path, dim)
            except CorruptChunk as exc:
                log.warning("embed cache: chunk %s is invalid (%s): deleting it; its texts "
                            "will be recomputed", path, exc)
                path.unlink(missing_ok=True)
                continue
            dim = vectors.shape[1]
            for i, h in enumerate(hashes):
                index.setdefault(h, offset + i)
            blocks.append(vectors)
            offset += len(hashes)
        self._index, self._blocks, self._dim = index, blocks, dim
        self._matrix = None
        self._n_rows = offset

    @property
    def dim(self) -> int | None:
        """Vector dimension (None while the cache is empty)."""
        self._load()
        return self._dim

    def __len__(self) -> int:
        self._load()
        return len(self._index)

    def __contains__(self, text_hash: str) -> bool:
        self._load()
        return text_hash in self._index

    def missing(self, hashes: Sequence[str]) -> list[str]:
        """The hashes without a vector, deduplicated, in first-seen order."""
        self._load()
        index = self._index
        return list(dict.fromkeys(h for h in hashes if h not in index))

    def get(self, hashes: Sequence[str]) -> np.ndarray:
        """Vectors of ``hashes`` (repeats allowed). Returns: float32 [len(hashes), dim].

        Raises KeyError naming the first hash that is not cached.
        """
        self._load()
        try:
            rows = np.fromiter((self._index[h] for h in hashes), dtype=np.int64, count=len(hashes))
        except KeyError as exc:
            raise KeyError(f"text hash {exc.args[0]} is not in the embedding cache "
                           f"{self.folder}") from None
        if self._matrix is None:
            if not self._blocks:
                return np.zeros((0, self._dim or 0), dtype=np.float32)
            self._matrix = (self._blocks[0] if len(self._blocks) == 1
                            else np.concatenate(self._blocks))
            self._blocks = [self._matrix]
        return self._matrix[rows]

    # -- writing
    def add_chunk(self, hashes: Sequence[str], vectors: np.ndarray) -> Path:
        """Write one chunk atomically and index it. Returns the chunk's path.

        ``vectors``: float [len(hashes), dim], finite, dim equal to the cache's.
        """
        self._load()
        hashes = list(hashes)
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or len(vectors) != len(hashes):
            raise ValueError(f"embed cache: expected vectors of shape [{len(hashes)}, dim], "
                             f"got {vectors.shape}")
        if self._dim is not None and vectors.shape[1] != self._dim:
            raise ValueError(f"embed cache {self.folder} holds {self._dim}-dim vectors but the "
                             f"encoder returned {vectors.shape[1]}: the model changed under the "
                             "same name; delete the folder or bump CACHE_VERSION")
        if not np.isfinite(vectors).all():
            raise ValueError("the encoder returned non-finite vectors (NaN/inf); on a GPU try "
                             "embed.half_on_gpu: false")
        if len(set(hashes)) != len(hashes):
            raise ValueError("embed cache: a chunk must not repeat a text hash")
        dim = vectors.shape[1]
        table = pa.table({
            "text_hash": pa.array(hashes, type=pa.string()),
            "vector": pa.FixedSizeListArray.from_arrays(pa.array(vectors.reshape(-1)), dim),
        })
        path = self.folder / f"chunk-{_digest(hashes)}-{len(hashes)}.parquet"
        with atomic_path(path) as tmp:
            # Uncompressed: float vectors barely compress, and reads stay a memcpy.
            pq.write_table(table, tmp, compression="none", use_dictionary=False,
                           write_page_checksum=True)
        offset = self._n_rows
        for i, h in enumerate(hashes):
            self._index.setdefault(h, offset + i)
        self._blocks = ([self._matrix] if self._matrix is not None else self._blocks) + [vectors]
        self._matrix = None
        self._n_rows += len(hashes)
        self._dim = dim
        write_provenance(self.folder, config=self.key, rows=len(self._index), dim=dim,
                         chunks=len(self.chunk_files()))
        return path

    def clear(self) -> int:
        """Delete every chunk (``--force``). Returns how many were deleted."""
        files = self.chunk_files()
        for path in files:
            path.unlink(missing_ok=True)
        self.reload()
        return len(files)

    def remove_stale_temp(self) -> None:
        """Delete temp files a killed writer left (call only while holding the lock)."""
        if self.folder.is_dir():
            for tmp in self.folder.glob(".chunk-*.tmp"):
                tmp.unlink(missing_ok=True)
        # A kill while the provenance JSON beside the folder was being written.
        for tmp in self.folder.parent.glob(f".{self.provenance.name}.*.tmp"):
            tmp.unlink(missing_ok=True)


# --------------------------------------------------------------------------- encoding


def encode_missing(cache: EmbeddingCache, texts: Sequence[str], encoder: Encoder | None,
                   chunk_size: int, progress: bool = True, hashes: Sequence[str] | None = None,
                   desc: str = "embed", executor=None, make_encoder: Callable | None = None,
                   workers: int = 1, cpus: float = 1.0, gpus: float = 0.0) -> int:
    """Encode the texts ``cache`` lacks, ``chunk_size`` at a time, each chunk saved at once.

    ``encoder``: any callable list[str] -> float array [n, dim] (or None: ``make_encoder()``
    builds one, only if a chunk is still missing once the folder's lock is held). Unique
    missing texts are sorted longest first, then chunked; each chunk is an artifact of kind
    "embed-chunks" (pipeline.artifacts: read, lock, re-read, compute, write). With an
    ``executor`` (pipeline.executors) each chunk is a unit on up to ``workers`` workers
    that each build their encoder once with ``make_encoder`` (holding ``cpus`` / ``gpus``);
    the chunks come back in order and are written here, so this process stays the cache's
    only writer. Returns: the number of texts this call encoded.
    """
    from pipeline.artifacts import Item, get_or_compute_many
    from pipeline.executors.base import Unit

    if chunk_size < 1:
        raise ValueError(f"embed.chunk_size must be >= 1, got {chunk_size}")
    hashes = hash_texts(texts) if hashes is None else hashes
    todo = dict.fromkeys(cache.missing(hashes))
    if not todo:
        return 0
    for h, t in zip(hashes, texts):
        if h in todo and todo[h] is None:
            todo[h] = t
    order = sorted(todo, key=lambda h: -len(todo[h]))
    chunks = [order[start:start + chunk_size] for start in range(0, len(order), chunk_size)]
    items = [Item(names={"folder": cache.folder.name, "digest": _digest(part), "rows": len(part)},
                  key=(), meta={"cache": cache, "hashes": part}) for part in chunks]

    def compute(indices: list[int]):
        parts = [[todo[h] for h in chunks[i]] for i in indices]
        if executor is None:
            enc = encoder if encoder is not None else make_encoder()
            return (enc(part) for part in parts)
        units = (Unit(f"{desc} chunk {i + 1}/{len(chunks)}", (part,))
                 for i, part in zip(indices, parts))
        return executor.map_stateful(make_encoder, units, workers=workers, cpus=cpus, gpus=gpus)

    encoded = 0
    with Progress(len(order), desc, unit="text", enabled=progress) as bar:
        def settled(i: int, obj, hit: bool, seconds: float) -> None:
            nonlocal encoded
            encoded += 0 if hit else len(chunks[i])
            bar.update(len(chunks[i]))

        get_or_compute_many(None, "embed-chunks", items, compute, on_result=settled,
                            root=cache.folder.parent)
    return encoded


def read_chunk(path: Path, meta: dict):
    """Reader of kind "embed-chunks": the chunk's vectors once every one of its texts is in
    the folder (whichever chunk holds it), else None."""
    cache: EmbeddingCache = meta["cache"]
    return None if cache.missing(meta["hashes"]) else cache.get(meta["hashes"])


def write_chunk(path: Path, vectors, meta: dict) -> None:
    """Writer of kind "embed-chunks": the chunk file (atomic) and the folder's provenance."""
    written = meta["cache"].add_chunk(meta["hashes"], np.asarray(vectors))
    if written != path:
        raise RuntimeError(f"embed cache: chunk written to {written}, declared as {path}")


def on_lock(lock: Path, meta: dict) -> None:
    """Kind "embed-chunks", once its folder's lock is held: read the folder again (another
    process may have added chunks while this one waited) and delete the temp files a
    killed writer left."""
    cache: EmbeddingCache = meta["cache"]
    cache.reload()
    cache.remove_stale_temp()


@dataclass
class EmbedStats:
    texts: int
    unique: int
    cached: int
    computed: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.computed / self.seconds if self.seconds > 0 else float("inf")


def embed_texts(cache: EmbeddingCache, texts: Sequence[str], make_encoder: Callable[[], Encoder],
                chunk_size: int, progress: bool = True, desc: str = "embed", executor=None,
                workers: int = 1, cpus: float = 1.0,
                gpus: float = 0.0) -> tuple[np.ndarray, EmbedStats]:
    """Vectors of ``texts`` from ``cache``, computing (under a file lock) only what is missing.

    ``make_encoder`` is called only when something is missing (so a warm run never loads a
    model); with an ``executor`` it runs once in each of its workers (see encode_missing).
    Returns: (float32 [len(texts), dim] aligned to ``texts``, stats).
    """
    t0 = time.perf_counter()
    hashes = hash_texts(texts)
    unique = len(set(hashes))
    computed = encode_missing(cache, texts, None, chunk_size, progress, hashes=hashes,
                              desc=desc, executor=executor, make_encoder=make_encoder,
                              workers=workers, cpus=cpus, gpus=gpus)
    vectors = cache.get(hashes)
    stats = EmbedStats(texts=len(texts), unique=unique, cached=unique - computed,
                       computed=computed, seconds=time.perf_counter() - t0)
    return vectors, stats


# --------------------------------------------------------------------------- the model


_WORKER_TOKENIZER: tuple | None = None


def _init_tokenizer_worker(tokenizer, max_length: int, lower: bool) -> None:
    global _WORKER_TOKENIZER
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one process = one core
    _WORKER_TOKENIZER = (tokenizer, max_length, lower)


def _st_features(texts: list[str], tokenizer=None, max_length: int | None = None,
                 lower: bool = False) -> dict[str, np.ndarray]:
    """A sentence-transformers Transformer module's text features as int64 numpy arrays
    (stripped, lower-cased when the module says so, padded to the longest, truncated to
    ``max_length``); in a worker process the tokenizer comes from its initializer."""
    if tokenizer is None:
        tokenizer, max_length, lower = _WORKER_TOKENIZER
    texts = [t.strip() for t in texts]
    if lower:
        texts = [t.lower() for t in texts]
    enc = tokenizer(texts, padding=True, truncation="longest_first", max_length=max_length,
                    return_tensors="np")
    return {k: np.asarray(v, dtype=np.int64) for k, v in enc.items()}


class ModelEncoder:
    """A frozen SentenceTransformer as an :data:`Encoder` applying the long-text mode."""

    def __init__(self, model, batch_size: int, normalize: bool, long_text: str,
                 head_share: float = 0.5, backend: str = "torch", quantize: str = "none",
                 export_dir: Path | None = None):
        if long_text not in LONG_TEXT_MODES:
            raise ValueError(f"long_text {long_text!r} is not one of {', '.join(LONG_TEXT_MODES)}")
        if not 0.0 <= head_share <= 1.0:
            raise ValueError(f"embed.head_share must be in [0, 1], got {head_share}")
        self.model = model
        self.batch_size = batch_size
        self.normalize = normalize
        self.long_text = long_text
        self.head_share = head_share
        self.backend = backend
        self.quantize = quantize
        self.export_dir = export_dir
        self._runner = None

    # Texts per tokenizer call of the fast path.
    TOKENIZE_PART = 2048
    # Tokenizer processes of the fast path on a machine with many cores (the Python side
    # of tokenising, building the id lists, holds the GIL: threads cannot share it out).
    TOKENIZE_WORKERS = 8
    # Texts per call below which the process pool is not worth starting.
    POOL_MIN_TEXTS = 8192
    # Probe texts compared with the model's own preprocessing before the fast path is used.
    _PROBE = ["  Leading and trailing spaces  ", "UPPER lower MiXeD ünïcödé 123", "",
              "word " * 400, "tab\tand\nnewline"]

    def _encode(self, texts: list[str], normalize: bool) -> np.ndarray:
        import torch

        if self.backend != "torch":
            self._backend_runner()
            return self._encode_fast(texts, normalize)
        if self._fast_ok():
            return self._encode_fast(texts, normalize)
        with torch.inference_mode():
            out = self.model.encode(texts, batch_size=self.batch_size, convert_to_numpy=True,
                                    normalize_embeddings=normalize, show_progress_bar=False)
        return np.asarray(out, dtype=np.float32).reshape(len(texts), -1)

    def _fast_ok(self) -> bool:
        """Whether our own tokenisation gives exactly the model's features (checked once on
        :attr:`_PROBE`); else ``model.encode`` does everything, as before."""
        if getattr(self, "_fast", None) is None:
            self._fast = False
            try:
                first = self.model[0]
                prep = getattr(self.model, "preprocess", None) or self.model.tokenize
                if type(first).__name__ == "Transformer" and getattr(self.model.tokenizer, "is_fast", False):
                    self._tok_args = (self.model.tokenizer, int(self.model.max_seq_length),
                                      bool(getattr(first, "do_lower_case", False)))
                    ours, theirs = _st_features(self._PROBE, *self._tok_args), prep(self._PROBE)
                    self._fast = set(ours) <= set(theirs) and all(
                        np.array_equal(v, np.asarray(theirs[k])) for k, v in ours.items())
            except Exception:  # noqa: BLE001 - any surprise: the plain path
                self._fast = False
            log.debug("embed: fast tokenisation path %s", "on" if self._fast else "off")
        return self._fast

    def export(self) -> Path | None:
        """The exported model file of a backend other than torch, exported now if it is
        missing (None for torch)."""
        if self.backend == "torch":
            return None
        from pipeline.embed_backends import BackendError, exported_model

        if not self._fast_ok():
            raise BackendError(f"embed.backend={self.backend} needs a plain sentence-transformers "
                               "model (a Hugging Face transformer, then pooling) with a fast "
                               "tokenizer; use embed.backend: torch for this model")
        if self.export_dir is None:
            raise BackendError(f"embed.backend={self.backend}: no folder to export the model to")
        return exported_model(self.model, self.backend, self.quantize, self.export_dir,
                              lambda texts: _st_features(texts, *self._tok_args))

    def _backend_runner(self):
        """The ONNX Runtime / OpenVINO runner of the exported transformer (made once)."""
        if self._runner is None:
            from pipeline.embed_backends import make_runner

            self._runner = make_runner(self.export(), self.backend)
        return self._runner

    def _pool(self, n_texts: int):
        """A process pool of tokenizers for a big call on a many-core machine, else None."""
        if (n_texts < self.POOL_MIN_TEXTS or (os.cpu_count() or 1) < 2 * self.TOKENIZE_WORKERS
                or not hasattr(os, "fork")):
            return None
        if getattr(self, "_workers", None) is None:
            import multiprocessing
            from concurrent.futures import ProcessPoolExecutor

            # fork: the workers inherit the tokenizer and import nothing (spawn would re-run
            # the main module); they never touch the GPU, so a CUDA parent is safe.
            self._workers = ProcessPoolExecutor(
                max_workers=self.TOKENIZE_WORKERS, mp_context=multiprocessing.get_context("fork"),
                initializer=_init_tokenizer_worker, initargs=self._tok_args)
        return self._workers

    def _encode_fast(self, texts: list[str], normalize: bool) -> np.ndarray:
        """``model.encode`` with our own tokenisation: the model's features exactly (see
        :meth:`_fast_ok`), built as numpy arrays in calls of TOKENIZE_PART texts, on a
        thread, or on worker processes for big calls on a many-core machine, while the
        model encodes the previous part; each batch's padding cut to its longest row."""
        import torch
        from concurrent.futures import ThreadPoolExecutor

        device = self.model.device
        # Longest first, as encode does, so that each batch pads to about its own length.
        order = np.argsort([-len(t) for t in texts], kind="stable")
        texts = [texts[i] for i in order]
        parts = [texts[i:i + self.TOKENIZE_PART] for i in range(0, len(texts), self.TOKENIZE_PART)]
        pool = self._pool(len(texts))
        outs = []
        with ThreadPoolExecutor(max_workers=1) as thread, torch.inference_mode():
            if pool is not None:
                futures = [pool.submit(_st_features, part) for part in parts]
            else:
                futures = [thread.submit(_st_features, parts[0], *self._tok_args)]
            for k in range(len(parts)):
                feats = futures[k].result()
                if pool is None and k + 1 < len(parts):
                    futures.append(thread.submit(_st_features, parts[k + 1], *self._tok_args))
                feats = {key: torch.from_numpy(v) for key, v in feats.items()}
                lengths = feats["attention_mask"].sum(dim=1)
                n = len(parts[k])
                for start in range(0, n, self.batch_size):
                    rows = slice(start, start + self.batch_size)
                    width = int(lengths[rows].max())
                    if self._runner is not None:
                        from pipeline.embed_backends import pool_outputs

                        batch = {key: v[rows, :width] for key, v in feats.items()}
                        hidden = self._runner({k: v.numpy() for k, v in batch.items()})
                        outs.append(pool_outputs(self.model, hidden,
                                                 {"attention_mask": batch["attention_mask"]}))
                        continue
                    batch = {key: v[rows, :width].to(device, non_blocking=True)
                             for key, v in feats.items()}
                    outs.append(self.model.forward(batch)["sentence_embedding"])
        vectors = torch.cat(outs).float()
        if normalize:
            vectors = torch.nn.functional.normalize(vectors, p=2, dim=1)
        out = np.empty((len(texts), vectors.shape[1]), dtype=np.float32)
        out[order] = vectors.cpu().numpy()
        return out

    def _budget(self) -> tuple[object, int]:
        tokenizer = self.model.tokenizer
        if not getattr(tokenizer, "is_fast", False):
            raise ValueError(f"embed.long_text = {self.long_text!r} needs a fast tokenizer "
                             "(character offsets); use long_text: truncate with this model")
        max_len = self.model.max_seq_length or tokenizer.model_max_length
        budget = max_len - tokenizer.num_special_tokens_to_add(pair=False)
        if budget < 8:
            raise ValueError(f"max_seq_length {max_len} leaves {budget} tokens per text")
        return tokenizer, budget

    def _tokenize(self, tokenizer, texts: list[str]):
        return tokenizer(texts, add_special_tokens=False, return_offsets_mapping=True,
                         truncation=False, verbose=False)

    def _offsets(self, tokenizer, texts: list[str]) -> list[list[tuple[int, int]]]:
        return self._tokenize(tokenizer, texts)["offset_mapping"]

    @staticmethod
    def _windows(word_ids: list[int | None], budget: int) -> list[tuple[int, int]]:
        """Token windows [start, end) of at most ``budget`` tokens, never cutting a word
        unless the word alone is longer than the budget."""
        n = len(word_ids)
        windows = []
        start = 0
        while start < n:
            end = min(start + budget, n)
            if end < n and word_ids[end] is not None and word_ids[end] == word_ids[end - 1]:
                back = end
                while back > start and word_ids[back - 1] == word_ids[end]:
                    back -= 1
                if back > start:
                    end = back
            windows.append((start, end))
            start = end
        return windows

    def _head_tail(self, texts: list[str]) -> list[str]:
        tokenizer, budget = self._budget()
        sep_tokens = len(tokenizer(HEAD_TAIL_SEP, add_special_tokens=False)["input_ids"])
        keep = budget - sep_tokens
        head = int(round(keep * self.head_share))
        tail = keep - head
        out = []
        for text, offsets in zip(texts, self._offsets(tokenizer, texts)):
            if len(offsets) <= budget:
                out.append(text)
                continue
            start = text[:offsets[head - 1][1]] if head else ""
            end = text[offsets[len(offsets) - tail][0]:] if tail else ""
            out.append(start + HEAD_TAIL_SEP + end)
        return out

    def _chunk_mean(self, texts: list[str]) -> np.ndarray:
        tokenizer, budget = self._budget()
        pieces: list[str] = []
        owner: list[int] = []
        weight: list[int] = []
        enc = self._tokenize(tokenizer, texts)
        for i, (text, offsets) in enumerate(zip(texts, enc["offset_mapping"])):
            if len(offsets) <= budget:
                pieces.append(text)
                owner.append(i)
                weight.append(max(len(offsets), 1))
                continue
            for start, end in self._windows(enc.word_ids(i), budget):
                pieces.append(text[offsets[start][0]:offsets[end - 1][1]])
                owner.append(i)
                weight.append(end - start)
        vectors = self._encode(pieces, normalize=self.normalize)
        w = np.asarray(weight, dtype=np.float32)[:, None]
        sums = np.zeros((len(texts), vectors.shape[1]), dtype=np.float64)
        np.add.at(sums, np.asarray(owner), vectors * w)
        totals = np.zeros(len(texts), dtype=np.float64)
        np.add.at(totals, np.asarray(owner), w[:, 0])
        mean = sums / totals[:, None]
        if self.normalize:
            mean /= np.maximum(np.linalg.norm(mean, axis=1, keepdims=True), 1e-12)
        return mean.astype(np.float32)

    def __call__(self, texts: list[str]) -> np.ndarray:
        """Returns: float32 [len(texts), dim] (L2-normalised when ``normalize``)."""
        texts = list(texts)
        if not texts:
            return np.zeros((0, 0), dtype=np.float32)
        if self.long_text == "chunk_mean":
            return self._chunk_mean(texts)
        if self.long_text == "head_tail":
            texts = self._head_tail(texts)
        return self._encode(texts, normalize=self.normalize)


@functools.lru_cache(maxsize=2)
def load_model(name: str, device: str, max_seq_length: int | None, half: bool):
    """A frozen SentenceTransformer on ``device`` (fp16 when ``half``), loaded once per process."""
    from sentence_transformers import SentenceTransformer

    path = resolve_model_path(name)
    t0 = time.perf_counter()
    quiet_loading()
    try:
        model = SentenceTransformer(path, device=device)
    except Exception as exc:  # noqa: BLE001 - re-raised with what to do about it
        raise RuntimeError(f"could not load embedding model {name!r} (resolved to {path!r}): "
                           f"{exc}. Use a local model folder, a name in the local Hugging Face "
                           "cache, or the bundled all-MiniLM-L6-v2") from exc
    if max_seq_length is not None:
        model.max_seq_length = max_seq_length
    if half:
        model.half()
    model.eval()
    for param in model.parameters():
        param.requires_grad_(False)
    log.info("embed: loaded %s on %s%s in %.1fs (max_seq_length %s, dim %s)", name, device,
             " (fp16)" if half else "", time.perf_counter() - t0, model.max_seq_length,
             model.get_embedding_dimension())
    return model


# (CPU, GPU) defaults of embed.batch_size and embed.chunk_size (measured: bench/gpu_check.py).
BATCH_SIZES = (64, 512)
CHUNK_SIZES = (2048, 16_384)


def batch_and_chunk(cfg: EmbedConfig, device: str) -> tuple[int, int]:
    """embed.batch_size and embed.chunk_size on ``device`` (None = the device's default)."""
    gpu = int(device.startswith("cuda"))
    return cfg.batch_size or BATCH_SIZES[gpu], cfg.chunk_size or CHUNK_SIZES[gpu]


def model_encoder(cfg: EmbedConfig, model: str, device: str,
                  export_root: Path | None = None) -> ModelEncoder:
    """The :class:`ModelEncoder` of ``model`` under ``cfg`` on ``device``; a backend other
    than torch exports the model once into a folder of ``export_root`` (one per model)."""
    from pipeline.embed_backends import BackendError, check

    try:
        check(cfg.backend, cfg.quantize, device)
    except BackendError as exc:
        raise ConfigError(str(exc)) from None
    half = bool(cfg.half_on_gpu and device.startswith("cuda"))
    st = load_model(model, device, cfg.max_seq_length, half)
    export_dir = None
    if cfg.backend != "torch" and export_root is not None:
        export_dir = Path(export_root) / f"{slug(model)}-{hash_key('export', model_id(model))}"
    return ModelEncoder(st, batch_and_chunk(cfg, device)[0], cfg.normalize, cfg.long_text,
                        cfg.head_share, backend=cfg.backend, quantize=cfg.quantize,
                        export_dir=export_dir)


# --------------------------------------------------------------------------- frames / stage


def frame_texts(frame: pd.DataFrame, turn_sep: str, max_chars: int) -> dict[str, list[str]]:
    """Texts of a canonical frame. Returns: {"prompt"|"response_a"|"response_b": list[str]}."""
    missing = [c for c in TEXT_COLUMNS if c not in frame.columns]
    if missing:
        raise DataError(f"embed: the frame lacks column(s) {missing}; expected the canonical "
                        f"frame of pipeline.data.load_pairs with {list(TEXT_COLUMNS)}")
    return {col: [join_turns(turns, turn_sep)[:max_chars] for turns in frame[col]]
            for col in TEXT_COLUMNS}


def open_cache(ctx, model: str) -> EmbeddingCache:
    """The :class:`EmbeddingCache` of ``model`` under ``ctx.config.embed``."""
    cfg = ctx.config.embed
    parts = cache_key_parts(cfg, model)
    folder = ctx.catalog.stage_cache("embed") / f"{slug(model)}-{hash_key(parts)}"
    return EmbeddingCache(folder, key={**parts, "embed_config": dataclasses.asdict(cfg)})


def _embed(ctx, cache: EmbeddingCache, texts: list[str], model: str,
           progress: bool = True) -> tuple[np.ndarray, EmbedStats]:
    """Embed through the run's executor: in this process (local engine), or on workers
    that each load the model once: one per GPU of the cluster when embedding on GPUs,
    else one per machine-sized share of its CPUs."""
    import functools
    import os

    cfg = ctx.config.embed
    # Nothing to encode (a warm cache): no executor is started for it.
    if ctx.config.engine == "local" or not cache.missing(hash_texts(texts)):
        return embed_texts(cache, texts, lambda: model_encoder(cfg, model, ctx.device,
                                                             ctx.catalog.stage_cache("models")),
                           batch_and_chunk(cfg, ctx.device)[1], progress=progress,
                           desc=f"embed {slug(model)}")
    ex = ctx.executor
    device, gpus = ctx.unit_device()
    if cfg.backend != "torch":  # exported here, once: the workers only read the files
        model_encoder(cfg, model, "cpu", ctx.catalog.stage_cache("models")).export()
    cpus = float(os.cpu_count() or 1)
    workers = int(getattr(ex, "gpus", 1)) if gpus else max(1, int(getattr(ex, "cpus", cpus) // cpus))
    factory = functools.partial(model_encoder, cfg, model, device, ctx.catalog.stage_cache("models"))
    return embed_texts(cache, texts, factory, batch_and_chunk(cfg, device)[1], progress=progress,
                       desc=f"embed {slug(model)}", executor=ex, workers=workers,
                       cpus=1.0 if gpus else cpus, gpus=gpus)


def embeddings_for(ctx, frame: pd.DataFrame, model: str) -> dict[str, np.ndarray]:
    """Embeddings of a canonical frame's texts, computing only what the cache lacks.

    Returns: {"prompt", "response_a", "response_b"} -> float32 [len(frame), dim], row i
    of each array belonging to row i of ``frame`` (L2-normalised when embed.normalize).
    """
    cfg = ctx.config.embed
    by_col = frame_texts(frame, cfg.turn_sep, cfg.max_chars)
    texts = [t for col in TEXT_COLUMNS for t in by_col[col]]
    cache = open_cache(ctx, model)
    vectors, stats = _embed(ctx, cache, texts, model)
    if stats.computed:
        log.info("embed %s: %d rows -> %d unique texts: %d cached, %d computed in %.1fs "
                 "(%.1f texts/s)", model, len(frame), stats.unique, stats.cached,
                 stats.computed, stats.seconds, stats.rate)
    n = len(frame)
    return {col: vectors[i * n:(i + 1) * n] for i, col in enumerate(TEXT_COLUMNS)}


def _all_texts(ctx) -> list[str]:
    cfg = ctx.config.embed
    texts = []
    for frame in (ctx.dataset.train, ctx.dataset.test):
        by_col = frame_texts(frame, cfg.turn_sep, cfg.max_chars)
        texts += [t for col in TEXT_COLUMNS for t in by_col[col]]
    return texts


def missing_outputs(ctx) -> str | None:
    """Which texts of train and test no embed cache holds yet, in words, or None."""
    hashes = hash_texts(_all_texts(ctx))
    gaps = []
    for model in ctx.config.embed.models:
        n = len(open_cache(ctx, model).missing(hashes))
        if n:
            gaps.append(f"{n} of {len(set(hashes))} texts not embedded with {model}")
    return "; ".join(gaps) or None


def run_stage(ctx) -> None:
    """Embed train and test for every configured model; log cache hits, time, texts/s."""
    cfg = ctx.config.embed
    ds = ctx.dataset
    splits = {"train": ds.train, "test": ds.test}
    texts = _all_texts(ctx)
    rows = ", ".join(f"{name} {len(frame)} rows" for name, frame in splits.items())
    for model in cfg.models:
        cache = open_cache(ctx, model)
        if ctx.force:
            deleted = cache.clear()
            log.warning("embed %s: --force: deleted %d cached chunk(s) in %s", model, deleted,
                        cache.folder)
        vectors, stats = _embed(ctx, cache, texts, model)
        if stats.computed == 0:
            log.info("embed: all %d texts cached for model %s, nothing to encode (%s; "
                     "read in %.2fs from %s)", stats.unique, model, rows, stats.seconds,
                     cache.folder)
        else:
            log.info("embed %s: %s -> %d texts, %d unique: %d cached, %d computed in %.1fs "
                     "(%.1f texts/s); dim %d, cache %s", model, rows, stats.texts,
                     stats.unique, stats.cached, stats.computed, stats.seconds, stats.rate,
                     vectors.shape[1], cache.folder)
