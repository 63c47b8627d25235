"""Executors (pipeline.executors): the same contract in process and on Ray; the stages'
results do not depend on the engine; the driver is the only writer; a killed worker's
unit is retried.

The Ray tests share one local Ray instance (2 CPUs) for the whole test session.
"""
from __future__ import annotations

import os
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.catalog import WorkerWriteError, write_bytes_atomic
from pipeline.executors.base import Unit, UnitFailed, known_engines, make_executor

ray = pytest.importorskip("ray")


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray instance (2 CPUs) for every Ray test of the session."""
    ex = make_executor("ray", num_cpus=2)
    assert ex._started
    yield ex
    ex.close()


@pytest.fixture(params=["local", "local-plain", "ray"])
def executor(request):
    if request.param == "local-plain":  # no prefetching of the next unit
        with make_executor("local", prefetch=False) as ex:
            yield ex
        return
    if request.param == "ray":
        request.getfixturevalue("ray_cluster")
        # Joins the running instance (and so does not stop it when closed).
        ex = make_executor("ray")
        assert not ex._started
    else:
        ex = make_executor("local")
    with ex:
        yield ex


def _noisy_square(x: int, seed: int) -> float:
    """Sleeps so later units can finish first; the result depends on the unit's seed only."""
    time.sleep(0.05 * (3 - x % 3))
    return x * x + float(np.random.default_rng(seed).normal())


def _fails_on(x: int, bad: int) -> int:
    if x == bad:
        raise KeyError(f"no row {x}")
    return x


class _Counter:
    """A stateful worker: counts the calls it served (one instance per worker)."""

    made = 0

    def __init__(self):
        type(self).made += 1
        self.calls = 0
        self.pid = os.getpid()

    def __call__(self, x):
        self.calls += 1
        return x + 1, self.pid


def test_engines_are_found_by_module_name():
    assert {"local", "ray"} <= set(known_engines())
    with pytest.raises(ValueError, match="unknown engine 'spark'.*local"):
        make_executor("spark")


def test_results_come_back_in_unit_order_with_the_units_own_seeds(executor):
    units = [Unit(f"u{i}", (i, 100 + i)) for i in range(7)]
    got = list(executor.map(_noisy_square, units))
    assert got == [_noisy_square(i, 100 + i) for i in range(7)]


def test_a_units_exception_keeps_its_type_and_names_the_unit(executor):
    units = [Unit(f"stack m fold {i} seed 0", (i, 2)) for i in range(4)]
    with pytest.raises(KeyError, match="no row 2") as info:
        list(executor.map(_fails_on, units))
    assert "(raised by unit 'stack m fold 2 seed 0')" in getattr(info.value, "__notes__", [])


def test_units_are_drawn_lazily_and_shared_objects_reach_them(executor):
    drawn = []

    def units():
        for i in range(5):
            drawn.append(i)
            yield Unit(f"u{i}", (executor.share(np.arange(i + 1)),))

    it = executor.map(np.sum, units())
    assert drawn == [] or executor.name != "local"  # nothing runs before it is asked for
    assert next(it) == 0
    assert len(drawn) <= 2 or executor.name != "local"  # at most the next one is drawn
    assert [0, *it] == [int(np.arange(i + 1).sum()) for i in range(5)]


def test_stateful_units_build_their_object_once_per_worker(executor):
    out = list(executor.map_stateful(_Counter, [Unit(f"c{i}", (i,)) for i in range(6)], workers=2))
    assert [v for v, _ in out] == [1, 2, 3, 4, 5, 6]
    assert len({pid for _, pid in out}) <= 2
    if executor.name == "local":
        before = _Counter.made
        assert list(executor.map_stateful(_Counter, [])) == []
        assert _Counter.made == before  # no units: no model loaded


def _blas_threads() -> int:
    from threadpoolctl import threadpool_info

    return max(i["num_threads"] for i in threadpool_info() if i["user_api"] == "blas")


def test_a_unit_computes_with_the_blas_threads_it_asked_for(executor):
    """Wherever it runs (Ray gives a 1-CPU task one thread, this process has more), so its
    floats do not depend on the node."""
    units = [Unit("one", (), cpus=1), Unit("two", (), cpus=2)]
    assert list(executor.map(_blas_threads, units)) == [1, 2]


def _torch_threads() -> int:
    import torch

    return torch.get_num_threads()


def test_a_unit_computes_with_the_torch_threads_it_asked_for(executor):
    """torch's pool too, in any order: a reused Ray worker's torch keeps the thread count of
    the task that first imported it unless the unit sets it (a 2-CPU fine-tune fold after a
    1-CPU unit ran on one thread, and its logits then differed from the in-process run's in
    the last bit). In this process the count is put back after each unit."""
    import torch

    before = torch.get_num_threads()
    units = [Unit(f"u{i}", (), cpus=c) for i, c in enumerate([1, 2, 1, 2, 2, 1])]
    assert list(executor.map(_torch_threads, units)) == [1, 2, 1, 2, 2, 1]
    assert torch.get_num_threads() == before


