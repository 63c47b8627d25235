"""The executor seam: every heavy loop hands its independent units to one ``map`` call.

A unit is one call of a module-level function with its arguments (``Unit``), plus what
it asks of a machine (CPUs, GPUs) and a name for messages ("stack lgbm_all fold 3
seed 0"). Units are pure: they get every input (seeds included) as arguments and return
arrays; they never write a cache file (the driver, the process that called ``map``, is
the only writer, so a cache never depends on where a unit ran). Results come back in
the order of the units, so the driver's sums and writes do not depend on timing either.

Executors are looked up by name: ``engine: <name>`` loads ``pipeline.executors.<name>``
and its ``EXECUTOR`` class, so a new engine is one new file. ``local`` (in-process, the
default, no dependency) and ``ray`` exist.
"""
from __future__ import annotations

import importlib
import pkgutil
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterable, Iterator


@dataclass(frozen=True)
class Unit:
    """One independent call: ``fn(*args)`` of the map it is given to."""

    name: str               # for progress, errors and "where did it run"
    args: tuple = ()
    cpus: float = 1.0       # CPUs the call keeps busy (LightGBM threads, say); BLAS gets as many threads
    gpus: float = 0.0       # GPUs it holds (a fine-tune fold: 1)


@contextmanager
def unit_threads(cpus: float):
    """BLAS and torch limited to the unit's ``cpus`` threads, wherever the unit runs: a
    float sum split over another thread count differs in its last bits (which a C search
    or a blend weight can turn into a visible difference), and a unit using more threads
    than it was given would crowd the node's other units.

    torch's own pool is set only when torch is already imported: a fresh Ray worker's
    torch starts from the OMP_NUM_THREADS Ray sets for the task, but a reused worker's
    keeps the count of the task that first imported it (one thread after a 1-CPU unit,
    so a 2-CPU fine-tune fold ran on one thread and its logits differed in the last bit
    from the in-process run's). The previous count is restored afterwards."""
    import sys

    from threadpoolctl import threadpool_limits

    n = max(1, int(cpus))
    torch = sys.modules.get("torch")
    before = torch.get_num_threads() if torch is not None else None
    if torch is not None and before != n:
        torch.set_num_threads(n)
    try:
        with threadpool_limits(limits=n, user_api="blas"):
            yield
    finally:
        if torch is not None and torch.get_num_threads() != before:
            torch.set_num_threads(before)


class UnitFailed(RuntimeError):
    """A unit that could not be run to the end (its worker kept dying, say)."""

    def __init__(self, unit: str, reason: str):
        super().__init__(f"unit {unit!r} failed: {reason}")
        self.unit = unit


def name_failure(exc: BaseException, unit: str) -> BaseException:
    """``exc`` with a note naming the unit it came from (its type is kept, so callers
    catch what they always caught)."""
    note = f"(raised by unit {unit!r})"
    if hasattr(exc, "add_note") and note not in getattr(exc, "__notes__", ()):
        exc.add_note(note)
    return exc


class Executor:
    """In-order map over units. Subclasses override ``map`` and ``map_stateful``."""

    name = "base"

    def share(self, obj: Any) -> Any:
        """A handle to ``obj`` for use as a top-level unit argument: the object itself
        in process, one stored copy for every unit elsewhere (a fold's matrices given to
        each seed's fit)."""
        return obj

    def map(self, fn: Callable, units: Iterable[Unit]) -> Iterator:
        """Results of ``fn(*unit.args)`` for each unit, in the units' order. ``units`` is
        consumed lazily, so the caller may build the next unit's inputs while earlier
        ones run. An exception of a unit is raised with a note naming the unit."""
        raise NotImplementedError

    def map_stateful(self, factory: Callable[[], Callable], units: Iterable[Unit], *,
                     workers: int = 1, cpus: float = 1.0, gpus: float = 0.0) -> Iterator:
        """Like ``map`` for work that needs an expensive object (a loaded model):
        ``factory()`` is called once per worker and each unit runs as ``obj(*args)``;
        at most ``workers`` workers, each holding ``cpus`` and ``gpus``."""
        raise NotImplementedError

    def describe(self) -> dict:
        """What the run log and report say about where units ran."""
        return {"engine": self.name}

    def close(self) -> None:
        """Release what the executor started (a local Ray instance, say)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def known_engines() -> list[str]:
    """Names of the modules of this package that define an executor."""
    import pipeline.executors as package

    return sorted(m.name for m in pkgutil.iter_modules(package.__path__)
                  if m.name not in ("base",) and not m.name.startswith("_"))


def executor_class(name: str) -> type[Executor]:
    """The class ``pipeline.executors.<name>.EXECUTOR``; ValueError listing the known
    engines."""
    if name not in known_engines():
        raise ValueError(f"unknown engine {name!r}; known engines: {known_engines()}")
    return importlib.import_module(f"pipeline.executors.{name}").EXECUTOR


def make_executor(name: str, **options) -> Executor:
    """An executor of engine ``name`` with its options (e.g. ray: address, num_cpus)."""
    return executor_class(name)(**options)
