"""Other views for the default members, side by side on every shared file: each variant
takes one default member's place (or joins them), alone and in the default stack.

Like ``bench/lgbm_sweep.py`` and ``bench/seeds.py`` (same split and folds as
``bench/quality.py``, members cached): the table gives each variant's OOF log loss and the
default stack's (nested level-2 blend) with the variant in the named member's place, or
added beside all four. Variants here change what a member reads, not its learner:

- ``linear_emb`` on fewer embedding blocks (``{embedding-full: {blocks: [...]}}``): without
  the prompt and response vectors, as ``linear_tfidf`` reads only the A - B block;
- TF-IDF fitted once on every train and test text without labels (``fit: all``, which
  Kaggle allows; *transductive*) instead of inside each fold.

    python bench/quality.py && python bench/member_probe.py
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

RESULTS = REPO / "bench" / "results" / "member_probe.md"
DEFAULTS = Config().stack.members


def _with_inputs(member: str, inputs: list) -> dict:
    return {**DEFAULTS[member], "inputs": inputs}


# label -> (default member it replaces, or None to add it; member name; member spec)
VARIANTS = {
    "the default members": ("lgbm_tfidf", "lgbm_tfidf", DEFAULTS["lgbm_tfidf"]),
    "linear_emb on [diff, absdiff, cos]": (
        "linear_emb", "linear_emb_dac", _with_inputs("linear_emb", [
            {"embedding-full": {"blocks": ["diff", "absdiff", "cos"]}}])),
    "linear_emb on [diff, cos]": (
        "linear_emb", "linear_emb_dc", _with_inputs("linear_emb", [
            {"embedding-full": {"blocks": ["diff", "cos"]}}])),
    "linear_emb on [diff]": (
        "linear_emb", "linear_emb_d", _with_inputs("linear_emb", [
            {"embedding-full": {"blocks": ["diff"]}}])),
    "+ linear_emb on [diff, absdiff, cos] (beside linear_emb)": (
        None, "linear_emb_dac", _with_inputs("linear_emb", [
            {"embedding-full": {"blocks": ["diff", "absdiff", "cos"]}}])),
    "lgbm_tfidf, TF-IDF fit: all (transductive)": (
        "lgbm_tfidf", "lgbm_tfidf_all", _with_inputs("lgbm_tfidf", [
            {"tfidf": {"fit": "all"}}, *DEFAULTS["lgbm_tfidf"]["inputs"][1:]])),
    "linear_tfidf, TF-IDF fit: all (transductive)": (
        "linear_tfidf", "linear_tfidf_all", _with_inputs("linear_tfidf", [
            {"tfidf": {"blocks": ["diff"], "fit": "all"}}])),
}


def probe_file(path: Path, workdir: Path, seed: int, fold_seed: int | None, variants: dict,
               run_name: str) -> dict:
    """Every variant (label -> (default member it replaces or None, name, spec)) on one
    file: one sweep per member replaced (or added), merged."""
    out = {"file": path.stem, "variants": {}, "seconds": 0.0}
    for target in dict.fromkeys(t for t, _, _ in variants.values()):
        others = {n: s for n, s in DEFAULTS.items() if n != target}
        chosen = {label: (name, spec) for label, (t, name, spec) in variants.items() if t == target}
        r = sweep_file(path, workdir, seed, run_name, others, chosen, fold_seed)
        out["variants"].update(r["variants"])
        out["seconds"] += r["seconds"]
        if "bar" in r:
            out["bar"] = r["bar"]
    out["variants"] = {label: out["variants"][label] for label in variants}
    return out


def run_file(path: Path, workdir: Path, seed: int, fold_seed: int | None = None) -> dict:
    return probe_file(path, workdir, seed, fold_seed, VARIANTS, "member-probe")


def table(rows: list[dict], load: str) -> str:
    return probe_table("Other views for the default members", "member_probe.py", rows, load, VARIANTS)


def probe_table(title: str, script: str, rows: list[dict], load: str, variants: dict) -> str:
    """The markdown of a probe (this script, bench/learner_probe.py): a header, then per
    variant each file's member / stack OOF; a row replacing a member says which."""
    lines = [
        f"# {title}, on every shared file",
        "",
        f"Written {time.strftime('%Y-%m-%d %H:%M')} by `python bench/{script}`. Machine: "
        f"{platform.machine()}, {os.cpu_count()} CPU cores, load average at start {load}. "
        "OOF log loss, prompt-grouped 5 folds (bench/quality.py's split). Each cell: the "
        "variant alone / the default stack with it in the named member's place, or beside all "
        "four for a '+' row (nested level-2 blend).",
        "",
    ]
    first = next(iter(variants))
    lines += variant_lines(rows, list(variants), "variant", lambda label: label + (
        "" if label == first or variants[label][0] is None else f" (for {variants[label][0]})"))
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    return sweep_main(argv, __doc__.split("\n")[0], run_file, table, RESULTS)


if __name__ == "__main__":
    sys.exit(main())
