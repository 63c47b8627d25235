"""Submission validation, and the demo end to end through stack and predict."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.data import DataError, validate_submission

ROOT = Path(__file__).resolve().parents[2]


def _sub(ids=("1", "2", "3")):
    p = np.array([[0.5, 0.3, 0.2], [0.1, 0.8, 0.1], [1 / 3, 1 / 3, 1 / 3]])
    df = pd.DataFrame(p[: len(ids)], columns=["winner_model_a", "winner_model_b", "winner_tie"])
    df.insert(0, "id", list(ids))
    return df


def test_valid_submission_passes():
    validate_submission(_sub(), pd.Series(["1", "2", "3"]))


@pytest.mark.parametrize("broken, match", [
    (lambda s: s.iloc[:2], "rows"),                                       # missing id
    (lambda s: s.iloc[[1, 0, 2]].reset_index(drop=True), "order"),        # wrong order
    (lambda s: s.assign(winner_tie=0.5), "sum to 1"),                     # rows not summing to 1
    (lambda s: s.rename(columns={"winner_tie": "tie"}), "columns"),       # wrong column name
    (lambda s: s[["id", "winner_model_b", "winner_model_a", "winner_tie"]], "columns"),
    (lambda s: s.assign(winner_model_a=np.nan), "finite"),
])
def test_validator_rejects_wrong_files(broken, match):
    with pytest.raises(DataError, match=match):
        validate_submission(broken(_sub()), pd.Series(["1", "2", "3"]))


def test_predict_without_a_run_names_the_fix(tmp_path):
    from pipeline.predict import load_manifest

    with pytest.raises(DataError, match="--stage stack"):
        load_manifest(tmp_path / "runs" / "nothing")


def _cli(*args, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(ROOT / "run_pipeline.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_demo_end_to_end_stack_then_predict(tmp_path):
    """--demo through embed, features, stack (real bundled model), then predict on the test file."""
    work = tmp_path / "work"
    for stage in ("embed", "features", "stack"):
        r = _cli("--demo", "--workdir", str(work), "--stage", stage, cwd=tmp_path)
        assert r.returncode == 0, r.stderr[-3000:]
    run = work / "runs" / "demo"
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["oof_log_loss"] < metrics["prior_log_loss"]
    test_csv = work / "raw" / "demo" / "test.csv"
    out = tmp_path / "preds.csv"
    r = _cli("--workdir", str(work), "--stage", "predict", "--run", "demo", "--test", str(test_csv),
             "--out", str(out), cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    preds = pd.read_csv(out, dtype={"id": str})
    sub = pd.read_csv(run / "submission.csv", dtype={"id": str})
    assert list(preds["id"]) == list(sub["id"])
    assert np.allclose(preds.iloc[:, 1:].to_numpy(), sub.iloc[:, 1:].to_numpy(), atol=1e-6)
    r = _cli("--workdir", str(work), "--stage", "report", cwd=tmp_path)
    assert r.returncode == 0 and "| demo |" in r.stdout
