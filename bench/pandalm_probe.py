#!/usr/bin/env python
"""How far is PandaLM's OOF log loss from its target, and what would close the gap?

The stack issue asks for PandaLM OOF log loss <= 0.50. This probe measures, on the same
training file and five folds as ``bench/quality.py`` (same held-out prompts, same cached
features), LightGBM on every feature group with:

    1 seed                 the ``lgbm_all`` member of bench/quality.py
    3 seeds                stack.seeds = [0, 1, 2]
    + same-prompt siblings for each response, its mean / max cosine (MiniLM) to the
                           other responses the file holds for the same prompt (no labels
                           used; computed within the training file)
    + ORACLE model ids     one-hot model_a / model_b of the PandaLM file. Not an input the
                           Kaggle test file has: an upper-bound probe only, never a
                           pipeline feature

and prints them next to published accuracies of LLM judges on the same test set (from
WeOpenML/PandaLM ``data/compute_metrics.py``: gpt-3.5-turbo 0.7107, PandaLM-7B 0.6677
against the annotators' majority label), and the annotators' agreement with each other.
A log loss of 0.50 over these labels needs roughly 86% accuracy at constant confidence
(-(a ln a + (1-a) ln((1-a)/2)) = 0.50 at a = 0.86).

    python bench/pandalm_probe.py        # ~1 min on 2 CPU cores once quality.py's caches exist
"""
from __future__ import annotations

import argparse
import logging
import os
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "bench"))

from quality import split_file  # noqa: E402

from features.swap import swap_features  # noqa: E402
from pipeline.blend import accuracy, log_loss  # noqa: E402
from pipeline.catalog import Catalog, write_text_atomic  # noqa: E402
from pipeline.config import apply_overrides, load_config  # noqa: E402
from pipeline.context import RunContext  # noqa: E402
from pipeline.data import join_turns  # noqa: E402
from pipeline.embed import embeddings_for  # noqa: E402
from pipeline.crossfit import cross_fit_arrays  # noqa: E402
from pipeline.stack import prepare_inputs  # noqa: E402
from pipeline.stages import STAGES  # noqa: E402

RESULTS = REPO / "bench" / "results" / "pandalm_probe.md"
# Published accuracy of LLM judges against the majority label of the same 999 rows:
# WeOpenML/PandaLM, data/compute_metrics.py (comments under each model output path).
PUBLISHED = {"gpt-3.5-turbo (published)": 0.7107, "PandaLM-7B (published)": 0.6677}


def sibling_features(train: pd.DataFrame, emb: dict[str, np.ndarray]) -> pd.DataFrame:
    """Per response: mean / max cosine to the file's other responses for the same prompt."""
    prompts = ["\x1e".join(p) for p in train["prompt"]]
    texts = {r: [join_turns(t) for t in train[c]] for r, c in (("a", "response_a"), ("b", "response_b"))}
    vec = {"a": emb["response_a"], "b": emb["response_b"]}
    pool: dict[str, dict[str, np.ndarray]] = {}
    for i, p in enumerate(prompts):
        for r in "ab":
            pool.setdefault(p, {}).setdefault(texts[r][i], vec[r][i])
    out = {f"sib__{r}_{f}": np.zeros(len(train)) for r in "ab" for f in ("mean", "max")}
    for i, p in enumerate(prompts):
        others = [v for t, v in pool[p].items() if t not in (texts["a"][i], texts["b"][i])]
        if not others:
            continue
        stack = np.stack(others)
        for r in "ab":
            sims = stack @ vec[r][i]
            out[f"sib__{r}_mean"][i], out[f"sib__{r}_max"][i] = sims.mean(), sims.max()
    for f in ("mean", "max"):
        out[f"sib__diff_{f}"] = out[f"sib__a_{f}"] - out[f"sib__b_{f}"]
    return pd.DataFrame(out)


def oracle_model_ids(raw: pd.DataFrame) -> pd.DataFrame:
    """One-hot model_a / model_b (a, b, diff views) of the raw training rows."""
    cols = {}
    for m in sorted(set(raw["model_a"]) | set(raw["model_b"])):
        a = (raw["model_a"] == m).to_numpy(float)
        b = (raw["model_b"] == m).to_numpy(float)
        cols[f"oracle__a_{m}"], cols[f"oracle__b_{m}"], cols[f"oracle__diff_{m}"] = a, b, a - b
    return pd.DataFrame(cols)


