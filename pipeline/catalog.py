"""The one module that knows where artifacts live, and how to write them safely.

Layout under the workdir (default ``data/``)::

    raw/                 what the user brings (never written, except raw/demo/ by --demo)
    cache/<stage>/...    content-addressed artifacts, each with a .json provenance file
    runs/<experiment>/   submission, oof, metrics, report, fitted models

Every write goes to a temporary file in the same folder and is then ``os.replace``-d into
place, so a crash never leaves half a file under the final name.
"""
from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import re
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

log = logging.getLogger(__name__)

CODE_VERSION = "0.1.0"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


# mkstemp creates files 0600; finished artifacts get the usual 0666 & ~umask.
_FILE_MODE = 0o666 & ~_umask()


class Catalog:
    """Paths of everything the pipeline reads and writes under one workdir."""

    def __init__(self, workdir: str | Path):
        self.workdir = Path(workdir)

    @property
    def raw_dir(self) -> Path:
        return self.workdir / "raw"

    @property
    def demo_dir(self) -> Path:
        return self.raw_dir / "demo"

    @property
    def cache_dir(self) -> Path:
        return self.workdir / "cache"

    def stage_cache(self, stage: str) -> Path:
        """Cache folder of one stage (``cache/<stage>``), created on demand."""
        path = self.cache_dir / stage
        path.mkdir(parents=True, exist_ok=True)
        return path

    @property
    def runs_dir(self) -> Path:
        return self.workdir / "runs"

    def run_dir(self, experiment: str) -> Path:
        """Output folder of one experiment (``runs/<experiment>``), created on demand.
        ``experiment`` must be a safe name (pipeline.config.SAFE_NAME): never a path."""
        from pipeline.config import check_name

        path = self.runs_dir / check_name(experiment, "experiment name")
        path.mkdir(parents=True, exist_ok=True)
        return path


def slug(text: str, max_len: int = 40) -> str:
    """File-name-safe short form of a model name or path ("sentence-transformers/x" -> "x")."""
    base = text.rstrip("/").split("/")[-1] or "model"
    safe = "".join(c if c.isalnum() or c in "-_." else "-" for c in base)
    return safe[:max_len]


def hash_key(*parts: Any, length: int = 16) -> str:
    """Stable hex key of JSON-serialisable parts (dict keys sorted)."""
    blob = json.dumps(parts, sort_keys=True, default=str, ensure_ascii=True).encode()
    return hashlib.sha256(blob).hexdigest()[:length]


def hash_texts(texts: "pd.Series | list[str]") -> list[str]:
    """sha1 hex digest of each text (UTF-8); the content half of an embedding key."""
    return [hashlib.sha1(t.encode("utf-8", "surrogatepass")).hexdigest() for t in texts]


def frame_hash(df: pd.DataFrame) -> str:
    """Content hash of a frame: columns, dtypes-insensitive values, row order included."""
    h = hashlib.sha256()
    h.update(json.dumps(list(map(str, df.columns))).encode())
    hashed = pd.util.hash_pandas_object(
        df.map(lambda v: json.dumps(v, ensure_ascii=True) if isinstance(v, (list, tuple)) else v)
        if len(df) else df,
        index=False,
    )
    h.update(hashed.to_numpy().tobytes())
    return h.hexdigest()[:16]


# Temporary files of atomic writes: ".<name>.<host>~<writer pid>-<random>.tmp" beside the
# target (older names lack "<host>~" and are taken as this host's). The host is there
# because a workdir on a shared filesystem is written from several machines: a pid
# means something only on the machine that made it.
_TEMP_NAME = re.compile(r"^\..+\.(?:([A-Za-z0-9_-]+)~)?(\d+)-[^.]+\.tmp$")
# A temporary file without a readable pid is swept once it is this old (seconds).
_TEMP_MAX_AGE = 24 * 3600
# Set inside an executor's worker while it runs a unit: units return arrays and the
# driver alone writes caches (pipeline.executors.base), so a write there is a bug.
_WORKER_UNIT: str | None = None


def host_tag() -> str:
    """This machine's name as it appears in temporary file names (letters, digits, - _)."""
    import socket

    return re.sub(r"[^A-Za-z0-9_-]", "_", socket.gethostname() or "host")[:40] or "host"


