"""What the gradient-boosted kinds (``lgbm``, ``xgboost``) share, so that another GBDT is
its library calls and nothing else.

A boosted learner's params are the library's own, merged over its defaults, plus round
control (its ``CONTROL`` keys: ``num_boost_round``, ``early_stopping``,
``early_stopping_rounds``...), which the learner reads and never passes on. It early-stops
on the inner (prompt-grouped) split the cross-fitting loop passes in when
``early_stopping`` is on, and runs threads of its own (``fit_threads`` in force, else every
CPU; one for small fits).
"""
from __future__ import annotations

import os
from typing import Any, ClassVar

from pipeline.learners.base import fit_thread_budget, split_control

# Below this many training rows one thread is faster: OpenMP synchronisation costs more
# than it saves (measured with LightGBM: 500 rows x 400 features, 2 threads on a busy
# 2-core machine took up to 17x longer than 1 thread).
MIN_ROWS_PER_THREADED_FIT = 10_000


def merge_params(defaults: dict, fixed: dict, control: dict, overrides: dict, seed: int,
                 n_rows: int | None, threads_param: str, where: str) -> dict:
    """``defaults`` with ``overrides`` merged in (round control left out), the seed and the
    thread count (``threads_param``, unless overridden: the ``fit_threads`` count in force,
    else os.cpu_count(); 1 below MIN_ROWS_PER_THREADED_FIT rows). ValueError naming
    ``where`` + the key if an override changes a ``fixed`` param (the objective, the class count)."""
    for key, value in fixed.items():
        if key in overrides and overrides[key] != value:
            raise ValueError(f"{where}{key} must stay {value!r} (3-class softmax)")
    params = {**defaults, **{k: v for k, v in overrides.items() if k not in control}}
    small = n_rows is not None and n_rows < MIN_ROWS_PER_THREADED_FIT
    params.setdefault(threads_param, 1 if small else (fit_thread_budget() or os.cpu_count() or 1))
    params["seed"] = int(seed)
    return params


class BoostedLearner:
    """Base of the GBDT learners: round control, inner-split use, threads, config, summary.

    A subclass sets ``kind``, ``VERSION``, ``accepts_sparse``, ``suffix``, ``CONTROL`` and
    ``THREADS_PARAM`` and implements ``params(seed, n_rows)``, ``fit``, ``predict_proba``,
    ``rounds_kept()``, ``to_bytes`` / ``from_bytes`` and ``importance``."""

    importance_label = "total gain (all folds and seeds)"
    CONTROL: ClassVar[dict]
    THREADS_PARAM: ClassVar[str]
    VERSION: ClassVar[int]

    def __init__(self, params: dict):
        self.control, self.overrides = split_control(params, self.CONTROL)
        self.params(0)  # a forbidden override fails now
        self.booster = None
        self.inner_score: float | None = None

    def params(self, seed: int, n_rows: int | None = None) -> dict:
        """The library's params for one fit."""
        raise NotImplementedError

    def rounds_kept(self) -> int:
        """Boosting rounds the fitted model predicts with."""
        raise NotImplementedError

    def config(self) -> dict:
        """Every param this learner fits with (defaults resolved, threads left out)."""
        return {**self.params(0), self.THREADS_PARAM: None, **self.control,
                "version": self.VERSION}

    @property
    def uses_inner_split(self) -> bool:
        return self.control["early_stopping"]

    def threads(self) -> int:
        """CPUs one fit keeps busy (what an executor asks a machine for)."""
        return int(self.overrides.get(self.THREADS_PARAM) or os.cpu_count() or 1)

    def summary(self) -> dict[str, Any]:
        out: dict[str, Any] = {"best_iteration": self.rounds_kept()}
        if self.inner_score is not None:
            out["inner_score"] = self.inner_score
        return out
