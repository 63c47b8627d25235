"""Stage three: cross-validated LightGBM members, the soft-voting blend, and the run outputs.

For every member (a named set of feature groups) and every fold k, LightGBM is trained on
the rows of the other folds only, in both A/B orders (the swapped copy's label permuted
[a, b, tie] -> [b, a, tie]), for each seed. Its round count is chosen by early stopping on
an inner split of those training rows, grouped by prompt (a row, its swapped copy and the
rows sharing its prompt are always on the same side), never on fold k. Fold k is then
predicted in both orders (the swapped prediction mapped back) and averaged: those are the
out-of-fold (OOF) probabilities; the test set gets the mean over all fold/seed models.

Members' OOF and test predictions, and their boosters, are cached under
``cache/stack/<member>-<key>/`` keyed by the member's feature values, labels, folds,
LightGBM parameters, seeds and swap settings, so changing one member recomputes only it.
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.blend import N_CLASSES, normalize_proba, softmax
from pipeline.catalog import (CODE_VERSION, file_lock, hash_key, read_json, read_parquet_checked,
                              write_json_atomic, write_parquet_atomic, write_text_atomic)
from pipeline.data import swap_labels, swap_proba

log = logging.getLogger(__name__)

# Idle OpenMP threads sleep instead of spinning. LightGBM's default (spinning) made one
# fit 9x slower on a 2-core machine shared with other processes (1159 vs 137 ms per round,
# 80k rows x 400 features); on idle cores the difference is negligible. Effective when set
# before lightgbm is first imported (this module imports it lazily, inside functions).
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

STACK_VERSION = 1
PROBA_COLUMNS = ("p_a", "p_b", "p_tie")

# Defaults for ~60k rows x ~200-400 features; stack.lgbm_params is merged over them.
# Preference labels are noisy, so trees are small and regularised: against num_leaves 31,
# feature_fraction 0.7, lambda_l2 1 these gave lower OOF log loss on both benchmark files
# (PandaLM 0.7433 vs 0.7498, HH-RLHF 0.6577 vs 0.6609; chosen among 5 settings tried, so
# slightly optimistic) and ~1.6x faster rounds. deterministic + force_col_wise make a run
# reproducible for a given thread count.
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


# Below this many training rows one thread is faster: OpenMP synchronisation costs more
# than it saves (measured: 500 rows x 400 features, 2 threads on a busy 2-core machine
# took up to 17x longer than 1 thread).
MIN_ROWS_PER_THREADED_FIT = 10_000


def lgbm_params(overrides: dict, seed: int, n_rows: int | None = None) -> dict:
    """DEFAULT_LGBM_PARAMS with ``overrides`` merged in, the seed, and the thread count.

    num_threads (unless overridden) is os.cpu_count(), or 1 for fits on fewer than
    MIN_ROWS_PER_THREADED_FIT rows. Raises ValueError if an override changes the
    objective or the class count.
    """
    for key, value in _FIXED_PARAMS.items():
        if key in overrides and overrides[key] != value:
            raise ValueError(f"stack.lgbm_params.{key} must stay {value!r} (3-class softmax)")
    params = {**DEFAULT_LGBM_PARAMS, **overrides}
    small = n_rows is not None and n_rows < MIN_ROWS_PER_THREADED_FIT
    params.setdefault("num_threads", 1 if small else (os.cpu_count() or 1))
    params["seed"] = int(seed)
    return params


def column_group(col: str) -> str:
    """Feature group of a column named ``<group>__<role>_<feature>``."""
    try:
        from features.swap import column_group as _cg
    except ImportError:
        return col.split("__", 1)[0]
    return _cg(col)


def select_columns(columns: list[str], groups: list[str] | tuple[str, ...]) -> list[str]:
    """Feature columns whose group is in ``groups`` ("all" = every column), in frame order.

    Raises ValueError naming the unknown groups and the available ones.
    """
    feats = [c for c in columns if c != "id"]
    if "all" in groups:
        return feats
    available = sorted({column_group(c) for c in feats})
    unknown = [g for g in groups if g not in available]
    if unknown:
        raise ValueError(f"stack.members: unknown feature group(s) {unknown}; the features hold "
                         f"{available} (or use 'all')")
    return [c for c in feats if column_group(c) in groups]


@dataclass
class MemberFit:
    """Cross-fitted member: OOF and test probabilities, boosters, importances."""

    oof: np.ndarray                      # float64 [n_train, 3], row i from a model not fitted on i
    test: np.ndarray                     # float64 [n_test, 3], mean over fold/seed models
    models: dict[tuple[int, int], str]   # (fold, seed) -> LightGBM model text
    best_iterations: dict[tuple[int, int], int]
    importance: pd.Series                # total gain per feature column, sorted descending
    inner_scores: dict[tuple[int, int], float] = field(default_factory=dict)


def train_booster(params: dict, X: np.ndarray, y: np.ndarray, ids: np.ndarray,
                  X_valid: np.ndarray | None, y_valid: np.ndarray | None,
                  ids_valid: np.ndarray | None, num_boost_round: int,
                  early_stopping_rounds: int, feature_names: list[str]):
    """Train one LightGBM booster; the only place the stack fits anything.

    ``ids`` / ``ids_valid`` name the rows of X / X_valid (a swapped copy keeps its row's id)
    so that a test can check which rows a model saw. With X_valid, training stops after
    ``early_stopping_rounds`` rounds without improvement and keeps the best iteration.
    Returns: lightgbm.Booster.
    """
    import lightgbm as lgb

    train_set = lgb.Dataset(X, label=y, feature_name=feature_names, free_raw_data=True)
    if X_valid is None:
        return lgb.train(params, train_set, num_boost_round=num_boost_round)
    valid_set = lgb.Dataset(X_valid, label=y_valid, reference=train_set, free_raw_data=True)
    return lgb.train(params, train_set, num_boost_round=num_boost_round, valid_sets=[valid_set],
                     valid_names=["inner"],
                     callbacks=[lgb.early_stopping(early_stopping_rounds, verbose=False)])


def predict_tta(booster, X: np.ndarray, X_swapped: np.ndarray | None) -> np.ndarray:
    """Probabilities [n, 3]; with ``X_swapped``, the mean of both orders (swap mapped back)."""
    it = booster.best_iteration if booster.best_iteration > 0 else None
    p = booster.predict(X, num_iteration=it)
    if X_swapped is not None:
        p = 0.5 * (p + swap_proba(booster.predict(X_swapped, num_iteration=it)))
    return p


def inner_split(groups: np.ndarray, fraction: float, seed) -> np.ndarray:
    """Boolean mask [n]: rows whose group is drawn into the inner early-stopping split.

    At least one group goes to each side when there are two or more groups.
    """
    uniq = np.unique(groups)
    if len(uniq) < 2:
        raise ValueError("early stopping needs at least two prompt groups in a training fold; "
                         "set stack.early_stopping: false for such tiny data")
    n_inner = int(round(fraction * len(uniq)))
    n_inner = min(max(n_inner, 1), len(uniq) - 1)
    chosen = np.random.default_rng(seed).choice(uniq, size=n_inner, replace=False)
    return np.isin(groups, chosen)


def _stack_rows(X: np.ndarray, Xs: np.ndarray | None, y: np.ndarray, ids: np.ndarray,
                rows: np.ndarray, augment: bool):
    if not augment:
        return X[rows], y[rows], ids[rows]
    return (np.concatenate([X[rows], Xs[rows]]), np.concatenate([y[rows], swap_labels(y[rows])]),
            np.concatenate([ids[rows], ids[rows]]))


def cross_fit_member(X: np.ndarray, X_swapped: np.ndarray, y: np.ndarray, ids: np.ndarray,
                     folds: np.ndarray, groups: np.ndarray, X_test: np.ndarray,
                     X_test_swapped: np.ndarray, feature_names: list[str], *,
                     lgbm_overrides: dict | None = None, seeds: tuple[int, ...] = (0,),
                     swap_augment: bool = True, swap_tta: bool = True,
                     num_boost_round: int = 1000, early_stopping: bool = True,
                     early_stopping_rounds: int = 50, inner_valid_fraction: float = 0.15,
                     refit: bool = False, progress=None) -> MemberFit:
    """K-fold cross-fitting of one LightGBM member (pure: arrays in, MemberFit out).

    X, X_swapped: float32 [n, d] features of the training rows and of the same rows with A
    and B exchanged; y: int labels [n] (0 a, 1 b, 2 tie); ids [n]; folds: int [n];
    groups: int [n] prompt groups (for the inner split); X_test, X_test_swapped [m, d].
    With ``refit``, the early-stopped round count (scaled by the row ratio) is used to
    retrain on all the fold's training rows. Returns: MemberFit; oof rows of fold k come
    only from models that never saw fold k, not even for early stopping.
    """
    overrides = dict(lgbm_overrides or {})
    n, m = len(y), len(X_test)
    oof = np.zeros((n, N_CLASSES))
    test = np.zeros((m, N_CLASSES))
    models, best, inner_scores = {}, {}, {}
    gain = np.zeros(len(feature_names))
    fold_ids = np.unique(folds)
    for k in fold_ids:
        held = folds == k
        train_rows = ~held
        for seed in seeds:
            if early_stopping:
                inner = inner_split(groups[train_rows], inner_valid_fraction,
                                    seed=(int(seed), int(k)))
                inner_mask = np.zeros(n, dtype=bool)
                inner_mask[np.flatnonzero(train_rows)[inner]] = True
                fit_rows = train_rows & ~inner_mask
                Xv, yv, idv = _stack_rows(X, X_swapped, y, ids, inner_mask, swap_augment)
            else:
                fit_rows, Xv, yv, idv = train_rows, None, None, None
            Xf, yf, idf = _stack_rows(X, X_swapped, y, ids, fit_rows, swap_augment)
            params = lgbm_params(overrides, seed, n_rows=len(yf))
            booster = train_booster(params, Xf, yf, idf, Xv, yv, idv, num_boost_round,
                                    early_stopping_rounds, feature_names)
            if early_stopping and refit:
                # Refit on every training row (inner split included) for the chosen round
                # count, scaled up by the extra rows; fold k is still never seen.
                n_rounds = max(1, int(round(booster.best_iteration * train_rows.sum()
                                            / max(fit_rows.sum(), 1))))
                inner_scores[(int(k), int(seed))] = float(booster.best_score["inner"]["multi_logloss"])
                Xf, yf, idf = _stack_rows(X, X_swapped, y, ids, train_rows, swap_augment)
                booster = train_booster(params, Xf, yf, idf, None, None, None, n_rounds,
                                        early_stopping_rounds, feature_names)
            held_swapped = X_swapped[held] if swap_tta else None
            oof[held] += predict_tta(booster, X[held], held_swapped) / len(seeds)
            if m:
                test += predict_tta(booster, X_test, X_test_swapped if swap_tta else None) / (
                    len(seeds) * len(fold_ids))
            it = booster.best_iteration if booster.best_iteration > 0 else booster.current_iteration()
            best[(int(k), int(seed))] = int(it)
            if early_stopping and not refit and booster.best_score:
                inner_scores[(int(k), int(seed))] = float(booster.best_score["inner"]["multi_logloss"])
            models[(int(k), int(seed))] = booster.model_to_string(num_iteration=it)
            gain += booster.feature_importance("gain", iteration=it)
            if progress is not None:
                progress.update(1)
    importance = pd.Series(gain, index=feature_names).sort_values(ascending=False)
    return MemberFit(oof=normalize_proba(oof, 1e-12), test=normalize_proba(test, 1e-12) if m else test,
                     models=models, best_iterations=best, importance=importance,
                     inner_scores=inner_scores)


def array_hash(*arrays: np.ndarray) -> str:
    """Fast content hash of numeric or string arrays (shape, dtype and bytes)."""
    h = hashlib.sha256()
    for a in arrays:
        a = np.asarray(a)
        if a.dtype.kind in "OUT":
            a = np.asarray([str(v) for v in a.ravel()], dtype=object)
            h.update("\x1f".join(a).encode("utf-8", "surrogatepass"))
        else:
            h.update(str((a.shape, a.dtype.str)).encode())
            h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()[:16]


def text_digest(text: str) -> str:
    """SHA-256 of a booster's model text (UTF-8): detects truncated or edited files."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


# ---------------------------------------------------------------- member cache (disk)

def _member_dir(catalog, name: str, key: str) -> Path:
    return catalog.stage_cache("stack") / f"{name}-{key}"


def _save_member(path: Path, fit: MemberFit, train_ids, folds, test_ids, meta: dict) -> None:
    """Write a member's artifacts; meta.json goes last and marks the folder complete."""
    (path / "models").mkdir(parents=True, exist_ok=True)
    oof = pd.DataFrame({"id": train_ids, "fold": folds.astype(np.int8)})
    oof[list(PROBA_COLUMNS)] = fit.oof
    test = pd.DataFrame({"id": test_ids})
    test[list(PROBA_COLUMNS)] = fit.test
    write_parquet_atomic(path / "oof.parquet", oof)
    write_parquet_atomic(path / "test.parquet", test)
    write_parquet_atomic(path / "importance.parquet",
                         pd.DataFrame({"feature": fit.importance.index, "gain": fit.importance.values}))
    files, digests = {}, {}
    for (k, s), text in fit.models.items():
        fname = f"fold{k}_seed{s}.txt"
        write_text_atomic(path / "models" / fname, text)
        files[f"{k},{s}"] = fname
        digests[fname] = text_digest(text)
    write_json_atomic(path / "meta.json", {
        **meta, "models": files, "model_sha256": digests, "code_version": CODE_VERSION,
        "best_iterations": {f"{k},{s}": v for (k, s), v in fit.best_iterations.items()},
        "inner_scores": {f"{k},{s}": v for (k, s), v in fit.inner_scores.items()},
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%S")})


def _load_member(path: Path, n_train: int, n_test: int) -> MemberFit | None:
    """A complete cached member, or None (missing, partial or unreadable -> recompute)."""
    if not (path / "meta.json").is_file():
        return None
    try:
        meta = read_json(path / "meta.json")
        oof = read_parquet_checked(path / "oof.parquet", n_train, list(PROBA_COLUMNS))
        test = read_parquet_checked(path / "test.parquet", n_test, list(PROBA_COLUMNS))
        imp = read_parquet_checked(path / "importance.parquet")
        if oof is None or test is None or imp is None:
            return None
        models = {}
        digests = meta.get("model_sha256", {})
        for ks, fname in meta["models"].items():
            k, s = map(int, ks.split(","))
            text = (path / "models" / fname).read_text(encoding="utf-8")
            if fname in digests and text_digest(text) != digests[fname]:
                log.warning("stack cache: %s does not match the digest in its meta.json "
                            "(truncated or edited); refitting the member", path / "models" / fname)
                return None
            models[(k, s)] = text
        best = {tuple(map(int, ks.split(","))): v for ks, v in meta["best_iterations"].items()}
        inner = {tuple(map(int, ks.split(","))): v for ks, v in meta.get("inner_scores", {}).items()}
    except (OSError, KeyError, ValueError):
        return None
    return MemberFit(oof=oof[list(PROBA_COLUMNS)].to_numpy(np.float64),
                     test=test[list(PROBA_COLUMNS)].to_numpy(np.float64), models=models,
                     best_iterations=best,
                     importance=pd.Series(imp["gain"].to_numpy(), index=imp["feature"].astype(str)),
                     inner_scores=inner)


# ---------------------------------------------------------------- stage

@dataclass
class StackInputs:
    """Everything the stage fits on, aligned to the training / test file order."""

    train_ids: np.ndarray
    test_ids: np.ndarray
    y: np.ndarray
    folds: np.ndarray
    groups: np.ndarray
    columns: list[str]
    X: np.ndarray
    X_swapped: np.ndarray
    X_test: np.ndarray
    X_test_swapped: np.ndarray


def _aligned(feats: pd.DataFrame, ids: pd.Series, what: str) -> pd.DataFrame:
    """``feats`` reordered to ``ids``; error naming the first missing id."""
    feats = feats.assign(id=feats["id"].astype(str))
    if feats["id"].duplicated().any():
        raise ValueError(f"{what} features hold duplicate ids (e.g. "
                         f"{feats['id'][feats['id'].duplicated()].iloc[0]!r}): rerun --stage features --force")
    indexed = feats.set_index("id")
    missing = ~ids.astype(str).isin(indexed.index)
    if missing.any():
        raise ValueError(f"{what} features lack {int(missing.sum())} id(s) of the {what} file (e.g. "
                         f"{ids[missing].iloc[0]!r}): the feature cache is stale; rerun "
                         "--stage features")
    return indexed.loc[ids.astype(str).to_numpy()].reset_index()


def swapped_features(feats: pd.DataFrame) -> pd.DataFrame:
    """The frame's features with A and B exchanged (features.swap.swap_features), same order."""
    from features.swap import swap_features

    out = swap_features(feats)
    return out[list(feats.columns)]


def prepare_inputs(ctx) -> StackInputs:
    """Load features, folds and labels for the stage and align them on id."""
    from pipeline.featurize import load_features
    from pipeline.folds import load_or_make_folds, prompt_groups

    cfg = ctx.config.stack
    train = ctx.dataset.train
    test = ctx.dataset.test
    folds = load_or_make_folds(ctx.catalog, train, cfg.n_folds, cfg.fold_seed)
    if not (folds["id"].to_numpy() == train["id"].astype(str).to_numpy()).all():
        folds = folds.set_index("id").loc[train["id"].astype(str)].reset_index()
    train_feats, test_feats = load_features(ctx)
    train_feats = _aligned(train_feats, train["id"], "train")
    test_feats = _aligned(test_feats, test["id"], "test")
    columns = [c for c in train_feats.columns if c != "id"]
    if list(test_feats.columns) != list(train_feats.columns):
        raise ValueError("train and test features have different columns: rerun --stage features")
    t0 = time.perf_counter()
    tr_sw = swapped_features(train_feats)
    te_sw = swapped_features(test_feats)
    log.info("stack: swapped features built in %.1fs", time.perf_counter() - t0)

    def arr(df):
        return df[columns].to_numpy(dtype=np.float32)

    return StackInputs(train_ids=train["id"].astype(str).to_numpy(),
                       test_ids=test["id"].astype(str).to_numpy(),
                       y=train["label"].to_numpy().astype(np.int64),
                       folds=folds["fold"].to_numpy().astype(np.int64),
                       groups=prompt_groups(train), columns=columns,
                       X=arr(train_feats), X_swapped=arr(tr_sw),
                       X_test=arr(test_feats), X_test_swapped=arr(te_sw))


def member_spec(name: str, spec) -> tuple[list[str], dict]:
    """A stack.members entry -> (feature groups, LightGBM overrides of this member only).

    An entry is a list of groups (``lgbm_len: [length, structure]``) or a mapping
    ``{groups: [...], params: {num_leaves: 15}}``; the member's params are merged over
    stack.lgbm_params.
    """
    if isinstance(spec, str):
        return [spec], {}
    if isinstance(spec, (list, tuple)):
        return list(spec), {}
    if isinstance(spec, dict):
        unknown = set(spec) - {"groups", "params"}
        if unknown or "groups" not in spec:
            raise ValueError(f"stack.members.{name}: expected a list of feature groups or "
                             f"{{groups: [...], params: {{...}}}}, got keys {sorted(spec)}")
        groups = spec["groups"]
        return ([groups] if isinstance(groups, str) else list(groups)), dict(spec.get("params") or {})
    raise ValueError(f"stack.members.{name}: expected a list of feature groups, got {spec!r}")


def fit_member_cached(ctx, name: str, groups: list[str], inp: StackInputs,
                      member_params: dict | None = None) -> tuple[MemberFit, list[str], bool]:
    """One member from the cache or cross-fitted and cached. Returns (fit, columns, hit)."""
    from tqdm.auto import tqdm

    cfg = ctx.config.stack
    overrides = {**cfg.lgbm_params, **(member_params or {})}
    cols = select_columns(inp.columns, groups)
    idx = [inp.columns.index(c) for c in cols]
    X, Xs, Xt, Xts = (a[:, idx] for a in (inp.X, inp.X_swapped, inp.X_test, inp.X_test_swapped))
    settings = {
        "columns": cols, "lgbm_params": lgbm_params(overrides, 0) | {"num_threads": None},
        "seeds": list(cfg.seeds), "swap_augment": cfg.swap_augment, "swap_tta": cfg.swap_tta,
        "num_boost_round": cfg.num_boost_round, "early_stopping": cfg.early_stopping,
        "early_stopping_rounds": cfg.early_stopping_rounds,
        "inner_valid_fraction": cfg.inner_valid_fraction, "refit": cfg.refit,
    }
    key = hash_key("stack-member", STACK_VERSION, settings,
                   array_hash(X, Xs, inp.train_ids, inp.y, inp.folds, inp.groups),
                   array_hash(Xt, Xts, inp.test_ids))
    path = _member_dir(ctx.catalog, name, key)
    if not ctx.force:
        fit = _load_member(path, len(inp.y), len(inp.test_ids))
        if fit is not None:
            log.info("stack: member %s read from cache %s", name, path.name)
            return fit, cols, True
    with file_lock(path.with_name(path.name + ".lock")):
        if not ctx.force:
            fit = _load_member(path, len(inp.y), len(inp.test_ids))
            if fit is not None:
                return fit, cols, True
        if path.exists():
            shutil.rmtree(path)
        t0 = time.perf_counter()
        n_models = len(np.unique(inp.folds)) * len(cfg.seeds)
        with tqdm(total=n_models, desc=f"stack {name}", unit="model", disable=None) as bar:
            fit = cross_fit_member(
                X, Xs, inp.y, inp.train_ids, inp.folds, inp.groups, Xt, Xts, cols,
                lgbm_overrides=overrides, seeds=tuple(cfg.seeds),
                swap_augment=cfg.swap_augment, swap_tta=cfg.swap_tta,
                num_boost_round=cfg.num_boost_round, early_stopping=cfg.early_stopping,
                early_stopping_rounds=cfg.early_stopping_rounds,
                inner_valid_fraction=cfg.inner_valid_fraction, refit=cfg.refit, progress=bar)
        elapsed = time.perf_counter() - t0
        _save_member(path, fit, inp.train_ids, inp.folds, inp.test_ids,
                     {"name": name, "groups": list(groups), "settings": settings,
                      "fit_seconds": elapsed})
    log.info("stack: member %s (%d features, %d models) fitted in %.1fs, cached as %s",
             name, len(cols), len(fit.models), elapsed, path.name)
    return fit, cols, False


def finetune_member(ctx, inp: StackInputs) -> tuple[str, np.ndarray, np.ndarray, str | None] | None:
    """(name, oof proba [n,3], test proba [m,3], model_dir) of the fine-tuned member, or None.

    Skipped (with a warning) when its OOF logits do not cover every training row, or its
    folds differ from ours (its OOF would then not be out-of-fold for our blend's folds).
    """
    if not ctx.config.stack.use_finetune:
        return None
    try:
        from pipeline.finetune import member_for
    except ImportError:
        return None
    member = member_for(ctx)
    if member is None:
        return None
    logits = ["logit_a", "logit_b", "logit_tie"]
    oof = member.oof.assign(id=member.oof["id"].astype(str)).drop_duplicates("id").set_index("id")
    missing = ~pd.Index(inp.train_ids).isin(oof.index)
    if missing.any():
        log.warning("stack: fine-tuned member %s has OOF logits for %d of %d training rows "
                    "(trained on a subset of folds?); left out of the blend", member.name,
                    len(inp.train_ids) - int(missing.sum()), len(inp.train_ids))
        return None
    oof = oof.loc[inp.train_ids]
    if "fold" in oof.columns and not (oof["fold"].to_numpy() == inp.folds).all():
        log.warning("stack: fine-tuned member %s was trained on other folds than the stack's; "
                    "left out of the blend (rerun --stage finetune)", member.name)
        return None
    test = member.test.assign(id=member.test["id"].astype(str)).drop_duplicates("id").set_index("id")
    if not pd.Index(inp.test_ids).isin(test.index).all():
        log.warning("stack: fine-tuned member %s lacks test logits for some test ids; left out",
                    member.name)
        return None
    test = test.loc[inp.test_ids]
    log.info("stack: fine-tuned member %s blended in", member.name)
    return (member.name, softmax(oof[logits].to_numpy(np.float64)),
            softmax(test[logits].to_numpy(np.float64)), str(getattr(member, "model_dir", "") or ""))


def run_stage(ctx) -> None:
    """Fit every member, blend, and write submission, OOF, metrics, report and models."""
    t_start = time.perf_counter()
    cfg = ctx.config.stack
    if not cfg.members:
        raise ValueError("stack.members is empty: give at least one member, e.g. lgbm_all: [all]")
    inp = prepare_inputs(ctx)
    counts = np.bincount(inp.y, minlength=N_CLASSES)
    if (counts == 0).any():
        log.warning("stack: class(es) %s never occur in the training labels; their probability "
                    "will be ~%g", [c for c, k in zip(("a", "b", "tie"), counts) if k == 0],
                    cfg.clip_eps)
    fits: dict[str, MemberFit] = {}
    member_cols: dict[str, list[str]] = {}
    timing: dict[str, float] = {}
    cache_hits: dict[str, bool] = {}
    for name, spec in cfg.members.items():
        t0 = time.perf_counter()
        groups, params = member_spec(name, spec)
        fits[name], member_cols[name], cache_hits[name] = fit_member_cached(ctx, name, groups, inp,
                                                                            params)
        timing[f"member_{name}_s"] = round(time.perf_counter() - t0, 2)
    ft = finetune_member(ctx, inp)
    write_run_outputs(ctx, inp, fits, member_cols, ft, timing, cache_hits, t_start)


# ---------------------------------------------------------------- blend and outputs

@dataclass
class BlendResult:
    """Member probabilities, the honest (nested) blend and the final weights."""

    names: list[str]
    oof: list[np.ndarray]          # per member [n, 3]
    test: list[np.ndarray]         # per member [m, 3]
    nested_oof: np.ndarray         # [n, 3]: row i blended with weights not fitted on its fold
    fold_fits: list                # BlendFit per fold (fitted on the other folds)
    final: object                  # BlendFit on all OOF rows: used for the test set
    in_sample_oof: np.ndarray      # final weights applied to the rows they were fitted on
    test_blend: np.ndarray         # [m, 3]


def blend_members(names: list[str], oof: list[np.ndarray], test: list[np.ndarray],
                  y: np.ndarray, folds: np.ndarray, temperature: bool, eps: float) -> BlendResult:
    """Nested blend for the score, then weights (and temperature) on all OOF for the test set."""
    from pipeline.blend import fit_blend, nested_blend

    nested, fold_fits = nested_blend(oof, y, folds, temperature, eps)
    final = fit_blend(oof, y, temperature, eps)
    return BlendResult(names=names, oof=oof, test=test, nested_oof=nested, fold_fits=fold_fits,
                       final=final, in_sample_oof=final.apply(oof, eps),
                       test_blend=final.apply(test, eps) if len(test[0]) else test[0])


def score_run(res: BlendResult, y: np.ndarray, folds: np.ndarray, eps: float) -> dict:
    """Metrics of a blended run: nested blend, in-sample blend, members, prior (same folds)."""
    from pipeline.blend import accuracy, log_loss, per_class_log_loss, prior_oof

    prior = prior_oof(y, folds, eps)
    per_fold = {}
    for k in np.unique(folds):
        rows = folds == k
        per_fold[str(int(k))] = round(log_loss(y[rows], res.nested_oof[rows], eps), 5)
    classes = ("a", "b", "tie")
    return {
        "oof_log_loss": log_loss(y, res.nested_oof, eps),
        "oof_accuracy": accuracy(y, res.nested_oof),
        "oof_log_loss_note": "nested: each fold blended with weights/temperature fitted on the other folds",
        "oof_log_loss_per_fold": per_fold,
        "oof_log_loss_in_sample_blend": log_loss(y, res.in_sample_oof, eps),
        "per_class_log_loss": {classes[c]: v for c, v in per_class_log_loss(y, res.nested_oof, eps).items()},
        "members": {n: {"oof_log_loss": log_loss(y, p, eps), "oof_accuracy": accuracy(y, p)}
                    for n, p in zip(res.names, res.oof)},
        "prior_log_loss": log_loss(y, prior, eps),
        "prior_accuracy": accuracy(y, prior),
        "blend_weights": {n: float(w) for n, w in zip(res.names, res.final.weights)},
        "blend_temperature": float(res.final.temperature),
        "blend_weights_per_fold": [
            {"weights": {n: round(float(w), 4) for n, w in zip(res.names, f.weights)},
             "temperature": round(float(f.temperature), 4)} for f in res.fold_fits],
        "label_counts": {classes[c]: int(v) for c, v in enumerate(np.bincount(y, minlength=3))},
    }


def _save_models(run_dir: Path, fits: dict[str, MemberFit], member_cols: dict[str, list[str]],
                 ft, res: BlendResult, ctx) -> None:
    """runs/<exp>/models/: booster text files per member/fold/seed and manifest.json."""
    models_dir = run_dir / "models"
    if models_dir.exists():
        shutil.rmtree(models_dir)
    members = {}
    for name, fit in fits.items():
        files, digests = [], {}
        for (k, s), text in sorted(fit.models.items()):
            rel = f"{name}/fold{k}_seed{s}.txt"
            write_text_atomic(models_dir / rel, text)
            files.append(rel)
            digests[rel] = text_digest(text)
        members[name] = {"kind": "lgbm", "columns": member_cols[name], "boosters": files,
                         "booster_sha256": digests,
                         "groups": member_spec(name, ctx.config.stack.members[name])[0]}
    if ft is not None:
        members[ft[0]] = {"kind": "finetune", "model_dir": ft[3]}
    cfg = ctx.config.stack
    write_json_atomic(models_dir / "manifest.json", {
        "members": members,
        "member_order": res.names,
        "weights": {n: float(w) for n, w in zip(res.names, res.final.weights)},
        "temperature": float(res.final.temperature),
        "swap_tta": cfg.swap_tta,
        "clip_eps": cfg.clip_eps,
        "classes": ["a", "b", "tie"],
        "config": ctx.config.to_dict(),
        "code_version": CODE_VERSION,
    })


def write_run_outputs(ctx, inp: StackInputs, fits: dict[str, MemberFit],
                      member_cols: dict[str, list[str]], ft, timing: dict, cache_hits: dict,
                      t_start: float) -> dict:
    """Blend, score and write every run artifact; returns the metrics dict."""
    from pipeline.data import LABEL_COLUMNS, SUBMISSION_COLUMNS, validate_submission
    from pipeline.catalog import write_csv_atomic
    from pipeline.report import write_run_report

    cfg = ctx.config.stack
    eps = cfg.clip_eps
    names = list(fits)
    oof = [fits[n].oof for n in names]
    test = [fits[n].test for n in names]
    if ft is not None:
        names.append(ft[0])
        oof.append(ft[1])
        test.append(ft[2])
    t0 = time.perf_counter()
    res = blend_members(names, oof, test, inp.y, inp.folds, cfg.temperature, eps)
    timing["blend_s"] = round(time.perf_counter() - t0, 2)
    metrics = score_run(res, inp.y, inp.folds, eps)
    run_dir = ctx.run_dir

    sub = pd.DataFrame({"id": ctx.dataset.test["id"].astype(str).to_numpy()})
    sub[list(LABEL_COLUMNS)] = normalize_proba(res.test_blend, eps)
    sub = sub[list(SUBMISSION_COLUMNS)]
    validate_submission(sub, ctx.dataset.test["id"])
    write_csv_atomic(run_dir / "submission.csv", sub)

    frame = pd.DataFrame({"id": inp.train_ids, "fold": inp.folds.astype(np.int8),
                          "label": inp.y.astype(np.int8)})
    for n, p in zip(names, oof):
        for c, col in enumerate(("a", "b", "tie")):
            frame[f"{n}_{col}"] = p[:, c]
    for c, col in enumerate(("a", "b", "tie")):
        frame[f"blend_{col}"] = res.nested_oof[:, c]
    write_parquet_atomic(run_dir / "oof.parquet", frame)
    _save_models(run_dir, fits, member_cols, ft, res, ctx)

    timing["total_s"] = round(time.perf_counter() - t_start, 2)
    metrics.update({
        "experiment": ctx.config.name,
        "rows": int(len(inp.y)),
        "test_rows": int(len(inp.test_ids)),
        "n_features": int(len(inp.columns)),
        "n_folds": int(len(np.unique(inp.folds))),
        "member_names": names,
        "member_features": {n: len(c) for n, c in member_cols.items()},
        "best_iterations": {n: {f"{k},{s}": v for (k, s), v in f.best_iterations.items()}
                            for n, f in fits.items()},
        "cache_hits": cache_hits,
        "finetune_member": ft[0] if ft is not None else None,
        "train_path": str(ctx.train_path),
        "test_path": str(ctx.test_path),
        "config": ctx.config.to_dict(),
        "timing": timing,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "code_version": CODE_VERSION,
    })
    write_json_atomic(run_dir / "metrics.json", metrics)
    write_run_report(run_dir, metrics, inp.y, res.nested_oof,
                     {n: f.importance for n, f in fits.items()})
    log.info("stack: OOF log loss %.4f (nested blend; in-sample %.4f), accuracy %.3f, "
             "class prior %.4f -> %s", metrics["oof_log_loss"],
             metrics["oof_log_loss_in_sample_blend"], metrics["oof_accuracy"],
             metrics["prior_log_loss"], run_dir)
    return metrics
