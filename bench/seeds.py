"""Seeds of the ``lgbm_tfidf`` member, side by side on every shared file: what averaging
LightGBM over several seeds (a member's own ``seeds``) buys, alone and in the default stack.

Each variant is the default ``lgbm_tfidf`` (its inputs and params) with its own seeds (and
learning rate where named), cross-fitted beside the other default members on the folds
and held-out split of ``bench/quality.py``; the table gives the variant's OOF log loss
and the default stack's (nested level-2 blend, as the default) with the variant in
``lgbm_tfidf``'s place. Seeds change the inner early-stopping split and LightGBM's bagging
and feature sampling; each seed is one more LightGBM fit per fold (the TF-IDF view is
fitted once). Members are cached, so a rerun with the same code reads them back.

    python bench/quality.py && python bench/seeds.py
    python bench/member_speed.py --add '{"lgbm_tfidf_s3": {..., "seeds": [0, 1, 2]}}'  # its cost at 60k
"""
from __future__ import annotations

import os
import platform
import sys
import time
from pathlib import Path


REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.lgbm_sweep import sweep_file, sweep_main, variant_lines  # noqa: E402
from pipeline.config import Config  # noqa: E402

RESULTS = REPO / "bench" / "results" / "seeds.md"
# label -> (member name, seeds, learning rate or None for the default's)
VARIANTS = {
    "seeds [0]": ("lgbm_tfidf", (0,), None),
    "seeds [0, 1]": ("v_s01", (0, 1), None),
    "seeds [0, 1, 2]": ("v_s012", (0, 1, 2), None),
    "seeds [0, 1], learning_rate 0.04": ("v_s01_lr04", (0, 1), 0.04),
    "seeds [0, 1, 2], learning_rate 0.04": ("v_s012_lr04", (0, 1, 2), 0.04),
}


def _variant(seeds, lr) -> dict:
    spec = dict(Config().stack.members["lgbm_tfidf"])
    if lr is not None:
        spec["params"] = {**spec.get("params", {}), "learning_rate": lr}
    spec["seeds"] = list(seeds)
    return spec


def _is_default(label: str) -> bool:
    _, seeds, lr = VARIANTS[label]
    default = Config().stack.members["lgbm_tfidf"]
    return (lr is None and list(seeds) == list(default.get("seeds", Config().stack.seeds)))


def run_file(path: Path, workdir: Path, seed: int, fold_seed: int | None = None) -> dict:
    others = {n: s for n, s in Config().stack.members.items() if n != "lgbm_tfidf"}
    variants = {label: (name, _variant(s, lr)) for label, (name, s, lr) in VARIANTS.items()}
    return sweep_file(path, workdir, seed, "seeds", others, variants, fold_seed)


def table(rows: list[dict], load: str) -> str:
    lines = [
        "# Seeds of lgbm_tfidf, on every shared file",
        "",
        f"Written {time.strftime('%Y-%m-%d %H:%M')} by `python bench/seeds.py`. Machine: "
        f"{platform.machine()}, {os.cpu_count()} CPU cores, load average at start {load}. "
        "OOF log loss, prompt-grouped 5 folds (bench/quality.py's split). Each cell: the "
        "variant alone / the default stack with it in lgbm_tfidf's place (nested level-2 "
        "blend). Other members: the defaults.",
        "",
    ]
    lines += variant_lines(rows, list(VARIANTS), "lgbm_tfidf",
                           lambda label: f"{label} (default)" if _is_default(label) else label)
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    return sweep_main(argv, __doc__.split("\n")[0], run_file, table, RESULTS)


if __name__ == "__main__":
    sys.exit(main())
