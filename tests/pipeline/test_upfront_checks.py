"""Settings and data that cannot work fail before any stage starts (issue #11, items 3-4):
exit 2, a message naming the key (or the data's problem) and what is allowed, nothing
computed."""
from __future__ import annotations

import pytest
import yaml

from pipeline.cli import main
from pipeline.config import Config, ConfigError, apply_overrides
from tests.conftest import make_rows


@pytest.mark.parametrize("override,key", [
    ({"stack": {"seeds": []}}, "stack.seeds"),
    ({"stack": {"clip_eps": 2.0}}, "stack.clip_eps"),
    ({"embed": {"max_chars": -1}}, "embed.max_chars"),
    ({"stack": {"n_folds": -3}}, "stack.n_folds"),
    ({"stack": {"n_folds": 1}}, "stack.n_folds"),
    ({"stack": {"n_folds": 100000000000000000000}}, "stack.n_folds"),
    ({"stack": {"num_boost_round": 0}}, "stack.num_boost_round"),
    ({"embed": {"models": []}}, "embed.models"),
    ({"embed": {"long_text": "bogus"}}, "embed.long_text"),
    ({"features": {"embed_diff_dims": -4}}, "features.embed_diff_dims"),
    ({"finetune": {"epochs": 0}}, "finetune.epochs"),
    ({"embed": {"backend": "tensorrt"}}, "embed.backend"),
])
def test_values_outside_their_range_name_the_key_and_the_range(override, key):
    with pytest.raises(ConfigError, match=rf"^{key}=.*: must be "):
        apply_overrides(Config(), override)


@pytest.mark.parametrize("stack,match", [
    ({"lgbm_params": {"num_leaves": -5}}, r"stack\.lgbm_params: LightGBM refuses .*num_leaves"),
    ({"members": {"m": {"kind": "lgbm", "inputs": ["length"], "params": {"learning_rate": -1}}}},
     r"stack\.members\.m: LightGBM refuses .*learning_rate"),
    ({"members": {"m": {"kind": "xgboost", "inputs": ["length"], "params": {"max_depth": -3}}}},
     r"stack\.members\.m: XGBoost refuses these parameters: value -3 for Parameter max_depth"),
    ({"members": {"m": ["embedding"]}},
     r"stack\.members\.m: unknown feature group\(s\) \['embedding'\]; this config computes "
     r"\['emb-all-minilm-l6-v2'"),
])
def test_values_lightgbm_refuses_fail_up_front(stack, match):
    from pipeline.stack import check_config

    with pytest.raises(ConfigError, match=match):
        check_config(apply_overrides(Config(), {"stack": stack}))


def _write(tmp_path, rows, same_prompt=False):
    train = make_rows(rows)
    if same_prompt:
        train["prompt"] = train["prompt"].iloc[0]
    test = make_rows(3, with_labels=False, start_id=100)
    train.to_csv(tmp_path / "train.csv", index=False)
    test.to_csv(tmp_path / "test.csv", index=False)
    return ["--train", str(tmp_path / "train.csv"), "--test", str(tmp_path / "test.csv"),
            "--workdir", str(tmp_path / "work")]


@pytest.mark.parametrize("rows,same_prompt,stage,extra,match", [
    (3, False, "stack", [], "3 distinct prompt"),
    (12, True, "all", [], "1 distinct prompt"),
    (12, False, "finetune", ["--max-rows", "3"], "--max-rows 3"),
])
def test_data_that_cannot_be_cross_validated_fails_before_any_stage(tmp_path, caplog, rows,
                                                                     same_prompt, stage, extra, match):
    args = _write(tmp_path, rows, same_prompt)
    assert main(["--stage", stage, *args, *extra]) == 2
    assert match in caplog.text
    assert not (tmp_path / "work" / "cache").exists() or not any((tmp_path / "work" / "cache").rglob("*.parquet"))


def test_a_bad_lightgbm_value_in_a_config_file_exits_2_before_embed(tmp_path, caplog):
    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump({"stack": {"lgbm_params": {"num_leaves": -5}}}))
    args = _write(tmp_path, 12)
    assert main(["--config", str(config), *args]) == 2
    assert "num_leaves" in caplog.text and "Traceback" not in caplog.text
    assert not (tmp_path / "work" / "cache" / "embed").exists()


def test_a_missing_xgboost_package_stops_the_run_up_front(monkeypatch):
    import sys

    from pipeline.stack import check_config

    monkeypatch.setitem(sys.modules, "xgboost", None)  # import xgboost raises ImportError
    stack = {"members": {"m": {"kind": "xgboost", "inputs": ["length"]}}}
    with pytest.raises(ConfigError, match=r"stack\.members\.m: learner kind 'xgboost' needs "
                                          r"the xgboost package: pip install 'prefstack\[xgboost\]'"):
        check_config(apply_overrides(Config(), {"stack": stack}))
