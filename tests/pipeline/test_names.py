"""Names that become paths or columns (issue #11, item 1): experiment names, stack member
names and --run are checked before anything is written, and nothing outside runs/ is ever
replaced."""
from __future__ import annotations

from pathlib import Path

import pytest

from pipeline.catalog import Catalog
from pipeline.cli import main
from pipeline.config import Config, ConfigError, apply_overrides, load_config

BAD = ["", ".", "..", "/some/dir", "../x", "a/b", "a\\b", "-flag", "with space", "x" * 101, "é"]


@pytest.mark.parametrize("name", BAD)
def test_unsafe_experiment_names_are_config_errors(name):
    with pytest.raises(ConfigError, match="not a usable name"):
        apply_overrides(Config(), {"name": name})


@pytest.mark.parametrize("member", ["../../../../x", "..", "a/b", ""])
def test_unsafe_member_names_are_config_errors(member):
    with pytest.raises(ConfigError, match=r"stack\.members"):
        apply_overrides(Config(), {"stack": {"members": {member: ["all"]}}})


@pytest.mark.parametrize("member", ["blend", "id", "fold", "label"])
def test_reserved_member_names_are_config_errors(member):
    with pytest.raises(ConfigError, match="reserved"):
        apply_overrides(Config(), {"stack": {"members": {member: ["all"]}}})


def test_safe_names_pass():
    cfg = apply_overrides(Config(), {"name": "exp-1.v2_A", "stack": {"members": {"lgbm.2-b_x": ["all"]}}})
    assert cfg.name == "exp-1.v2_A"


def test_catalog_never_makes_a_run_folder_from_a_path(tmp_path):
    catalog = Catalog(tmp_path / "work")
    for name in ("..", "/tmp/elsewhere", "../../x"):
        with pytest.raises(ConfigError):
            catalog.run_dir(name)
    assert catalog.run_dir("ok").parent == catalog.runs_dir


def test_cli_refuses_a_path_as_name_before_writing_anything(tmp_path):
    victim = tmp_path / "victim"
    (victim / "models").mkdir(parents=True)
    (victim / "models" / "precious.txt").write_text("keep me")
    config = tmp_path / "exp.yaml"
    config.write_text(f"name: {victim}\n")
    with pytest.raises(ConfigError, match="name="):
        load_config(config)
    workdir = tmp_path / "work"
    assert main(["--demo", "--config", str(config), "--workdir", str(workdir), "--stage", "features"]) == 2
    assert (victim / "models" / "precious.txt").read_text() == "keep me"
    assert not (workdir / "cache").exists()  # nothing computed before the error
    assert main(["--stage", "predict", "--run", "../victim", "--workdir", str(workdir)]) == 2


def test_a_file_stem_that_is_not_a_safe_name_says_how_to_fix_it(tmp_path):
    config = tmp_path / "my experiment.yaml"
    config.write_text("seed: 1\n")
    with pytest.raises(ConfigError, match="my experiment"):
        load_config(config)
    config.write_text("name: my-experiment\nseed: 1\n")
    assert load_config(config).name == "my-experiment"
    assert Path(config).exists()


# ------------------------------------------------------------------ stack settings checked up front

@pytest.mark.parametrize("stack,match", [
    ({"lgbm_params": {"num_leafs": 8}}, "did you mean 'num_leaves'"),
    ({"members": {"m": {"kind": "lgbm", "inputs": ["length"], "params": {"learning_rat": 0.1}}}},
     "stack.members.m: 'learning_rat' is not a LightGBM parameter; did you mean 'learning_rate'"),
    ({"members": {"m": {"kind": "linear", "inputs": ["length"], "params": {"CC": 1.0}}}},
     "stack.members.m: linear learner: unknown param"),
    ({"members": {"m": {"kind": "xgboost", "inputs": ["length"], "params": {"max_dpth": 3}}}},
     "stack.members.m: unknown XGBoost parameter\\(s\\) \"max_dpth\""),
    ({"members": {"m": {"kind": "forest", "inputs": ["length"]}}}, "unknown learner kind"),
    ({"members": {}}, "stack.members is empty"),
])
def test_bad_stack_settings_stop_the_run_before_any_stage(tmp_path, stack, match, caplog):
    import yaml

    from pipeline.stack import check_config

    cfg = apply_overrides(Config(), {"stack": stack})
    with pytest.raises(ConfigError, match=match):
        check_config(cfg)
    config = tmp_path / "exp.yaml"
    config.write_text(yaml.safe_dump({"stack": stack}))
    workdir = tmp_path / "work"
    assert main(["--demo", "--config", str(config), "--workdir", str(workdir)]) == 2
    assert not (workdir / "cache" / "embed").exists()  # failed before embed


def test_the_default_stack_passes_the_check():
    from pipeline.stack import check_config

    check_config(Config())
