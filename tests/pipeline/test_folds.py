"""Folds: grouped by prompt, stratified, every row once, saved and reused."""
from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.catalog import Catalog
from pipeline.folds import assign_folds, load_or_make_folds


def _train(n=60, n_prompts=20, labels=(0, 1, 2)):
    rng = np.random.default_rng(0)
    return pd.DataFrame({
        "id": [str(i) for i in range(n)],
        "prompt": [[f"prompt {i % n_prompts}"] for i in range(n)],
        "label": rng.choice(labels, size=n).astype(np.int8),
    })


def test_every_row_once_and_prompts_never_split():
    train = _train()
    folds = assign_folds(train, 5, seed=1)
    assert folds["id"].tolist() == train["id"].tolist()
    assert set(folds["fold"]) == set(range(5))
    by_prompt = pd.DataFrame({"p": train["prompt"].str[0], "f": folds["fold"]}).groupby("p")["f"].nunique()
    assert (by_prompt == 1).all()


def test_rare_class_falls_back_to_grouped_folds():
    train = _train(labels=(0, 1))
    train.loc[0, "label"] = 2  # one tie: too few to stratify
    folds = assign_folds(train, 5, seed=1)
    assert (folds["fold"] >= 0).all()


def test_folds_are_saved_once_and_reused(tmp_path):
    catalog = Catalog(tmp_path)
    train = _train()
    first = load_or_make_folds(catalog, train, 5, 42)
    files = list((tmp_path / "cache" / "folds").glob("*.parquet"))
    assert len(files) == 1
    mtime = files[0].stat().st_mtime_ns
    second = load_or_make_folds(catalog, train, 5, 42)
    assert files[0].stat().st_mtime_ns == mtime
    pd.testing.assert_frame_equal(first, second)
    other = load_or_make_folds(catalog, train, 3, 42)  # another K: another file
    assert other["fold"].max() == 2
