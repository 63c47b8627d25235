"""How noisy the labels of each shared file are, where the same pair was judged more than once.

Some files hold several votes on one pair (vicuna80: three Mechanical Turk votes per pair,
one row each). There the votes themselves say how far any model can go: how often two
votes on a pair agree, what predicting one vote from the pair's other votes scores (log
loss, Dirichlet-smoothed toward the file's class prior), and the lower bound -log P(two
votes agree) on the log loss of even the true per-pair probabilities (Renyi-2 entropy <=
Shannon entropy). Labels only: no model is fitted, nothing is cached.

    python bench/label_noise.py [--data ../shared/data]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
LABELS = ["winner_model_a", "winner_model_b", "winner_tie"]
ALPHAS = (1.0, 2.0, 4.0, 8.0)


def vote_stats(frame: pd.DataFrame) -> dict | None:
    """Agreement statistics over pairs judged more than once, or None when none is."""
    y = frame[LABELS].to_numpy().argmax(axis=1)
    key = frame["prompt"] + "\x00" + frame["response_a"] + "\x00" + frame["response_b"]
    groups = pd.Series(np.arange(len(frame))).groupby(key.to_numpy()).indices
    multi = [idx for idx in groups.values() if len(idx) > 1]
    if not multi:
        return None
    prior = np.bincount(y, minlength=3) / len(y)
    counts = np.array([np.bincount(y[idx], minlength=3) for idx in multi])
    n = counts.sum(axis=1)
    agree = float(((counts * (counts - 1)).sum(axis=1) / (n * (n - 1))).mean())
    rows = np.concatenate(multi)
    own = np.concatenate([np.repeat(c[None], len(idx), axis=0) for c, idx in zip(counts, multi)])
    others = own.copy()
    others[np.arange(len(rows)), y[rows]] -= 1
    loo = {}
    for a in ALPHAS:
        p = (others + a * prior) / (others.sum(axis=1, keepdims=True) + a)
        loo[a] = float(-np.mean(np.log(p[np.arange(len(rows)), y[rows]])))
    return {"rows": len(frame), "pairs": len(groups), "pairs_judged_more_than_once": len(multi),
            "votes_per_pair": float(n.mean()), "unanimous": float((counts.max(axis=1) == n).mean()),
            "agree": agree, "bound": float(-np.log(agree)), "loo": loo,
            "prior_log_loss": float(-np.mean(np.log(prior[y])))}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--data", type=Path, default=REPO.parent / "shared" / "data")
    args = p.parse_args(argv)
    files = sorted(args.data.glob("*.csv"))
    if not files:
        print(f"no CSV file under {args.data} (--data)", file=sys.stderr)
        return 2
    print(f"# Label noise of the shared files\n\nWritten {time.strftime('%Y-%m-%d %H:%M')} by "
          "`python bench/label_noise.py` (labels only: no model, deterministic).\n")
    print("| file | rows | pairs judged more than once | votes per pair | unanimous pairs | "
          "P(two votes agree) | bound -log P | one vote from the pair's others "
          "(alpha 1 / 2 / 4 / 8) | class prior |")
    print("|---|---|---|---|---|---|---|---|---|")
    for path in files:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False)
        frame[LABELS] = frame[LABELS].astype(int)
        s = vote_stats(frame)
        if s is None:
            print(f"| {path.stem} | {len(frame)} | 0 | 1 | - | - | - | - | - |")
            continue
        loo = " / ".join(f"{s['loo'][a]:.4f}" for a in ALPHAS)
        print(f"| {path.stem} | {s['rows']} | {s['pairs_judged_more_than_once']} of {s['pairs']} | "
              f"{s['votes_per_pair']:.2f} | {s['unanimous']:.3f} | {s['agree']:.4f} | "
              f"{s['bound']:.4f} | {loo} | {s['prior_log_loss']:.4f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
