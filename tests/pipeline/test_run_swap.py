"""A run's outputs are built in a staging folder and swapped in (issue #11, item 2): while
the stack writes, runs/<exp> still holds the previous run's files; other stages' files stay."""
from __future__ import annotations

import json

import pytest

from pipeline.catalog import Catalog
from pipeline.config import Config, apply_overrides
from pipeline.context import RunContext
from tests.conftest import make_rows
from tests.pipeline.test_finetune import _fake_features


def _ctx(tmp_path, seed):
    make_rows(16).to_csv(tmp_path / "train.csv", index=False)
    make_rows(4, with_labels=False, start_id=100).to_csv(tmp_path / "test.csv", index=False)
    cfg = apply_overrides(Config(), {"name": "exp", "stack": {
        "n_folds": 2, "num_boost_round": 5, "early_stopping": False, "use_finetune": False,
        "seeds": [seed], "members": {"lgbm_all": ["all"]},
        "lgbm_params": {"min_data_in_leaf": 2, "num_threads": 1}}})
    return RunContext(config=cfg, catalog=Catalog(tmp_path / "w"), train_path=tmp_path / "train.csv",
                      test_path=tmp_path / "test.csv", device_request="cpu")


def test_outputs_are_swapped_in_whole_and_other_files_stay(tmp_path, monkeypatch):
    import pipeline.report as report
    from pipeline import stack

    _fake_features(monkeypatch)
    first = _ctx(tmp_path, 0)
    stack.run_stage(first)
    run_dir = first.run_dir
    old_metrics = (run_dir / "metrics.json").read_text()
    (run_dir / "predictions.csv").write_text("id\n1\n")  # another stage's file
    (run_dir / "finetune").mkdir()
    (run_dir / "finetune" / "member.json").write_text("{}")

    seen = []
    real = report.write_run_report

    def checking(where, metrics, *a, **k):
        # The new report is being written: the visible folder still holds the old run.
        seen.append((where != run_dir, (run_dir / "metrics.json").read_text() == old_metrics,
                     json.loads((where / "metrics.json").read_text())["config"]["stack"]["seeds"]))
        return real(where, metrics, *a, **k)

    monkeypatch.setattr(report, "write_run_report", checking)
    second = _ctx(tmp_path, 1)
    stack.run_stage(second)
    assert seen == [(True, True, [1])]
    assert json.loads((run_dir / "metrics.json").read_text())["config"]["stack"]["seeds"] == [1]
    assert (run_dir / "predictions.csv").read_text() == "id\n1\n"
    assert (run_dir / "finetune" / "member.json").is_file()
    assert (run_dir / "models" / "manifest.json").is_file() and (run_dir / "report.md").is_file()
    leftovers = [p.name for p in first.catalog.runs_dir.iterdir() if p.name.startswith(".exp.")
                 and not p.name.endswith(".lock")]
    assert not leftovers


@pytest.mark.parametrize("exchange", [True, False])
def test_swap_in_with_and_without_an_atomic_exchange(tmp_path, monkeypatch, exchange):
    import pipeline.catalog as catalog

    if not exchange:
        monkeypatch.setattr(catalog, "exchange_dirs", lambda a, b: False)
    target, staging = tmp_path / "exp", tmp_path / ".exp.staging-1"
    target.mkdir()
    staging.mkdir()
    (target / "keep.txt").write_text("other stage")
    (target / "metrics.json").write_text("old")
    (staging / "metrics.json").write_text("new")
    catalog.swap_in(staging, target)
    assert (target / "metrics.json").read_text() == "new"
    assert (target / "keep.txt").read_text() == "other stage"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exp"]