@contextlib.contextmanager
def worker_unit(name: str) -> Iterator[None]:
    """Mark the code inside as a unit running in an executor's worker: any atomic write
    raises WorkerWriteError (the single-writer rule)."""
    global _WORKER_UNIT
    before, _WORKER_UNIT = _WORKER_UNIT, name
    try:
        yield
    finally:
        _WORKER_UNIT = before


@contextlib.contextmanager
def unit_may_write() -> Iterator[None]:
    """Lift the single-writer guard for the code inside: a unit's own large output that
    is never sent back (a fine-tune fold's weights), written atomically as always."""
    global _WORKER_UNIT
    before, _WORKER_UNIT = _WORKER_UNIT, None
    try:
        yield
    finally:
        _WORKER_UNIT = before


class WorkerWriteError(RuntimeError):
    """A unit running in a worker tried to write into the workdir."""


def check_driver_write(path: str | Path) -> None:
    """Raise WorkerWriteError when called inside an executor's unit (single-writer rule)."""
    if _WORKER_UNIT is not None:
        raise WorkerWriteError(f"unit {_WORKER_UNIT!r} tried to write {path} from a worker; "
                               "units return arrays and the driver writes caches")


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; on success it is renamed onto ``path``.

    The temporary name holds the writer's host and pid, so
    :func:`sweep_stale_temp_files` can tell the leftovers of a killed process from a live
    writer's file. Raises WorkerWriteError inside an executor's worker.
    """
    check_driver_write(path)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{host_tag()}~{os.getpid()}-",
                               suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        with open(tmp_path, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp_path, _FILE_MODE)
        os.replace(tmp_path, path)
    finally:
        if tmp_path.exists():
            tmp_path.unlink()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # exists under another user (or not a pid we can judge): keep
    return True


def sweep_stale_temp_files(root: str | Path) -> list[Path]:
    """Delete temporary files of atomic writes under ``root`` whose writer is gone.

    A file's writer is gone when its name holds this host (or no host: older names) and
    a pid that is no longer a running process here (a run killed mid-write). Files of
    other hosts are left to those hosts' own runs (their pids mean nothing here); files
    without a pid are swept after a day. Returns the deleted paths. Never touches a live
    writer's file or any other file.
    """
    root = Path(root)
    removed: list[Path] = []
    if not root.is_dir():
        return removed
    now, here = time.time(), host_tag()
    for tmp in root.rglob(".*.tmp"):
        m = _TEMP_NAME.match(tmp.name)
        try:
            if m and m.group(1) not in (None, here):
                continue
            stale = (not _pid_alive(int(m.group(2))) if m
                     else now - tmp.stat().st_mtime > _TEMP_MAX_AGE)
            if stale and tmp.is_file():
                tmp.unlink()
                removed.append(tmp)
        except FileNotFoundError:
            continue  # its writer finished (renamed or removed it) meanwhile
    return removed


def write_bytes_atomic(path: str | Path, data: bytes) -> None:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)


def write_text_atomic(path: str | Path, text: str) -> None:
    write_bytes_atomic(path, text.encode("utf-8"))


def write_json_atomic(path: str | Path, obj: Any) -> None:
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_parquet_atomic(path: str | Path, table: "pd.DataFrame | pa.Table") -> None:
    """Write a frame or Arrow table to Parquet atomically (index dropped)."""
    if isinstance(table, pd.DataFrame):
        table = pa.Table.from_pandas(table, preserve_index=False)
    with atomic_path(path) as tmp:
        # Page CRCs: read_parquet_checked verifies them, so bit rot is detected, not read.
        pq.write_table(table, tmp, write_page_checksum=True)


def write_csv_atomic(path: str | Path, df: pd.DataFrame) -> None:
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text(encoding="utf-8"))


def provenance_path(artifact: str | Path) -> Path:
    """The JSON beside an artifact: ``x.parquet`` -> ``x.parquet.json``."""
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + ".json")


def file_sha256(path: str | Path) -> str:
    """SHA-256 of a file's bytes (hex)."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def write_provenance(artifact: str | Path, config: Any, rows: int | None = None, **extra: Any) -> None:
    """Record what made an artifact: its config, the code version, row count, time, and
    the SHA-256 of the artifact's bytes (checked by :func:`read_parquet_checked`)."""
    artifact = Path(artifact)
    write_json_atomic(
        provenance_path(artifact),
        {
            "artifact": artifact.name,
            "config": config,
            "code_version": CODE_VERSION,
            "rows": rows,
            "written_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
            **({"sha256": file_sha256(artifact)} if artifact.is_file() else {}),
            **extra,
        },
    )


