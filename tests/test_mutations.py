"""Property test (issue #11): random mutations of a valid train/test pair and of a valid
config, run through the CLI, either succeed or exit 2 with a message naming a file, row,
column or key; never a traceback, never a partial artifact left behind."""
from __future__ import annotations

import logging
import re
import shutil

import pytest
import yaml
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from pipeline.cli import main
from pipeline.config import RULES
from tests.conftest import make_rows, save_tiny_bert

TRAIN = make_rows(12).to_csv(index=False)
TEST = make_rows(4, with_labels=False, start_id=100).to_csv(index=False)

# One text edit: (kind, position in [0, 1), payload).
EDITS = st.tuples(
    st.sampled_from(["delete", "insert", "truncate", "duplicate_line", "drop_line", "header"]),
    st.floats(0, 0.999),
    st.sampled_from(['"', ",", "\n", "\x00", "\\ud83d", "[", "]", "2", "", "winner", "\r"]))

CONFIG_VALUES = st.one_of(st.none(), st.booleans(), st.integers(-5, 10**6), st.floats(-2, 2),
                          st.text(max_size=8), st.lists(st.integers(-2, 3), max_size=3))


def mutate(text: str, edit) -> str:
    kind, where, payload = edit
    i = int(where * len(text))
    lines = text.splitlines(keepends=True)
    j = int(where * len(lines))
    if kind == "delete":
        return text[:i] + text[i + 1:]
    if kind == "insert":
        return text[:i] + payload + text[i:]
    if kind == "truncate":
        return text[:max(i, 1)]
    if kind == "duplicate_line":
        return "".join(lines[:j + 1] + lines[j:])
    if kind == "drop_line":
        return "".join(lines[:j] + lines[j + 1:])
    header, _, rest = text.partition("\n")
    cols = header.split(",")
    cols[int(where * len(cols))] = payload or "x"
    return ",".join(cols) + "\n" + rest


# A message names a file, row, column or line, or a config key (every section of RULES).
SECTIONS = "|".join(sorted({re.escape(k.split(".")[0] + ".") for k in RULES}))
NAMES = re.compile(rf"(\.csv|row|column|line|{SECTIONS}|name|--|file|prompt|field|NUL|id)", re.I)


@pytest.fixture(scope="module")
def bert(tmp_path_factory):
    return save_tiny_bert(tmp_path_factory.mktemp("bert"))


@pytest.mark.slow
@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(which=st.sampled_from(["train", "test", "config"]), edits=st.lists(EDITS, min_size=1, max_size=2),
       key=st.sampled_from(sorted(RULES)), value=CONFIG_VALUES)
def test_mutated_inputs_succeed_or_exit_2_naming_the_problem(tmp_path_factory, bert, caplog, which,
                                                             edits, key, value):
    tmp = tmp_path_factory.mktemp("mut")
    train, test = TRAIN, TEST
    config = {"embed": {"models": [bert], "max_seq_length": 32}, "stack": {"n_folds": 2}}
    if which == "train":
        for e in edits:
            train = mutate(train, e)
    elif which == "test":
        for e in edits:
            test = mutate(test, e)
    else:
        section, name = key.split(".")
        config.setdefault(section, {})[name] = value
    (tmp / "train.csv").write_text(train, encoding="utf-8", errors="surrogatepass")
    (tmp / "test.csv").write_text(test, encoding="utf-8", errors="surrogatepass")
    (tmp / "exp.yaml").write_text(yaml.safe_dump(config))
    caplog.clear()
    caplog.set_level(logging.INFO)
    rc = main(["--stage", "features", "--config", str(tmp / "exp.yaml"), "--train", str(tmp / "train.csv"),
               "--test", str(tmp / "test.csv"), "--workdir", str(tmp / "work"), "--device", "cpu"])
    event(f"{which}: exit {rc}")
    assert rc in (0, 2)
    assert "Traceback" not in caplog.text
    if rc == 2:
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert errors and NAMES.search(errors[-1]), errors
    left = [p for p in (tmp / "work").rglob("*") if p.name.endswith(".tmp") or ".tmp-" in p.name]
    assert not left, left
    shutil.rmtree(tmp, ignore_errors=True)
