"""Stage three: cross-fitted members, the soft-voting blend, and the run outputs.

A member is ``{kind, inputs, params}``: a learner kind of ``pipeline.learners`` (``lgbm``,
``linear``), the feature groups and views it reads (``pipeline.views``: dense groups of
the features stage, ``tfidf``, ``embedding-full``) and the learner's params. Every member
is cross-fitted on the shared folds (``pipeline.crossfit``: views fitted inside each fold,
swap augmentation, swap TTA, seeds), and the members are blended by nested soft voting
(``pipeline.outputs``).

Members' OOF and test predictions, fitted learners and fitted view states are cached under
``cache/stack/<member>-<key>/`` keyed by the learner, its params, the views' settings and
content, labels, folds, seeds and swap settings, so changing one member recomputes only
it; fitted view states are cached on their own (``cache/views/``), so changing a learner's
params refits no view.
"""
from __future__ import annotations

import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.blend import N_CLASSES, softmax
from pipeline.catalog import (CODE_VERSION, read_json, read_parquet_checked, write_bytes_atomic,
                              write_json_atomic, write_parquet_atomic)
from pipeline.config import check_names
from pipeline.crossfit import FoldMatrices, MemberFit, cross_fit
from pipeline.learners.base import digest, learner_class
from pipeline.views import Source, array_hash, build_views, fitted_state, select_columns

log = logging.getLogger(__name__)

STACK_VERSION = 2
PROBA_COLUMNS = ("p_a", "p_b", "p_tie")
# The same from the rows' own A/B order only (no swap TTA), for the position-bias panel.
SINGLE_COLUMNS = ("single_a", "single_b", "single_tie")
# Importances kept per member (a sparse TF-IDF member has hundreds of thousands of columns).
MAX_IMPORTANCE_ROWS = 2000

__all__ = ["MemberSpec", "member_spec", "learner_params", "select_columns", "array_hash",
           "run_stage", "fit_member_cached", "prepare_inputs", "StackInputs", "MemberFit"]


# ---------------------------------------------------------------- member specs

@dataclass(frozen=True)
class MemberSpec:
    """One stack member: learner kind, what it reads, the learner's own params."""

    name: str
    kind: str
    inputs: list
    params: dict = field(default_factory=dict)
    seeds: tuple[int, ...] | None = None   # None: stack.seeds


def member_spec(name: str, spec) -> MemberSpec:
    """A stack.members entry -> MemberSpec.

    Forms: a list of feature groups (an ``lgbm`` member, as before), ``{groups: [...],
    params: {...}}`` (the same with LightGBM params), or ``{kind: linear, inputs: [tfidf,
    length], params: {...}}``; any mapping may hold ``seeds: [...]``, the member's own
    ``stack.seeds``. Raises ValueError naming the member and the fix.
    """
    where = f"stack.members.{name}"
    if isinstance(spec, str):
        return MemberSpec(name, "lgbm", [spec])
    if isinstance(spec, (list, tuple)):
        return MemberSpec(name, "lgbm", list(spec))
    if isinstance(spec, dict):
        allowed = {"kind", "inputs", "groups", "params", "seeds"}
        unknown = set(spec) - allowed
        inputs = spec.get("inputs", spec.get("groups"))
        if unknown or inputs is None or ("inputs" in spec and "groups" in spec):
            raise ValueError(f"{where}: expected a list of feature groups or {{kind: lgbm|linear, "
                             f"inputs: [...], params: {{...}}, seeds: [...]}}, got keys {sorted(spec)}")
        kind = spec.get("kind", "lgbm")
        try:
            learner_class(kind)
        except ValueError as exc:
            raise ValueError(f"{where}: {exc}") from None
        params = spec.get("params") or {}
        if not isinstance(params, dict):
            raise ValueError(f"{where}.params: expected a mapping, got {params!r}")
        seeds = spec.get("seeds")
        if seeds is not None:
            if (not isinstance(seeds, (list, tuple)) or not seeds
                    or not all(isinstance(x, int) and not isinstance(x, bool) for x in seeds)
                    or len(set(seeds)) != len(seeds)):
                raise ValueError(f"{where}.seeds: expected a non-empty list of distinct integers "
                                 f"(the member's own stack.seeds), got {seeds!r}")
            seeds = tuple(int(x) for x in seeds)
        return MemberSpec(name, kind, [inputs] if isinstance(inputs, (str, dict)) else list(inputs),
                          dict(params), seeds)
    raise ValueError(f"{where}: expected a list of feature groups or a mapping, got {spec!r}")


