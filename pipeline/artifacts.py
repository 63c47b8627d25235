"""Every kind of cached artifact, declared once, and the one loop that reads or makes them.

A kind (``Kind``) says where its files live (a folder under ``cache/`` and a name
template), what its key hashes, and how one is read (None when it is missing, partial or
damaged: it is then recomputed) and written (atomically, with provenance).
``get_or_compute_many`` does for every kind what each stage once did by hand: read what
is cached; lock the rest (in one order, so two runs never deadlock); read again
(another run may have written it while this one waited); compute what is still missing
as one batch, which the caller may hand to an executor; and write each result as it
arrives, here, in the driver (pipeline.executors: workers never write).

Two kinds share a folder between many items, and say so: an embedding chunk's lock is its
model folder's (``lock``), and once it is held that folder is read again (``on_lock``);
a fine-tuned fold's compute trains its seeds as executor units, whose weights (gigabytes)
the unit writes itself (catalog.unit_may_write) while the driver writes its logits.
"""
from __future__ import annotations

import contextlib
import importlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

from pipeline.catalog import Catalog, file_lock, hash_key


@dataclass(frozen=True)
class Kind:
    """One kind of cached artifact."""

    name: str
    stage: str            # folder under cache/
    template: str         # file (or folder) name: "{...}" from Item.names, "{key}" the key
    key: str              # what the key hashes, in words (the README's table)
    reader: str           # "module:function" (path, meta) -> object | None
    writer: str           # "module:function" (path, object, meta) -> None
    # Lock file name (a template like ``template``); None: the artifact's own name + ".lock".
    lock: str | None = None
    # "module:function" (lock path, meta) called once a lock is held, before the re-read.
    on_lock: str | None = None

    def read(self, path: Path, meta: dict):
        return _load(self.reader)(path, meta)

    def write(self, path: Path, obj, meta: dict) -> None:
        _load(self.writer)(path, obj, meta)


def _load(target: str) -> Callable:
    module, name = target.split(":")
    return getattr(importlib.import_module(module), name)


KINDS: dict[str, Kind] = {k.name: k for k in (
    Kind("folds", "folds", "folds-k{k}-{key}.parquet",
         "training ids, prompts and labels; K; seed; folds version",
         "pipeline.artifacts:read_frame", "pipeline.artifacts:write_frame"),
    Kind("features", "features", "{group}-{split}-{key}.parquet",
         "group, its version and settings (tokenizer, embed model and settings), the split's "
         "ids and texts", "pipeline.featurize:read_group", "pipeline.featurize:write_group"),
    Kind("tfidf-counts", "views", "tfidf-counts-{split}-{key}.npz",
         "hashing settings, turn separator, the split's ids and texts",
         "pipeline.views:read_counts", "pipeline.views:write_counts"),
    Kind("view-state", "views", "{view}-state-{key}.pkl",
         "view settings, the view's own data content, folds and fold (not for fit: all), "
         "seed; a TF-IDF view's column choice and IDF are an entry of their own (tfidf-idf), "
         "shared by views that differ only in blocks or SVD settings",
         "pipeline.views:read_state", "pipeline.views:write_state"),
    Kind("stack-member", "stack", "{member}-{key}",
         "learner kind and resolved params, views, seeds, swap settings, data content, "
         "labels, folds", "pipeline.stack:read_member", "pipeline.stack:write_member"),
    Kind("embed-chunks", "embed", "{folder}/chunk-{digest}-{rows}.parquet",
         "model id, max length, pooling, normalisation, long-text mode, backend (the "
         "folder, <model>-<key>; a chunk is named by its texts' content hashes)",
         "pipeline.embed:read_chunk", "pipeline.embed:write_chunk",
         lock="{folder}.lock", on_lock="pipeline.embed:on_lock"),
    Kind("finetune-fold", "finetune", "{model}-{key}/fold{fold}",
         "fine-tune settings that change logits, the training content, folds (the test "
         "logits inside also by the test file's content)",
         "pipeline.finetune:read_fold", "pipeline.finetune:write_fold"),
)}


@dataclass
class Item:
    """One artifact of a kind: what fills its name, what its key hashes, and what its
    reader and writer are told (expected rows, provenance, ...)."""

    names: dict
    key: tuple
    meta: dict = field(default_factory=dict)


