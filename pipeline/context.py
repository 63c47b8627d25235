"""What every stage function receives: config, catalog, inputs, device, flags."""
from __future__ import annotations

import dataclasses
import logging
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from pipeline.catalog import Catalog
from pipeline.config import Config
from pipeline.data import DataError, Dataset, load_dataset

log = logging.getLogger("prefstack")


@dataclass
class RunContext:
    """One invocation of the pipeline. Stage functions take this and nothing else."""

    config: Config
    catalog: Catalog
    train_path: Path
    test_path: Path
    device_request: str = "auto"
    force: bool = False
    # --stage predict: the experiment whose fitted models score --test, and where to write.
    run_name: str | None = None
    out_path: Path | None = None
    _dataset: Dataset | None = field(default=None, repr=False)
    _device: str | None = field(default=None, repr=False)
    _executor: object | None = field(default=None, repr=False)

    @property
    def dataset(self) -> Dataset:
        """Train and test frames, loaded (and validated) once per invocation."""
        if self._dataset is None:
            t0 = time.perf_counter()
            self._dataset = load_dataset(self.train_path, self.test_path)
            log.info("data: %d train rows from %s, %d test rows from %s (%.1fs)",
                     len(self._dataset.train), self.train_path, len(self._dataset.test),
                     self.test_path, time.perf_counter() - t0)
        return self._dataset

    @property
    def device(self) -> str:
        """The resolved torch device ("cpu" or "cuda")."""
        if self._device is None:
            from pipeline.models import resolve_device

            self._device = resolve_device(self.device_request)
            log.info("device: %s", self._device)
        return self._device

    @property
    def executor(self):
        """Where the units of the heavy loops run (pipeline.executors), made on first use
        from ``config.engine``: a warm run that computes nothing never starts Ray."""
        if self._executor is None:
            from pipeline.executors.base import make_executor

            opts = dataclasses.asdict(self.config.ray) if self.config.engine == "ray" else {}
            self._executor = make_executor(self.config.engine, **opts)
        return self._executor

    def unit_device(self) -> tuple[str, float]:
        """(torch device, GPUs per unit) for units of GPU work (embedding, fine-tune
        folds): on a Ray cluster with GPUs, "cuda" and one GPU each, even when this
        driver has none (unless --device cpu); otherwise this process's device."""
        gpus = float(getattr(self.executor, "gpus", 0.0))
        if self.config.engine != "local" and gpus >= 1 and self.device_request in ("auto", "cuda"):
            return "cuda", 1.0
        return self.device, 1.0 if self.device.startswith("cuda") else 0.0

    def close_executor(self) -> None:
        """Release the executor (a local Ray instance stops); a later use makes a new one."""
        if self._executor is not None:
            ex, self._executor = self._executor, None
            if getattr(ex, "placements", None):
                d = ex.describe()
                log.info("engine %s: %d unit(s) ran in %d worker process(es); units per node: %s",
                         d["engine"], d["units"], d["worker_processes"],
                         ", ".join(f"{n} {c}" for n, c in d["units_per_node"].items()))
            ex.close()

    @property
    def run_dir(self) -> Path:
        """``runs/<experiment>/`` of this config."""
        return self.catalog.run_dir(self.config.name)

    def require_test(self) -> None:
        if not self.test_path.exists():
            raise DataError(f"test file {self.test_path} does not exist: pass --test or put "
                            "Kaggle's test.csv beside train.csv")


@contextmanager
def timed(what: str) -> Iterator[None]:
    """Log how long a block took."""
    t0 = time.perf_counter()
    log.info("%s: started", what)
    yield
    log.info("%s: done in %.1fs", what, time.perf_counter() - t0)
