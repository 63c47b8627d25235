"""Diagnostics of a run that people would rather look at than read (pure: arrays in,
tables out; ``pipeline.report`` draws them).

- Position bias of each member: how often its most probable class changes when A and B
  are swapped (without TTA), the mean change of P(A), and P(A) - P(B) on pairs whose two
  responses are identical (an unbiased model says 0).
- Length bias of the blend: observed against predicted win rates of A, B and tie by
  binned log length ratio of the responses (length is the strongest single signal).
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from features.turns import CLASS_NAMES, join_turns


def position_bias(oof: np.ndarray, oof_single: np.ndarray, identical: np.ndarray) -> dict:
    """Position-bias numbers of one member.

    ``oof``: its OOF probabilities with swap TTA (the mean of both orders, the swapped one
    mapped back); ``oof_single``: from the rows' own order only; so the swapped order's
    prediction is 2 oof - oof_single. ``identical``: bool [n], rows whose A and B are the
    same text. Returns flip_rate, mean_abs_shift (of P(A)), identical_pairs (count) and
    identical_a_minus_b (mean P(A) - P(B) on them from one order; None without such rows).
    """
    oof, single = np.asarray(oof, dtype=np.float64), np.asarray(oof_single, dtype=np.float64)
    other = 2.0 * oof - single
    identical = np.asarray(identical, dtype=bool)
    return {
        "flip_rate": float(np.mean(np.argmax(single, axis=1) != np.argmax(other, axis=1))),
        "mean_abs_shift": float(np.mean(np.abs(single[:, 0] - other[:, 0]))),
        "identical_pairs": int(identical.sum()),
        "identical_a_minus_b": (float(np.mean(single[identical, 0] - single[identical, 1]))
                                if identical.any() else None),
    }


def response_lengths(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(characters of A, characters of B, A and B identical) of a canonical frame."""
    a = [join_turns(t) for t in frame["response_a"]]
    b = [join_turns(t) for t in frame["response_b"]]
    return (np.array([len(t) for t in a], dtype=np.int64), np.array([len(t) for t in b], dtype=np.int64),
            np.array([x == y for x, y in zip(a, b)], dtype=bool))


def length_bias(y: np.ndarray, proba: np.ndarray, len_a: np.ndarray, len_b: np.ndarray,
                n_bins: int = 10) -> pd.DataFrame:
    """Observed and predicted class rates by quantile bin of log((1 + len A) / (1 + len B)).

    Returns: DataFrame [lo, hi, mid, rows, observed_a, predicted_a, observed_b,
    predicted_b, observed_tie, predicted_tie], one row per non-empty bin.
    """
    y = np.asarray(y)
    ratio = np.log1p(np.asarray(len_a, dtype=np.float64)) - np.log1p(np.asarray(len_b, dtype=np.float64))
    edges = np.unique(np.quantile(ratio, np.linspace(0, 1, n_bins + 1)))
    if len(edges) < 2:
        edges = np.array([ratio.min(), ratio.max() + 1e-9])
    which = np.clip(np.searchsorted(edges, ratio, side="right") - 1, 0, len(edges) - 2)
    rows = []
    for b in range(len(edges) - 1):
        sel = which == b
        if not sel.any():
            continue
        row = {"lo": float(edges[b]), "hi": float(edges[b + 1]), "mid": float(np.median(ratio[sel])),
               "rows": int(sel.sum())}
        for c, name in enumerate(CLASS_NAMES):
            row[f"observed_{name}"] = float(np.mean(y[sel] == c))
            row[f"predicted_{name}"] = float(np.mean(proba[sel, c]))
        rows.append(row)
    return pd.DataFrame(rows)


# What the parts of a feature name mean, for the report's legend.
ROLE_MEANINGS = {
    "a": "of response A", "b": "of response B", "diff": "A minus B (flips sign under a swap)",
    "lr": "log(1 + A) - log(1 + B)", "sum": "A plus B", "min": "smaller of A and B",
    "max": "larger of A and B", "absdiff": "|A - B|", "p": "of the prompt, or of the pair as a whole",
}
GROUP_MEANINGS = {
    "length": "characters, words, lines, tokens",
    "structure": "markdown structure: lists, headings, code, links, refusals ...",
    "overlap": "word and n-gram overlap between prompt and responses",
    "emb-": "frozen sentence embeddings of <model>: cosines, and a fixed random projection of "
            "the vectors (eNN = projection component NN)",
    "tfidf": "word and character n-gram TF-IDF ([A - B | A + B] blocks, SVD components svdNN, "
             "prompt cosines)",
    "embfull": "the full embedding vectors [p, a, b, a - b, |a - b|] (component NN)",
}


def legend(feature_names) -> list[str]:
    """Markdown lines explaining the groups and roles that occur in ``feature_names``."""
    groups, roles = set(), set()
    for name in feature_names:
        group, _, rest = str(name).partition("__")
        groups.add(group)
        roles.add(rest.split("_", 1)[0])
    lines = ["Feature names read `<group>__<role>_<feature>`:", ""]
    for key, text in GROUP_MEANINGS.items():
        hits = sorted(g for g in groups if g == key or (key.endswith("-") and g.startswith(key))
                      or (key == "embfull" and g.startswith("embfull")))
        if hits:
            lines.append(f"- group `{', '.join(hits)}`: {text}")
    for role, text in ROLE_MEANINGS.items():
        if role in roles:
            lines.append(f"- role `{role}`: {text}")
    return lines