def _root(catalog: Catalog | None, kind: Kind, root: Path | None) -> Path:
    if root is None and catalog is None:
        raise ValueError(f"artifact kind {kind.name!r}: give a catalog or the folder (root)")
    return Path(root) if root is not None else catalog.stage_cache(kind.stage)


def path_of(catalog: Catalog | None, kind: Kind, item: Item, root: Path | None = None) -> Path:
    """Where ``item`` of ``kind`` lives: under the catalog's folder of the kind's stage,
    or under ``root``."""
    return _root(catalog, kind, root) / kind.template.format(**item.names, key=hash_key(*item.key))


def lock_of(catalog: Catalog | None, kind: Kind, item: Item, root: Path | None = None) -> Path:
    """The lock file that guards ``item``'s computation (shared by items of one folder
    where the kind says so)."""
    if kind.lock is None:
        path = path_of(catalog, kind, item, root)
        return path.with_name(path.name + ".lock")
    return _root(catalog, kind, root) / kind.lock.format(**item.names, key=hash_key(*item.key))


def get_or_compute_many(catalog: Catalog | None, kind: str, items: Sequence[Item],
                        compute: Callable[[list[int]], Iterable], force: bool = False,
                        on_result: Callable[[int, Any, bool, float], None] | None = None,
                        root: Path | None = None) -> list[tuple[Any, bool]]:
    """Each item from the cache, or computed and written.

    ``compute(indices)`` gets the indices of the items still missing once their locks
    are held, and yields their objects in that order (it may run them on an executor).
    ``on_result(i, obj, hit, seconds)`` is told about each item as it is settled.
    ``force``: never read, recompute everything. ``root``: the kind's folder, for a cache
    used without a catalog (else the catalog's). Returns: [(object, cache hit)] in the
    items' order.
    """
    k = KINDS[kind]
    paths = [path_of(catalog, k, it, root) for it in items]
    out: list[tuple[Any, bool] | None] = [None] * len(items)

    def settle(i: int, obj, hit: bool, seconds: float = 0.0) -> None:
        out[i] = (obj, hit)
        if on_result is not None:
            on_result(i, obj, hit, seconds)

    for i, it in enumerate(items):
        obj = None if force else k.read(paths[i], it.meta)
        if obj is not None:
            settle(i, obj, True)
    todo = [i for i in range(len(items)) if out[i] is None]
    if not todo:
        return out
    with contextlib.ExitStack() as locks:
        held: dict[Path, int] = {}  # lock -> first item under it
        for i in todo:
            held.setdefault(lock_of(catalog, k, items[i], root), i)
        for lock in sorted(held, key=str):
            locks.enter_context(file_lock(lock))
            if k.on_lock is not None:
                _load(k.on_lock)(lock, items[held[lock]].meta)
        for i in todo:  # written by another run while this one waited for the lock?
            obj = None if force else k.read(paths[i], items[i].meta)
            if obj is not None:
                settle(i, obj, True)
        todo = [i for i in todo if out[i] is None]
        if todo:
            t0 = time.perf_counter()
            results = iter(compute(todo))
            for i in todo:
                obj = next(results)
                seconds = time.perf_counter() - t0
                k.write(paths[i], obj, {**items[i].meta, "seconds": round(seconds, 3)})
                settle(i, obj, False, seconds)
                t0 = time.perf_counter()
    return out


def get_or_compute(catalog: Catalog | None, kind: str, item: Item, compute: Callable[[], Any],
                   force: bool = False) -> tuple[Any, bool, Path]:
    """One artifact from the cache, or ``compute()``-d and written. Returns: (object,
    cache hit, path)."""
    (obj, hit), = get_or_compute_many(catalog, kind, [item], lambda todo: [compute()], force)
    return obj, hit, path_of(catalog, KINDS[kind], item)


# ---------------------------------------------------------------- shared readers / writers

def read_frame(path: Path, meta: dict):
    """A checked Parquet frame (rows as ``meta['rows']`` when given), or None."""
    from pipeline.catalog import read_parquet_checked

    return read_parquet_checked(path, expected_rows=meta.get("rows"))


def write_frame(path: Path, df, meta: dict) -> None:
    """Parquet, atomically, and its provenance (``meta['config']``)."""
    from pipeline.catalog import write_parquet_atomic, write_provenance

    write_parquet_atomic(path, df)
    write_provenance(path, meta.get("config"), rows=len(df))
