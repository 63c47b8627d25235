"""Catalog: atomic writes, checked cache reads, locks, keys."""
from __future__ import annotations

import multiprocessing as mp
import os
import subprocess
import sys
import time

import pandas as pd
import pytest

from pipeline.artifacts import KINDS, Item, _load, get_or_compute, get_or_compute_many
from pipeline.catalog import (Catalog, WorkerWriteError, atomic_path, file_lock, frame_hash,
                              hash_key, host_tag, provenance_path, read_json,
                              read_parquet_checked, sweep_stale_temp_files, worker_unit,
                              write_bytes_atomic, write_parquet_atomic)


def test_atomic_path_leaves_nothing_on_failure(tmp_path):
    target = tmp_path / "out.parquet"
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("crash mid-write")
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []  # no temp file left behind


def test_atomic_path_replaces_the_old_file_only_when_done(tmp_path):
    target = tmp_path / "x.txt"
    target.write_text("old")
    with atomic_path(target) as tmp:
        tmp.write_text("new")
        assert target.read_text() == "old"
    assert target.read_text() == "new"


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_sweep_removes_only_temp_files_of_dead_writers(tmp_path):
    sub = tmp_path / "features"
    sub.mkdir()
    with atomic_path(sub / "live.parquet") as live:  # this process: a writer still at work
        assert f".live.parquet.{host_tag()}~{os.getpid()}-" in live.name
        live.write_text("in progress")
        gone = _dead_pid()
        dead = sub / f".x.parquet.{host_tag()}~{gone}-abc123.tmp"
        dead_old_name = sub / f".w.parquet.{gone}-abc124.tmp"  # before names held the host
        # Another machine writing into a shared workdir: its pid means nothing here.
        other_host = sub / f".v.parquet.someotherhost~{gone}-abc125.tmp"
        old = sub / ".y.parquet.legacy.tmp"  # no pid (older naming): swept after a day
        recent = sub / ".z.parquet.legacy2.tmp"
        keep = [sub / "a.parquet", sub / "notes.tmp", sub / ".hidden"]
        for f in (dead, dead_old_name, other_host, old, recent, *keep):
            f.write_text("x")
        two_days = time.time() - 2 * 24 * 3600
        os.utime(old, (two_days, two_days))
        removed = sweep_stale_temp_files(tmp_path)
        assert sorted(removed) == sorted([dead, dead_old_name, old])
        assert live.exists() and recent.exists() and other_host.exists()
        assert all(f.exists() for f in keep)
    assert (sub / "live.parquet").read_text() == "in progress"
    assert sweep_stale_temp_files(tmp_path / "missing") == []


def test_a_unit_in_a_worker_cannot_write(tmp_path):
    """The single-writer rule: inside worker_unit every atomic write raises, naming the
    unit and the file; the driver writes again once the unit is over."""
    with worker_unit("stack m fold 0 seed 0"):
        with pytest.raises(WorkerWriteError, match="stack m fold 0 seed 0"):
            write_bytes_atomic(tmp_path / "x.bin", b"1")
        with pytest.raises(WorkerWriteError, match="x.parquet"):
            write_parquet_atomic(tmp_path / "x.parquet", pd.DataFrame({"a": [1]}))
    assert not list(tmp_path.iterdir())
    write_bytes_atomic(tmp_path / "x.bin", b"1")
    assert (tmp_path / "x.bin").read_bytes() == b"1"


def test_read_parquet_checked_rejects_corrupt_truncated_and_short(tmp_path):
    path = tmp_path / "a.parquet"
    write_parquet_atomic(path, pd.DataFrame({"x": range(10)}))
    assert len(read_parquet_checked(path, expected_rows=10)) == 10
    assert read_parquet_checked(path, expected_rows=11) is None
    assert read_parquet_checked(path, columns=["y"]) is None
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # truncated
    assert read_parquet_checked(path) is None
    path.write_bytes(b"garbage" * 10)
    assert read_parquet_checked(path) is None
    assert read_parquet_checked(tmp_path / "missing.parquet") is None


def test_cached_computes_once_and_recomputes_a_corrupt_file(tmp_path):
    calls = []

    def compute():
        calls.append(1)
        return pd.DataFrame({"x": [1, 2, 3]})

    cat, item = Catalog(tmp_path), _item(3)
    df, hit, path = get_or_compute(cat, "folds", item, compute)
    assert not hit and len(calls) == 1 and path.parent == cat.stage_cache("folds")
    assert read_json(provenance_path(path))["rows"] == 3
    df, hit, _ = get_or_compute(cat, "folds", item, compute)
    assert hit and len(calls) == 1
    path.write_bytes(b"corrupt")
    df, hit, _ = get_or_compute(cat, "folds", item, compute)
    assert not hit and len(calls) == 2 and df["x"].tolist() == [1, 2, 3]
    df, hit, _ = get_or_compute(cat, "folds", item, compute, force=True)
    assert not hit and len(calls) == 3


