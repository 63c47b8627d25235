"""LightGBM multiclass behind the learner protocol (kind ``lgbm``).

Params are LightGBM parameters merged over DEFAULT_LGBM_PARAMS, plus the stack's round
control: ``num_boost_round`` (upper bound), ``early_stopping`` / ``early_stopping_rounds``
(stop on the inner split the cross-fitting loop passes in) and ``refit`` (retrain on the
inner split too, for the chosen rounds scaled by the row ratio).
"""
from __future__ import annotations

import os

import numpy as np
import pandas as pd

from pipeline.learners.base import N_CLASSES
from pipeline.learners.boosted import BoostedLearner, merge_params

# Idle OpenMP threads sleep instead of spinning. LightGBM's default (spinning) made one
# fit 9x slower on a 2-core machine shared with other processes (1159 vs 137 ms per round,
# 80k rows x 400 features); on idle cores the difference is negligible. Effective when set
# before lightgbm is first imported (imported lazily, inside functions).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# Defaults for ~60k rows x ~200-400 features; stack.lgbm_params and a member's params are
# merged over them. Preference labels are noisy, so trees are small and regularised:
# against num_leaves 31, feature_fraction 0.7, lambda_l2 1 these gave lower OOF log loss on
# both benchmark files of the time (PandaLM 0.7433 vs 0.7498, HH-RLHF 0.6577 vs 0.6609;
# chosen among 5 settings tried, so slightly optimistic) and ~1.6x faster rounds.
# deterministic + force_col_wise make a run reproducible for a given thread count.
DEFAULT_LGBM_PARAMS = {
    "objective": "multiclass",
    "num_class": N_CLASSES,
    "metric": "multi_logloss",
    "learning_rate": 0.04,
    "num_leaves": 15,
    "min_data_in_leaf": 40,
    "feature_fraction": 0.5,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "lambda_l2": 5.0,
    "max_bin": 255,
    "verbose": -1,
    "deterministic": True,
    "force_col_wise": True,
}
_FIXED_PARAMS = {"objective": "multiclass", "num_class": N_CLASSES}
# Round control: read by the learner, never passed to LightGBM.
CONTROL = {"num_boost_round": 1000, "early_stopping": True, "early_stopping_rounds": 50,
           "refit": False}


def lightgbm_parameter_names() -> dict[str, str] | None:
    """Every name LightGBM knows (parameters and their aliases) -> its parameter, or None
    when this LightGBM version does not say (then nothing is checked)."""
    try:
        from lightgbm.basic import _ConfigAliases

        aliases = _ConfigAliases._get_all_param_aliases()
    except Exception:  # noqa: BLE001 - a private helper of LightGBM: be ready for it to go
        return None
    return {a: name for name, names in aliases.items() for a in [name, *names]}


def check_parameter_names(params: dict) -> None:
    """ValueError naming a key LightGBM does not know (and the closest parameter it does)."""
    import difflib

    known = lightgbm_parameter_names()
    if known is None:
        return
    for key in params:
        if key not in known and key not in CONTROL:
            close = difflib.get_close_matches(key, sorted(set(known) | set(CONTROL)), n=1)
            hint = f"; did you mean {known.get(close[0], close[0])!r}?" if close else ""
            raise ValueError(f"{key!r} is not a LightGBM parameter{hint} (LightGBM would ignore "
                             "it silently)")


def check_parameter_values(overrides: dict) -> None:
    """ValueError with LightGBM's own message when it refuses these parameters (one boosting
    round on 30 random rows: a few milliseconds, so a bad value fails before any stage)."""
    import lightgbm as lgb

    rng = np.random.default_rng(0)
    params = {**lgbm_params({k: v for k, v in overrides.items() if k not in CONTROL}, 0),
              "num_threads": 1, "verbosity": -1}
    try:
        lgb.train(params, lgb.Dataset(rng.random((30, 3)), label=np.arange(30) % 3),
                  num_boost_round=1)
    except lgb.basic.LightGBMError as exc:
        reason = str(exc).split(" at /")[0].strip()  # drop LightGBM's source path
        raise ValueError(f"LightGBM refuses these parameters: {reason}") from None


def lgbm_params(overrides: dict, seed: int, n_rows: int | None = None) -> dict:
    """DEFAULT_LGBM_PARAMS with ``overrides`` merged in, the seed, and the thread count
    (``num_threads`` unless overridden: see pipeline.learners.boosted.merge_params). Raises
    ValueError if an override changes the objective or the class count."""
    return merge_params(DEFAULT_LGBM_PARAMS, _FIXED_PARAMS, CONTROL, overrides, seed, n_rows,
                        "num_threads", "stack.lgbm_params.")


