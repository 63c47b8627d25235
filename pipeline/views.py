"""Feature views: what a stack member reads, each with its A/B swap.

A member's ``inputs`` name feature groups of the features stage and/or views:

- feature groups (``length``, ``structure``, ``overlap``, ``emb-<model>``, ``all``): the
  named dense columns, swapped by ``features.swap`` (one ``GroupsView`` per member);
- ``tfidf``: word and character n-gram TF-IDF of prompt, A and B (``features.ngram``),
  fitted inside each fold on its training rows (``fit: fold``, the default) or once,
  without labels, on every train and test text (``fit: all``, transductive); sparse for
  learners that take it, an in-fold TruncatedSVD for the others (``mode: auto``);
- ``embedding-full``: the full cached vectors [p, a, b, a - b, |a - b|] and the three
  cosines of each embedding model, read from the embed cache (nothing re-encoded).

A view is prepared once per split (``prepare``: data-independent work, cached when it is
expensive), fitted per fold on training rows only (``fit``; a no-op for views that learn
nothing) and applied with ``transform`` -> (X, X_swapped, names). Fitted states are
cached per (data content, folds, fold, view settings), so changing a learner's params
refits no view.
"""
from __future__ import annotations

import logging
import pickle
import time
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from pipeline.catalog import hash_key, read_json, write_bytes_atomic, write_json_atomic
from pipeline.learners.base import digest

log = logging.getLogger(__name__)

VIEWS_VERSION = 1
TFIDF, EMBEDDING_FULL = "tfidf", "embedding-full"
VIEW_NAMES = (TFIDF, EMBEDDING_FULL)
# TF-IDF settings that act after the IDF fit (which blocks a pair holds, the SVD).
TFIDF_TOP_KEYS = ("blocks", "svd_dims", "svd_max_docs")


@dataclass
class Source:
    """What views read for one split: the canonical frame and its dense features."""

    split: str                      # "train", "test" or "new"
    frame: pd.DataFrame             # canonical pairs (id, prompt, response_a, response_b)
    columns: list[str]              # dense feature columns
    X: np.ndarray                   # float32 [n, d] dense features
    X_swapped: np.ndarray           # the same rows with A and B exchanged


# ---------------------------------------------------------------- dense feature groups

def select_columns(columns: list[str], groups: list[str] | tuple[str, ...]) -> list[str]:
    """Feature columns whose group is in ``groups`` ("all" = every column), in frame order.

    Raises ValueError naming the unknown groups and the available ones.
    """
    from features.swap import column_group

    feats = [c for c in columns if c != "id"]
    if "all" in groups:
        return feats
    available = sorted({column_group(c) for c in feats})
    unknown = [g for g in groups if g not in available]
    if unknown:
        raise ValueError(f"stack.members: unknown feature group(s) {unknown}; the features hold "
                         f"{available} (or use 'all', or a view: {list(VIEW_NAMES)})")
    return [c for c in feats if column_group(c) in groups]


def array_hash(*arrays) -> str:
    """Fast content hash of numeric or string arrays (shape, dtype and bytes)."""
    import hashlib

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


class GroupsView:
    """Named dense columns of the features stage; nothing is fitted."""

    fit_mode = "none"

    def __init__(self, groups: list[str], columns: list[str] | None = None):
        self.name = "groups"
        self.groups = list(groups)
        self.columns = columns

    def key(self) -> dict:
        return {"view": "groups", "groups": self.groups}

    def describe(self) -> dict:
        return {"view": "groups", "groups": self.groups, "columns": self.columns}

    def prepare(self, ctx, src: Source):
        if self.columns is None:
            self.columns = select_columns(src.columns, self.groups)
        missing = [c for c in self.columns if c not in src.columns]
        if missing:
            raise ValueError(f"feature columns {missing[:3]} are missing: the feature code or "
                             "config changed since the member was fitted; rerun --stage stack")
        idx = [src.columns.index(c) for c in self.columns]
        return src.X[:, idx], src.X_swapped[:, idx]

    def content_hash(self, prep) -> str:
        return array_hash(prep[0], prep[1])

    def fit(self, prep_train, rows, prep_test, seed: int):
        return None

    def transform(self, state, prep):
        return prep[0], prep[1], list(self.columns)