def _item(rows: int, tag: str = "a") -> Item:
    return Item({"k": 5}, ("test", tag), {"rows": rows, "config": {"tag": tag}})


def test_get_or_compute_many_computes_only_what_is_missing_in_one_batch(tmp_path):
    """Cached items are read; the rest go to compute as one batch (indices in order) and
    are written as they arrive; results come back in the items' order."""
    cat = Catalog(tmp_path)
    items = [_item(2, t) for t in "abcd"]

    def frame(i):
        return pd.DataFrame({"x": [i, i]})

    get_or_compute(cat, "folds", items[1], lambda: frame(1))
    batches, seen = [], []

    def compute(todo):
        batches.append(list(todo))
        return (frame(i) for i in todo)

    out = get_or_compute_many(cat, "folds", items, compute,
                              on_result=lambda i, obj, hit, s: seen.append((i, hit)))
    assert batches == [[0, 2, 3]]
    assert [df["x"].iloc[0] for df, _ in out] == [0, 1, 2, 3]
    assert [hit for _, hit in out] == [False, True, False, False]
    assert sorted(seen) == [(0, False), (1, True), (2, False), (3, False)]
    again = get_or_compute_many(cat, "folds", items, lambda todo: batches.append(todo) or [])
    assert all(hit for _, hit in again) and len(batches) == 1


def test_every_declared_kind_names_its_folder_key_and_io():
    for kind in KINDS.values():
        assert kind.stage and kind.key
        assert "{key}" in kind.template or "{folder}" in kind.template  # folder: <model>-<key>
        assert callable(_load(kind.reader)) and callable(_load(kind.writer))
        if kind.on_lock is not None:
            assert callable(_load(kind.on_lock))


def test_hash_key_is_stable_and_sensitive():
    assert hash_key("a", {"x": 1, "y": 2}) == hash_key("a", {"y": 2, "x": 1})
    assert hash_key("a", 1) != hash_key("a", 2)


def test_frame_hash_changes_with_content_only():
    a = pd.DataFrame({"id": ["1", "2"], "prompt": [["q"], ["r"]]})
    b = pd.DataFrame({"id": ["1", "2"], "prompt": [["q"], ["r"]]})
    c = pd.DataFrame({"id": ["1", "2"], "prompt": [["q"], ["R"]]})
    assert frame_hash(a) == frame_hash(b) != frame_hash(c)


def _hold_lock(path, queue):
    with file_lock(path):
        queue.put(os.getpid())
        queue.put("released")


def test_file_lock_excludes_other_processes(tmp_path):
    lock = tmp_path / "x.lock"
    queue = mp.get_context("fork").Queue()
    with file_lock(lock):
        proc = mp.get_context("fork").Process(target=_hold_lock, args=(lock, queue))
        proc.start()
        proc.join(0.5)
        assert proc.is_alive() and queue.empty()  # blocked while we hold it
    proc.join(5)
    assert queue.get(timeout=5) == proc.pid


def test_a_cache_file_whose_bytes_differ_from_its_provenance_is_recomputed(tmp_path, caplog):
    """A valid Parquet file with a renamed column (what a flipped bit in the footer can do,
    page checksums passing) no longer matches the SHA-256 in its provenance."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.catalog import read_parquet_checked

    cat = Catalog(tmp_path)
    frame = pd.DataFrame({"id": ["1", "2"], "length__a_chars": [1.0, 2.0]})
    _, _, path = get_or_compute(cat, "folds", _item(2), lambda: frame)
    assert read_parquet_checked(path) is not None
    renamed = pa.table({"id": ["1", "2"], "length__a_charz": [1.0, 2.0]})
    pq.write_table(renamed, path, write_page_checksum=True)  # valid file, other bytes
    assert read_parquet_checked(path) is None
    assert "SHA-256" in caplog.text and "recomputed" in caplog.text
    calls = []
    again, hit, _ = get_or_compute(cat, "folds", _item(2), lambda: calls.append(1) or frame)
    assert not hit and calls == [1] and list(again.columns) == list(frame.columns)
    assert read_parquet_checked(path) is not None  # the recomputed file has a fresh SHA-256