def learner_params(cfg, spec: MemberSpec) -> dict:
    """The params a member's learner is made with (stack-wide LightGBM settings merged in)."""
    if spec.kind != "lgbm":
        return dict(spec.params)
    return {"num_boost_round": cfg.num_boost_round, "early_stopping": cfg.early_stopping,
            "early_stopping_rounds": cfg.early_stopping_rounds, "refit": cfg.refit,
            **cfg.lgbm_params, **spec.params}


def _warn_absent_classes(ctx, counts: np.ndarray) -> None:
    """Say what the submission really gives a class the training labels never hold (with
    swap augmentation / TTA a missing A or B class borrows the other's probability)."""
    from pipeline.data import CLASS_NAMES, LABEL_COLUMNS

    sub = pd.read_csv(ctx.run_dir / "submission.csv", dtype={"id": str})
    absent = [(name, col) for name, col, k in zip(CLASS_NAMES, LABEL_COLUMNS, counts) if k == 0]
    given = ", ".join(f"{name} {sub[col].mean():.4f}" for name, col in absent)
    log.warning("stack: class(es) %s never occur in the training labels; the submission gives "
                "them on average %s (with swap augmentation and TTA a missing A or B class is "
                "mirrored from the other, so it is not ~0)", [n for n, _ in absent], given)


def feature_groups(cfg) -> set[str]:
    """Names of the feature groups the features stage makes under ``cfg`` ("embedding"
    becomes one "emb-<model>" group per embedding model)."""
    from pipeline.featurize import embedding_groups

    groups = set(cfg.features.groups) - {"embedding"}
    if "embedding" in cfg.features.groups:
        groups |= set(embedding_groups(cfg))
    return groups


def check_config(cfg) -> None:
    """ConfigError for a stack setting that cannot work, before any stage starts: no members,
    a bad member form, a learner's unknown or forbidden params (misspelt LightGBM names
    included), unknown inputs."""
    from pipeline.config import ConfigError
    from pipeline.learners.base import make_learner
    from pipeline.views import build_views

    if not cfg.stack.members:
        raise ConfigError("stack.members is empty: give at least one member, e.g. lgbm_all: [all]")
    from pipeline.learners.lgbm import check_parameter_values

    try:
        make_learner("lgbm", learner_params(cfg.stack, MemberSpec("lgbm_params", "lgbm", ["all"])))
        check_parameter_values(cfg.stack.lgbm_params)
    except ValueError as exc:
        raise ConfigError(f"stack.lgbm_params: {exc}") from None
    try:
        known = feature_groups(cfg)
    except ImportError:  # a stand-in features module (tests): groups are checked at fit time
        known = None
    for name, raw in cfg.stack.members.items():
        try:
            spec = member_spec(name, raw)
            make_learner(spec.kind, learner_params(cfg.stack, spec))
            if spec.kind == "lgbm":
                check_parameter_values({**cfg.stack.lgbm_params, **spec.params})
            views = build_views(spec.inputs, learner_class(spec.kind).accepts_sparse, spec.kind,
                                cfg.stack, cfg.embed, lambda m: {"model": m})
            asked = [g for v in views for g in getattr(v, "groups", []) if g != "all"]
            unknown = [] if known is None else [g for g in asked if g not in known]
            if unknown:
                raise ValueError(f"unknown feature group(s) {unknown}; this config computes "
                                 f"{sorted(known)} (or use 'all', or a view: tfidf, "
                                 "embedding-full)")
        except ValueError as exc:
            text = str(exc)
            where = "" if text.startswith("stack.") else f"stack.members.{name}: "
            raise ConfigError(where + text) from None


def member_views(ctx, spec: MemberSpec) -> list:
    """The views of a member under the run's config."""
    from pipeline.embed import cache_key_parts

    cfg = ctx.config
    cls = learner_class(spec.kind)
    try:
        return build_views(spec.inputs, cls.accepts_sparse, spec.kind, cfg.stack, cfg.embed,
                           lambda m: cache_key_parts(cfg.embed, m))
    except ValueError as exc:
        raise ValueError(f"stack.members.{spec.name}: {exc}") from None


