"""Data layer: Kaggle train.csv / test.csv -> one canonical frame.

Canonical frame columns (one row per pair, in the file's order):

    id          str         the file's id, kept as text (large integers stay exact)
    prompt      list[str]   turns of the prompt
    response_a  list[str]   turns of response A
    response_b  list[str]   turns of response B
    label       int8        0 = A wins, 1 = B wins, 2 = tie   (train only)
    model_a     str         (where the file has it)
    model_b     str         (where the file has it)

Text cells are JSON lists of strings, one per turn. What the real data holds, and what
becomes of it: ``null`` turns -> "" (kept, so turns stay aligned); numbers -> their text;
nested lists -> their strings joined by newlines; a cell that is not a JSON list -> one
turn holding the cell's text; an empty cell -> no turns; lone UTF-16 surrogates (they
break UTF-8 and Parquet) -> U+FFFD. Rows that repeat another row exactly (same id and
content) are dropped with a warning; two different rows with one id are an error.
"""
from __future__ import annotations

import csv
import difflib
import io
import json
import logging
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from features.turns import CLASS_NAMES, clean_text, join_turns  # noqa: F401 (re-exported)

log = logging.getLogger(__name__)

TEXT_COLUMNS = ("prompt", "response_a", "response_b")
LABEL_COLUMNS = ("winner_model_a", "winner_model_b", "winner_tie")
SUBMISSION_COLUMNS = ("id",) + LABEL_COLUMNS


class DataError(ValueError):
    """Bad input data; the message names the file, row or column and the fix."""


def _flatten(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return json.dumps(value)
    if isinstance(value, list):
        return "\n".join(s for s in (_flatten(v) for v in value) if s)
    return clean_text(json.dumps(value, ensure_ascii=False))


def parse_turns(cell: object) -> list[str]:
    """One text cell -> its list of turns (never raises; see the module docstring)."""
    if cell is None or (isinstance(cell, float) and np.isnan(cell)):
        return []
    if not isinstance(cell, str):
        return [_flatten(cell)]
    stripped = cell.strip()
    if not stripped:
        return []
    if stripped[0] in '["' or stripped == "null":
        try:
            value = json.loads(stripped)
        except (ValueError, RecursionError):
            return [clean_text(cell)]
        if value is None:
            return []
        if isinstance(value, list):
            return [_flatten(v) for v in value]
        return [_flatten(value)]
    return [clean_text(cell)]


def _read_csv(path: Path, what: str) -> pd.DataFrame:
    if not path.exists():
        raise DataError(f"{what} file {path} does not exist: put the Kaggle {path.name} there, "
                        f"pass another with --{what}, or run with --demo")
    if path.is_dir():
        raise DataError(f"{what} file {path} is a folder: pass the CSV file itself")
    raw = _decompress(path.read_bytes(), path)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = raw[: exc.start].count(b"\n") + 1
        raise DataError(f"{path}: not UTF-8 (bad byte at line {line}, byte {exc.start}): "
                        "re-save the file as UTF-8") from None
    if not text.strip():
        raise DataError(f"{path}: the file is empty: expected a CSV with a header row "
                        f"({', '.join(('id',) + TEXT_COLUMNS)}, ...)")
    nul = text.find("\x00")
    if nul >= 0:  # anywhere in the file, not only near its start
        line = text.count("\n", 0, nul) + 1
        raise DataError(f"{path}: NUL byte at line {line}: not a text CSV file (or a damaged "
                        "one); re-export it as UTF-8 CSV")
    _check_records(text, path)
    try:
        with warnings.catch_warnings():
            # A row with more fields than the header would silently shift columns.
            warnings.simplefilter("error", pd.errors.ParserWarning)
            df = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, na_values=[],
                             quoting=csv.QUOTE_MINIMAL, index_col=False)
    except pd.errors.ParserWarning:
        raise DataError(f"{path}: some row has more fields than the header: not a well-formed "
                        "CSV (check quoting of text cells)") from None
    except pd.errors.ParserError as exc:
        raise DataError(f"{path}: not a readable CSV file ({exc}); expected Kaggle's "
                        "comma-separated format with a header row") from None
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: the file has no header row: expected a CSV with columns "
                        f"{', '.join(('id',) + TEXT_COLUMNS)}") from None
    df.columns = [str(c).strip() for c in df.columns]
    return df


# Compressed files by their magic bytes -> how to open them.
_MAGIC = {b"\x1f\x8b": "gzip", b"BZh": "bz2", b"\xfd7zXZ\x00": "xz", b"PK\x03\x04": "zip"}


