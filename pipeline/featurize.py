"""Stage ``features``: text and embedding features of train and test, cached per group.

Cache layout: ``cache/features/<group>-<split>-<key>.parquet`` (+ ``.json`` provenance),
one file per feature group and split. The key hashes the input's content (ids and texts,
catalog.frame_hash), the group's code version and the config that changes its output:
the tokenizer (length), the embedding model and embed settings and embed_diff_dims
(emb-<slug>), nothing else (structure, overlap). A second run reads every file; adding
a group to ``features.groups`` computes only that group.

Groups: "length", "structure", "overlap" (features.groups.TEXT_GROUPS) and "embedding",
which means one group ``emb-<slug>`` per model in ``embed.models``; an ``emb-<slug>``
name selects one model's group.
"""
from __future__ import annotations

import functools
import logging
import time
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import pandas as pd

from features import embedding as emb_features
from features.groups import TEXT_GROUPS
from features.length import TokenCounter
from features.text import TextView
from features.turns import TURN_SEP
from features.tokencount import RustTokenCounter
from pipeline.catalog import (frame_hash, hash_key, read_parquet_checked, slug,
                              write_parquet_atomic, write_provenance)
from pipeline.config import Config
from pipeline.data import TEXT_COLUMNS
from pipeline.models import model_id, resolve_model_path

log = logging.getLogger(__name__)

STAGE = "features"


@dataclass(frozen=True)
class GroupSpec:
    """One cached feature group: its name, what keys its cache, and which model (if any)."""

    name: str
    key_parts: dict
    model: str | None = None  # embedding groups: the embedding model


# --------------------------------------------------------------------------- groups


def tokenizer_name(cfg: Config) -> str:
    """The tokenizer used for token counts: features.tokenizer or the first embed model."""
    if cfg.features.tokenizer:
        return cfg.features.tokenizer
    if not cfg.embed.models:
        raise ValueError("features.tokenizer is unset and embed.models is empty: "
                         "set one of them in the experiment file")
    return cfg.embed.models[0]


def embedding_groups(cfg: Config) -> dict[str, str]:
    """``emb-<slug>`` -> model, one per model in embed.models (slugs made unique)."""
    out: dict[str, str] = {}
    for model in cfg.embed.models:
        name = emb_features.group_name(slug(model))
        if name in out:
            name = f"{name}-{hash_key(model_id(model), length=6)}"
        out[name] = model
    return out


def _embed_key(cfg: Config, model: str) -> dict:
    try:
        from pipeline.embed import cache_key_parts
    except ImportError as exc:
        raise RuntimeError("the embedding feature group needs pipeline/embed.py; drop "
                           "'embedding' from features.groups to run without it") from exc
    return cache_key_parts(cfg.embed, model)


def group_specs(cfg: Config, groups: Sequence[str] | None = None) -> list[GroupSpec]:
    """The cached groups that ``groups`` (default: features.groups) names, in order.

    Accepts "length", "structure", "overlap", "embedding" (every embed model), an
    ``emb-<slug>`` name, or "all" (= features.groups). Raises ValueError on others.
    """
    cfg_groups = list(cfg.features.groups)
    names = cfg_groups if groups is None else list(groups)
    if "all" in names:
        names = cfg_groups
    emb = embedding_groups(cfg)
    specs: list[GroupSpec] = []
    for name in names:
        if name in TEXT_GROUPS:
            parts: dict = {"version": TEXT_GROUPS[name].version}
            if cfg.embed.turn_sep != TURN_SEP:  # turns joined as for embedding (default: not
                parts["turn_sep"] = cfg.embed.turn_sep  # in the key, so old caches still hit)
            if TEXT_GROUPS[name].uses_tokenizer:
                parts["tokenizer"] = model_id(tokenizer_name(cfg))
            specs.append(GroupSpec(name, parts))
        elif name == "embedding" or name in emb:
            for gname, model in emb.items():
                if name in ("embedding", gname):
                    specs.append(GroupSpec(gname, {
                        "version": emb_features.VERSION, "embed": _embed_key(cfg, model),
                        "embed_diff_dims": cfg.features.embed_diff_dims}, model))
        else:
            valid = [*TEXT_GROUPS, "embedding", *emb, "all"]
            raise ValueError(f"features.groups: unknown group {name!r}; valid: {valid}")
    seen: set[str] = set()
    return [s for s in specs if not (s.name in seen or seen.add(s.name))]


# --------------------------------------------------------------------------- computation


