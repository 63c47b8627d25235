"""The Ray engine (``engine: ray``, ``--engine ray``): units run as Ray tasks or actors.

Without an address a local Ray instance is started inside this process (nothing to
install or start beforehand) and stopped at the end of the run; with ``ray.address``,
``--ray-address`` or ``RAY_ADDRESS`` the run joins a running cluster (``ray start
--head`` on one machine, ``ray start --address <head:port>`` on the others). Every
machine then needs the project installed and the workdir at the same path on a shared
filesystem.

- A unit is a task asking for its ``cpus`` and ``gpus``; results come back in the units'
  order, at most ``window`` in flight (the driver builds the next units' inputs while
  earlier ones run).
- Stateful work (a model loaded once) runs on a pool of actors, each holding its CPUs /
  GPUs.
- A task whose worker process dies (killed, out of memory, node lost) is retried by Ray
  up to ``max_retries`` times; a unit that keeps failing stops the run with UnitFailed
  naming it. An exception raised by the unit's own code is not retried (it would only
  repeat) and comes back with its type, noted with the unit's name.
- Units run under ``catalog.worker_unit``: a write into the workdir raises there, so the
  driver stays the only writer of every cache.
- A unit computes with the BLAS threads it asked for (``Unit.cpus``), here as in process,
  so its floats do not depend on the node it ran on.
"""
from __future__ import annotations

import collections
import logging
import os
import socket
from typing import Callable, Iterable, Iterator

from pipeline.executors.base import Executor, Unit, UnitFailed, name_failure, unit_threads

log = logging.getLogger(__name__)


def _where() -> tuple[str, int, str]:
    """(host, pid, Ray node id) of this worker: several nodes may share a host."""
    import ray

    return socket.gethostname(), os.getpid(), ray.get_runtime_context().get_node_id()[:12]


def _run_unit(fn: Callable, unit: str, threads: float, *args):
    """Runs in a Ray worker: fn(*args) under the single-writer guard and with the unit's
    own BLAS threads, with where it ran."""
    from pipeline.catalog import worker_unit

    with worker_unit(unit), unit_threads(threads):
        return fn(*args), _where()


class _Holder:
    """An actor holding ``factory()`` (a loaded model), called once per unit."""

    def __init__(self, factory: Callable[[], Callable]):
        from pipeline.catalog import worker_unit

        with worker_unit("actor start"):
            self.obj = factory()

    def run(self, unit: str, threads: float, *args):
        from pipeline.catalog import worker_unit

        with worker_unit(unit), unit_threads(threads):
            return self.obj(*args), _where()


def _system_errors() -> tuple[type, ...]:
    import ray.exceptions as rex

    names = ("WorkerCrashedError", "NodeDiedError", "ActorDiedError", "ActorUnavailableError",
             "ObjectLostError", "OwnerDiedError", "TaskCancelledError", "RayActorError",
             "OutOfMemoryError", "LocalRayletDiedError")
    return tuple(getattr(rex, n) for n in names if hasattr(rex, n))