_GPU_SCRIPT = """
import os, time
import ray
from pipeline.executors.base import Unit, make_executor

def holds_gpu(x):
    t0 = time.monotonic()
    time.sleep(0.8)
    return tuple(str(g) for g in ray.get_gpu_ids()), os.getpid(), t0, time.monotonic()

class GpuHolder:
    def __init__(self):
        self.gpus = tuple(str(g) for g in ray.get_gpu_ids())
    def __call__(self, x):
        return self.gpus, os.getpid()

ex = make_executor("ray", num_cpus=2, num_gpus=2)
assert ex.gpus == 2
units = [Unit(f"fold {k}", (k,), cpus=1, gpus=1) for k in range(4)]
out = list(ex.map(holds_gpu, units))
assert all(len(g) == 1 and g[0] in {"0", "1"} for g, *_ in out), out
for i, a in enumerate(out):  # units that ran at the same time held different GPUs
    assert all(b[0] != a[0] for b in out[i + 1:] if a[2] < b[3] and b[2] < a[3]), out
assert max(sum(b[2] <= a[2] < b[3] for b in out) for a in out) <= 2, out  # 2 GPUs: 2 at once
assert [u for u, *_ in ex.placements] == [u.name for u in units]
# Actors: at most one per GPU, each holding its own, whatever number of workers asked.
held = list(ex.map_stateful(GpuHolder, [Unit(f"chunk {i}", (i,)) for i in range(6)],
                            workers=4, cpus=1, gpus=1))
by_actor = {pid: g for g, pid in held}
assert 1 <= len(by_actor) <= 2 and all(len(g) == 1 for g in by_actor.values()), held
assert len(set(by_actor.values())) == len(by_actor), held
ex.close()
print("GPU-SCHEDULING-OK")
"""


