"""Overlap features: prompt-to-response and response-to-response word / n-gram overlap.

Words are lower-cased with punctuation removed (TextView.words); n-grams are bigrams of
those words. Set and intersection sizes are computed for all rows at once on integer
word codes (features.segments). Set ratios with an empty denominator are 0 (an empty text overlaps
nothing), so no NaN can appear; ``p_identical`` is 1 when the two responses' texts are
equal after stripping whitespace (two empty responses are identical).
"""
from __future__ import annotations

import functools
from typing import Sequence

import numpy as np
import pandas as pd
import pyarrow.compute as pc

from features import segments
from features.parallel import parallel
from features.text import TextView
from features.views import feature_frame, pair_views, safe_div

GROUP = "overlap"
VERSION = 2  # 2: word splitting no longer uses pyarrow's nondeterministic utf8_split_whitespace


def _ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    return safe_div(num, den)


def _set_stats(n_p: np.ndarray, n_r: np.ndarray, inter: np.ndarray) -> list[np.ndarray]:
    """[share of the prompt's items in r, share of r's items in the prompt, Jaccard] per row,
    from the set sizes and the intersection size."""
    return [_ratio(inter, n_p), _ratio(inter, n_r), _ratio(inter, n_p + n_r - inter)]


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
    n = view.n
    kinds = {"w": view.word_sets, "2": view.bigram_sets}
    inters = parallel({
        (kind, pair): functools.partial(segments.intersection_sizes, sets.keys[pair[0]],
                                        sets.keys[pair[1]], sets.size, n)
        for kind, sets in kinds.items() for pair in ("pa", "pb", "ab")})
    stats = {}
    for kind, sets in kinds.items():
        sizes = sets.sizes
        inter = {pair: inters[kind, pair] for pair in ("pa", "pb", "ab")}
        for role in ("a", "b"):
            stats[role, kind] = _set_stats(sizes["p"], sizes[role], inter["p" + role])
            if kind == "w":
                stats[role, "other"] = _ratio(inter["ab"], sizes[role])
        stats["ab", kind] = _set_stats(sizes["a"], sizes["b"], inter["ab"])[2]
    per_role = {role: dict(zip(("pcov_w", "rcov_w", "jac_w"), stats[role, "w"]))
                | dict(zip(("pcov_2", "rcov_2", "jac_2"), stats[role, "2"]))
                | {"in_other_w": stats[role, "other"]} for role in ("a", "b")}
    cols: dict[str, np.ndarray] = {}
    for feature in per_role["a"]:
        cols.update(pair_views(GROUP, feature, per_role["a"][feature], per_role["b"][feature]))
    cols[f"{GROUP}__p_jac_ab_w"] = stats["ab", "w"]
    cols[f"{GROUP}__p_jac_ab_2"] = stats["ab", "2"]
    same = pc.equal(view.stripped["a"], view.stripped["b"]).to_numpy(zero_copy_only=False)
    cols[f"{GROUP}__p_identical"] = np.asarray(same, dtype=np.float64)
    return feature_frame(ids, cols)