def hstack(blocks: list, sparse_ok: bool):
    """Side-by-side matrices: CSR when any block is sparse and the learner takes it, else
    a float32 ndarray."""
    import scipy.sparse as sp

    if any(sp.issparse(b) for b in blocks):
        out = sp.hstack([sp.csr_matrix(b) if not sp.issparse(b) else b for b in blocks],
                        format="csr", dtype=np.float32)
        return out if sparse_ok else out.toarray()
    return blocks[0] if len(blocks) == 1 else np.hstack(blocks).astype(np.float32)


def fold_matrices_of(ctx, views: list, preps: list, sparse_ok: bool, key_parts: list[dict],
                     stats: dict | None = None):
    """``fold_matrices(k, rows)`` for pipeline.crossfit: each view fitted (or read) for fold k.

    ``key_parts``: per view, what identifies its data (its own content hashes and the
    folds), so members reading the same view with the same settings share its states.
    """

    def build(k: int, rows: np.ndarray) -> FoldMatrices:
        t0 = time.perf_counter()
        tr, tr_sw, te, te_sw, names, states = [], [], [], [], [], {}
        for view, (p_train, p_test), parts in zip(views, preps, key_parts):
            state, data, hit = fitted_state(ctx, view, k, rows, p_train, p_test, parts)
            if stats is not None and view.fit_mode != "none":
                stats["view_hits" if hit else "view_fits"] += 1
            if data is not None:
                states[view.name] = data
            X, Xs, nm = view.transform(state, p_train)
            Xt, Xts, _ = view.transform(state, p_test)
            tr.append(X), tr_sw.append(Xs), te.append(Xt), te_sw.append(Xts)
            names += nm
        out = FoldMatrices(hstack(tr, sparse_ok), hstack(tr_sw, sparse_ok), hstack(te, sparse_ok),
                           hstack(te_sw, sparse_ok), names, states)
        if stats is not None:
            stats["view_seconds"] = stats.get("view_seconds", 0.0) + time.perf_counter() - t0
        return out

    return build


# ---------------------------------------------------------------- member cache (disk)

def _save_member(path: Path, fit: MemberFit, suffix: str, train_ids, folds, test_ids,
                 meta: dict) -> None:
    """Write a member's artifacts; meta.json goes last and marks the folder complete."""
    (path / "models").mkdir(parents=True, exist_ok=True)
    oof = pd.DataFrame({"id": train_ids, "fold": folds.astype(np.int8)})
    oof[list(PROBA_COLUMNS)] = fit.oof
    if fit.oof_single is not None:
        oof[list(SINGLE_COLUMNS)] = fit.oof_single
    test = pd.DataFrame({"id": test_ids})
    test[list(PROBA_COLUMNS)] = fit.test
    write_parquet_atomic(path / "oof.parquet", oof)
    write_parquet_atomic(path / "test.parquet", test)
    if fit.importance is not None:
        imp = fit.importance.head(MAX_IMPORTANCE_ROWS)
        write_parquet_atomic(path / "importance.parquet",
                             pd.DataFrame({"feature": imp.index.astype(str), "gain": imp.values}))
    files, digests = {}, {}
    for (k, s), data in fit.models.items():
        fname = f"fold{k}_seed{s}{suffix}"
        write_bytes_atomic(path / "models" / fname, data)
        files[f"{k},{s}"] = fname
        digests[fname] = digest(data)
    states = {}
    for k, per_view in fit.view_states.items():
        for view, data in per_view.items():
            fname = f"view-{view}_fold{k}.pkl"
            write_bytes_atomic(path / "models" / fname, data)
            states.setdefault(str(k), {})[view] = fname
            digests[fname] = digest(data)
    write_json_atomic(path / "meta.json", {
        **meta, "models": files, "view_states": states, "model_sha256": digests,
        "code_version": CODE_VERSION,
        "summaries": {f"{k},{s}": v for (k, s), v in fit.summaries.items()},
        "written_at": time.strftime("%Y-%m-%dT%H:%M:%S")})


def read_member(path: Path, meta: dict) -> MemberFit | None:
    """A cached member folder (kind "stack-member"), or None (missing, partial, damaged)."""
    return _load_member(path, meta["n_train"], meta["n_test"])


