"""Shared fixtures: tiny Kaggle-format CSVs written to tmp_path."""
from __future__ import annotations

import json
import os
import sys
import types
from pathlib import Path

import pandas as pd
import pytest

# Nothing in the tests may reach a model hub (there is none on CI).
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def _cell(*turns) -> str:
    return json.dumps(list(turns))


def make_rows(n: int = 12, with_labels: bool = True, start_id: int = 0) -> pd.DataFrame:
    """n arena-like rows: varied lengths, a null turn, a multi-turn case, a surrogate."""
    rows = []
    for i in range(n):
        prompt = _cell(f"Question {i}: how do I sort a list in Python?")
        a = _cell("Use sorted(xs)." + " More detail." * (i % 4))
        b = _cell("You can call xs.sort() or sorted(xs).\n\n- in place\n- copy" * (1 + i % 3))
        if i == 1:
            b = _cell(None)
        if i == 2:
            prompt = _cell("first turn", "second turn")
            a = _cell("answer one", "answer two")
        if i == 3:
            a = '["bad surrogate \\ud83d here"]'
        row = {"id": start_id + i, "model_a": "m1", "model_b": "m2", "prompt": prompt,
               "response_a": a, "response_b": b}
        if with_labels:
            label = i % 3
            row |= {"winner_model_a": int(label == 0), "winner_model_b": int(label == 1),
                    "winner_tie": int(label == 2)}
        rows.append(row)
    return pd.DataFrame(rows)


@pytest.fixture
def tiny_csvs(tmp_path):
    """(train_path, test_path) of a 12-row train and 5-row test file."""
    train = tmp_path / "train.csv"
    test = tmp_path / "test.csv"
    make_rows(12).to_csv(train, index=False)
    make_rows(5, with_labels=False, start_id=100).drop(columns=["model_a", "model_b"]).to_csv(test, index=False)
    return train, test


def save_tiny_bert(folder: Path) -> str:
    """Save a seeded 2-layer, 32-dim BERT with the bundled model's tokenizer to ``folder``.

    Loads in milliseconds, so tests of training and caching stay fast; any local model
    path is a supported model setting. Returns: the folder as a string.
    """
    from pipeline.randmodels import save_random_encoder

    return save_random_encoder(folder)


DECODER_ARCHS = ("llama", "gemma2", "qwen2")


def save_tiny_decoder(folder: Path, arch: str) -> str:
    """A seeded 2-layer, 32-dim random decoder LM of family ``arch`` saved to ``folder``."""
    from pipeline.randmodels import save_random_decoder

    return save_random_decoder(folder, arch)


def install_fake_features(monkeypatch, feats_of, swap_features) -> None:
    """Replace pipeline.featurize / features.swap by stand-ins built on ``feats_of(frame)``
    and ``swap_features(df)``, per the features contract (no encoder is loaded)."""
    featurize = types.ModuleType("pipeline.featurize")
    featurize.load_features = lambda ctx, groups=None: (feats_of(ctx.dataset.train),
                                                        feats_of(ctx.dataset.test))
    featurize.features_for = lambda ctx, frame: feats_of(frame)
    swap = types.ModuleType("features.swap")
    swap.swap_features = swap_features
    swap.column_group = lambda col: col.split("__", 1)[0]
    monkeypatch.setitem(sys.modules, "pipeline.featurize", featurize)
    monkeypatch.setitem(sys.modules, "features.swap", swap)
