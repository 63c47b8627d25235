"""Data layer: parsing, the canonical frame, and every bad-input case (issues 2 and 6)."""
from __future__ import annotations

import json
import logging

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from pipeline.data import (DataError, join_turns, load_dataset, load_pairs, parse_turns,
                           swap_labels, swap_pairs, swap_proba, validate_submission)
from tests.conftest import make_rows


def write(tmp_path, df, name="train.csv"):
    path = tmp_path / name
    df.to_csv(path, index=False)
    return path


# --- parsing -------------------------------------------------------------------------

@pytest.mark.parametrize("cell, expected", [
    ('["hello", "world"]', ["hello", "world"]),
    ('["a", null, "b"]', ["a", "", "b"]),          # null turn kept as "" (turns stay aligned)
    ("[null]", [""]),
    ("[]", []),
    ("", []),
    ("   ", []),
    ("null", []),
    ("plain text, not JSON", ["plain text, not JSON"]),
    ('["unterminated', ['["unterminated']),      # not JSON -> the cell's text
    ('"a JSON string"', ["a JSON string"]),        # JSON but not a list -> one turn
    ("[1, 2.5, true]", ["1", "2.5", "true"]),      # numbers -> their text
    ('[["x", "y"], "z"]', ["x\ny", "z"]),          # nested list -> joined
    ('[{"k": 1}]', ['{"k": 1}']),
])
def test_parse_turns(cell, expected):
    assert parse_turns(cell) == expected


def test_parse_turns_replaces_lone_surrogates_and_keeps_pairs():
    turns = parse_turns('["lone \\ud83d here", "pair \\ud83d\\ude00 ok"]')
    assert turns == ["lone \ufffd here", "pair \U0001F600 ok"]
    for t in turns:
        t.encode("utf-8")  # must not raise
    pa.array(turns)  # and Parquet/Arrow accept it


def test_parse_turns_of_non_strings():
    assert parse_turns(None) == []
    assert parse_turns(float("nan")) == []
    assert parse_turns(5) == ["5"]


def test_join_turns_skips_empty_turns():
    assert join_turns(["a", "", "b"], sep="|") == "a|b"
    assert join_turns([]) == ""


# --- the canonical frame ---------------------------------------------------------------

def test_load_pairs_canonical_frame(tiny_csvs):
    train_path, test_path = tiny_csvs
    train = load_pairs(train_path, "train")
    assert list(train.columns[:4]) == ["id", "prompt", "response_a", "response_b"]
    assert train["label"].dtype == np.int8
    assert train["label"].tolist() == [i % 3 for i in range(12)]
    assert train.loc[2, "prompt"] == ["first turn", "second turn"]  # all turns kept
    assert train.loc[1, "response_b"] == [""]  # null turn
    assert "\ufffd" in train.loc[3, "response_a"][0]  # surrogate replaced
    test = load_pairs(test_path, "test")
    assert "label" not in test.columns
    assert test["id"].tolist() == [str(i) for i in range(100, 105)]


def test_extra_columns_are_kept_or_ignored_never_fatal(tmp_path):
    df = make_rows(5).assign(extra="x", annotator1=1)
    frame = load_pairs(write(tmp_path, df), "train")
    assert len(frame) == 5


def test_ids_of_other_types_are_kept_exactly(tmp_path):
    df = make_rows(3)
    df["id"] = ["abc-1", "12345678901234567890123", "0042"]
    frame = load_pairs(write(tmp_path, df), "train")
    assert frame["id"].tolist() == ["abc-1", "12345678901234567890123", "0042"]


def test_a_one_megabyte_response_loads(tmp_path):
    df = make_rows(3)
    big = "word " * 200_000
    df.loc[0, "response_a"] = json.dumps([big])
    frame = load_pairs(write(tmp_path, df), "train")
    assert len(frame.loc[0, "response_a"][0]) == len(big)


def test_exact_duplicate_rows_are_dropped_with_a_warning(tmp_path, caplog):
    df = make_rows(4)
    df = pd.concat([df, df.iloc[[1]]], ignore_index=True)
    with caplog.at_level(logging.WARNING):
        frame = load_pairs(write(tmp_path, df), "train")
    assert len(frame) == 4
    assert "repeat an earlier row" in caplog.text


def test_test_ids_overlapping_train_warn(tmp_path, caplog):
    train = write(tmp_path, make_rows(4))
    test = write(tmp_path, make_rows(3, with_labels=False), "test.csv")
    with caplog.at_level(logging.WARNING):
        ds = load_dataset(train, test)
    assert len(ds.test) == 3
    assert "also occur in" in caplog.text


# --- bad input: clear errors naming file, row, column ------------------------------------

def test_missing_file(tmp_path):
    with pytest.raises(DataError, match=r"test file .*missing\.csv does not exist.*--test"):
        load_pairs(tmp_path / "missing.csv", "test")


def test_empty_file(tmp_path):
    (tmp_path / "train.csv").write_text("")
    with pytest.raises(DataError, match="train.csv: the file is empty"):
        load_pairs(tmp_path / "train.csv")


def test_header_only(tmp_path):
    path = write(tmp_path, make_rows(3).iloc[:0])
    with pytest.raises(DataError, match="header but no data rows"):
        load_pairs(path)


def test_not_utf8(tmp_path):
    path = tmp_path / "train.csv"
    make_rows(3).to_csv(path, index=False)
    path.write_bytes(path.read_bytes() + "caf\xe9\n".encode("latin-1"))
    with pytest.raises(DataError, match=r"not UTF-8 \(bad byte at line \d+"):
        load_pairs(path)