def write_member(path: Path, fit: MemberFit, meta: dict) -> None:
    """A member folder (kind "stack-member"): what a partial earlier write left is
    removed first; meta.json goes last and marks the folder complete."""
    if path.exists():
        shutil.rmtree(path)
    _save_member(path, fit, meta["suffix"], meta["train_ids"], meta["folds"], meta["test_ids"],
                 {**meta["manifest"], "fit_seconds": fit.seconds})


def _load_member(path: Path, n_train: int, n_test: int) -> MemberFit | None:
    """A complete cached member, or None (missing, partial or unreadable -> recompute)."""
    if not (path / "meta.json").is_file():
        return None
    try:
        meta = read_json(path / "meta.json")
        oof = read_parquet_checked(path / "oof.parquet", n_train, list(PROBA_COLUMNS))
        test = read_parquet_checked(path / "test.parquet", n_test, list(PROBA_COLUMNS))
        if oof is None or test is None:
            return None
        imp = None
        if (path / "importance.parquet").is_file():
            frame = read_parquet_checked(path / "importance.parquet")
            if frame is None:
                return None
            imp = pd.Series(frame["gain"].to_numpy(), index=frame["feature"].astype(str))
        digests = meta["model_sha256"]

        def read(fname: str) -> bytes:
            data = (path / "models" / fname).read_bytes()
            if digest(data) != digests[fname]:
                raise ValueError(f"{path / 'models' / fname} does not match its SHA-256")
            return data

        models = {tuple(map(int, ks.split(","))): read(f) for ks, f in meta["models"].items()}
        states = {int(k): {v: read(f) for v, f in per.items()}
                  for k, per in meta.get("view_states", {}).items()}
        summaries = {tuple(map(int, ks.split(","))): v for ks, v in meta["summaries"].items()}
    except ValueError as exc:
        log.warning("stack cache: %s (truncated or edited); refitting the member", exc)
        return None
    except (OSError, KeyError) as exc:
        log.warning("stack cache: %s unreadable (%s); refitting the member", path, exc)
        return None
    single = (oof[list(SINGLE_COLUMNS)].to_numpy(np.float64)
              if set(SINGLE_COLUMNS) <= set(oof.columns) else None)
    return MemberFit(oof=oof[list(PROBA_COLUMNS)].to_numpy(np.float64),
                     test=test[list(PROBA_COLUMNS)].to_numpy(np.float64), models=models,
                     summaries=summaries, importance=imp, view_states=states, oof_single=single)


# ---------------------------------------------------------------- stage inputs

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
    train_frame: pd.DataFrame | None = None
    test_frame: pd.DataFrame | None = None

    def sources(self) -> tuple[Source, Source]:
        return (Source("train", self.train_frame, self.columns, self.X, self.X_swapped),
                Source("test", self.test_frame, self.columns, self.X_test, self.X_test_swapped))


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
    log.debug("stack: swapped features built in %.1fs", time.perf_counter() - t0)

    def arr(df):
        return df[columns].to_numpy(dtype=np.float32)

    return StackInputs(train_ids=train["id"].astype(str).to_numpy(),
                       test_ids=test["id"].astype(str).to_numpy(),
                       y=train["label"].to_numpy().astype(np.int64),
                       folds=folds["fold"].to_numpy().astype(np.int64),
                       groups=prompt_groups(train), columns=columns,
                       X=arr(train_feats), X_swapped=arr(tr_sw),
                       X_test=arr(test_feats), X_test_swapped=arr(te_sw),
                       train_frame=train, test_frame=test)


# ---------------------------------------------------------------- one member

@dataclass
class FittedMember:
    """A member's fit with what the run outputs and predict need to know about it."""

    spec: MemberSpec
    fit: MemberFit
    views: list
    params: dict
    cache_hit: bool
    seconds: float


