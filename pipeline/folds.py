"""Cross-validation folds: assigned once per training set, saved, shared by every member.

Rows that share a prompt go to the same fold (the Kaggle data repeats prompts across
pairs, so a prompt seen in training would leak into its validation fold otherwise), and
folds are stratified by label where the group structure allows it.
"""
from __future__ import annotations

import hashlib
import logging
import warnings

import numpy as np
import pandas as pd
from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

from pipeline.catalog import Catalog, frame_hash

log = logging.getLogger(__name__)
FOLDS_VERSION = 1


def prompt_groups(train: pd.DataFrame) -> np.ndarray:
    """Integer group id per row: rows with the same prompt turns share one."""
    keys = [hashlib.sha1("\x1e".join(p).encode("utf-8", "surrogatepass")).hexdigest()
            for p in train["prompt"]]
    return pd.factorize(pd.Series(keys))[0]


def assign_folds(train: pd.DataFrame, n_folds: int, seed: int) -> pd.DataFrame:
    """Fold of every training row.

    Returns: DataFrame [id (str), fold (int8)] in the train frame's order; each fold is
    non-empty, and rows with the same prompt share a fold.
    """
    groups = prompt_groups(train)
    n_groups = int(groups.max()) + 1 if len(groups) else 0
    if n_folds < 2:
        raise ValueError(f"stack.n_folds must be at least 2, got {n_folds}")
    if n_groups < n_folds:
        raise ValueError(f"only {n_groups} distinct prompts in {len(train)} training rows: "
                         f"too few for {n_folds} folds; lower stack.n_folds")
    fold = np.full(len(train), -1, dtype=np.int8)
    labels = train["label"].to_numpy()
    counts = np.bincount(labels, minlength=3)
    if counts[counts > 0].min() >= n_folds:
        splitter = StratifiedGroupKFold(n_splits=n_folds, shuffle=True, random_state=seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            splits = list(splitter.split(np.zeros(len(train)), labels, groups))
    else:
        # Too few rows of some class to stratify: shuffle groups, then balance by size.
        perm = np.random.default_rng(seed).permutation(n_groups)
        splits = list(GroupKFold(n_splits=n_folds).split(np.zeros(len(train)), groups=perm[groups]))
    for k, (_, val) in enumerate(splits):
        fold[val] = k
    return pd.DataFrame({"id": train["id"].astype(str).to_numpy(), "fold": fold})


def check_can_cross_validate(train: pd.DataFrame, n_folds: int, seed: int,
                             max_rows: int | None = None) -> None:
    """DataError, before any stage runs, when ``train`` cannot be cross-validated in
    ``n_folds`` prompt-grouped folds (or, with ``max_rows``, when the fine-tune stage's
    first ``max_rows`` rows leave a fold without training or validation rows)."""
    from pipeline.data import DataError

    groups = prompt_groups(train)
    n_groups = int(groups.max()) + 1 if len(groups) else 0
    if n_groups < n_folds:
        raise DataError(f"the training data has {len(train)} rows with {n_groups} distinct "
                        f"prompt(s): too few for stack.n_folds={n_folds} prompt-grouped folds; "
                        f"set stack.n_folds to at most {max(n_groups, 2)} or add rows"
                        + (" (at least 2 distinct prompts are needed)" if n_groups < 2 else ""))
    if max_rows is not None and max_rows < len(train):
        folds = assign_folds(train, n_folds, seed)["fold"].to_numpy()[:max_rows]
        present = np.bincount(folds, minlength=n_folds)
        if (present == 0).any() or (present == len(folds)).any():
            raise DataError(f"--max-rows {max_rows}: the first {max_rows} training rows fall in "
                            f"{int((present > 0).sum())} of the {n_folds} folds, so some fold "
                            "would have no validation (or no training) rows; raise --max-rows")


def load_or_make_folds(catalog: Catalog, train: pd.DataFrame, n_folds: int, seed: int,
                       force: bool = False) -> pd.DataFrame:
    """Folds for this training set from the cache, or assigned and saved once.

    The cache key is the training set's content (ids, prompts, labels), K and the seed,
    so every experiment on the same data gets the same folds.
    """
    from pipeline.artifacts import Item, get_or_compute

    content = frame_hash(train[["id", "prompt", "label"]])
    item = Item({"k": n_folds}, ("folds", FOLDS_VERSION, content, n_folds, seed),
                {"rows": len(train), "config": {"n_folds": n_folds, "seed": seed,
                                                "train_hash": content}})
    folds, hit, path = get_or_compute(catalog, "folds", item,
                                      lambda: assign_folds(train, n_folds, seed), force=force)
    (log.debug if hit else log.info)("folds: %s %s (%d rows, %d folds)",
                                     "read" if hit else "assigned and saved", path.name,
                                     len(folds), n_folds)
    folds["id"] = folds["id"].astype(str)
    return folds
