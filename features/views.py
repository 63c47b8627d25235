"""Per-response feature pairs -> their position-swap views, and the final frame."""
from __future__ import annotations

import numpy as np
import pandas as pd

from features.swap import column_name


def safe_div(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den, 0 where den is 0 (empty texts give 0 ratios, never NaN or inf)."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    out = np.zeros(np.broadcast(num, den).shape, dtype=np.float64)
    np.divide(num, den, out=out, where=den != 0)
    return out


def pair_views(group: str, feature: str, a: np.ndarray, b: np.ndarray,
               log_ratio: bool = False) -> dict[str, np.ndarray]:
    """Columns of one per-response feature: a, b, diff, [lr], sum, min, max, absdiff.

    ``log_ratio`` adds ``lr = log1p(a) - log1p(b)`` (only for non-negative counts).
    Returns: {column name: float64 array [n]}.
    """
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    cols = {
        column_name(group, "a", feature): a,
        column_name(group, "b", feature): b,
        column_name(group, "diff", feature): a - b,
    }
    if log_ratio:
        cols[column_name(group, "lr", feature)] = np.log1p(a) - np.log1p(b)
    cols[column_name(group, "sum", feature)] = a + b
    cols[column_name(group, "min", feature)] = np.minimum(a, b)
    cols[column_name(group, "max", feature)] = np.maximum(a, b)
    cols[column_name(group, "absdiff", feature)] = np.abs(a - b)
    return cols


def feature_frame(ids: pd.Series | np.ndarray, cols: dict[str, np.ndarray]) -> pd.DataFrame:
    """``id`` (str) first, then float32 feature columns; any NaN/inf that slipped in -> 0.

    Returns a frame with a fresh RangeIndex, rows in the order of ``ids``.
    """
    ids = np.asarray(ids).astype(str)
    data = {"id": pd.Series(ids, dtype=object).astype(str)}
    for name, values in cols.items():
        arr = np.asarray(values, dtype=np.float64)
        if arr.shape != (len(ids),):
            raise ValueError(f"feature {name!r} has shape {arr.shape}, expected ({len(ids)},)")
        data[name] = np.nan_to_num(arr, nan=0.0, posinf=0.0, neginf=0.0).astype(np.float32)
    return pd.DataFrame(data)