def fit_member_cached(ctx, spec: MemberSpec, inp: StackInputs, stats: dict | None = None) -> FittedMember:
    """One member from the cache or cross-fitted and cached."""
    from pipeline.progress import Progress

    t_start = time.perf_counter()
    cfg = ctx.config.stack
    cls = learner_class(spec.kind)
    params = learner_params(cfg, spec)
    resolved = cls(params).config()  # unknown or forbidden params fail before any view is prepared
    views = member_views(ctx, spec)
    seeds = spec.seeds if spec.seeds is not None else tuple(cfg.seeds)
    src_train, src_test = inp.sources()
    t0 = time.perf_counter()
    preps = [(v.prepare(ctx, src_train), v.prepare(ctx, src_test)) for v in views]
    if stats is not None:
        stats["prepare_seconds"] = stats.get("prepare_seconds", 0.0) + time.perf_counter() - t0
    data_key = {"train": [v.content_hash(p[0]) for v, p in zip(views, preps)],
                "test": [v.content_hash(p[1]) for v, p in zip(views, preps)],
                "folds": array_hash(inp.train_ids, inp.folds)}
    settings = {
        "kind": spec.kind, "params": resolved, "views": [v.key() for v in views],
        "seeds": list(seeds), "swap_augment": cfg.swap_augment, "swap_tta": cfg.swap_tta,
        "inner_valid_fraction": cfg.inner_valid_fraction,
    }
    from pipeline.artifacts import Item, get_or_compute

    item = Item({"member": spec.name},
                ("stack-member", STACK_VERSION, settings, data_key,
                 array_hash(inp.y, inp.groups, inp.test_ids)),
                {"n_train": len(inp.y), "n_test": len(inp.test_ids), "suffix": cls.suffix,
                 "train_ids": inp.train_ids, "folds": inp.folds, "test_ids": inp.test_ids,
                 "manifest": {"name": spec.name, "kind": spec.kind, "inputs": spec.inputs,
                              "views": [v.describe() for v in views], "settings": settings}})

    def fit_member() -> MemberFit:
        t0 = time.perf_counter()
        n_models = len(np.unique(inp.folds)) * len(seeds)
        fold_keys = [{"train_content": tr, "test_content": te, "folds": data_key["folds"]}
                     for tr, te in zip(data_key["train"], data_key["test"])]
        build = fold_matrices_of(ctx, views, preps, cls.accepts_sparse, fold_keys, stats)
        with Progress(n_models, f"stack: member {spec.name}", unit="model") as bar:
            fit = cross_fit(spec.kind, params, build, inp.y, inp.folds, inp.groups,
                            len(inp.test_ids), seeds=seeds,
                            swap_augment=cfg.swap_augment, swap_tta=cfg.swap_tta,
                            inner_valid_fraction=cfg.inner_valid_fraction, progress=bar,
                            executor=ctx.executor, name=f"stack {spec.name}",
                            builds_views=any(v.fit_mode != "none" for v in views))
        fit.seconds = time.perf_counter() - t0
        return fit

    views_before = stats.get("view_seconds", 0.0) if stats is not None else 0.0
    fit, hit, path = get_or_compute(ctx.catalog, "stack-member", item, fit_member, force=ctx.force)
    if stats is not None:  # this member's share of view_seconds (0 when read from the cache)
        stats.setdefault("member_view_seconds", {})[spec.name] = round(
            stats.get("view_seconds", 0.0) - views_before, 2)
    if not hit:
        log.info("stack: member %s (%s on %s) fitted in %.1fs, cached as %s", spec.name,
                 spec.kind, _inputs_text(spec.inputs), fit.seconds, path.name)
    if hit:
        log.info("stack: member %s read from cache %s", spec.name, path.name)
    return FittedMember(spec=spec, fit=fit, views=views, params=params, cache_hit=hit,
                        seconds=time.perf_counter() - t_start)


def _inputs_text(inputs: list) -> str:
    return ", ".join(next(iter(i)) if isinstance(i, dict) else str(i) for i in inputs)


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
    from pipeline.outputs import write_run_outputs

    t_start = time.perf_counter()
    cfg = ctx.config.stack
    if not cfg.members:
        raise ValueError("stack.members is empty: give at least one member, e.g. lgbm_all: [all]")
    specs = [member_spec(name, spec) for name, spec in cfg.members.items()]
    check_names(ctx.config)  # also checked when the config is read; a context may be built by hand
    inp = prepare_inputs(ctx)
    counts = np.bincount(inp.y, minlength=N_CLASSES)
    stats = {"view_hits": 0, "view_fits": 0, "prepare_seconds": 0.0, "view_seconds": 0.0}
    members = [fit_member_cached(ctx, s, inp, stats) for s in specs]
    ft = finetune_member(ctx, inp)
    write_run_outputs(ctx, inp, members, ft, stats, t_start)
    if (counts == 0).any():
        _warn_absent_classes(ctx, counts)