# ---------------------------------------------------------------- full embeddings

def ngram_hashing_keys() -> tuple[str, ...]:
    from features.ngram import HASHING_KEYS

    return HASHING_KEYS


EMBEDDING_BLOCKS = ("p", "a", "b", "diff", "absdiff", "cos")


class EmbeddingFullView:
    """The full embedding vectors of every configured model; nothing is fitted.

    ``blocks`` picks which parts a row holds, per model: the prompt, A and B vectors, A - B,
    |A - B| and the three cosines (prompt-A, prompt-B, A-B). Swapping A and B exchanges the
    a and b blocks, flips the sign of diff and exchanges the first two cosines.
    """

    fit_mode = "none"
    name = EMBEDDING_FULL

    def __init__(self, models: list[str], embed_key: dict, blocks=EMBEDDING_BLOCKS):
        self.models = list(models)
        self.embed_key = embed_key
        self.blocks = tuple(blocks)
        bad = [b for b in self.blocks if b not in EMBEDDING_BLOCKS]
        if bad or not self.blocks or len(set(self.blocks)) != len(self.blocks):
            raise ValueError(f"embedding-full: blocks must be distinct names of {list(EMBEDDING_BLOCKS)}, "
                             f"got {list(blocks)!r}")

    def _blocks_key(self) -> dict:
        # The full set keeps the key it had before blocks existed (caches stay valid).
        return {} if self.blocks == EMBEDDING_BLOCKS else {"blocks": list(self.blocks)}

    def key(self) -> dict:
        return {"view": EMBEDDING_FULL, "models": self.models, "embed": self.embed_key,
                **self._blocks_key()}

    def describe(self) -> dict:
        return {"view": EMBEDDING_FULL, "models": self.models, **self._blocks_key()}

    def prepare(self, ctx, src: Source):
        from features.embedding import row_cosine
        from pipeline.embed import embeddings_for

        blocks, blocks_sw, self.names = [], [], []
        for m, model in enumerate(self.models):
            e = embeddings_for(ctx, src.frame, model)
            p, a, b = (np.asarray(e[c], dtype=np.float32) for c in ("prompt", "response_a", "response_b"))
            d = p.shape[1]
            tag = f"embfull{m}"
            for block in self.blocks:
                if block == "cos":
                    cos = np.column_stack([row_cosine(p, a), row_cosine(p, b), row_cosine(a, b)])
                    x, x_sw = cos, cos[:, [1, 0, 2]]
                    self.names += [f"{tag}__a_cos_prompt", f"{tag}__b_cos_prompt", f"{tag}__p_cos_ab"]
                else:
                    x, x_sw = {"p": (p, p), "a": (a, b), "b": (b, a), "diff": (a - b, b - a),
                               "absdiff": (np.abs(a - b),) * 2}[block]
                    self.names += [f"{tag}__{block}_{i}" for i in range(d)]
                blocks.append(np.asarray(x, dtype=np.float32))
                blocks_sw.append(np.asarray(x_sw, dtype=np.float32))
        return np.hstack(blocks), np.hstack(blocks_sw)  # float32: every block is

    def content_hash(self, prep) -> str:
        return array_hash(prep[0])

    def fit(self, prep_train, rows, prep_test, seed: int):
        return None

    def transform(self, state, prep):
        return prep[0], prep[1], list(self.names)


# ---------------------------------------------------------------- TF-IDF

def _roles(prep, rows=None):
    """The prompt, A and B parts of a split's stacked counts (prepared [3n, ...], n)."""
    counts, n = prep
    parts = [counts[i * n:(i + 1) * n] for i in range(3)]
    return parts if rows is None else [p[rows] for p in parts]