def train_booster(params: dict, X, y: np.ndarray, ids: np.ndarray | None, X_valid, y_valid,
                  ids_valid: np.ndarray | None, num_boost_round: int,
                  early_stopping_rounds: int, feature_names: list[str] | None):
    """Train one LightGBM booster; the only place LightGBM fits anything.

    ``ids`` / ``ids_valid`` name the rows of X / X_valid (a swapped copy keeps its row's id)
    so that a test can check which rows a model saw. With X_valid, training stops after
    ``early_stopping_rounds`` rounds without improvement and keeps the best iteration.
    Returns: lightgbm.Booster.
    """
    import lightgbm as lgb

    names = feature_names if feature_names is not None else "auto"
    train_set = lgb.Dataset(X, label=y, feature_name=names, free_raw_data=True)
    if X_valid is None:
        return lgb.train(params, train_set, num_boost_round=num_boost_round)
    valid_set = lgb.Dataset(X_valid, label=y_valid, reference=train_set, free_raw_data=True)
    return lgb.train(params, train_set, num_boost_round=num_boost_round, valid_sets=[valid_set],
                     valid_names=["inner"],
                     callbacks=[lgb.early_stopping(early_stopping_rounds, verbose=False)])


def _concat(a, b):
    import scipy.sparse as sp

    return sp.vstack([a, b], format="csr") if sp.issparse(a) else np.concatenate([a, b])


class LGBMLearner(BoostedLearner):
    """LightGBM multiclass with early stopping on the inner split it is given."""

    kind = "lgbm"
    VERSION = 1  # bump when a change of code changes fitted models
    accepts_sparse = True
    suffix = ".txt"
    CONTROL = CONTROL
    THREADS_PARAM = "num_threads"

    def __init__(self, params: dict):
        super().__init__(params)
        self.num_boost_round = self.control["num_boost_round"]
        self.early_stopping_rounds = self.control["early_stopping_rounds"]
        self.refit = self.control["refit"]
        check_parameter_names(self.overrides)  # fail now on a misspelt name
        self.ids = self.ids_valid = None  # row ids of the next fit (for leak tests)

    def params(self, seed: int, n_rows: int | None = None) -> dict:
        return lgbm_params(self.overrides, seed, n_rows)

    def fit(self, X, y, groups, seed, X_valid=None, y_valid=None, feature_names=None):
        """Boost on X; with X_valid, early-stop on it (and with refit, retrain on both)."""
        n_rows = X.shape[0]
        params = self.params(seed, n_rows)
        booster = train_booster(params, X, y, self.ids, X_valid, y_valid, self.ids_valid,
                                self.num_boost_round, self.early_stopping_rounds, feature_names)
        if X_valid is not None and booster.best_score:
            self.inner_score = float(booster.best_score["inner"]["multi_logloss"])
        if X_valid is not None and self.refit:
            n_all = n_rows + X_valid.shape[0]
            rounds = max(1, int(round(booster.best_iteration * n_all / max(n_rows, 1))))
            ids = None if self.ids is None else np.concatenate([self.ids, self.ids_valid])
            booster = train_booster(params, _concat(X, X_valid), np.concatenate([y, y_valid]),
                                    ids, None, None, None, rounds, self.early_stopping_rounds,
                                    feature_names)
        self.booster = booster
        return self

    @property
    def best_iteration(self) -> int:
        b = self.booster
        return int(b.best_iteration if b.best_iteration > 0 else b.current_iteration())

    def rounds_kept(self) -> int:
        return self.best_iteration

    def predict_proba(self, X) -> np.ndarray:
        it = self.booster.best_iteration if self.booster.best_iteration > 0 else None
        return np.asarray(self.booster.predict(X, num_iteration=it), dtype=np.float64)

    def to_bytes(self) -> bytes:
        return self.booster.model_to_string(num_iteration=self.best_iteration).encode("utf-8")

    @classmethod
    def from_bytes(cls, data: bytes) -> "LGBMLearner":
        import lightgbm as lgb

        out = cls({})
        out.booster = lgb.Booster(model_str=data.decode("utf-8"))
        return out

    def importance(self, feature_names: list[str]) -> pd.Series:
        gain = self.booster.feature_importance("gain", iteration=self.best_iteration)
        return pd.Series(gain, index=feature_names, dtype=np.float64)