def test_gpu_units_each_hold_a_gpu_of_their_own():
    """The scheduling side of "K fine-tune folds on K GPUs" and "one embedding actor per
    GPU": a Ray instance of its own (another process: one Ray per process) with 2 GPUs
    declared (``ray.num_gpus``; there are none here, but Ray schedules by them)."""
    import subprocess
    import sys

    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(repo), *filter(None, [os.environ.get("PYTHONPATH")])])}
    env.pop("RAY_ADDRESS", None)
    done = subprocess.run([sys.executable, "-c", _GPU_SCRIPT], cwd=repo, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and "GPU-SCHEDULING-OK" in done.stdout, done.stderr[-3000:]


def _writes_into(path: str) -> None:
    write_bytes_atomic(path, b"x")


def test_a_worker_never_writes_a_cache_file(ray_cluster, tmp_path):
    target = tmp_path / "cache" / "x.bin"
    with pytest.raises(WorkerWriteError, match="'w0' tried to write"):
        list(make_executor("ray").map(_writes_into, [Unit("w0", (str(target),))]))
    assert not target.exists() and not list(tmp_path.rglob("*.tmp"))
    # The driver writes as always.
    list(make_executor("local").map(_writes_into, [Unit("w0", (str(target),))]))
    assert target.read_bytes() == b"x"


def _dies_once(marker: str, x: int) -> int:
    """SIGKILLs its own worker process the first time (a marker file says it did)."""
    if not os.path.exists(marker):
        Path(marker).write_text(str(os.getpid()))
        os.kill(os.getpid(), signal.SIGKILL)
    return x * 10


def _always_dies() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def test_a_killed_worker_is_retried_and_one_that_keeps_dying_stops_the_run(ray_cluster, tmp_path):
    marker = tmp_path / "died"
    ex = make_executor("ray", max_retries=2)
    assert list(ex.map(_dies_once, [Unit(f"k{i}", (str(marker) + str(i), i)) for i in range(3)])) \
        == [0, 10, 20]
    assert all((tmp_path / f"died{i}").exists() for i in range(3))  # each died once, then ran
    with pytest.raises(UnitFailed, match="unit 'doomed' failed: .*after 1 retries"):
        list(make_executor("ray", max_retries=1).map(_always_dies, [Unit("doomed", ())]))


# ---------------------------------------------------------------- stages through Ray


def _demo(workdir: Path, *extra: str) -> None:
    from pipeline.cli import main

    assert main(["--demo", "--workdir", str(workdir), *extra]) == 0


def _outputs(workdir: Path) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    run = workdir / "runs" / "demo"
    files = sorted(str(p.relative_to(workdir / "cache")) for p in (workdir / "cache").rglob("*")
                   if p.is_file() and not p.name.endswith((".lock", ".json")))
    return pd.read_parquet(run / "oof.parquet"), pd.read_csv(run / "submission.csv"), files


def _ray_workers_running_stack_units() -> list[int]:
    """Pids of Ray workers running a stack unit now (a worker's title is "ray::<unit name>")."""
    pids = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmd = (proc / "cmdline").read_bytes()
            except OSError:
                continue
            if cmd.startswith(b"ray::stack "):
                pids.append(int(proc.name))
    return pids


@pytest.mark.slow
def test_the_demo_through_ray_equals_in_process_even_with_a_worker_killed(ray_cluster, tmp_path,
                                                                          caplog):
    """embed, features and stack through --engine ray give the in-process OOF predictions,
    submission and cache files (to 1e-9), also when a worker running a stack unit is
    SIGKILLed mid-run (Ray retries the unit)."""
    caplog.set_level("INFO")
    _demo(tmp_path / "local")
    killed: list[int] = []
    stop = threading.Event()

    def kill_one_worker():
        while not stop.is_set() and not killed:
            for pid in _ray_workers_running_stack_units():
                try:
                    os.kill(pid, signal.SIGKILL)
                    killed.append(pid)
                except ProcessLookupError:
                    pass
                break
            time.sleep(0.02)

    watcher = threading.Thread(target=kill_one_worker, daemon=True)
    watcher.start()
    try:
        _demo(tmp_path / "ray", "--engine", "ray")
    finally:
        stop.set()
        watcher.join()
    assert killed, "no Ray worker was seen running a unit"
    assert "engine ray: " in caplog.text and "unit(s) ran in" in caplog.text
    oof_l, sub_l, files_l = _outputs(tmp_path / "local")
    oof_r, sub_r, files_r = _outputs(tmp_path / "ray")
    assert files_r == files_l
    assert (oof_r["id"] == oof_l["id"]).all() and (sub_r["id"] == sub_l["id"]).all()
    num = [c for c in oof_l.columns if c not in ("id", "fold")]
    assert np.abs(oof_r[num].to_numpy() - oof_l[num].to_numpy()).max() <= 1e-9
    cols = [c for c in sub_l.columns if c != "id"]
    assert np.abs(sub_r[cols].to_numpy() - sub_l[cols].to_numpy()).max() <= 1e-9


def test_finetune_folds_through_ray_equal_in_process(ray_cluster, tmp_path_factory):
    """Each (fold, seed) is a unit; its task writes the fold's weights itself (allowed),
    the driver the logits: the same files and logits as in process."""
    from pipeline import finetune as FT
    from pipeline.catalog import Catalog
    from pipeline.config import Config, apply_overrides
    from pipeline.context import RunContext
    from tests.conftest import make_rows, save_tiny_bert

    model = save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))
    out = {}
    for engine in ("local", "ray"):
        root = tmp_path_factory.mktemp(engine)
        make_rows(12).to_csv(root / "train.csv", index=False)
        make_rows(5, with_labels=False, start_id=100).to_csv(root / "test.csv", index=False)
        cfg = apply_overrides(Config(), {"name": "t", "engine": engine, "stack": {"n_folds": 2},
                                         "finetune": {"model": model, "max_length": 48,
                                                      "batch_size": 4, "epochs": 1.0,
                                                      "seeds": [0, 1], "warmup_ratio": 0.0}})
        ctx = RunContext(config=cfg, catalog=Catalog(root / "work"), train_path=root / "train.csv",
                         test_path=root / "test.csv", device_request="cpu")
        try:
            FT.run_stage(ctx)
        finally:
            ctx.close_executor()
        member = FT.member_for(ctx)
        plan = FT.make_plan(ctx)
        out[engine] = (member, sorted(p.name for k in range(2) for p in plan.fold_dir(k).iterdir()
                                      if not p.name.startswith(".")))
    (m_l, files_l), (m_r, files_r) = out["local"], out["ray"]
    assert files_r == files_l and "seed1.pt" in files_r
    assert (m_r.oof["id"] == m_l.oof["id"]).all()
    assert np.abs(m_r.oof[FT.LOGITS].to_numpy() - m_l.oof[FT.LOGITS].to_numpy()).max() <= 1e-9
    assert np.abs(m_r.test[FT.LOGITS].to_numpy() - m_l.test[FT.LOGITS].to_numpy()).max() <= 1e-9


def test_engine_ray_without_ray_installed_says_how_to_install_it(monkeypatch):
    import sys

    from pipeline.config import ConfigError

    monkeypatch.setitem(sys.modules, "ray", None)  # import ray now fails as if absent
    with pytest.raises(ConfigError, match=r"pip install -e '\.\[ray\]'"):
        make_executor("ray")