class TfidfBaseView:
    """The part of a TF-IDF fit that views differing only in blocks, dense mode or SVD
    settings share: column choice and IDF on the fold's prompt, A and B texts. Cached on
    its own key (``fitted_state``), so two TF-IDF members fit it once per fold."""

    name = "tfidf-idf"

    def __init__(self, settings: dict, fit: str, turn_sep: str):
        self.settings = {k: v for k, v in settings.items() if k not in TFIDF_TOP_KEYS}
        self.fit_mode = fit
        self.turn_sep = turn_sep

    def key(self) -> dict:
        return {"view": self.name, "settings": self.settings, "fit": self.fit_mode,
                "turn_sep": self.turn_sep, "version": VIEWS_VERSION}

    def fit(self, prep_train, rows, prep_test, seed: int):
        import scipy.sparse as sp

        from features import ngram

        docs = _roles(prep_train, None if self.fit_mode == "all" else rows)
        if self.fit_mode == "all" and prep_test is not None and prep_test[1]:
            docs += _roles(prep_test)
        return ngram.fit_idf(sp.vstack(docs, format="csr"), self.settings)


class TfidfView:
    """Word + char n-gram TF-IDF; IDF, column choice and SVD fitted per fold (or on all texts)."""

    name = TFIDF

    def __init__(self, s: dict, fit: str, dense: bool, turn_sep: str = "\n\n"):
        from features import ngram

        if fit not in ("fold", "all"):
            raise ValueError(f"tfidf: fit must be 'fold' or 'all', got {fit!r}")
        self.settings = ngram.settings(s)
        self.fit_mode = fit
        self.dense = bool(dense)
        self.turn_sep = turn_sep
        self.base = TfidfBaseView(self.settings, fit, turn_sep)

    def key(self) -> dict:
        return {"view": TFIDF, "settings": self.settings, "fit": self.fit_mode,
                "dense": self.dense, "turn_sep": self.turn_sep, "version": VIEWS_VERSION}

    def describe(self) -> dict:
        return {"view": TFIDF, "settings": self.settings, "fit": self.fit_mode,
                "dense": self.dense, "transductive": self.fit_mode == "all"}

    def _counts(self, src: Source):
        from features import ngram
        from pipeline.data import TEXT_COLUMNS, join_turns

        texts = [join_turns(t, self.turn_sep) for col in TEXT_COLUMNS for t in src.frame[col]]
        return ngram.hashed_counts(texts, self.settings)

    def prepare(self, ctx, src: Source):
        """Hashed counts [3n, 2 * n_features] (prompts, then A, then B), cached per split."""
        from pipeline.artifacts import Item, get_or_compute
        from pipeline.catalog import frame_hash
        from pipeline.data import TEXT_COLUMNS

        if ctx is None or src.split == "new":
            return self._counts(src), len(src.frame)
        content = frame_hash(src.frame[["id", *TEXT_COLUMNS]])
        # Only what changes the counts: min_df, max_features, IDF and SVD settings act later.
        hashing = {k: self.settings[k] for k in ngram_hashing_keys()}
        item = Item({"split": src.split},
                    ("tfidf-counts", VIEWS_VERSION, hashing, self.turn_sep, content),
                    {"rows": 3 * len(src.frame)})
        t0 = time.perf_counter()
        counts, hit, path = get_or_compute(ctx.catalog, "tfidf-counts", item,
                                           lambda: self._counts(src), force=ctx.force)
        if hit:
            log.debug("tfidf: counts of %s read from %s", src.split, path.name)
        else:
            log.info("tfidf: hashed n-gram counts of %d %s texts in %.1fs -> %s",
                     counts.shape[0], src.split, time.perf_counter() - t0, path.name)
        return counts, len(src.frame)

    def content_hash(self, prep) -> str:
        counts, _ = prep
        h = hash_key(counts.shape, digest(counts.indptr.tobytes()), digest(counts.indices.tobytes()),
                     digest(counts.data.tobytes()))
        return h

    def fit_on(self, base_state, prep_train, rows, prep_test, seed: int):
        """This view's state from the fold's shared IDF fit (``self.base``): the same
        state for a sparse view, with an SVD fitted on the same rows' A and B texts (and,
        with fit 'all', the test ones) for a dense one."""
        import scipy.sparse as sp

        from features import ngram

        if not self.dense:
            return base_state
        _, a, b = _roles(prep_train, None if self.fit_mode == "all" else rows)
        svd_docs = [a, b]
        if self.fit_mode == "all" and prep_test is not None and prep_test[1]:
            svd_docs += _roles(prep_test)[1:]
        return ngram.with_svd(base_state, sp.vstack(svd_docs, format="csr"), self.settings, seed)

    def fit(self, prep_train, rows, prep_test, seed: int):
        """Fit on the training ``rows`` (bool [n_train]); with fit 'all', on every text."""
        return self.fit_on(self.base.fit(prep_train, rows, prep_test, seed), prep_train, rows,
                           prep_test, seed)

    def transform(self, state, prep):
        from features import ngram

        p, a, b = _roles(prep)
        return ngram.pair_blocks(state, p, a, b, dense=self.dense, blocks=self.settings["blocks"])


