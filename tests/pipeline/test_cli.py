"""The command line: help, clear errors without tracebacks, nothing written on bad input."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from pipeline.cli import main

ROOT = Path(__file__).resolve().parents[2]


def test_help_explains_every_flag():
    out = subprocess.run([sys.executable, "run_pipeline.py", "--help"], cwd=ROOT,
                         capture_output=True, text=True, check=True).stdout
    for flag in ("--stage", "--config", "--train", "--test", "--workdir", "--demo", "--force",
                 "--device", "--run", "--out", "--folds", "--max-rows"):
        assert flag in out


def test_missing_train_file_says_what_to_do(tmp_path, caplog):
    code = main(["--stage", "features", "--workdir", str(tmp_path)])
    assert code == 2
    assert "raw/train.csv does not exist" in caplog.text and "--demo" in caplog.text
    assert not (tmp_path / "runs").exists()  # nothing written


def test_bad_config_is_a_clean_error(tmp_path, caplog):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("stack:\n  nfolds: 2\n")
    assert main(["--config", str(cfg), "--workdir", str(tmp_path)]) == 2
    assert "unknown key 'nfolds'" in caplog.text


def test_bad_input_leaves_no_artifacts(tmp_path, caplog):
    train = tmp_path / "train.csv"
    train.write_text("id,prompt,response_a,response_b,winner_model_a,winner_model_b,winner_tie\n"
                     '1,"[""q""]","[""a""]","[""b""]",1,1,0\n')
    test = tmp_path / "test.csv"
    test.write_text('id,prompt,response_a,response_b\n9,"[""q""]","[""a""]","[""b""]"\n')
    work = tmp_path / "work"
    assert main(["--stage", "embed", "--train", str(train), "--test", str(test),
                 "--workdir", str(work)]) == 2
    assert "exactly one 1" in caplog.text
    written = [p for p in work.rglob("*") if p.is_file()] if work.exists() else []
    assert written == []


def test_a_run_sweeps_temp_files_left_by_killed_writers(tmp_path, caplog):
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()  # its pid is now free: the writer of the leftover below is gone
    leftover = tmp_path / "cache" / "features" / f".length-train-k.parquet.{proc.pid}-q1w2.tmp"
    leftover.parent.mkdir(parents=True)
    leftover.write_bytes(b"half a parquet file")
    caplog.set_level("INFO")
    assert main(["--stage", "report", "--workdir", str(tmp_path)]) == 0
    assert not leftover.exists()
    assert "removed 1 temporary file(s) left by killed runs" in caplog.text


def test_a_stage_run_alone_says_which_upstream_output_it_computes_itself(tiny_csvs, tmp_path):
    """The stage declarations name what each stage reads; --stage stack on a fresh
    workdir warns that it will embed texts and compute features, and stops warning once
    the embed and features stages have run."""
    from pipeline.catalog import Catalog
    from pipeline.config import Config
    from pipeline.context import RunContext
    from pipeline.runner import announce_missing_inputs
    from pipeline.stages import STAGES, upstream

    assert [s.name for s in upstream(STAGES["stack"])] == ["embed", "features"]
    assert [s.name for s in upstream(STAGES["features"])] == ["embed"]
    train, test = tiny_csvs
    ctx = RunContext(config=Config(), catalog=Catalog(tmp_path / "w"), train_path=train,
                     test_path=test, device_request="cpu")
    said = announce_missing_inputs(ctx, STAGES["stack"])
    assert len(said) == 2
    assert said[0].startswith("stage stack: ") and "texts not embedded with all-MiniLM-L6-v2" in said[0]
    assert "run --stage embed first" in said[0]
    assert "feature group(s) length/train" in said[1] and "run --stage features first" in said[1]
    STAGES["embed"].load()(ctx)
    said = announce_missing_inputs(ctx, STAGES["stack"])
    assert len(said) == 1 and "--stage features" in said[0]
    STAGES["features"].load()(ctx)
    assert announce_missing_inputs(ctx, STAGES["stack"]) == []