def _decompress(raw: bytes, path: Path) -> bytes:
    """``raw`` itself, or its content when it is gzip, bz2, xz or a one-file zip (by the
    magic bytes, whatever the file's name)."""
    kind = next((k for magic, k in _MAGIC.items() if raw.startswith(magic)), None)
    if kind is None:
        return raw
    import bz2
    import gzip
    import lzma
    import zipfile

    try:
        if kind == "zip":
            with zipfile.ZipFile(io.BytesIO(raw)) as zf:
                names = [n for n in zf.namelist() if not n.endswith("/")]
                if len(names) != 1:
                    raise DataError(f"{path}: a zip archive of {len(names)} files; it must hold "
                                    "exactly one CSV")
                return zf.read(names[0])
        return {"gzip": gzip.decompress, "bz2": bz2.decompress, "xz": lzma.decompress}[kind](raw)
    except (OSError, EOFError, ValueError, zipfile.BadZipFile, lzma.LZMAError) as exc:
        raise DataError(f"{path}: a damaged {kind} file ({exc}); re-download or re-compress it") from None


def _check_records(text: str, path: Path) -> None:
    """DataError naming the row of a record whose field count differs from the header's,
    or a header name given twice (pandas would silently pad, or rename to 'x.1')."""
    csv.field_size_limit(max(csv.field_size_limit(), 2**31 - 1))  # megabyte cells exist
    reader = csv.reader(io.StringIO(text, newline=""))
    header = [h.strip() for h in next(reader, [])]
    twice = sorted({h for h in header if header.count(h) > 1})
    if twice:
        raise DataError(f"{path}: column(s) {twice} appear more than once in the header; "
                        "each column name must be unique")
    for row, record in enumerate(reader, start=1):
        if record and len(record) != len(header):
            kind = "fewer" if len(record) < len(header) else "more"
            raise DataError(f"{path}: data row {row} (line {reader.line_num}) has {len(record)} "
                            f"fields, {kind} than the header's {len(header)}: not a well-formed "
                            "CSV (check the quoting of text cells)")


# Columns a Kaggle file may hold; a missing one is never "found" as one of these.
_KNOWN_COLUMNS = ("id",) + TEXT_COLUMNS + LABEL_COLUMNS + ("model_a", "model_b")


def _check_columns(df: pd.DataFrame, required: tuple[str, ...], path: Path) -> None:
    missing = [c for c in required if c not in df.columns]
    if not missing:
        return
    others = [str(c) for c in df.columns if str(c) not in _KNOWN_COLUMNS]
    hints = []
    for col in missing:
        lower = [c for c in others if c.lower() == col.lower()]
        close = difflib.get_close_matches(col, others, n=1, cutoff=0.8)
        if lower or close:
            hints.append(f"{col!r} (found {(lower or close)[0]!r}: rename it)")
        else:
            hints.append(repr(col))
    extra = ""
    if "winner" in df.columns and any(c in LABEL_COLUMNS for c in missing):
        extra = (f"; a single 'winner' column is not Kaggle's layout: give one 0/1 column each, "
                 f"{', '.join(LABEL_COLUMNS)}")
    raise DataError(f"{path}: missing required column(s) {', '.join(hints)}; "
                    f"the file has {list(map(str, df.columns))}{extra}")


def _rows(mask: np.ndarray, ids: pd.Series, limit: int = 5) -> str:
    where = np.flatnonzero(mask)
    shown = ", ".join(f"row {i + 1} (id {ids.iloc[i]!r})" for i in where[:limit])
    more = f" and {len(where) - limit} more" if len(where) > limit else ""
    return shown + more


def _labels(df: pd.DataFrame, path: Path) -> np.ndarray:
    values = {}
    for col in LABEL_COLUMNS:
        raw = df[col].str.strip()
        num = pd.to_numeric(raw, errors="coerce")
        bad = num.isna().to_numpy() | ~np.isin(num.fillna(-1).to_numpy(), (0, 1))
        if bad.any():
            first = int(np.flatnonzero(bad)[0])
            raise DataError(f"{path}: column {col!r} must hold 0 or 1; "
                            f"{_rows(bad, df['id'])} hold(s) e.g. {raw.iloc[first]!r}")
        values[col] = num.to_numpy().astype(np.int8)
    onehot = np.stack([values[c] for c in LABEL_COLUMNS], axis=1)
    bad = onehot.sum(axis=1) != 1
    if bad.any():
        raise DataError(f"{path}: each row needs exactly one 1 among {', '.join(LABEL_COLUMNS)}; "
                        f"{_rows(bad, df['id'])} do(es) not")
    return onehot.argmax(axis=1).astype(np.int8)