def test_binary_file(tmp_path):
    path = tmp_path / "train.csv"
    path.write_bytes(b"PAR1\x00\x01\x02\x00garbage")
    with pytest.raises(DataError, match="binary"):
        load_pairs(path)


def test_text_that_is_not_a_kaggle_csv(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text("just some notes\nnot a table at all\n")
    with pytest.raises(DataError, match="missing required column"):
        load_pairs(path)


def test_malformed_csv(tmp_path):
    path = tmp_path / "train.csv"
    path.write_text('id,prompt,response_a,response_b\n1,"a","b","c",extra,"x\n2,"unclosed\n')
    with pytest.raises(DataError, match="train.csv"):
        load_pairs(path, "test")


@pytest.mark.parametrize("drop, hint", [
    ("response_a", "'response_a'"),
    ("winner_tie", "'winner_tie'"),
])
def test_missing_column(tmp_path, drop, hint):
    path = write(tmp_path, make_rows(3).drop(columns=[drop]))
    with pytest.raises(DataError, match=f"missing required column.*{hint}"):
        load_pairs(path)


def test_misspelled_column_gets_a_rename_hint(tmp_path):
    path = write(tmp_path, make_rows(3).rename(columns={"response_b": "respons_b"}))
    with pytest.raises(DataError, match="found 'respons_b': rename it"):
        load_pairs(path)


def test_test_file_needs_no_labels_but_needs_texts(tmp_path):
    path = write(tmp_path, make_rows(3, with_labels=False).drop(columns=["prompt"]), "test.csv")
    with pytest.raises(DataError, match="'prompt'"):
        load_pairs(path, "test")


def test_duplicate_ids_with_different_content(tmp_path):
    df = make_rows(4)
    df.loc[3, "id"] = df.loc[0, "id"]
    with pytest.raises(DataError, match=r"duplicate ids.*row 1 \(id '0'\).*row 4"):
        load_pairs(write(tmp_path, df))


def test_empty_id(tmp_path):
    df = make_rows(3).astype({"id": object})
    df.loc[1, "id"] = ""
    with pytest.raises(DataError, match="empty id in row 2"):
        load_pairs(write(tmp_path, df))


@pytest.mark.parametrize("mutate, message", [
    (lambda d: d.assign(winner_model_b=d["winner_model_b"].where(d.index != 0, 1)),
     r"exactly one 1.*row 1 \(id '0'\)"),                          # several 1s
    (lambda d: d.assign(winner_model_a=d["winner_model_a"].where(d.index != 0, 0)),
     r"exactly one 1.*row 1 \(id '0'\)"),                          # none
    (lambda d: d.astype({"winner_tie": object}).assign(
        winner_tie=lambda x: x["winner_tie"].where(x.index != 2, "")),
     r"'winner_tie' must hold 0 or 1.*row 3"),                      # NaN / empty
    (lambda d: d.astype({"winner_model_a": object}).assign(
        winner_model_a=lambda x: x["winner_model_a"].where(x.index != 1, "yes")),
     r"'winner_model_a' must hold 0 or 1.*row 2 \(id '1'\).*'yes'"),  # text
    (lambda d: d.assign(winner_model_a=d["winner_model_a"].where(d.index != 0, 2)),
     r"'winner_model_a' must hold 0 or 1"),                         # out of range
])
def test_bad_labels(tmp_path, mutate, message):
    with pytest.raises(DataError, match=message):
        load_pairs(write(tmp_path, mutate(make_rows(6))))


# --- swapping and the submission validator ---------------------------------------------

def test_swap_pairs_is_an_involution_and_permutes_labels(tiny_csvs):
    train = load_pairs(tiny_csvs[0])
    swapped = swap_pairs(train)
    assert swapped["response_a"].tolist() == train["response_b"].tolist()
    assert swapped["label"].tolist() == swap_labels(train["label"].to_numpy()).tolist()
    back = swap_pairs(swapped)
    pd.testing.assert_frame_equal(back, train)
    assert train["label"].tolist() == [i % 3 for i in range(12)]  # input unchanged


def test_swap_proba_maps_back():
    p = np.array([[0.7, 0.2, 0.1]])
    assert swap_proba(p).tolist() == [[0.2, 0.7, 0.1]]
    assert swap_proba(swap_proba(p)).tolist() == p.tolist()


def _sub(ids, probs):
    return pd.DataFrame({"id": ids, "winner_model_a": probs[:, 0], "winner_model_b": probs[:, 1],
                         "winner_tie": probs[:, 2]})


def test_validate_submission_accepts_a_good_file():
    ids = pd.Series(["1", "2"])
    validate_submission(_sub(ids, np.array([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]])), ids)


@pytest.mark.parametrize("case", ["order", "missing", "sum", "nan", "columns"])
def test_validate_submission_rejects_wrong_files(case):
    ids = pd.Series(["1", "2"])
    probs = np.array([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]])
    sub = _sub(ids, probs)
    if case == "order":
        sub = sub.iloc[::-1]
    elif case == "missing":
        sub = sub.iloc[:1]
    elif case == "sum":
        sub.loc[0, "winner_tie"] = 0.5
    elif case == "nan":
        sub.loc[0, "winner_tie"] = np.nan
    elif case == "columns":
        sub = sub.rename(columns={"winner_tie": "tie"})
    with pytest.raises(DataError):
        validate_submission(sub, ids)
