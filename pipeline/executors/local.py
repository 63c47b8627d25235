"""The default engine: every unit runs in this process, one after another (no
dependency). The next unit is drawn from ``units`` on a helper thread while the current
one runs (``prefetch``, on by default): drawing a unit is where the caller builds its
inputs (a fold's TF-IDF matrices), so that work overlaps the previous fit on a second
core (vicuna80 stack stage 187 s -> 156-164 s on 2 cores). Units still run one at a time
and in order, so the results are those of the plain loop."""
from __future__ import annotations

from typing import Callable, Iterable, Iterator

from pipeline.executors.base import Executor, Unit, name_failure, unit_threads


class LocalExecutor(Executor):
    """Runs units in the calling process, in order, as they are drawn from ``units``."""

    name = "local"

    def __init__(self, prefetch: bool = True, **_ignored):
        self.prefetch = bool(prefetch)

    def _drawn(self, units: Iterable[Unit]) -> Iterator[Unit]:
        """``units``, the next one drawn on a helper thread while the caller uses this one."""
        if not self.prefetch:
            yield from units
            return
        from concurrent.futures import ThreadPoolExecutor

        it = iter(units)
        with ThreadPoolExecutor(1, thread_name_prefix="prefstack-draw") as pool:
            pending = pool.submit(next, it, None)
            while True:
                unit = pending.result()
                if unit is None:
                    return
                pending = pool.submit(next, it, None)
                yield unit

    def map(self, fn: Callable, units: Iterable[Unit]) -> Iterator:
        for unit in self._drawn(units):
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
