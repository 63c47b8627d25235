"""The notebook API: the same results as the command line, DataFrames in and out, and the
config layers (defaults < demo settings < experiment file < flags)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipeline.config import Config, ConfigError, build_config
from pipeline.demo import demo_overrides

ROOT = Path(__file__).resolve().parents[2]


def test_layers_demo_then_file_then_flags(tmp_path):
    exp = tmp_path / "short.yaml"
    exp.write_text("finetune:\n  epochs: 0.5\nstack:\n  seeds: [0, 1]\n")
    demo_len = demo_overrides()["finetune"]["max_length"]
    assert demo_len != Config().finetune.max_length
    cfg = build_config(exp, demo_layer=demo_overrides())
    # The file's changes are applied over the demo's settings, which it does not drop.
    assert cfg.name == "short" and cfg.finetune.epochs == 0.5 and cfg.stack.seeds == (0, 1)
    assert cfg.finetune.max_length == demo_len
    exp.write_text("finetune:\n  max_length: 64\n")
    assert build_config(exp, demo_layer=demo_overrides()).finetune.max_length == 64
    # Flags come last.
    cfg = build_config(exp, demo_layer=demo_overrides(), overrides={"finetune": {"max_length": 32}})
    assert cfg.finetune.max_length == 32
    assert build_config(None, demo_layer=demo_overrides()).name == "demo"
    assert build_config({"stack": {"n_folds": 3}}).stack.n_folds == 3
    with pytest.raises(ConfigError, match="unknown key"):
        build_config({"stack": {"n_fold": 3}})


def test_command_line_demo_with_a_config_keeps_the_demo_settings(tmp_path):
    from pipeline.cli import build_parser, make_context

    exp = tmp_path / "mine.yaml"
    exp.write_text("stack:\n  seeds: [0, 1]\n")
    args = build_parser().parse_args(["--demo", "--config", str(exp), "--workdir", str(tmp_path / "w"),
                                      "--max-rows", "40"])
    cfg = make_context(args).config
    assert cfg.name == "mine" and cfg.stack.seeds == (0, 1)
    assert cfg.finetune.max_length == demo_overrides()["finetune"]["max_length"]
    assert cfg.finetune.max_rows == 40


def test_experiment_takes_keyword_changes_and_refuses_bad_ones(tmp_path):
    from pipeline.api import Experiment

    exp = Experiment(workdir=tmp_path, name="seeds2", stack={"seeds": [0, 1]})
    assert exp.name == "seeds2" and exp.config.stack.seeds == (0, 1)
    with pytest.raises(ConfigError):
        Experiment(workdir=tmp_path, stack={"n_folds": 1})
    with pytest.raises(ValueError, match="stage must be"):
        exp.stage("predict")
    with pytest.raises(TypeError, match="DataFrame or a CSV path"):
        exp.fit(train=[1, 2, 3])


def test_load_run_without_a_run_says_what_to_do(tmp_path):
    from pipeline.api import load_run
    from pipeline.data import DataError

    with pytest.raises(DataError, match="fit the experiment first"):
        load_run("nothing", workdir=tmp_path)


@pytest.mark.slow
def test_api_equals_the_command_line_on_the_demo(tmp_path, caplog):
    """Experiment(demo=True).fit() gives the command line's submission, OOF and score;
    DataFrame inputs give the same as the CSVs; predict_proba equals --stage predict."""
    from pipeline.api import Experiment, load_run

    cli_work, api_work = tmp_path / "cli", tmp_path / "api"
    r = subprocess.run([sys.executable, str(ROOT / "run_pipeline.py"), "--demo", "--workdir",
                        str(cli_work)], cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stderr[-3000:]
    # stdout holds one JSON line (the logs are on stderr), and the log ends on the score.
    summary = json.loads(r.stdout.strip())
    assert r.stdout.strip().count("\n") == 0
    assert "OOF log loss" in r.stderr.strip().splitlines()[-1]

    run = Experiment(demo=True, workdir=api_work).fit()
    assert run.name == "demo" and run.run_dir == api_work / "runs" / "demo"
    assert summary["oof_log_loss"] == round(run.oof_log_loss, 6)
    cli_run = load_run("demo", workdir=cli_work)
    assert run.oof_log_loss == cli_run.oof_log_loss and run.accuracy == cli_run.accuracy
    pd.testing.assert_frame_equal(run.submission, cli_run.submission)
    pd.testing.assert_frame_equal(run.oof, cli_run.oof)
    assert summary["submission"] == str(cli_work / "runs" / "demo" / "submission.csv")
    scores = run.member_scores
    assert list(scores.columns) == ["member", "oof_log_loss", "accuracy", "blend_weight"]
    assert len(scores) == len(run.metrics["member_names"]) and scores["oof_log_loss"].is_monotonic_increasing
    assert run.report_path.is_file() and "Run(" in repr(run)
    report = run.report_path.read_text()
    # Diagnostics: position bias per member (linear members fitted on pairs: exactly 0),
    # the length-bias plot, and the blend panel (several members).
    position = run.metrics["diagnostics"]["position_bias"]
    assert set(position) == set(run.metrics["member_names"])
    assert position["linear_tfidf"]["flip_rate"] == 0.0 and position["lgbm_tfidf"]["identical_pairs"] >= 0
    for section in ("## Position bias", "## Length bias", "![blend weights]"):
        assert section in report

    # DataFrames in (a new experiment name; every cache is found by content).
    train = pd.read_csv(api_work / "raw" / "demo" / "train.csv")
    test = pd.read_csv(api_work / "raw" / "demo" / "test.csv")
    again = Experiment(demo=True, workdir=api_work, name="frames").fit(train, test)
    assert again.name == "frames"
    pd.testing.assert_frame_equal(again.submission, run.submission)
    assert again.oof_log_loss == run.oof_log_loss

    # A setting that changes nothing here (the CPU demo blends no fine-tuned member) gives
    # bit-identical predictions: the run says so, and the report marks it.
    import logging

    with caplog.at_level(logging.WARNING, logger="pipeline.outputs"):
        same = Experiment(demo=True, workdir=api_work, name="evalbatch",
                          finetune={"eval_batch_size": 64}).fit()
    assert same.metrics["result_sha256"] == run.metrics["result_sha256"]
    assert "bit-identical" in caplog.text
    from pipeline.report import experiments_table

    row = [r for r in experiments_table(api_work / "runs").splitlines() if r.startswith("| evalbatch |")][0]
    assert "finetune.eval_batch_size=64" in row and "no effect" in row

    # predict_proba: DataFrame in, the submission's probabilities out (same swap TTA).
    preds = load_run("demo", workdir=api_work).predict_proba(test)
    assert list(preds.columns) == list(run.submission.columns)
    assert list(preds["id"]) == list(run.submission["id"])
    assert np.allclose(preds.iloc[:, 1:].to_numpy(), run.submission.iloc[:, 1:].to_numpy(), atol=1e-6)
