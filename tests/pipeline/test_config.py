"""Typed config: defaults, experiment files with only differences, unknown keys, CLI overrides."""
from __future__ import annotations

import pytest

from pipeline.cli import build_parser, make_context
from pipeline.config import Config, ConfigError, apply_overrides, load_config


def test_defaults_are_typed_and_frozen():
    cfg = Config()
    assert cfg.stack.n_folds == 5 and cfg.embed.models == ("all-MiniLM-L6-v2",)
    with pytest.raises(Exception):
        cfg.stack.n_folds = 3  # frozen


def test_experiment_file_holds_only_differences(tmp_path):
    path = tmp_path / "seeds3.yaml"
    path.write_text("stack:\n  seeds: [0, 1, 2]\nembed:\n  models: my/local-model\n")
    cfg = load_config(path)
    assert cfg.name == "seeds3"
    assert cfg.stack.seeds == (0, 1, 2)
    assert cfg.embed.models == ("my/local-model",)  # a scalar becomes a one-item list
    assert cfg.stack.n_folds == Config().stack.n_folds  # everything else default


def test_unknown_key_lists_valid_keys(tmp_path):
    path = tmp_path / "typo.yaml"
    path.write_text("stack:\n  n_fold: 3\n")
    with pytest.raises(ConfigError, match=r"typo.yaml: stack: unknown key 'n_fold'. Valid keys: .*n_folds"):
        load_config(path)
    with pytest.raises(ConfigError, match="unknown key 'stak'"):
        apply_overrides(Config(), {"stak": {}})


@pytest.mark.parametrize("overrides, message", [
    ({"stack": {"n_folds": "five"}}, "stack.n_folds: expected an integer"),
    ({"stack": {"swap_tta": "yes"}}, "expected true/false"),
    ({"embed": {"max_seq_length": 1.5}}, "expected an integer"),
    ({"stack": 3}, "expected a mapping"),
])
def test_wrong_types_are_errors(overrides, message):
    with pytest.raises(ConfigError, match=message):
        apply_overrides(Config(), overrides)


def test_optional_fields_accept_null():
    cfg = apply_overrides(Config(), {"embed": {"max_seq_length": None}, "finetune": {"folds": [0]}})
    assert cfg.embed.max_seq_length is None and cfg.finetune.folds == (0,)


def test_missing_or_invalid_file(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_config(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("stack: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)


def test_cli_flags_override_the_file(tmp_path):
    path = tmp_path / "exp.yaml"
    path.write_text("device: cuda\nfinetune:\n  max_rows: 50\n")
    args = build_parser().parse_args(["--config", str(path), "--device", "cpu", "--folds", "0,2",
                                      "--workdir", str(tmp_path)])
    ctx = make_context(args)
    assert ctx.config.device == "cpu"
    assert ctx.config.finetune.folds == (0, 2)
    assert ctx.config.finetune.max_rows == 50
    assert ctx.train_path == tmp_path / "raw" / "train.csv"


def test_shipped_experiment_files_load():
    from pathlib import Path

    files = sorted((Path(__file__).resolve().parents[2] / "experiments").glob("*.yaml"))
    assert files
    for path in files:
        assert load_config(path).name == path.stem


def test_seeds3_example_is_the_default_members_with_three_lgbm_seeds():
    """experiments/seeds3.yaml (README: "More seeds") must follow the default members."""
    from pathlib import Path

    from pipeline.stack import member_spec

    cfg = load_config(Path(__file__).resolve().parents[2] / "experiments" / "seeds3.yaml")
    default = Config().stack.members
    assert set(cfg.stack.members) == set(default)
    for name in default:
        mine, theirs = member_spec(name, cfg.stack.members[name]), member_spec(name, default[name])
        assert (mine.kind, mine.inputs, mine.params) == (theirs.kind, theirs.inputs, theirs.params)
        assert mine.seeds == ((0, 1, 2) if name == "lgbm_tfidf" else theirs.seeds)
