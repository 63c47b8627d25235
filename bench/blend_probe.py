"""What else could close the vicuna80 gap of issue #10? Level-2 alternatives and
prompt-cohort features, scored on the OOF predictions ``bench/lgbm_sweep.py`` leaves.

1. The default members' OOF probabilities (with lgbm_tfidf at its default learning rate
   and at 0.02) blended several ways, every one nested the same way (fold k blended by
   a combiner fitted on the other folds only): the level-2 learner at several ``meta_C``,
   soft voting, a per-fold choice between the two by inner nested CV on the other
   folds, and log-linear pooling (one weight per member and a tie bias: few parameters).
2. Prompt-cohort features: each response's length z-score and TF-IDF centrality (mean
   cosine to the other responses to the same prompt in the file; vicuna80 has 8, PandaLM
   4-5, the others 2), as A - B differences, unsupervised. Scored as extra inputs of a
   length-only logistic regression and of a level-2 learner on the members' log-probs.

    python bench/lgbm_sweep.py && python bench/blend_probe.py
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from pipeline.blend import fit_blend, fit_meta, log_loss, nested_blend, nested_meta  # noqa: E402
from pipeline.catalog import write_text_atomic  # noqa: E402

RESULTS = REPO / "bench" / "results" / "blend_probe.md"
FILES = ("hh_rlhf_harmless_base_test", "hh_rlhf_helpful_base_test", "lfqa_experts_human",
         "pandalm_test", "vicuna80_qlora_mturk_human")
OTHERS = ("linear_tfidf", "linear_emb", "linear_all")
LGBM = {"lgbm_tfidf": "learning rate 0.04 (default)", "v_lr02": "learning rate 0.02"}


def _proba(oof: pd.DataFrame, name: str) -> np.ndarray:
    return oof[[f"{name}_a", f"{name}_b", f"{name}_tie"]].to_numpy()


def nested_choice(probas, y, folds, C):
    """Fold k: meta or soft voting, whichever scores better nested on the other folds."""
    out, picks = np.zeros((len(y), 3)), ""
    for k in np.unique(folds):
        tr = folds != k
        sub, yt, kt = [p[tr] for p in probas], y[tr], folds[tr]
        meta = log_loss(yt, nested_meta(sub, yt, kt, C))
        soft = log_loss(yt, nested_blend(sub, yt, kt, temperature=False)[0])
        fit = fit_meta(sub, yt, C) if meta <= soft else fit_blend(sub, yt, temperature=False)
        out[~tr] = fit.apply([p[~tr] for p in probas])
        picks += "m" if meta <= soft else "s"
    return out, picks


def _pool_proba(theta, L):
    m = L.shape[0]
    z = np.tensordot(theta[:m], L, 1)
    z[:, 2] += theta[m]
    z -= z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def nested_pool(probas, y, folds):
    """Log-linear pooling: softmax(sum_m w_m log p_m + [0, 0, t]), fitted by L-BFGS."""
    from scipy.optimize import minimize

    L = np.log(np.clip(np.stack(probas), 1e-6, 1.0))
    out = np.zeros((len(y), 3))
    for k in np.unique(folds):
        tr = folds != k

        def loss(theta):
            return -np.log(_pool_proba(theta, L[:, tr])[np.arange(tr.sum()), y[tr]] + 1e-12).mean()

        theta = minimize(loss, np.r_[np.full(len(probas), 1.0 / len(probas)), 0.0], method="L-BFGS-B").x
        out[~tr] = _pool_proba(theta, L[:, ~tr])
    return out


def _text(cell) -> str:
    try:
        turns = json.loads(cell)
        return "\n\n".join(t for t in turns if t) if isinstance(turns, list) else str(cell)
    except (TypeError, ValueError):
        return "" if cell is None else str(cell)


def cohort_features(frame: pd.DataFrame) -> np.ndarray:
    """[n, 2]: A - B of (length z-score, TF-IDF centrality z-score) within the prompt's
    distinct responses (0 where a prompt has fewer than 3)."""
    from sklearn.feature_extraction.text import TfidfVectorizer

    p = frame["prompt"].map(_text)
    a, b = frame["response_a"].map(_text), frame["response_b"].map(_text)
    resp = pd.concat([pd.DataFrame({"p": p, "r": a}), pd.DataFrame({"p": p, "r": b})])
    resp = resp.drop_duplicates().reset_index(drop=True)
    X = TfidfVectorizer(sublinear_tf=True, ngram_range=(1, 2)).fit_transform(resp["r"])
    feats = {}
    for prompt, idx in resp.groupby("p").indices.items():
        n = len(idx)
        length = np.log1p(resp["r"].iloc[idx].str.len().to_numpy())
        cent = (np.asarray((X[idx] @ X[idx].T).sum(axis=1)).ravel() - 1) / max(n - 1, 1)
        z = [(v - v.mean()) / (v.std() + 1e-9) if n > 2 else np.zeros(n) for v in (length, cent)]
        for j, i in enumerate(idx):
            feats[(prompt, resp["r"].iloc[i])] = (z[0][j], z[1][j])
    fa = np.array([feats[k] for k in zip(p, a)])
    fb = np.array([feats[k] for k in zip(p, b)])
    return fa - fb


def _cv_lr(X, y, folds, C=1.0):
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    out = np.full((len(y), 3), 1e-6)
    for k in np.unique(folds):
        tr = folds != k
        sc = StandardScaler().fit(X[tr])
        model = LogisticRegression(C=C, max_iter=3000).fit(sc.transform(X[tr]), y[tr])
        out[np.ix_(~tr, model.classes_)] = model.predict_proba(sc.transform(X[~tr]))
    return out / out.sum(axis=1, keepdims=True)


def run_file(stem: str, workdir: Path) -> dict:
    run = workdir / "runs" / f"lgbm-sweep-{stem}"
    oof = pd.read_parquet(run / "oof.parquet")
    y = oof["label"].to_numpy().astype(np.int64)
    folds = oof["fold"].to_numpy().astype(np.int64)
    rows: dict[str, float] = {}
    for lgbm, label in LGBM.items():
        probas = [_proba(oof, lgbm)] + [_proba(oof, n) for n in OTHERS]
        rows[f"{label}: best member alone"] = log_loss(y, probas[0])
        for C in (0.01, 0.03, 0.1, 1.0):
            rows[f"{label}: level-2, meta_C {C}" + (" (default)" if C == 0.03 else "")] = \
                log_loss(y, nested_meta(probas, y, folds, C))
        rows[f"{label}: soft voting"] = log_loss(y, nested_blend(probas, y, folds, temperature=False)[0])
        rows[f"{label}: per-fold nested choice of the two"] = log_loss(y, nested_choice(probas, y, folds, 0.03)[0])
        rows[f"{label}: log-linear pooling"] = log_loss(y, nested_pool(probas, y, folds))
    train = pd.read_csv(workdir / "bench_data" / stem / "train.csv", dtype=str, keep_default_na=False)
    train = train.set_index(train["id"].astype(str)).loc[oof["id"].astype(str)].reset_index(drop=True)
    cohort = cohort_features(train)
    lengths = np.column_stack([np.log1p(train[c].map(_text).str.len()) for c in ("response_a", "response_b")])
    base = np.column_stack([lengths, lengths[:, 0] - lengths[:, 1]])
    rows["cohort: length LR"] = log_loss(y, _cv_lr(base, y, folds))
    rows["cohort: length LR + cohort features"] = log_loss(y, _cv_lr(np.column_stack([base, cohort]), y, folds))
    logp = np.log(np.clip(np.hstack([_proba(oof, n) for n in ("lgbm_tfidf", *OTHERS)]), 1e-6, 1))
    rows["cohort: LR on members' log-probs"] = log_loss(y, _cv_lr(logp, y, folds, C=0.03))
    rows["cohort: LR on members' log-probs + cohort features"] = log_loss(
        y, _cv_lr(np.column_stack([logp, cohort]), y, folds, C=0.03))
    return {"file": stem, "rows": rows}


def combiner_table(title: str, intro: str, results: list[dict]) -> list[str]:
    """Markdown lines: a row per combiner (``results[i]["rows"]``: name -> OOF log loss),
    a column per file, and the mean."""
    lines = [title, "", intro, "",
             "| combiner | " + " | ".join(r["file"] for r in results) + " | mean |",
             "|---|" + "---|" * (len(results) + 1)]
    for n in results[0]["rows"]:
        vals = [r["rows"][n] for r in results]
        lines.append(f"| {n} | " + " | ".join(f"{v:.4f}" for v in vals) + f" | {np.mean(vals):.4f} |")
    return lines


def oof_probe_main(argv, description: str, results: Path, table) -> int:
    """The command line of a probe on cached OOF predictions (this script,
    bench/cohort_probe.py, bench/meta_offset.py): ``--workdir`` and ``--out``, then
    ``table(workdir, load)`` -> markdown lines, or None when none of the runs it reads is
    there (a message and exit 2); the lines are written to ``--out`` and printed."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--workdir", type=Path,
                   default=Path(os.environ.get("PREFSTACK_BENCH_DIR", "/tmp/prefstack-bench")))
    p.add_argument("--out", type=Path, default=results)
    args = p.parse_args(argv)
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    lines = table(args.workdir, load)
    if lines is None:
        print(f"none of the runs this probe reads is in {args.workdir}/runs: run the script its "
              "docstring names first", file=sys.stderr)
        return 2
    text = "\n".join(lines) + "\n"
    write_text_atomic(args.out, text)
    print(text)
    return 0


def table(workdir: Path, load: str) -> list[str] | None:
    results = [run_file(stem, workdir) for stem in FILES
               if (workdir / "runs" / f"lgbm-sweep-{stem}" / "oof.parquet").is_file()]
    if not results:
        return None
    return combiner_table(
        "# Level-2 alternatives and prompt-cohort features (issue #10, vicuna80)",
        f"Written {time.strftime('%Y-%m-%d %H:%M')} by `python bench/blend_probe.py` from the "
        f"OOF predictions of `bench/lgbm_sweep.py` ({platform.machine()}, {os.cpu_count()} CPU "
        f"cores, load {load}). OOF log loss, prompt-grouped 5 folds; every combiner nested "
        "(fold k combined by one fitted on the other folds). Members: lgbm_tfidf (at the "
        "learning rate named) + linear_tfidf + linear_emb + linear_all.", results)


def main(argv=None) -> int:
    return oof_probe_main(argv, __doc__.split("\n")[0], RESULTS, table)


if __name__ == "__main__":
    sys.exit(main())
