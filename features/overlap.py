"""Overlap features: prompt-to-response and response-to-response word / n-gram overlap.

Words are lower-cased with punctuation removed (TextView.words); n-grams are bigrams of
those words. Set ratios with an empty denominator are 0 (an empty text overlaps
nothing), so no NaN can appear; ``p_identical`` is 1 when the two responses' texts are
equal after stripping whitespace (two empty responses are identical).
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd
import pyarrow.compute as pc

from features.text import TextView
from features.views import feature_frame, pair_views

GROUP = "overlap"
VERSION = 1


def _ratio(num: int, den: int) -> float:
    return num / den if den else 0.0


def _set_stats(p: set, r: set) -> tuple[float, float, float]:
    """(share of the prompt's items in r, share of r's items in the prompt, Jaccard)."""
    inter = len(p & r)
    return _ratio(inter, len(p)), _ratio(inter, len(r)), _ratio(inter, len(p) + len(r) - inter)


def overlap_features(view: TextView, ids: Sequence[str]) -> pd.DataFrame:
    """Overlap features of every row.

    Returns: id + float32 columns:
        overlap__{a,b,diff,sum,min,max,absdiff}_<f> for f in
            pcov_w / pcov_2   share of the prompt's words / bigrams found in the response
            rcov_w / rcov_2   share of the response's words / bigrams found in the prompt
            jac_w / jac_2     Jaccard of prompt and response word / bigram sets
            in_other_w        share of this response's words found in the other response
        overlap__p_jac_ab_w, p_jac_ab_2   Jaccard of A and B word / bigram sets
        overlap__p_identical              1 if A and B are the same text (stripped)
    """
    words, sets = view.words, view.word_sets
    n = view.n
    names = ("pcov_w", "rcov_w", "jac_w", "pcov_2", "rcov_2", "jac_2", "in_other_w")
    out = {role: np.zeros((n, len(names)), dtype=np.float64) for role in ("a", "b")}
    jac_ab = np.zeros((n, 2), dtype=np.float64)
    for i in range(n):
        pw, aw, bw = words["p"][i], words["a"][i], words["b"][i]
        ps, as_, bs = sets["p"][i], sets["a"][i], sets["b"][i]
        p2, a2, b2 = set(zip(pw, pw[1:])), set(zip(aw, aw[1:])), set(zip(bw, bw[1:]))
        for role, rs, r2, other in (("a", as_, a2, bs), ("b", bs, b2, as_)):
            row = out[role][i]
            row[0:3] = _set_stats(ps, rs)
            row[3:6] = _set_stats(p2, r2)
            row[6] = _ratio(len(rs & other), len(rs))
        jac_ab[i, 0] = _set_stats(as_, bs)[2]
        jac_ab[i, 1] = _set_stats(a2, b2)[2]
    cols: dict[str, np.ndarray] = {}
    for j, feature in enumerate(names):
        cols.update(pair_views(GROUP, feature, out["a"][:, j], out["b"][:, j]))
    cols[f"{GROUP}__p_jac_ab_w"] = jac_ab[:, 0]
    cols[f"{GROUP}__p_jac_ab_2"] = jac_ab[:, 1]
    same = pc.equal(view.stripped["a"], view.stripped["b"]).to_numpy(zero_copy_only=False)
    cols[f"{GROUP}__p_identical"] = np.asarray(same, dtype=np.float64)
    return feature_frame(ids, cols)
