"""The feature column naming contract, and A/B swap of feature frames.

Every feature frame has an ``id`` column (str) first, then float32 columns named
``<group>__<role>_<feature>``:

    group    the feature group: length, structure, overlap, or emb-<model slug>
    role     a        per-response feature of response A
             b        the same feature of response B
             diff     a - b                         (negates under an A/B swap)
             lr       log1p(a) - log1p(b), counts   (negates under an A/B swap)
             sum, min, max, absdiff                 (symmetric: unchanged under a swap)
             p        prompt-level or symmetric pair-level (p_words, p_cos_ab, p_identical)

So under a swap: ``a_x`` <-> ``b_x``, ``diff_x`` and ``lr_x`` negate, the rest stays.
"""
from __future__ import annotations

import pandas as pd

ROLES = ("a", "b", "diff", "lr", "sum", "min", "max", "absdiff", "p")
NEGATING_ROLES = frozenset({"diff", "lr"})
SYMMETRIC_ROLES = frozenset({"sum", "min", "max", "absdiff", "p"})
SEP = "__"


def _split(col: str) -> tuple[str, str, str]:
    """``group__role_feature`` -> (group, role, feature); ValueError if it is not one."""
    group, sep, rest = col.partition(SEP)
    role, sep2, feature = rest.partition("_")
    if not sep or not sep2 or not group or not feature or role not in ROLES:
        raise ValueError(f"column {col!r} does not follow the feature naming contract "
                         f"'<group>__<role>_<feature>' with role in {ROLES}")
    return group, role, feature


def column_group(col: str) -> str:
    """Feature group of a column: ``"length__a_words"`` -> ``"length"``."""
    return _split(col)[0]


def column_role(col: str) -> str:
    """Role of a column: ``"length__a_words"`` -> ``"a"``; one of ROLES."""
    return _split(col)[1]


def column_name(group: str, role: str, feature: str) -> str:
    """Inverse of the two above: ``("length", "a", "words")`` -> ``"length__a_words"``."""
    if SEP in group or role not in ROLES or not feature:
        raise ValueError(f"bad feature column parts {(group, role, feature)!r}")
    return f"{group}{SEP}{role}_{feature}"


def swap_features(df: pd.DataFrame) -> pd.DataFrame:
    """Features of the A/B-swapped rows, built from the features of the original rows.

    Input: a feature frame (``id`` plus contract columns). Output: a new frame with the
    same columns in the same order and the same index: ``a_x`` and ``b_x`` exchanged,
    ``diff_x``/``lr_x`` negated, symmetric columns copied. No recomputation; the input
    is not modified. Raises ValueError if an ``a_x`` has no ``b_x`` partner.
    """
    out = {}
    cols = set(df.columns)
    for col in df.columns:
        if col == "id":
            out[col] = df[col]
            continue
        group, role, feature = _split(col)
        if role in ("a", "b"):
            other = column_name(group, "b" if role == "a" else "a", feature)
            if other not in cols:
                raise ValueError(f"column {col!r} has no partner {other!r}: a per-response "
                                 "feature needs both its a_ and b_ columns")
            out[col] = df[other]
        elif role in NEGATING_ROLES:
            out[col] = -df[col]
        else:
            out[col] = df[col]
    return pd.DataFrame(out, index=df.index)[list(df.columns)]