@functools.lru_cache(maxsize=4)
def _load_tokenizer(name: str):
    """The Rust tokenizer of ``name`` with truncation and padding switched off (a copy)."""
    from tokenizers import Tokenizer
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(resolve_model_path(name), use_fast=True)
    if not getattr(tok, "is_fast", False):
        raise ValueError(f"features.tokenizer {name!r} has no fast (Rust) tokenizer: token "
                         "counts need one; set features.tokenizer to a model that has one")
    # A private copy: tokenizer.json may enable truncation/padding (MiniLM: 128), and the
    # raw batch call skips transformers' conversion of every id to a Python int.
    raw = Tokenizer.from_str(tok.backend_tokenizer.to_str())
    raw.no_truncation()
    raw.no_padding()
    return raw


@functools.lru_cache(maxsize=4)
def token_counter(name: str) -> TokenCounter:
    """Texts -> token counts of ``name``'s tokenizer (no special tokens, no truncation).

    Returns a features.tokencount.RustTokenCounter: with a whitespace-splitting tokenizer
    (BERT family) it counts each distinct whitespace chunk once and sums, else every
    text whole; the log says which, and why.
    """
    counter = RustTokenCounter(_load_tokenizer(name))
    log.debug("token counts of %s: %s (%s)", name,
             "summed over distinct whitespace chunks" if counter.chunk_additive
             else "each text tokenized whole", counter.reason)
    return counter


def _embeddings(ctx, frame: pd.DataFrame, model: str) -> dict[str, np.ndarray]:
    from pipeline.embed import embeddings_for

    return embeddings_for(ctx, frame, model)


class _Computer:
    """Computes groups of one frame, building the shared TextView at most once.

    An executor unit (pipeline.executors): pickled without the run context, since a
    worker gets every embedding it needs as an argument (the driver reads them, and
    computes any missing ones, so it stays the only writer of the embed cache).
    """

    def __init__(self, ctx, frame: pd.DataFrame,
                 make_counter: Callable[[str], TokenCounter] | None = None,
                 get_embeddings: Callable | None = None):
        self.ctx, self.frame = ctx, frame
        self.config = ctx.config
        self.ids = frame["id"].astype(str).tolist()
        self._view: TextView | None = None
        # Looked up at call time so tests can swap in counting fakes.
        self.make_counter = make_counter or token_counter
        self.get_embeddings = get_embeddings or _embeddings

    def __getstate__(self) -> dict:
        return {**self.__dict__, "ctx": None, "_view": None}

    def inputs(self, spec: GroupSpec) -> dict | None:
        """What the driver gathers for a unit: the embeddings of an embedding group."""
        return None if spec.model is None else self.get_embeddings(self.ctx, self.frame, spec.model)

    def __call__(self, spec: GroupSpec, arrays: dict | None = None) -> pd.DataFrame:
        if spec.model is not None:
            if arrays is None:
                arrays = self.inputs(spec)
            return emb_features.embedding_features(arrays, self.ids, spec.name,
                                                   self.config.features.embed_diff_dims)
        if self._view is None:
            self._view = TextView(self.frame, self.config.embed.turn_sep)
        group = TEXT_GROUPS[spec.name]
        counter = self.make_counter(tokenizer_name(self.config)) if group.uses_tokenizer else None
        return group.compute(self._view, self.ids, counter)


def _join(ids: pd.Series, parts: list[pd.DataFrame]) -> pd.DataFrame:
    """Groups side by side: id, then each group's columns (ids checked, not just order)."""
    expected = ids.astype(str).to_numpy()
    out = [pd.DataFrame({"id": pd.array(expected, dtype="str")})]
    for part in parts:
        if not np.array_equal(part["id"].astype(str).to_numpy(), expected):
            raise RuntimeError("a feature group's ids differ from the data's: rerun with --force")
        out.append(part.drop(columns="id").reset_index(drop=True))
    return pd.concat(out, axis=1)


def features_for(ctx, frame: pd.DataFrame, groups: Sequence[str] | None = None) -> pd.DataFrame:
    """Features of a fresh canonical frame (no feature cache; embeddings use theirs).

    Returns: id + float32 columns of the configured groups, rows in ``frame``'s order,
    the same columns as load_features gives for train and test.
    """
    compute = _Computer(ctx, frame)
    return _join(frame["id"], [compute(s) for s in group_specs(ctx.config, groups)])


# --------------------------------------------------------------------------- cache


