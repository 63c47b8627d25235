"""Operating-system errors and damaged run files end in one line and exit 2, never a
traceback (issue #11, item 6)."""
from __future__ import annotations

import errno
import json
import os

import pytest

from pipeline.cli import main, os_error_message


def _no_traceback(caplog):
    assert "Traceback" not in caplog.text


def test_a_workdir_that_is_a_file(tmp_path, caplog):
    target = tmp_path / "workdir.txt"
    target.write_text("not a folder")
    assert main(["--demo", "--workdir", str(target), "--stage", "features"]) == 2
    assert str(target) in caplog.text and "--workdir" in caplog.text
    _no_traceback(caplog)
    assert target.read_text() == "not a folder"


def test_a_workdir_through_a_symlink_loop(tmp_path, caplog):
    os.symlink(tmp_path / "b", tmp_path / "a")
    os.symlink(tmp_path / "a", tmp_path / "b")
    assert main(["--demo", "--workdir", str(tmp_path / "a" / "work"), "--stage", "features"]) == 2
    assert "symbolic links" in caplog.text
    _no_traceback(caplog)


def test_a_full_disk_says_so_and_keeps_what_was_finished(tmp_path, caplog, monkeypatch):
    import pipeline.demo as demo

    def full(folder):
        raise OSError(errno.ENOSPC, "No space left on device", str(folder))

    monkeypatch.setattr(demo, "write_demo", full)
    assert main(["--demo", "--workdir", str(tmp_path / "w"), "--stage", "features"]) == 2
    assert "the disk is full" in caplog.text and "finished artifacts are kept" in caplog.text
    _no_traceback(caplog)


@pytest.mark.skipif(__import__("torch").cuda.is_available(), reason="needs a machine without CUDA")
def test_device_cuda_without_cuda_is_exit_2(tmp_path, caplog):
    assert main(["--demo", "--workdir", str(tmp_path / "w"), "--stage", "features",
                 "--device", "cuda"]) == 2
    assert "no CUDA GPU is visible" in caplog.text
    _no_traceback(caplog)


def test_report_lists_the_good_runs_and_exits_2_naming_damaged_metrics(tmp_path, caplog):
    runs = tmp_path / "w" / "runs"
    for name, text in {"cut": '{"oof_log_loss": 0.9', "list": "[]", "odd": '{"blend_weights": 3}'}.items():
        (runs / name).mkdir(parents=True)
        (runs / name / "metrics.json").write_text(text)
    (runs / "good").mkdir()
    (runs / "good" / "metrics.json").write_text(json.dumps({"oof_log_loss": 0.8, "rows": 10}))
    assert main(["--stage", "report", "--workdir", str(tmp_path / "w")]) == 2
    for name in ("cut", "list", "odd"):
        assert str(runs / name / "metrics.json") in caplog.text
    assert "3 damaged metrics file(s) left out" in caplog.text and "--stage stack" in caplog.text
    assert "| good |" in (runs / "experiments.md").read_text()  # the others are still reported
    _no_traceback(caplog)


def test_predict_with_a_damaged_manifest_is_exit_2(tmp_path, caplog):
    models = tmp_path / "w" / "runs" / "exp" / "models"
    models.mkdir(parents=True)
    (models / "manifest.json").write_text('{"members": {"a"')
    test = tmp_path / "test.csv"
    test.write_text("id,prompt,response_a,response_b\n1,\"[\"\"q\"\"]\",\"[\"\"a\"\"]\",\"[\"\"b\"\"]\"\n")
    assert main(["--stage", "predict", "--run", "exp", "--workdir", str(tmp_path / "w"),
                 "--test", str(test)]) == 2
    assert "manifest.json cannot be read" in caplog.text and "--stage stack" in caplog.text
    _no_traceback(caplog)


def test_os_error_message_names_path_and_fix():
    msg = os_error_message(IsADirectoryError(errno.EISDIR, "Is a directory", "/tmp/out"))
    assert msg == "Is a directory: /tmp/out; that path is a folder: --out (and data paths) must name a file"
    assert "check the path" in os_error_message(OSError(errno.EIO, "I/O error", "/x"))


def test_a_workdir_under_proc(tmp_path, caplog):
    assert main(["--demo", "--workdir", "/proc/prefstack-test/work", "--stage", "features"]) == 2
    assert "/proc/prefstack-test" in caplog.text and "--workdir" in caplog.text
    _no_traceback(caplog)


@pytest.mark.parametrize("code,hint", [(errno.EACCES, "permission denied"), (errno.EROFS, "read-only")])
def test_an_unwritable_workdir_says_so(tmp_path, caplog, monkeypatch, code, hint):
    """Tests run as root here, so chmod cannot make a folder unwritable: the error is raised
    where the first write happens, as the operating system would."""
    import pipeline.demo as demo

    def refuse(folder):
        raise OSError(code, os.strerror(code), str(folder))

    monkeypatch.setattr(demo, "write_demo", refuse)
    assert main(["--demo", "--workdir", str(tmp_path / "w"), "--stage", "features"]) == 2
    assert hint in caplog.text and "--workdir" in caplog.text and str(tmp_path / "w") in caplog.text
    _no_traceback(caplog)