# ---------------------------------------------------------------- building views

def build_views(inputs: list, learner_accepts_sparse: bool, kind: str, stack_cfg, embed_cfg,
                embed_key_of) -> list:
    """Views of a member's ``inputs`` (group names, view names, or {view: settings}).

    Dense feature groups are gathered into one GroupsView (first). ``embed_key_of(model)``
    gives the embed cache key parts of a model. Raises ValueError for a bad entry.
    """
    groups, views = [], []
    for entry in inputs:
        if isinstance(entry, dict):
            if len(entry) != 1:
                raise ValueError(f"an input given as a mapping names one view, got {entry!r}")
            (name, opts), = entry.items()
            opts = dict(opts or {})
        else:
            name, opts = str(entry), {}
        if name == TFIDF:
            s = {**dict(stack_cfg.tfidf), **opts}
            fit = s.pop("fit", "fold")
            mode = s.pop("mode", "auto")
            if mode not in ("auto", "sparse", "svd"):
                raise ValueError(f"tfidf: mode must be auto, sparse or svd, got {mode!r}")
            dense = mode == "svd" or (mode == "auto" and not (learner_accepts_sparse and kind == "linear"))
            views.append(TfidfView(s, fit, dense, embed_cfg.turn_sep))
        elif name == EMBEDDING_FULL:
            models = list(opts.pop("models", None) or embed_cfg.models)
            blocks = opts.pop("blocks", EMBEDDING_BLOCKS)
            if opts:
                raise ValueError(f"embedding-full: unknown setting(s) {sorted(opts)}; "
                                 "known: ['blocks', 'models']")
            if isinstance(blocks, str):
                blocks = [blocks]
            views.append(EmbeddingFullView(models, {m: embed_key_of(m) for m in models}, blocks))
        else:
            if opts:
                raise ValueError(f"feature group {name!r} takes no settings")
            groups.append(name)
    if groups:
        views.insert(0, GroupsView(groups))
    if not views:
        raise ValueError("a member needs at least one input (feature group or view)")
    return views


def view_from_description(desc: dict, config=None):
    """The view a run's manifest describes (``view.describe()``), for --stage predict."""
    kind = desc.get("view")
    if kind == "groups":
        return GroupsView(desc["groups"], desc["columns"])
    if kind == TFIDF:
        turn_sep = config.embed.turn_sep if config is not None else "\n\n"
        return TfidfView(desc["settings"], desc["fit"], desc["dense"], turn_sep)
    if kind == EMBEDDING_FULL:
        return EmbeddingFullView(desc["models"], {}, desc.get("blocks", EMBEDDING_BLOCKS))
    raise ValueError(f"unknown view {kind!r} in a run manifest; rerun --stage stack")


