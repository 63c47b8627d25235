"""The experiments table: what each run changed, its data, scores, and no-effect runs."""
from __future__ import annotations

import json

from pipeline.config import Config, apply_overrides
from pipeline.report import config_changes, experiments_table


def _run(runs, name, loss, result, changes=None, rows=300):
    cfg = apply_overrides(Config(), {"name": name, **(changes or {})})
    d = runs / name
    d.mkdir(parents=True)
    (d / "metrics.json").write_text(json.dumps({
        "oof_log_loss": loss, "oof_accuracy": 0.5, "prior_log_loss": 1.09, "rows": rows,
        "blend_weights": {"lgbm_tfidf": 0.6, "linear_tfidf": 0.4}, "config": cfg.to_dict(),
        "train_path": "/x/raw/demo/train.csv", "train_sha256": "abcdef0123456789",
        "result_sha256": result, "date": "2026-11-30 03:00:00"}))


def test_config_changes_lists_only_differences():
    cfg = apply_overrides(Config(), {"name": "x", "stack": {"seeds": [0, 1], "lgbm_params": {"num_leaves": 31}}})
    assert config_changes(cfg.to_dict()) == {"stack.lgbm_params": {"num_leaves": 31}, "stack.seeds": [0, 1]}
    assert config_changes(Config(name="y").to_dict()) == {}


def test_table_shows_changes_data_order_and_runs_with_no_effect(tmp_path):
    runs = tmp_path / "runs"
    _run(runs, "default", 0.77, "r1")
    _run(runs, "leaves31", 0.77, "r1", {"stack": {"lgbm_params": {"num_leaves": 31}}})
    _run(runs, "seeds2", 0.76, "r2", {"stack": {"seeds": [0, 1]}})
    text = experiments_table(runs)
    lines = [line for line in text.splitlines() if line.startswith("| ") and "---" not in line][1:]
    assert [line.split("|")[1].strip() for line in lines] == ["seeds2", "default", "leaves31"]
    seeds2, default, leaves = lines
    assert "stack.seeds=[0,1]" in seeds2 and "no effect" not in seeds2
    assert "(defaults)" in default and "no effect" not in default
    assert 'stack.lgbm_params={"num_leaves":31}' in leaves
    assert "result identical to default: no effect" in leaves
    assert "train.csv, 300, abcdef01" in default and "2026-11-30 03:00:00" in default