class RayExecutor(Executor):
    """Units as Ray tasks (``map``) or on actors (``map_stateful``)."""

    name = "ray"

    def __init__(self, address: str | None = None, num_cpus: int | None = None,
                 max_retries: int = 3, window: int | None = None, num_gpus: int | None = None,
                 **_ignored):
        try:
            import ray
        except ImportError:
            from pipeline.config import ConfigError

            raise ConfigError("engine ray needs Ray, which is not installed: pip install -e "
                              "'.[ray]' (or pip install 'ray>=2.40'), or use --engine local") from None
        self.max_retries = int(max_retries)
        self.placements: list[tuple[str, str, int, str]] = []  # (unit, host, pid, node), in order
        self._started = False
        if not ray.is_initialized():
            address = address or os.environ.get("RAY_ADDRESS") or None
            kw = dict(include_dashboard=False, log_to_driver=True, logging_level=logging.WARNING)
            if address:
                ray.init(address=address, **kw)
                log.info("engine ray: joined the cluster at %s", address)
            else:
                ray.init(num_cpus=num_cpus, num_gpus=num_gpus, **kw)
                log.info("engine ray: started a local Ray instance")
            self._started = True
        res = ray.cluster_resources()
        self.cpus, self.gpus = float(res.get("CPU", 1)), float(res.get("GPU", 0))
        alive = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
        self.nodes = len(alive)
        # A unit runs on one node: never ask for more than the largest node has.
        self.node_cpus = max([float(r.get("CPU", 0)) for r in alive] or [self.cpus])
        self.node_gpus = max([float(r.get("GPU", 0)) for r in alive] or [self.gpus])
        self.window = int(window or max(2, int(self.cpus) + 1))
        log.info("engine ray: %d node(s), %g CPU(s), %g GPU(s)", self.nodes, self.cpus, self.gpus)

    def share(self, obj):
        import ray

        return ray.put(obj)

    def _fit(self, cpus: float, gpus: float) -> tuple[float, float]:
        """A request some node can grant (a unit asking for 16 threads where the largest
        node has 4 CPUs asks for 4; its threads setting is unchanged, so are its results)."""
        return min(cpus, self.node_cpus), (min(gpus, self.node_gpus) if gpus else 0.0)

    def _collect(self, submit, units: Iterable[Unit]) -> Iterator:
        import ray
        from ray.exceptions import RayTaskError

        system = _system_errors()
        pending: collections.deque = collections.deque()
        it = iter(units)
        exhausted = False

        def fill():
            nonlocal exhausted
            while not exhausted and len(pending) < self.window:
                unit = next(it, None)
                if unit is None:
                    exhausted = True
                else:
                    pending.append((unit, submit(unit)))

        fill()
        while pending:
            unit, ref = pending.popleft()
            try:
                result, where = ray.get(ref)
            except RayTaskError as exc:
                cause = getattr(exc, "cause", None)
                if isinstance(cause, system):
                    raise UnitFailed(unit.name, f"{type(cause).__name__} after "
                                     f"{self.max_retries} retries: {cause}") from exc
                if isinstance(cause, BaseException):
                    raise name_failure(cause, unit.name) from None
                raise UnitFailed(unit.name, str(exc)) from exc
            except system as exc:
                raise UnitFailed(unit.name, f"{type(exc).__name__} after {self.max_retries} "
                                 f"retries: {exc}") from exc
            self.placements.append((unit.name, *where))
            fill()
            yield result

    def map(self, fn: Callable, units: Iterable[Unit]) -> Iterator:
        import ray

        task = ray.remote(_run_unit)

        def submit(unit: Unit):
            cpus, gpus = self._fit(unit.cpus, unit.gpus)
            return task.options(num_cpus=cpus, num_gpus=gpus, max_retries=self.max_retries,
                                retry_exceptions=False, name=unit.name[:100]).remote(
                fn, unit.name, unit.cpus, *unit.args)

        return self._collect(submit, units)

    def map_stateful(self, factory: Callable[[], Callable], units: Iterable[Unit], *,
                     workers: int = 1, cpus: float = 1.0, gpus: float = 0.0) -> Iterator:
        import ray

        threads = cpus
        cpus, gpus = self._fit(cpus, gpus)
        limit = int(self.gpus // gpus) if gpus else int(self.cpus // max(cpus, 1e-9))
        n = max(1, min(int(workers), max(limit, 1)))
        actor = ray.remote(_Holder).options(num_cpus=cpus, num_gpus=gpus,
                                            max_restarts=self.max_retries,
                                            max_task_retries=self.max_retries)
        actors: list = []
        count = 0

        def submit(unit: Unit):
            nonlocal count
            if len(actors) < n:  # started on the first units only: no work, no model loaded
                actors.append(actor.remote(factory))
            a = actors[count % len(actors)]
            count += 1
            return a.run.remote(unit.name, threads, *unit.args)

        try:
            yield from self._collect(submit, units)
        finally:
            for a in actors:
                ray.kill(a)

    def describe(self) -> dict:
        """Where the units ran: per node (host and Ray node id) the number of units."""
        per_node = collections.Counter(f"{h}/{node}" for _, h, _, node in self.placements)
        return {"engine": self.name, "nodes": self.nodes, "cpus": self.cpus, "gpus": self.gpus,
                "units": len(self.placements), "hosts": sorted({p[1] for p in self.placements}),
                "units_per_node": dict(sorted(per_node.items())),
                "worker_processes": len({(p[1], p[2]) for p in self.placements})}

    def close(self) -> None:
        import ray

        if self._started and ray.is_initialized():
            ray.shutdown()
        self._started = False


EXECUTOR = RayExecutor