# ---------------------------------------------------------------- fitted-state cache

def state_to_bytes(state) -> bytes:
    return pickle.dumps(state, protocol=pickle.HIGHEST_PROTOCOL)


def state_from_bytes(data: bytes, expected_sha256: str | None = None):
    """A fitted view state; ValueError when the bytes do not match their SHA-256."""
    if expected_sha256 is not None and digest(data) != expected_sha256:
        raise ValueError("view state does not match its recorded SHA-256 (truncated or edited)")
    return pickle.loads(data)  # noqa: S301 (our own file, checked above)


def fitted_state(ctx, view, fold: int, rows: np.ndarray, prep_train, prep_test,
                 key_parts: dict[str, Any], seed: int = 0):
    """The view's state fitted on ``rows`` for ``fold``, from the cache or fitted and cached.

    ``key_parts`` identify the data (content hashes, folds); a fit-'all' view is keyed
    without the fold. A view with a ``base`` (TF-IDF: column choice and IDF) builds on the
    base's state, itself read or fitted and cached here under its own key, so views that
    share a base fit it once. Returns: (state, bytes, cache hit).
    """
    from pipeline.artifacts import Item, get_or_compute

    if view.fit_mode == "none":
        return None, None, True
    parts = {**key_parts, "view": view.key(), "seed": seed}
    if view.fit_mode == "fold":
        parts["fold"] = int(fold)
    else:
        parts.pop("folds", None)
    item = Item({"view": view.name}, ("view-state", VIEWS_VERSION, parts), {"key": parts})

    def fit():
        t0 = time.perf_counter()
        base = getattr(view, "base", None)
        if base is None:
            state = view.fit(prep_train, rows, prep_test, seed)
        else:  # the shared part from its own cache entry (fitted there when missing)
            base_state, _, _ = fitted_state(ctx, base, fold, rows, prep_train, prep_test, key_parts)
            state = view.fit_on(base_state, prep_train, rows, prep_test, seed)
        log.debug("view %s: fitted for fold %s in %.2fs", view.name, fold, time.perf_counter() - t0)
        return state, state_to_bytes(state)

    (state, data), hit, _ = get_or_compute(ctx.catalog, "view-state", item, fit, force=ctx.force)
    return state, data, hit


def read_state(path, meta: dict):
    """(state, bytes) of a cached fitted view state (kind "view-state"), or None when
    missing or not matching the SHA-256 in its JSON."""
    meta_path = path.with_suffix(".json")
    if not (path.is_file() and meta_path.is_file()):
        return None
    try:
        data = path.read_bytes()
        return state_from_bytes(data, read_json(meta_path)["sha256"]), data
    except (OSError, ValueError, KeyError, EOFError, pickle.UnpicklingError) as exc:
        log.warning("view state %s unreadable (%s); refitting it", path, exc)
        return None


def write_state(path, obj, meta: dict) -> None:
    """A fitted view state's bytes, then its JSON (SHA-256, key, seconds)."""
    _, data = obj
    write_bytes_atomic(path, data)
    write_json_atomic(path.with_suffix(".json"), {"sha256": digest(data), "key": meta["key"],
                                                  "seconds": meta.get("seconds")})


def read_counts(path, meta: dict):
    """Cached hashed n-gram counts (kind "tfidf-counts") with ``meta['rows']`` rows, or None."""
    import scipy.sparse as sp

    if not path.is_file():
        return None
    try:
        counts = sp.load_npz(path).tocsr()
    except (OSError, ValueError, EOFError) as exc:
        log.warning("tfidf: cached counts %s unreadable (%s); recomputing", path, exc)
        return None
    return counts if counts.shape[0] == meta["rows"] else None


def write_counts(path, counts, meta: dict) -> None:
    """Hashed n-gram counts as an uncompressed .npz, atomically."""
    import scipy.sparse as sp

    from pipeline.catalog import atomic_path

    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            sp.save_npz(fh, counts, compressed=False)