def _split_features(ctx, split: str, frame: pd.DataFrame, specs: list[GroupSpec],
                    compute: _Computer, stats: dict) -> pd.DataFrame:
    """Every group of one split: read from the cache, or computed as units of the run's
    executor (one per missing group) and written by the driver as they arrive."""
    from pipeline.artifacts import get_or_compute_many
    from pipeline.executors.base import Unit

    items = _group_items(split, frame, specs)

    def run(todo: list[int]):
        ex = ctx.executor
        fn = ex.share(compute)
        return ex.map(fn, (Unit(f"features {specs[i].name}/{split}",
                                (specs[i], compute.inputs(specs[i]))) for i in todo))

    def settled(i: int, df: pd.DataFrame, hit: bool, seconds: float) -> None:
        stats["hits" if hit else "computed"] += 1
        if hit:
            log.debug("features %s/%s: read %d rows x %d columns from cache", specs[i].name,
                      split, len(df), df.shape[1] - 1)
        else:
            log.debug("features %s/%s: computed %d rows x %d columns in %.2fs (%.0f rows/s)",
                      specs[i].name, split, len(df), df.shape[1] - 1, seconds,
                      len(df) / max(seconds, 1e-9))

    out = get_or_compute_many(ctx.catalog, "features", items, run, force=ctx.force,
                              on_result=settled)
    return _join(frame["id"], [df for df, _ in out])


def _group_items(split: str, frame: pd.DataFrame, specs: list[GroupSpec]) -> list:
    """The cache items (pipeline.artifacts, kind "features") of ``specs`` on one split."""
    from pipeline.artifacts import Item

    data_hash = frame_hash(frame[["id", *TEXT_COLUMNS]])
    ids = frame["id"].astype(str).to_numpy()
    return [Item({"group": s.name, "split": split}, (s.name, s.key_parts, data_hash),
                 {"rows": len(frame), "ids": ids, "split": split, "data_hash": data_hash,
                  "config": {"group": s.name, **s.key_parts}}) for s in specs]


def read_group(path, meta: dict) -> pd.DataFrame | None:
    """A cached feature group (kind "features"), or None when missing, damaged or
    holding other ids than ``meta['ids']``."""
    df = read_parquet_checked(path, expected_rows=meta["rows"], columns=["id"])
    if df is None:
        return None
    if not np.array_equal(df["id"].astype(str).to_numpy(), meta["ids"]):
        log.warning("features cache %s holds other ids: recomputing", path)
        return None
    return df


def write_group(path, df: pd.DataFrame, meta: dict) -> None:
    """A feature group's Parquet file and its provenance (kind "features")."""
    write_parquet_atomic(path, df)
    write_provenance(path, meta["config"], rows=len(df), split=meta["split"],
                     data_hash=meta["data_hash"], seconds=meta.get("seconds"),
                     columns=df.shape[1] - 1)


def load_features(ctx, groups: list[str] | None = None) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Train and test features, reading each (group, split) from the cache or computing it.

    Args:
        groups: group names (see group_specs); None = features.groups of the config.
    Returns: (train, test) frames: ``id`` (str) then float32 columns
    ``<group>__<role>_<feature>`` (features.swap), rows in the dataset's order; both have
    the same columns.
    """
    specs = group_specs(ctx.config, groups)
    stats = {"hits": 0, "computed": 0}
    out = []
    for split in ("train", "test"):
        frame = getattr(ctx.dataset, split)
        out.append(_split_features(ctx, split, frame, specs, _Computer(ctx, frame), stats))
    (log.info if stats["computed"] else log.debug)(
        "features: %d group file(s) read from cache, %d computed; %d columns",
        stats["hits"], stats["computed"], out[0].shape[1] - 1)
    return out[0], out[1]


def missing_outputs(ctx) -> str | None:
    """Which feature groups of train and test are not cached yet, in words, or None."""
    from pipeline.artifacts import KINDS, path_of

    gaps = []
    specs = group_specs(ctx.config)
    for split in ("train", "test"):
        items = _group_items(split, getattr(ctx.dataset, split), specs)
        gaps += [f"{s.name}/{split}" for s, item in zip(specs, items)
                 if not path_of(ctx.catalog, KINDS["features"], item).is_file()]
    return f"feature group(s) {', '.join(gaps)} not computed" if gaps else None


def run_stage(ctx) -> None:
    """Compute (or read) the features of train and test for features.groups."""
    t0 = time.perf_counter()
    train, test = load_features(ctx)
    log.info("features: train %d x %d, test %d x %d in %.1fs (groups: %s)", len(train),
             train.shape[1] - 1, len(test), test.shape[1] - 1, time.perf_counter() - t0,
             ", ".join(s.name for s in group_specs(ctx.config)))
