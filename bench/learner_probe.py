"""Another gradient-boosted family for the stack, side by side on every shared file: an
XGBoost member (kind ``xgboost``, depth-wise trees) in ``lgbm_tfidf``'s place or beside the
default members, alone and in the default stack.

Issue #10 asks for another GBDT behind the learner seam "only if it pays on the
benchmark"; this is that benchmark. Same split, folds and table as
``bench/member_probe.py`` (members cached; the default members come from the cache).

    python bench/quality.py && python bench/learner_probe.py
"""
from __future__ import annotations

import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.lgbm_sweep import sweep_main  # noqa: E402
from bench.member_probe import DEFAULTS, probe_file, probe_table  # noqa: E402

RESULTS = REPO / "bench" / "results" / "learner_probe.md"
TFIDF_INPUTS = DEFAULTS["lgbm_tfidf"]["inputs"]


def _xgb(**params) -> dict:
    return {"kind": "xgboost", "inputs": TFIDF_INPUTS, "params": params}


# label -> (default member it replaces, or None to add it; member name; member spec)
VARIANTS = {
    "the default members": ("lgbm_tfidf", "lgbm_tfidf", DEFAULTS["lgbm_tfidf"]),
    "xgboost on lgbm_tfidf's inputs, eta 0.02": ("lgbm_tfidf", "xgb_tfidf", _xgb(eta=0.02)),
    "+ xgboost on lgbm_tfidf's inputs, eta 0.02": (None, "xgb_tfidf", _xgb(eta=0.02)),
    "+ xgboost on every dense group, eta 0.02": (
        None, "xgb_all", {"kind": "xgboost", "inputs": ["all"], "params": {"eta": 0.02}}),
}


def run_file(path: Path, workdir: Path, seed: int, fold_seed: int | None = None) -> dict:
    return probe_file(path, workdir, seed, fold_seed, VARIANTS, "learner-probe")


def table(rows: list[dict], load: str) -> str:
    return probe_table("Another GBDT family (XGBoost) for the stack", "learner_probe.py", rows,
                       load, VARIANTS)


def main(argv=None) -> int:
    return sweep_main(argv, __doc__.split("\n")[0], run_file, table, RESULTS)


if __name__ == "__main__":
    sys.exit(main())
