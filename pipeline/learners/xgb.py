"""XGBoost multiclass behind the learner protocol (kind ``xgboost``; optional: ``pip install
prefstack[xgboost]``, which is in the dev install).

Params are XGBoost booster parameters merged over DEFAULT_XGB_PARAMS, plus the same round
control as ``lgbm``: ``num_boost_round`` (upper bound), ``early_stopping`` /
``early_stopping_rounds`` (stop on the inner split the cross-fitting loop passes in).
Depth-wise trees on histograms: a GBDT grown differently from LightGBM's leaf-wise one,
for a stack that wants a second gradient-boosted family (``bench/learner_probe.py``
measures whether it pays).

Input is dense (``accepts_sparse = False``: XGBoost reads an absent CSR entry as missing,
not as zero, so a sparse matrix is densified first and means what it means dense).
"""
from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pandas as pd

from pipeline.learners.base import N_CLASSES
from pipeline.learners.boosted import BoostedLearner, merge_params

# Chosen to match the lgbm defaults' capacity (15 leaves ~ depth 4; min_data_in_leaf 40 ~
# a hessian sum of 5 at multiclass p(1 - p)), not tuned on the benchmark files.
DEFAULT_XGB_PARAMS = {
    "objective": "multi:softprob",
    "num_class": N_CLASSES,
    "eval_metric": "mlogloss",
    "tree_method": "hist",
    "eta": 0.04,
    "max_depth": 4,
    "min_child_weight": 5.0,
    "subsample": 0.8,
    "colsample_bytree": 0.5,
    "lambda": 5.0,
    "max_bin": 256,
    "verbosity": 1,
}
_FIXED_PARAMS = {"objective": "multi:softprob", "num_class": N_CLASSES}
CONTROL = {"num_boost_round": 1000, "early_stopping": True, "early_stopping_rounds": 50}


def _xgb():
    try:
        import xgboost
    except ImportError:
        raise ValueError("learner kind 'xgboost' needs the xgboost package: "
                         "pip install 'prefstack[xgboost]' (or xgboost-cpu)") from None
    return xgboost


def xgb_params(overrides: dict, seed: int, n_rows: int | None = None) -> dict:
    """DEFAULT_XGB_PARAMS with ``overrides`` merged in, the seed and the thread count
    (``nthread``: see pipeline.learners.boosted.merge_params). ValueError if an override
    changes the objective or the class count."""
    return merge_params(DEFAULT_XGB_PARAMS, _FIXED_PARAMS, CONTROL, overrides, seed, n_rows,
                        "nthread", "xgboost param ")


def check_params(overrides: dict) -> None:
    """ValueError when XGBoost does not know a param name (it would only warn and ignore it)
    or refuses a value: one boosting round on 30 random rows, a few milliseconds."""
    xgb = _xgb()
    rng = np.random.default_rng(0)
    params = {**xgb_params(overrides, 0), "nthread": 1}
    data = xgb.DMatrix(rng.random((30, 3)), label=np.arange(30) % N_CLASSES)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        try:
            xgb.train(params, data, num_boost_round=1)
        except xgb.core.XGBoostError as exc:
            reason = str(exc).split("\n")[0].split(": ", 1)[-1]
            raise ValueError(f"XGBoost refuses these parameters: {reason}") from None
    unused = [str(w.message) for w in caught if "are not used" in str(w.message)]
    if unused:
        names = unused[0].split("{", 1)[-1].split("}", 1)[0].strip()
        raise ValueError(f"unknown XGBoost parameter(s) {names} (XGBoost would ignore them "
                         "silently)")


def _dense(X) -> np.ndarray:
    """float32 ndarray of X; a sparse matrix's absent entries become zeros (not missing), and
    +-inf becomes missing (XGBoost refuses inf, where LightGBM reads it as a large value)."""
    if hasattr(X, "toarray"):
        X = X.toarray()
    X = np.asarray(X, dtype=np.float32)
    if np.isinf(X).any():
        X = np.where(np.isinf(X), np.float32(np.nan), X)
    return X


class XGBLearner(BoostedLearner):
    """XGBoost multiclass with early stopping on the inner split it is given."""

    kind = "xgboost"
    VERSION = 1  # bump when a change of code changes fitted models
    accepts_sparse = False
    suffix = ".ubj"
    CONTROL = CONTROL
    THREADS_PARAM = "nthread"

    def __init__(self, params: dict):
        super().__init__(params)  # a forbidden override fails now ...
        _xgb()  # ... and a missing package (the run's checks make every learner first)
        if self.overrides:
            check_params(self.overrides)
        self.best_iteration = 0

    def params(self, seed: int, n_rows: int | None = None) -> dict:
        return xgb_params(self.overrides, seed, n_rows)

    def rounds_kept(self) -> int:
        return self.best_iteration + 1

    def fit(self, X, y, groups, seed, X_valid=None, y_valid=None, feature_names=None):
        """Boost on X; with X_valid, stop once it has not improved for early_stopping_rounds
        rounds and keep the best round."""
        xgb = _xgb()
        params = self.params(seed, X.shape[0])
        # Columns stay f0, f1, ... (XGBoost refuses some characters in names); importance()
        # maps them back.
        train = xgb.DMatrix(_dense(X), label=y)
        kwargs: dict[str, Any] = {}
        if X_valid is not None:
            valid = xgb.DMatrix(_dense(X_valid), label=y_valid)
            kwargs = {"evals": [(valid, "inner")], "verbose_eval": False,
                      "early_stopping_rounds": self.control["early_stopping_rounds"]}
        booster = xgb.train(params, train, num_boost_round=self.control["num_boost_round"],
                            **kwargs)
        if X_valid is not None:
            self.best_iteration = int(booster.best_iteration)
            self.inner_score = float(booster.best_score)
            booster = booster[: self.best_iteration + 1]  # keep the best rounds only
        else:
            self.best_iteration = self.control["num_boost_round"] - 1
        self.booster = booster
        return self

    def predict_proba(self, X) -> np.ndarray:
        xgb = _xgb()
        p = self.booster.predict(xgb.DMatrix(_dense(X)))
        p = np.asarray(p, dtype=np.float64).reshape(-1, N_CLASSES)
        return p / p.sum(axis=1, keepdims=True)

    def to_bytes(self) -> bytes:
        return bytes(self.booster.save_raw(raw_format="ubj"))

    @classmethod
    def from_bytes(cls, data: bytes) -> "XGBLearner":
        xgb = _xgb()
        out = cls({})
        out.booster = xgb.Booster()
        out.booster.load_model(bytearray(data))
        out.best_iteration = out.booster.num_boosted_rounds() - 1
        return out

    def importance(self, feature_names: list[str]) -> pd.Series:
        """Total gain per feature (0 for features no tree splits on)."""
        score = self.booster.get_score(importance_type="total_gain")
        gain = np.zeros(len(feature_names))
        for key, value in score.items():
            gain[int(key[1:])] = float(value)
        return pd.Series(gain, index=feature_names, dtype=np.float64)
