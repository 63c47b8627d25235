"""Helpers of tests/test_faults.py: tiny local models, the pipeline as a real subprocess,
killing it part-way, snapshots of files, corrupting caches, and reading artifacts back."""
from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from tests.conftest import save_tiny_bert

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------- models


def make_tiny_models(folder: Path) -> tuple[str, str]:
    """(sentence-transformer folder, BERT folder) of a seeded 2-layer, 32-dim BERT with the
    bundled MiniLM tokenizer: loads in milliseconds, so the fault tests stay fast; any
    local model path is a supported model setting."""
    from sentence_transformers import SentenceTransformer
    from sentence_transformers.sentence_transformer import modules as st_models

    bert = save_tiny_bert(folder / "tiny-bert")
    st_dir = folder / "tiny-st"
    word = st_models.Transformer(bert, max_seq_length=64)
    pool = st_models.Pooling(word.get_embedding_dimension(), pooling_mode="mean")
    SentenceTransformer(modules=[word, pool, st_models.Normalize()], device="cpu").save(str(st_dir))
    return str(st_dir), bert


# ----------------------------------------------------------------------------- running


def cli_args(config: Path, data: Path, workdir: Path, stage: str, *extra: str) -> list[str]:
    """Arguments of run_pipeline.py for ``stage`` on data/train.csv + data/test.csv."""
    return ["--stage", stage, "--config", str(config), "--train", str(data / "train.csv"),
            "--test", str(data / "test.csv"), "--workdir", str(workdir), "--device", "cpu",
            *extra]


def start(args: list[str], log_path: Path) -> subprocess.Popen:
    """``python run_pipeline.py *args`` as a real subprocess, output to ``log_path``."""
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
           "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    fh = open(log_path, "wb")
    proc = subprocess.Popen([sys.executable, str(REPO / "run_pipeline.py"), *args], cwd=REPO,
                            stdout=fh, stderr=subprocess.STDOUT, env=env)
    proc._log_file = fh  # type: ignore[attr-defined]  # closed in finish()
    proc._log_path = log_path  # type: ignore[attr-defined]
    return proc


def finish(proc: subprocess.Popen, timeout: float = 300) -> str:
    """Wait for ``proc``; returns its log. Raises (with the log) unless it exited 0."""
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    proc._log_file.close()  # type: ignore[attr-defined]
    log = proc._log_path.read_text(errors="replace")  # type: ignore[attr-defined]
    assert proc.returncode == 0, f"run_pipeline.py exited {proc.returncode}:\n{log[-6000:]}"
    return log


def kill_when(proc: subprocess.Popen, ready: Callable[[], bool], timeout: float = 300,
              poll: float = 0.002) -> str:
    """SIGKILL ``proc`` as soon as ``ready()`` is true; returns its log.

    Fails if the run ended before the kill point (it could not be interrupted), or did not
    reach it within ``timeout`` seconds.
    """
    deadline = time.monotonic() + timeout
    killed = False
    while time.monotonic() < deadline:
        if ready():
            os.kill(proc.pid, signal.SIGKILL)
            killed = True
            break
        if proc.poll() is not None:
            break
        time.sleep(poll)
    if not killed and proc.poll() is None:
        proc.kill()
    proc.wait()
    proc._log_file.close()  # type: ignore[attr-defined]
    log = proc._log_path.read_text(errors="replace")  # type: ignore[attr-defined]
    assert killed, f"the run never reached the kill point (rc {proc.returncode}):\n{log[-6000:]}"
    assert proc.returncode == -signal.SIGKILL, (
        f"the run finished (rc {proc.returncode}) before SIGKILL landed; nothing was "
        f"interrupted:\n{log[-3000:]}")
    return log


def run_inprocess(args: list[str]) -> None:
    """The same command line through pipeline.cli.main in this process (shares loaded models)."""
    from pipeline.cli import main

    rc = main(args)
    assert rc == 0, f"run_pipeline.py {' '.join(args)} exited {rc}"


# ----------------------------------------------------------------------------- files


def snapshot(root: Path, pattern: str = "**/*") -> dict[str, tuple[int, int, int]]:
    """{path relative to root: (inode, mtime_ns, size)} of the files matching ``pattern``."""
    out = {}
    for p in sorted(root.glob(pattern)):
        if p.is_file():
            st = p.stat()
            out[str(p.relative_to(root))] = (st.st_ino, st.st_mtime_ns, st.st_size)
    return out


def copy_workdir(src: Path, dst: Path, parts: tuple[str, ...] = ("cache", "runs")) -> Path:
    """Copy the given top-level folders of a workdir (a warm start for a test)."""
    dst.mkdir(parents=True, exist_ok=True)
    for part in parts:
        if (src / part).exists():
            shutil.copytree(src / part, dst / part)
    return dst


