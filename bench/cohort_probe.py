"""Two uses of a prompt's other responses, and who wrote each response (the names, as an
oracle, and guessed from the text), probed on the default stack's OOF predictions.

Vicuna80 rates every pair of 8 models' answers to each of its 80 questions (PandaLM: 4-5
answers per prompt), so each response occurs in several rows. Two label-free ways to use
that, both scored on ``bench/quality.py``'s folds (run it first):

1. **Neighbour win rate** (a member): a response's mean outcome (win 1, tie 0.5, loss 0)
   over its k nearest training responses in the embedding space (cosine, bundled MiniLM),
   never from its own prompt; the member is a swap-augmented logistic regression on
   [wA - wB, |wA - wB|, wA + wB], fitted per fold on that fold's training rows (whose own
   neighbours also exclude their prompt), then added to the default members' nested
   level-2 blend.
2. **Bradley-Terry smoothing** (post-processing): per prompt, least-squares scores s of
   its distinct responses with s_A - s_B ~ log(p_A / p_B) of the stack's OOF rows (ridge
   ``lam``), then log(p_A / p_B) := (1 - mix) * itself + mix * (s_A - s_B), the tie
   probability kept. All rows of a prompt share a fold, so no label is read.
3. **Model identities, as an oracle** (a member): the file's ``model_a`` / ``model_b``
   (Kaggle's train.csv has them, its test.csv does not), a swap-augmented logistic
   regression on [onehot(A) - onehot(B), onehot(A) + onehot(B)] per fold: a ceiling for any
   member that infers from the text which model wrote a response. Files without model
   names (one value for all) give the class prior.
4. **Predicted authors** (a member): the same regression on the author probabilities of a
   classifier that reads only the text (n-gram TF-IDF, logistic regression), trained per
   fold on the other folds' named responses; the fold's own training rows get inner
   cross-fitted probabilities, so no probability is in-sample. This is what a test file
   without names allows; its accuracy on held-out responses is reported beside it.

    python bench/quality.py && python bench/cohort_probe.py
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from bench.blend_probe import combiner_table, oof_probe_main  # noqa: E402
from bench.lgbm_sweep import FILES  # noqa: E402
from bench.quality import _ctx  # noqa: E402
from pipeline.blend import log_loss, nested_meta, normalize_proba  # noqa: E402
from pipeline.config import Config, apply_overrides  # noqa: E402

RESULTS = REPO / "bench" / "results" / "cohort_probe.md"
KS = (20, 100)
SMOOTHING = ((1e-6, 0.5), (1e-6, 1.0), (0.1, 0.5), (1.0, 0.5), (1.0, 1.0))  # (lam, mix)


def _proba(oof: pd.DataFrame, name: str) -> np.ndarray:
    return oof[[f"{name}_a", f"{name}_b", f"{name}_tie"]].to_numpy()


def neighbour_win_rates(R, prompts, win, pool, k: int) -> np.ndarray:
    """Per response (row of R): the mean outcome of its k most similar responses among
    ``pool`` (a mask), never one of its own prompt's."""
    sim = R @ R[pool].T
    sim[prompts[:, None] == prompts[pool][None, :]] = -np.inf
    idx = np.argpartition(-sim, k, axis=1)[:, :k]
    return win[pool][idx].mean(axis=1)


def neighbour_member(R, prompts, win, folds, y, k: int) -> np.ndarray:
    """OOF probabilities of the neighbour-win-rate member (see the module docstring)."""
    from sklearn.linear_model import LogisticRegression

    n = len(y)
    rp, rf = np.concatenate([prompts, prompts]), np.concatenate([folds, folds])
    swap = np.array([1, 0, 2])
    out = np.zeros((n, 3))
    for f in np.unique(folds):
        w = neighbour_win_rates(R, rp, win, rf != f, k)
        x = np.column_stack([w[:n] - w[n:], np.abs(w[:n] - w[n:]), w[:n] + w[n:]])
        xs = x * np.array([-1.0, 1.0, 1.0])
        fit = folds != f
        lr = LogisticRegression(C=1.0, max_iter=1000).fit(
            np.vstack([x[fit], xs[fit]]), np.concatenate([y[fit], swap[y[fit]]]))

        def proba(z):
            p = np.full((len(z), 3), 1e-6)
            p[:, lr.classes_] = lr.predict_proba(z)
            return p / p.sum(axis=1, keepdims=True)
        out[~fit] = 0.5 * (proba(x[~fit]) + proba(xs[~fit])[:, swap])
    return out