def load_pairs(path: str | Path, kind: str = "train") -> pd.DataFrame:
    """Read a Kaggle-format CSV into the canonical frame (see the module docstring).

    ``kind`` is "train" (labels required) or "test" (labels used if present, else absent).
    Raises DataError with the file, row and column on anything it cannot use.
    """
    path = Path(path)
    df = _read_csv(path, kind)
    required = ("id",) + TEXT_COLUMNS + (LABEL_COLUMNS if kind == "train" else ())
    _check_columns(df, required, path)
    if df.empty:
        raise DataError(f"{path}: has a header but no data rows")
    ids = df["id"].str.strip()
    empty_id = (ids == "").to_numpy()
    if empty_id.any():
        rows = ", ".join(f"row {i + 1}" for i in np.flatnonzero(empty_id)[:5])
        raise DataError(f"{path}: empty id in {rows}: every row needs an id")
    df = df.assign(id=ids)
    keep = [c for c in ("id",) + TEXT_COLUMNS + LABEL_COLUMNS + ("model_a", "model_b") if c in df.columns]
    exact = df.duplicated(subset=keep, keep="first").to_numpy()
    if exact.any():
        log.warning("%s: dropping %d row(s) that repeat an earlier row exactly: %s",
                    path, int(exact.sum()), _rows(exact, df["id"]))
        df = df.loc[~exact].reset_index(drop=True)
    dup = df["id"].duplicated(keep=False).to_numpy()
    if dup.any():
        raise DataError(f"{path}: duplicate ids with different content: {_rows(dup, df['id'])}; "
                        "ids must be unique")
    out = pd.DataFrame({"id": df["id"].astype(str)})
    for col in TEXT_COLUMNS:
        out[col] = [parse_turns(c) for c in df[col]]
    has_labels = all(c in df.columns for c in LABEL_COLUMNS)
    if has_labels and kind == "test":
        try:  # a test file's labels are never used: unusable ones are ignored, not an error
            out["label"] = _labels(df, path)
        except DataError as exc:
            log.info("%s: the test file's winner columns are not usable labels (%s); ignored",
                     path, str(exc).split(": ", 1)[-1])
    elif has_labels:
        out["label"] = _labels(df, path)
    for col in ("model_a", "model_b"):
        if col in df.columns:
            out[col] = df[col].astype(str)
    return out


@dataclass
class Dataset:
    """Train and test frames of one run, with the paths they came from."""

    train: pd.DataFrame
    test: pd.DataFrame
    train_path: Path
    test_path: Path


def load_dataset(train_path: str | Path, test_path: str | Path) -> Dataset:
    """Load train and test; warn when test ids also occur in train."""
    train = load_pairs(train_path, "train")
    test = load_pairs(test_path, "test")
    test = test.drop(columns=[c for c in ("label",) if c in test.columns])
    overlap = np.intersect1d(train["id"].to_numpy(), test["id"].to_numpy())
    if len(overlap):
        log.warning("%d test id(s) also occur in %s (e.g. %s); rows are keyed by (split, id), "
                    "so this is allowed, but check that the files are not mixed up",
                    len(overlap), train_path, ", ".join(map(str, overlap[:3])))
    return Dataset(train=train, test=test, train_path=Path(train_path), test_path=Path(test_path))


def swap_pairs(df: pd.DataFrame) -> pd.DataFrame:
    """The same pairs with A and B exchanged and labels permuted [a, b, tie] -> [b, a, tie]."""
    out = df.copy()
    out["response_a"], out["response_b"] = df["response_b"], df["response_a"]
    if "model_a" in df.columns and "model_b" in df.columns:
        out["model_a"], out["model_b"] = df["model_b"], df["model_a"]
    if "label" in df.columns:
        out["label"] = swap_labels(df["label"].to_numpy())
    return out


SWAP_PERM = np.array([1, 0, 2])


def swap_labels(labels: np.ndarray) -> np.ndarray:
    """Class indices under A/B swap: 0 <-> 1, tie stays."""
    return SWAP_PERM[np.asarray(labels)].astype(np.asarray(labels).dtype)


def swap_proba(proba: np.ndarray) -> np.ndarray:
    """Probability columns [a, b, tie] of swapped input mapped back to the original order."""
    return np.asarray(proba)[:, SWAP_PERM]


def validate_submission(sub: pd.DataFrame, test_ids: pd.Series, tol: float = 1e-6) -> None:
    """Raise DataError unless ``sub`` is a valid Kaggle submission for ``test_ids``.

    Valid: columns exactly id, winner_model_a, winner_model_b, winner_tie; every test id
    once, in the test file's order; finite probabilities in [0, 1] summing to 1 per row.
    """
    if list(sub.columns) != list(SUBMISSION_COLUMNS):
        raise DataError(f"submission columns {list(sub.columns)} != {list(SUBMISSION_COLUMNS)}")
    if len(sub) != len(test_ids):
        raise DataError(f"submission has {len(sub)} rows, the test file {len(test_ids)}")
    if not (sub["id"].astype(str).to_numpy() == test_ids.astype(str).to_numpy()).all():
        raise DataError("submission ids differ from the test file's ids or order")
    probs = sub[list(LABEL_COLUMNS)].to_numpy(dtype=float)
    if not np.isfinite(probs).all() or (probs < 0).any() or (probs > 1).any():
        raise DataError("submission probabilities must be finite and in [0, 1]")
    sums = probs.sum(axis=1)
    if np.abs(sums - 1).max() > tol:
        bad = int(np.argmax(np.abs(sums - 1)))
        raise DataError(f"submission rows must sum to 1; row {bad + 1} sums to {sums[bad]:.6f}")