def temp_files(root: Path) -> list[str]:
    """Leftover temporary files of atomic writes under ``root``."""
    return sorted(str(p.relative_to(root)) for p in root.rglob(".*.tmp"))


def truncate(path: Path) -> None:
    """Cut a file to half its size (a crash of a non-atomic writer, a full disk)."""
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])


def flip_bytes(path: Path, n: int = 16, at: int | None = None) -> None:
    """Invert ``n`` bytes at offset ``at`` (default: the middle) - bit rot, same size."""
    data = bytearray(path.read_bytes())
    start = len(data) // 2 if at is None else at
    for i in range(start, min(start + n, len(data))):
        data[i] ^= 0xFF
    path.write_bytes(bytes(data))


def flip_parquet_values(path: Path, column: int | None = None, n: int = 8) -> None:
    """Invert ``n`` bytes inside the encoded values of one column chunk of a Parquet file.

    (The middle of a wide frame's file is often its footer metadata; this aims at the data
    pages themselves, the end of a column chunk: page bodies, not headers.)
    """
    meta = pq.ParquetFile(path).metadata.row_group(0)
    chunk = meta.column(meta.num_columns // 2 if column is None else column)
    end = chunk.data_page_offset + chunk.total_compressed_size
    flip_bytes(path, n=n, at=end - 2 * n)


# ----------------------------------------------------------------------------- artifacts


def chunk_files(workdir: Path) -> list[Path]:
    return sorted((workdir / "cache" / "embed").glob("*/chunk-*.parquet"))


def embeddings(workdir: Path) -> dict[str, np.ndarray]:
    """Every cached embedding of a workdir: text hash -> float32 vector. Fails on a text
    stored twice (two writers encoding the same text)."""
    out: dict[str, np.ndarray] = {}
    for path in chunk_files(workdir):
        table = pq.read_table(path)
        vectors = np.stack(table.column("vector").to_numpy(zero_copy_only=False))
        for h, v in zip(table.column("text_hash").to_pylist(), vectors):
            assert h not in out, f"text {h} is stored twice (second copy in {path.name})"
            out[h] = v
    return out


def feature_frames(workdir: Path) -> dict[str, pd.DataFrame]:
    """Every cached feature file of a workdir: file name -> frame."""
    return {p.name: pd.read_parquet(p)
            for p in sorted((workdir / "cache" / "features").glob("*.parquet"))}


def assert_same_embeddings(got: dict[str, np.ndarray], want: dict[str, np.ndarray],
                           atol: float = 0.0) -> None:
    """The same texts with the same vectors (bit for bit unless ``atol``)."""
    assert set(got) == set(want), (f"{len(set(want) - set(got))} text(s) missing, "
                                   f"{len(set(got) - set(want))} extra")
    for h, v in want.items():
        if atol:
            np.testing.assert_allclose(got[h], v, rtol=0, atol=atol, err_msg=f"text hash {h}")
        else:
            np.testing.assert_array_equal(got[h], v, err_msg=f"text hash {h}")


def assert_same_frames(got: dict[str, pd.DataFrame], want: dict[str, pd.DataFrame]) -> None:
    assert sorted(got) == sorted(want)
    for name, frame in want.items():
        pd.testing.assert_frame_equal(got[name], frame, check_exact=True, obj=name)


def assert_same_run(got: Path, want: Path) -> None:
    """submission.csv byte-identical and oof.parquet exactly equal in two run folders."""
    assert (got / "submission.csv").read_bytes() == (want / "submission.csv").read_bytes()
    pd.testing.assert_frame_equal(pd.read_parquet(got / "oof.parquet"),
                                  pd.read_parquet(want / "oof.parquet"), check_exact=True)


def flock_waiters(path: Path) -> int:
    """How many processes are blocked waiting for an flock on ``path`` (from /proc/locks)."""
    inode = path.stat().st_ino
    waiting = 0
    # A waiter's line: "1: -> FLOCK  ADVISORY  WRITE <pid> <major>:<minor>:<inode> 0 EOF".
    for line in Path("/proc/locks").read_text().splitlines():
        fields = line.split()
        if "->" in fields and any(re.fullmatch(rf"\w+:\w+:{inode}", f) for f in fields):
            waiting += 1
    return waiting


def wait_for_waiters(lock: Path, procs: list, timeout: float = 120) -> None:
    """Wait until every process of ``procs`` is blocked on the flock of ``lock``."""
    deadline = time.monotonic() + timeout
    while flock_waiters(lock) < len(procs) and time.monotonic() < deadline:
        assert all(p.poll() is None for p in procs), "a run ended early"
        time.sleep(0.01)
    assert flock_waiters(lock) == len(procs)


def computed_texts(log: str) -> int:
    """Texts a run's log says it embedded (the embed stage's and features' own lines)."""
    return sum(int(m) for m in re.findall(r"unique(?: texts)?: \d+ cached, (\d+) computed", log))