def bt_smooth(P, train: pd.DataFrame, lam: float, mix: float) -> np.ndarray:
    """The stack's probabilities with each prompt's A-vs-B log-odds pulled toward a
    Bradley-Terry fit over its responses (see the module docstring)."""
    P = normalize_proba(P)
    Q = P.copy()
    for idx in train.groupby("prompt").indices.values():
        codes, uniq = pd.factorize(np.concatenate([train["response_a"].to_numpy()[idx],
                                                   train["response_b"].to_numpy()[idx]]))
        A = np.zeros((len(idx), len(uniq)))
        A[np.arange(len(idx)), codes[:len(idx)]] += 1
        A[np.arange(len(idx)), codes[len(idx):]] -= 1
        z = np.log(P[idx, 0]) - np.log(P[idx, 1])
        s = np.linalg.solve(A.T @ A + lam * np.eye(len(uniq)), A.T @ z)
        zs = (1 - mix) * z + mix * (A @ s)
        rest = 1 - P[idx, 2]
        Q[idx, 0] = rest / (1 + np.exp(-zs))
        Q[idx, 1] = rest - Q[idx, 0]
    return Q


def pair_member(sides, folds, y, C: float = 1.0) -> np.ndarray:
    """OOF probabilities [n, 3] of a logistic regression on who wrote A and B: per fold k,
    ``sides(k)`` gives A, B [n, M] (one-hot names, or predicted author probabilities), and
    the regression on [A - B, A + B] is fitted on the other folds' rows in both orders,
    predicting fold k in both orders averaged."""
    from sklearn.linear_model import LogisticRegression

    from pipeline.blend import SWAP_PERM

    perm = np.asarray(SWAP_PERM)
    out = np.zeros((len(y), 3))
    for k in np.unique(folds):
        A, B = sides(k)
        X, Xs = np.hstack([A - B, A + B]), np.hstack([B - A, A + B])
        fit, held = folds != k, folds == k
        labels = np.concatenate([y[fit], perm[y[fit]]])
        lr = LogisticRegression(C=C, max_iter=2000).fit(np.vstack([X[fit], Xs[fit]]), labels)
        p, ps = np.zeros((held.sum(), 3)), np.zeros((held.sum(), 3))
        p[:, lr.classes_] = lr.predict_proba(X[held])
        ps[:, lr.classes_] = lr.predict_proba(Xs[held])
        out[held] = 0.5 * (p + ps[:, perm])
    return out


def identity_member(model_a: np.ndarray, model_b: np.ndarray, folds, y, C: float = 1.0) -> np.ndarray:
    """The oracle: ``pair_member`` on one-hot model names."""
    names = {m: i for i, m in enumerate(sorted(set(model_a) | set(model_b)))}
    rows = np.arange(len(y))
    A, B = np.zeros((len(y), len(names))), np.zeros((len(y), len(names)))
    A[rows, [names[m] for m in model_a]] = 1
    B[rows, [names[m] for m in model_b]] = 1
    return pair_member(lambda k: (A, B), folds, y, C)


UNNAMED = {"", "unknown", "nan", "none"}


def author_probs(texts: np.ndarray, names: np.ndarray, fit: np.ndarray, C: float = 10.0) -> np.ndarray:
    """[len(texts), M] author probabilities of every text from a classifier fitted on the
    named texts of ``fit`` only (word 1-2 and char 3-5 n-gram TF-IDF fitted on those
    texts, multinomial logistic regression; M = the sorted names of all rows, so every
    fit gives the same columns). Each distinct text is vectorised once."""
    import scipy.sparse as sp
    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression

    classes = sorted({m for m in names if m.lower() not in UNNAMED})
    out = np.zeros((len(texts), max(len(classes), 1)))
    train = fit & np.array([m.lower() not in UNNAMED for m in names])
    pairs = pd.DataFrame({"t": texts[train], "m": names[train]}).drop_duplicates()
    if pairs["m"].nunique() < 2:
        return out
    vecs = [TfidfVectorizer(ngram_range=(1, 2), min_df=2, sublinear_tf=True, max_features=200_000),
            TfidfVectorizer(analyzer="char_wb", ngram_range=(3, 5), min_df=2, sublinear_tf=True,
                            max_features=200_000)]
    X = sp.hstack([v.fit_transform(pairs["t"]) for v in vecs], format="csr")
    lr = LogisticRegression(C=C, max_iter=1000).fit(X, pairs["m"].map(classes.index))
    codes, uniq = pd.factorize(texts)
    P = lr.predict_proba(sp.hstack([v.transform(uniq) for v in vecs], format="csr"))
    out[:, lr.classes_] = P[codes]
    return out


def predicted_author_member(texts_a, texts_b, model_a, model_b, prompts, folds, y,
                            inner: int = 5) -> tuple[np.ndarray, float]:
    """``pair_member`` on predicted author probabilities instead of the names (what a test
    file without names allows). Per fold k the classifier learns from the other folds'
    named responses only; their own rows get its inner cross-fitted probabilities (inner
    folds by prompt), so the pair member is fitted on probabilities as noisy as those it
    is applied to. Returns (OOF [n, 3], author accuracy on the held-out folds' texts)."""
    n = len(y)
    texts = np.concatenate([texts_a, texts_b]).astype(object)
    names = np.concatenate([model_a, model_b]).astype(str)
    groups, f2 = np.concatenate([prompts, prompts]), np.concatenate([folds, folds])
    classes = sorted({m for m in names if m.lower() not in UNNAMED})
    hits = []

    def sides(k):
        fit = f2 != k
        P = author_probs(texts, names, fit)
        uniq = np.unique(groups[fit])
        np.random.default_rng(int(k)).shuffle(uniq)
        for j in range(inner):
            part = fit & np.isin(groups, uniq[j::inner])
            P[part] = author_probs(texts, names, fit & ~part)[part]
        named = ~fit & np.isin(names, classes)
        if named.any():
            hits.append(np.mean(np.asarray(classes)[P[named].argmax(1)] == names[named]))
        return P[:n], P[n:]

    return pair_member(sides, folds, y), float(np.mean(hits)) if hits else float("nan")


