"""The default engine: every unit runs in this process, one after another (no
dependency, today's behaviour)."""
from __future__ import annotations

from typing import Callable, Iterable, Iterator

from pipeline.executors.base import Executor, Unit, name_failure, unit_threads


class LocalExecutor(Executor):
    """Runs units in the calling process, in order, as they are drawn from ``units``."""

    name = "local"

    def __init__(self, **_ignored):
        pass

    def map(self, fn: Callable, units: Iterable[Unit]) -> Iterator:
        for unit in units:
            try:
                with unit_threads(unit.cpus):
                    result = fn(*unit.args)
            except Exception as exc:
                raise name_failure(exc, unit.name)
            yield result

    def map_stateful(self, factory: Callable[[], Callable], units: Iterable[Unit], *,
                     workers: int = 1, cpus: float = 1.0, gpus: float = 0.0) -> Iterator:
        obj = None
        for unit in units:
            if obj is None:  # built only when there is work (a warm cache loads no model)
                obj = factory()
            try:
                with unit_threads(cpus):
                    result = obj(*unit.args)
            except Exception as exc:
                raise name_failure(exc, unit.name)
            yield result


EXECUTOR = LocalExecutor