def _sha_mismatch(path: Path) -> str | None:
    """Why ``path`` does not match the SHA-256 in its provenance, or None (it matches, or
    no provenance / no recorded SHA-256 to check against)."""
    prov = provenance_path(path)
    if not prov.is_file():
        return None
    try:
        expected = read_json(prov).get("sha256")
    except (OSError, ValueError, AttributeError):
        return None
    if not expected:
        return None
    actual = file_sha256(path)
    return None if actual == expected else f"SHA-256 {actual[:12]}... differs from {expected[:12]}... in {prov.name}"


def read_parquet_checked(path: str | Path, expected_rows: int | None = None,
                         columns: list[str] | None = None) -> pd.DataFrame | None:
    """Read a cached Parquet file; None (never an exception) if missing, corrupt or short.

    A cache file whose bytes differ from the SHA-256 in its provenance, that fails to parse
    or its page checksums (write_parquet_atomic writes them), lacks a column or has the
    wrong row count is logged as a warning and treated as absent so the caller recomputes it.
    """
    path = Path(path)
    if not path.is_file():
        return None
    mismatch = _sha_mismatch(path)  # catches what page checksums miss (e.g. the footer)
    if mismatch:
        log.warning("cache file %s is damaged (%s): ignoring it, it will be recomputed", path, mismatch)
        return None
    try:
        df = pq.read_table(path, page_checksum_verification=True).to_pandas()
    except Exception as exc:  # noqa: BLE001 - any read failure means "recompute"
        log.warning("cache file %s is unreadable (%s: %s): ignoring it, it will be recomputed",
                    path, type(exc).__name__, exc)
        return None
    if expected_rows is not None and len(df) != expected_rows:
        log.warning("cache file %s has %d rows, expected %d: ignoring it, it will be recomputed",
                    path, len(df), expected_rows)
        return None
    if columns is not None and any(c not in df.columns for c in columns):
        log.warning("cache file %s lacks column(s) %s: ignoring it, it will be recomputed", path,
                    [c for c in columns if c not in df.columns])
        return None
    return df


@contextlib.contextmanager
def file_lock(path: str | Path) -> Iterator[None]:
    """Exclusive advisory lock (flock) on ``path``; blocks until it is free."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def exchange_dirs(a: Path, b: Path) -> bool:
    """Swap two folders in one atomic step (Linux renameat2 RENAME_EXCHANGE); False where
    the system cannot (the caller then renames twice)."""
    import ctypes
    import ctypes.util

    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        renameat2 = libc.renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def swap_in(staging: Path, target: Path) -> None:
    """Make ``staging`` the folder ``target``: entries of ``target`` that ``staging`` lacks
    are moved over first (another stage's files stay), then the two are exchanged in one
    step where the system allows it, and the old folder is deleted."""
    import shutil

    if target.exists():
        for entry in target.iterdir():
            if not (staging / entry.name).exists() and not entry.name.startswith(".staging-"):
                os.replace(entry, staging / entry.name)
        if exchange_dirs(staging, target):
            shutil.rmtree(staging, ignore_errors=True)  # now the old folder
            return
        old = target.with_name(f".{target.name}.old-{os.getpid()}")
        os.replace(target, old)
        os.replace(staging, target)
        shutil.rmtree(old, ignore_errors=True)
        return
    os.replace(staging, target)


class RunBusy(RuntimeError):
    """Another process runs the same experiment and the caller asked not to wait."""


@contextlib.contextmanager
def run_lock(catalog: "Catalog", experiment: str, wait: bool = True) -> Iterator[None]:
    """One run of ``experiment`` at a time in a workdir (flock on runs/.<experiment>.lock).

    A second run waits for the first (saying so in the log), or raises RunBusy when
    ``wait`` is false. Different experiments never wait for each other.
    """
    from pipeline.config import check_name

    path = catalog.runs_dir / f".{check_name(experiment, 'experiment name')}.lock"
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a") as fh:
        try:
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            if not wait:
                raise RunBusy(f"another run of experiment {experiment!r} is in progress in "
                              f"{catalog.workdir} (lock {path}); wait for it, or run without "
                              "--no-wait to queue behind it") from None
            log.info("another run of experiment %r is in progress (lock %s); waiting for it "
                     "to finish", experiment, path)
            t0 = time.perf_counter()
            fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
            log.info("the other run finished after %.1fs; going on", time.perf_counter() - t0)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
