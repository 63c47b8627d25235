"""features.turns is the one place for class names, surrogate cleaning and turn joining
(issue #11, item 10), and embed.turn_sep reaches the text features too."""
from __future__ import annotations

import ast
from pathlib import Path

import pandas as pd

from features.text import TextView
from features.turns import CLASS_NAMES, TURN_SEP, clean_text, join_turns
from pipeline.config import Config, apply_overrides

ROOT = Path(__file__).resolve().parents[2]


def test_clean_and_join():
    assert clean_text("ok \ud83d end") == "ok \ufffd end"
    assert clean_text("pair \ud83d\ude00") == "pair \U0001F600"
    assert join_turns(["a", "", None, "b"]) == "a" + TURN_SEP + "b"
    assert join_turns(["a", "b"], " | ") == "a | b"


def test_turn_sep_reaches_the_text_features_and_their_cache_key():
    from pipeline.featurize import group_specs

    frame = pd.DataFrame({"id": ["1"], "prompt": [["q1", "q2"]], "response_a": [["a1", "a2", "a3"]],
                          "response_b": [["b"]]})
    default = TextView(frame)
    custom = TextView(frame, " ")
    assert default.chars["a"][0] - custom.chars["a"][0] == 2 * (len(TURN_SEP) - 1)
    assert default.chars["b"][0] == custom.chars["b"][0]  # one turn: no separator
    key = {s.name: s.key_parts for s in group_specs(Config())}
    assert "turn_sep" not in key["length"]  # the default keeps the caches of before
    other = {s.name: s.key_parts for s in group_specs(apply_overrides(Config(), {"embed": {"turn_sep": " "}}))}
    assert other["length"]["turn_sep"] == " " and other["structure"]["turn_sep"] == " "


def test_class_names_and_surrogate_patterns_are_written_once():
    """No module but features/turns.py spells the class names or the surrogate range."""
    offenders = []
    for path in list((ROOT / "pipeline").rglob("*.py")) + list((ROOT / "features").rglob("*.py")):
        if path.name == "turns.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Tuple) and [getattr(e, "value", None) for e in node.elts] == list(CLASS_NAMES):
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} class names")
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and "\ud800-\udfff" in node.value:
                offenders.append(f"{path.relative_to(ROOT)}:{node.lineno} surrogate range")
    assert not offenders, offenders
