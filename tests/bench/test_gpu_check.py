"""bench/gpu_check.sh --tiny: the GPU check's three parts run end to end on the CPU."""
from __future__ import annotations

import json
import math
import os
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_gpu_check_tiny_runs_every_part_on_the_cpu(tmp_path):
    out = tmp_path / "gpu_check.md"
    proc = subprocess.run(["bash", str(ROOT / "bench" / "gpu_check.sh"), "--tiny", "--out", str(out)],
                          capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHON": os.environ.get("PYTHON", "python")})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads(out.with_suffix(".json").read_text())
    parts = results["parts"]
    assert set(parts) == {"embed", "demo", "decoder"}
    assert not [name for name, part in parts.items() if "error" in part]
    assert parts["embed"]["texts"] == 48 and parts["embed"]["texts_per_s"] > 0
    assert parts["embed"]["fast_tokenizer_path"] is True
    demo = parts["demo"]
    assert {"embed", "features", "finetune", "stack"} <= set(demo["stage_seconds"])
    assert demo["finetune_member"] in demo["members"]
    assert math.isfinite(demo["oof_log_loss"]) and math.isfinite(demo["finetune_oof_log_loss"])
    runs = parts["decoder"]["runs"]
    assert [r["gradient_checkpointing"] for r in runs] == [False, True]
    for r in runs:
        assert r["tokens_per_s"] > 0 and 0 < r["params_trainable"] < r["params_total"]
        assert math.isfinite(r["final_loss"])
    text = out.read_text()
    assert "## (a) embed" in text and "## (c) decoder" in text and "failed" not in text
