"""Embedding features from precomputed sentence embeddings (one group per model).

Inputs are arrays, never a model: ``{"prompt": [n, d], "response_a": [n, d],
"response_b": [n, d]}``. Outputs per row:

    a_cos_prompt, b_cos_prompt  cos(prompt, A), cos(prompt, B), with diff, sum, min, max,
                                absdiff views
    p_cos_ab                    cos(A, B)
    diff_e0 .. diff_e{k-1}      the A - B embedding difference: all d dims (dims=None), or
                                a projection to k dims (see projection_matrix), or none
                                (dims=0). Negates under an A/B swap.

A zero vector (what an encoder may give an empty text) has cosine 0 with everything.
"""
from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np
import pandas as pd

from features.swap import column_name
from features.views import feature_frame, pair_views

VERSION = 1
# Seed of the random projection; part of the cache key through VERSION (change both).
PROJECTION_SEED = 20240613


def group_name(model_slug: str) -> str:
    """Feature group of one embedding model: ``"emb-<slug>"`` (lower case, no underscores)."""
    safe = "".join(c if c.isalnum() or c in "-." else "-" for c in model_slug.lower())
    return f"emb-{safe}"


def projection_matrix(dim: int, k: int, seed: int = PROJECTION_SEED) -> np.ndarray:
    """Fixed Gaussian random projection [dim, k], scaled by 1/sqrt(k).

    Data-independent (depends only on dim, k and the seed), so it is not fitted on any
    rows and cannot leak labels or validation data across folds; by Johnson-Lindenstrauss
    it roughly preserves distances between difference vectors.
    """
    rng = np.random.default_rng([seed, dim, k])
    return (rng.standard_normal((dim, k)) / np.sqrt(k)).astype(np.float64)


def row_cosine(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Row-wise cosine of two [n, d] arrays; 0 where either row is all zeros."""
    x = np.asarray(x, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    dot = np.einsum("ij,ij->i", x, y)
    norm = np.sqrt(np.einsum("ij,ij->i", x, x)) * np.sqrt(np.einsum("ij,ij->i", y, y))
    out = np.zeros(len(x), dtype=np.float64)
    np.divide(dot, norm, out=out, where=norm > 0)
    return np.clip(out, -1.0, 1.0)


def embedding_features(emb: Mapping[str, np.ndarray], ids: Sequence[str], group: str,
                       diff_dims: int | None) -> pd.DataFrame:
    """Embedding features of every row for one model (see the module docstring).

    Args:
        emb: {"prompt", "response_a", "response_b"} -> float array [n, d] (rows aligned
            with ``ids``); non-finite values are treated as 0.
        group: column group, e.g. group_name("all-MiniLM-L6-v2").
        diff_dims: None = all d dims of A - B, 0 = none, k < d = random projection to k
            dims (k >= d keeps all d dims: a projection cannot add information).
    Returns: id + float32 columns ``<group>__<role>_<feature>``.
    """
    n = len(ids)
    arrays = {}
    for key in ("prompt", "response_a", "response_b"):
        if key not in emb:
            raise ValueError(f"embeddings lack {key!r}: expected keys prompt, response_a, response_b")
        arr = np.nan_to_num(np.asarray(emb[key], dtype=np.float64), nan=0.0, posinf=0.0,
                            neginf=0.0)
        if arr.ndim != 2 or arr.shape[0] != n:
            raise ValueError(f"embeddings[{key!r}] has shape {arr.shape}, expected ({n}, d)")
        arrays[key] = arr
    p, a, b = arrays["prompt"], arrays["response_a"], arrays["response_b"]
    if not (p.shape[1] == a.shape[1] == b.shape[1]):
        raise ValueError(f"embedding widths differ: {p.shape[1]}, {a.shape[1]}, {b.shape[1]}")
    cols = pair_views(group, "cos_prompt", row_cosine(p, a), row_cosine(p, b))
    cols[column_name(group, "p", "cos_ab")] = row_cosine(a, b)
    if diff_dims is not None and diff_dims < 0:
        raise ValueError(f"embed_diff_dims must be None, 0 or positive, got {diff_dims}")
    diff = a - b
    if diff_dims is not None and diff_dims < diff.shape[1]:
        # (B - A) R = -((A - B) R): the projected dims negate under a swap like raw dims.
        diff = diff @ projection_matrix(diff.shape[1], diff_dims) if diff_dims else diff[:, :0]
    for j in range(diff.shape[1]):
        cols[column_name(group, "diff", f"e{j}")] = diff[:, j]
    return feature_frame(ids, cols)
