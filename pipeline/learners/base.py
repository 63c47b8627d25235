"""The learner protocol and the registry that the cross-fitting loop, the blend and
``--stage predict`` know learners through.

A learner is made from its member's params (``make_learner(kind, params)``), fitted on
one fold's training rows (both A/B orders when swap augmentation is on), and predicts
probabilities [n, 3] with columns [a, b, tie] even when a class never occurs in its
training labels. ``to_bytes`` / ``load_learner`` round-trip a fitted learner; the bytes are
stored beside a SHA-256 that is checked before anything is deserialised.
"""
from __future__ import annotations

import hashlib
import importlib
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, ClassVar, Protocol, runtime_checkable

import numpy as np
import pandas as pd

N_CLASSES = 3

# kind -> "module:Class". Lazy, so importing the registry imports no learner library.
REGISTRY: dict[str, str] = {
    "lgbm": "pipeline.learners.lgbm:LGBMLearner",
    "linear": "pipeline.learners.linear:LinearLearner",
    "xgboost": "pipeline.learners.xgb:XGBLearner",
}


_FIT_THREADS: ContextVar[int | None] = ContextVar("prefstack_fit_threads", default=None)


@contextmanager
def fit_threads(n: int | None):
    """Within: a learner that runs threads of its own (LightGBM) uses ``n`` of them unless
    its params say otherwise (None: its usual count)."""
    token = _FIT_THREADS.set(None if n is None else max(1, int(n)))
    try:
        yield
    finally:
        _FIT_THREADS.reset(token)


def fit_thread_budget() -> int | None:
    """The ``fit_threads`` count in force in this thread, or None."""
    return _FIT_THREADS.get()


@runtime_checkable
class Learner(Protocol):
    """What the stack needs of a learner."""

    kind: ClassVar[str]
    # Wants an inner (prompt-grouped) early-stopping split passed as X_valid / y_valid.
    uses_inner_split: ClassVar[bool]
    # Takes scipy.sparse CSR input as it is (else the stack densifies).
    accepts_sparse: ClassVar[bool]
    # File suffix of the saved model (".txt" for LightGBM's text format).
    suffix: ClassVar[str]

    def fit(self, X, y: np.ndarray, groups: np.ndarray, seed: int,
            X_valid=None, y_valid: np.ndarray | None = None,
            feature_names: list[str] | None = None) -> "Learner":
        """Fit on rows X [n, d] with labels y [n] (0 a, 1 b, 2 tie) and prompt groups [n]
        (a row and its swapped copy share a group). Returns self."""

    def predict_proba(self, X) -> np.ndarray:
        """float64 [n, 3], rows summing to 1."""

    # Optional, for learners that fit both A/B orders as pairs (see pipeline.crossfit):
    #   fits_pairs() -> bool: use fit_pairs instead of fit on the stacked orders;
    #   fit_pairs(X, X_swapped, y, groups, seed, feature_names=None) -> self;
    #   pair_fitted: bool attribute, True when predictions need predict_pairs;
    #   predict_pairs(X, X_swapped) -> [n, 3]: the prediction from both orders.
    # Optional: threads() -> int, the CPUs one fit keeps busy (an executor asks a
    # machine for that many; 1 when absent).
    # Optional: importance_label (class attribute), what importance() measures (plots).

    def config(self) -> dict:
        """Every param the learner fits with, defaults resolved (JSON values): cache keys
        include it, so a changed default refits."""

    def to_bytes(self) -> bytes:
        """The fitted model, for load_learner."""

    def importance(self, feature_names: list[str]) -> pd.Series | None:
        """Per-feature importance (any non-negative scale), or None."""

    def summary(self) -> dict[str, Any]:
        """A few JSON values describing the fit (rounds, chosen C, inner score)."""


def learner_class(kind: str):
    """The class registered under ``kind``; ValueError listing the known kinds."""
    if kind not in REGISTRY:
        raise ValueError(f"unknown learner kind {kind!r}; known kinds: {sorted(REGISTRY)}")
    module, name = REGISTRY[kind].split(":")
    return getattr(importlib.import_module(module), name)


def importance_label(kind: str) -> str:
    """What a learner's importances measure (its class's ``importance_label``)."""
    try:
        return getattr(learner_class(kind), "importance_label", "importance")
    except (ValueError, ImportError):
        return "importance"


def make_learner(kind: str, params: dict | None = None):
    """A fresh, unfitted learner of ``kind`` with the member's ``params``."""
    return learner_class(kind)(dict(params or {}))


def split_control(params: dict, defaults: dict) -> tuple[dict, dict]:
    """A boosting learner's round control (the keys of ``defaults``, each as the type of its
    default) and the rest of its params (for the library)."""
    control = {k: type(v)(params.get(k, v)) for k, v in defaults.items()}
    return control, {k: v for k, v in params.items() if k not in defaults}


def digest(data: bytes) -> str:
    """SHA-256 hex of saved model bytes: detects truncated or edited files."""
    return hashlib.sha256(data).hexdigest()


def load_learner(kind: str, data: bytes, expected_sha256: str | None = None):
    """A fitted learner from ``to_bytes`` output.

    Raises ValueError when ``expected_sha256`` is given and does not match (checked before
    anything is deserialised).
    """
    if expected_sha256 is not None and digest(data) != expected_sha256:
        raise ValueError("saved model does not match its recorded SHA-256 (truncated or edited)")
    return learner_class(kind).from_bytes(data)


def full_proba(proba: np.ndarray, classes: np.ndarray) -> np.ndarray:
    """Columns of a model's ``predict_proba`` over ``classes`` placed into [n, 3]."""
    out = np.zeros((len(proba), N_CLASSES))
    out[:, np.asarray(classes, dtype=int)] = proba
    return out