def run_file(stem: str, workdir: Path) -> dict:
    from pipeline.embed import embeddings_for

    cfg = Config()
    members = list(cfg.stack.members)
    d = workdir / "bench_data" / stem
    ctx = _ctx(apply_overrides(cfg, {"name": f"quality-candidates-{stem}"}), workdir,
               d / "train.csv", d / "test.csv")
    oof = pd.read_parquet(ctx.run_dir / "oof.parquet")
    stack = pd.read_parquet(workdir / "runs" / f"quality-default-{stem}" / "oof.parquet")
    # Canonical texts are lists of turns: one string each, to group and compare them.
    train = ctx.dataset.train[["id", "prompt", "response_a", "response_b"]].copy()
    for c in ("prompt", "response_a", "response_b"):
        train[c] = ["\x1e".join(t or "" for t in turns) for turns in train[c]]
    assert (train["id"].astype(str).to_numpy() == oof["id"].to_numpy()).all()
    assert (stack["id"].to_numpy() == oof["id"].to_numpy()).all()
    y, folds = oof["label"].to_numpy().astype(np.int64), oof["fold"].to_numpy().astype(np.int64)
    e = embeddings_for(ctx, train, cfg.embed.models[0])
    R = np.vstack([np.asarray(e["response_a"]), np.asarray(e["response_b"])]).astype(np.float32)
    R /= np.linalg.norm(R, axis=1, keepdims=True) + 1e-9
    win = np.concatenate([np.select([y == 0, y == 1], [1.0, 0.0], 0.5),
                          np.select([y == 1, y == 0], [1.0, 0.0], 0.5)])
    prompts = pd.factorize(train["prompt"])[0]
    probas = [_proba(oof, m) for m in members]
    P = stack[["blend_a", "blend_b", "blend_tie"]].to_numpy()
    out = {"default stack": log_loss(y, P)}
    for k in KS:
        nb = neighbour_member(R, prompts, win, folds, y, k)
        out[f"neighbour win rate, k {k}: the member alone"] = log_loss(y, nb)
        out[f"neighbour win rate, k {k}: default members + it (nested level-2)"] = log_loss(
            y, nested_meta(probas + [nb], y, folds, cfg.stack.meta_C))
    for lam, mix in SMOOTHING:
        out[f"Bradley-Terry smoothing, lam {lam}, mix {mix}"] = log_loss(y, bt_smooth(P, train, lam, mix))
    ids = identity_member(ctx.dataset.train["model_a"].astype(str).to_numpy(),
                          ctx.dataset.train["model_b"].astype(str).to_numpy(), folds, y)
    out["model identities (oracle, not a test input): the member alone"] = log_loss(y, ids)
    out["model identities (oracle): default members + it (nested level-2)"] = log_loss(
        y, nested_meta(probas + [ids], y, folds, cfg.stack.meta_C))
    pred, acc = predicted_author_member(train["response_a"].to_numpy(), train["response_b"].to_numpy(),
                                        ctx.dataset.train["model_a"].astype(str).to_numpy(),
                                        ctx.dataset.train["model_b"].astype(str).to_numpy(),
                                        prompts, folds, y)
    out["predicted authors: share of held-out responses named right (accuracy, not a log loss)"] = acc
    out["predicted authors (from the text): the member alone"] = log_loss(y, pred)
    out["predicted authors: default members + it (nested level-2)"] = log_loss(
        y, nested_meta(probas + [pred], y, folds, cfg.stack.meta_C))
    return {"file": stem, "rows": out}


def table(workdir: Path, load: str) -> list[str] | None:
    stems = [s for s in FILES if (workdir / "runs" / f"quality-default-{s}" / "oof.parquet").is_file()]
    if not stems:
        return None
    return combiner_table(
        "# A prompt's other responses (neighbour win rate, Bradley-Terry smoothing), model "
        "identities (oracle) and predicted authors",
        f"Written {time.strftime('%Y-%m-%d %H:%M')} by `python bench/cohort_probe.py` from "
        "bench/quality.py's OOF (default members, its folds). Load average at start "
        f"{load}. OOF log loss; every probe nested or label-free.",
        [run_file(s, workdir) for s in stems])


def main(argv=None) -> int:
    return oof_probe_main(argv, __doc__.split("\n")[0], RESULTS, table)


if __name__ == "__main__":
    sys.exit(main())
