"""bench/feature_speed.py: the sets it builds, --only, and the fresh-process column."""
from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pandas as pd

from tests.conftest import make_rows

ROOT = Path(__file__).resolve().parents[2]
_spec = importlib.util.spec_from_file_location("feature_speed", ROOT / "bench" / "feature_speed.py")
bench = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(bench)


def test_only_builds_the_same_set_alone(tiny_csvs, tmp_path):
    other = tmp_path / "other.csv"
    make_rows(7, start_id=50).to_csv(other, index=False)
    paths = [str(tiny_csvs[0]), str(other)]
    every = dict(bench.build_sets(paths, rows=20))
    assert list(every) == ["train.csv", "other.csv", "resampled 20", "kaggle-length 20",
                           "kaggle-diverse 20"]
    for name, frame in every.items():
        (only_name, only_frame), = bench.build_sets(paths, rows=20, only=bench.set_key(name))
        assert only_name == name
        pd.testing.assert_frame_equal(only_frame[["id", *bench.TEXT_COLUMNS]],
                                      frame[["id", *bench.TEXT_COLUMNS]])
    assert bench.build_sets(paths, rows=20, only="nothing.csv") == []


def test_only_prints_one_json_line(tiny_csvs, capsys):
    assert bench.main(["--data", str(tiny_csvs[0]), "--rows", "10", "--repeats", "1",
                       "--only", "kaggle-length"]) == 0
    out = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert out["total"] > 0 and out["first"] == out["total"]


def test_table_with_fresh_process_column(tiny_csvs, tmp_path):
    out = tmp_path / "speed.md"
    assert bench.fresh_total("resampled", ["--data", str(tiny_csvs[0]), "--rows", "10",
                                           "--repeats", "1"]) > 0
    assert bench.main(["--data", str(tiny_csvs[0]), "--rows", "10", "--repeats", "1",
                       "--no-fresh", "--out", str(out)]) == 0
    rows = [line for line in out.read_text().splitlines() if line.startswith("| ")]
    assert rows[0].endswith("| first run s | fresh process s |")
    assert len(rows) == 5 and all(r.endswith("| - |") for r in rows[1:])