def annotator_agreement(raw: pd.DataFrame) -> tuple[float, float]:
    """(mean pairwise agreement of the three annotators, share of unanimous rows)."""
    votes = raw[["annotator1", "annotator2", "annotator3"]].astype(int).to_numpy()
    pairs = [(votes[:, i] == votes[:, j]).mean() for i, j in ((0, 1), (0, 2), (1, 2))]
    return float(np.mean(pairs)), float((votes == votes[:, :1]).all(axis=1).mean())


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--file", type=Path, default=REPO.parent / "shared" / "data" / "pandalm_test.csv")
    p.add_argument("--workdir", type=Path,
                   default=Path(os.environ.get("PREFSTACK_BENCH_DIR", "/tmp/prefstack-bench")))
    p.add_argument("--seed", type=int, default=0, help="seed of the held-out split (as quality.py)")
    p.add_argument("--out", type=Path, default=RESULTS)
    args = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING)
    data_dir = args.workdir / "bench_data" / args.file.stem
    train_path, test_path, _ = split_file(args.file, data_dir, None, args.seed)
    cfg = apply_overrides(load_config(None), {"name": f"probe-{args.file.stem}", "stack": {"n_folds": 5}})
    ctx = RunContext(config=cfg, catalog=Catalog(args.workdir), train_path=train_path,
                     test_path=test_path, device_request="cpu")
    for stage in ("embed", "features"):
        STAGES[stage].load()(ctx)
    inp = prepare_inputs(ctx)
    train = ctx.dataset.train
    raw = pd.read_csv(train_path, dtype={"id": str}).set_index("id").loc[inp.train_ids].reset_index()
    base = pd.DataFrame(inp.X, columns=inp.columns)
    emb = embeddings_for(ctx, train, cfg.embed.models[0])
    extra = {"siblings": sibling_features(train, emb), "oracle": oracle_model_ids(raw)}

    def score(frame: pd.DataFrame, seeds: tuple[int, ...]) -> tuple[float, float]:
        cols = list(frame.columns)
        swapped = swap_features(frame.assign(id=inp.train_ids))[cols]
        empty = np.zeros((0, len(cols)), np.float32)
        fit = cross_fit_arrays("lgbm", {}, frame.to_numpy(np.float32), swapped.to_numpy(np.float32),
                               empty, empty, cols, inp.y, inp.folds, inp.groups, seeds=seeds)
        return log_loss(inp.y, fit.oof), accuracy(inp.y, fit.oof)

    prior = np.bincount(inp.y, minlength=3) / len(inp.y)
    rows = [("class prior (whole file; in-sample)", log_loss(inp.y, np.tile(prior, (len(inp.y), 1))),
             float(prior.max()))]
    t0 = time.perf_counter()
    for label, frame, seeds in (
            ("LightGBM all features, 1 seed", base, (0,)),
            ("LightGBM all features, 3 seeds", base, (0, 1, 2)),
            ("+ same-prompt sibling similarity", pd.concat([base, extra["siblings"]], axis=1), (0,)),
            ("+ ORACLE model ids (not a test input)", pd.concat([base, extra["oracle"]], axis=1), (0,))):
        ll, acc = score(frame, seeds)
        rows.append((label, ll, acc))
        print(f"{label}: {ll:.4f} / {acc:.3f}", flush=True)
    agree, unanimous = annotator_agreement(raw)
    lines = ["# PandaLM probe: the gap to the <= 0.50 target", "",
             f"Training file: {args.file.name} minus quality.py's held-out prompts ({len(inp.y)} rows), "
             f"the same five prompt-grouped folds. Written {time.strftime('%Y-%m-%d %H:%M')} by "
             f"`python bench/pandalm_probe.py` ({time.perf_counter() - t0:.0f} s, {os.cpu_count()} CPU cores).", "",
             "| predictor | OOF log loss | accuracy |", "|---|---|---|"]
    lines += [f"| {label} | {ll:.4f} | {acc:.3f} |" for label, ll, acc in rows]
    lines += [f"| {name} | (hard labels: no log loss) | {acc:.3f} |" for name, acc in PUBLISHED.items()]
    lines += ["", f"Annotators: mean pairwise agreement {agree:.3f}, unanimous on {unanimous:.1%} of rows. "
              "Log loss 0.50 at constant confidence needs about 86% accuracy.", ""]
    text = "\n".join(lines)
    print(text)
    if args.out:
        write_text_atomic(args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
