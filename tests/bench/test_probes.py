"""bench/fold_seeds.py's verdicts, rankings and plot, bench/cohort_probe.py's two probes and
bench/label_noise.py's vote statistics, on small made-up inputs where the answer is known."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from bench import cohort_probe, fold_seeds, quality

FILES = ("f1", "f2")
DEFAULT = ["lgbm_tfidf", "linear_all"]


def _row(file: str, stack: float, best: float, avg: float, subsets: dict) -> dict:
    peers = {"length_lr": (best + 0.1, 0.5), "tfidf_lgbm": (best, 0.5), "emb_lr": (best + 0.05, 0.5),
             "peer_average": (avg, 0.5)}
    return {"file": file, "stack": (stack, 0.6), "peers": peers, "best_peer": "tfidf_lgbm",
            "default_members": DEFAULT, "subsets": subsets}


def test_verdicts_and_selection():
    d = "meta: " + "+".join(DEFAULT)
    rows = [_row("f1", 0.60, 0.62, 0.63, {d: 0.60, "meta: lgbm_all": 0.59, "soft_vote: lgbm_all": 0.70}),
            _row("f2", 0.80, 0.80, 0.81, {d: 0.80, "meta: lgbm_all": 0.78, "soft_vote: lgbm_all": 0.70})]
    v = fold_seeds.verdicts(rows)
    assert [round(x["bar"], 6) for x in v] == [0.615, 0.795]  # min(best, avg) - 0.005
    assert [round(x["margin"], 6) for x in v] == [-0.015, 0.005]
    sel = fold_seeds.selection(rows)
    # lgbm_all's meta blend wins both files, the default one: it is not among the best.
    assert (sel["default"], sel["default_wins"], sel["most_wins"], sel["n_top"]) == (d, 1, 2, 1)
    assert sel["rank"] is None and sel["best"][1] == "meta: lgbm_all"


def test_pooled_ranks_on_the_mean_over_draws():
    d = "meta: " + "+".join(DEFAULT)
    draw = lambda a, b: [_row("f1", 0.6, 0.62, 0.63, {d: a, "meta: x": b}),  # noqa: E731
                         _row("f2", 0.8, 0.80, 0.81, {d: a, "meta: x": b})]
    # x is better on one draw, the default on the other, by more: the default ranks first.
    lines = fold_seeds.pooled({42: draw(0.60, 0.61), 43: draw(0.60, 0.58)})
    assert lines[2].startswith("| 1 | meta: x |") and "**" + d + "**" in lines[3]
    lines = fold_seeds.pooled({42: draw(0.58, 0.61), 43: draw(0.60, 0.60)})
    assert lines[2].startswith(f"| 1 | **{d}** |")
    assert lines[-1].startswith("The default members (bold) rank 1 of 2")
    report = fold_seeds.report({42: draw(0.58, 0.61), 43: draw(0.60, 0.60)}, "1.0", "t")
    assert "| f2 | 0.8000 / 0.7950 (**+0.0050**) | 0.8000 / 0.7950 (**+0.0050**) | 0 of 2 |" in report


def test_margins_plot_writes_a_png(tmp_path):
    rows = [_row("f1", 0.60, 0.62, 0.63, {}), _row("f2", 0.80, 0.80, 0.81, {})]
    out = fold_seeds.margins_plot({42: rows, 43: rows}, tmp_path / "m.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and not list(tmp_path.glob(".*tmp"))


def _pairs(n_prompts: int = 6, k: int = 4, seed: int = 0):
    """Every pair of k responses per prompt, with probabilities from latent scores."""
    rng = np.random.default_rng(seed)
    rows, P = [], []
    for q in range(n_prompts):
        s = rng.normal(size=k)
        for i in range(k):
            for j in range(i + 1, k):
                rows.append({"prompt": f"p{q}", "response_a": f"r{q}-{i}", "response_b": f"r{q}-{j}"})
                pa = 0.8 / (1 + np.exp(s[j] - s[i]))
                P.append([pa, 0.8 - pa, 0.2])
    return pd.DataFrame(rows), np.asarray(P)


def test_bt_smoothing_keeps_consistent_predictions_and_ties():
    frame, P = _pairs()
    # Predictions that are exactly a Bradley-Terry model are left as they are (tiny ridge).
    assert np.abs(cohort_probe.bt_smooth(P, frame, 1e-9, 1.0) - P).max() < 1e-6
    # Inconsistent ones move, the tie column never does, mix 0 is the identity.
    noisy = P.copy()
    noisy[::3, :2] = noisy[::3, [1, 0]]
    out = cohort_probe.bt_smooth(noisy, frame, 0.1, 1.0)
    assert np.abs(out - noisy).max() > 0.01 and np.allclose(out[:, 2], noisy[:, 2])
    assert np.allclose(out.sum(axis=1), 1)
    assert np.allclose(cohort_probe.bt_smooth(noisy, frame, 0.1, 0.0), noisy)


def test_neighbour_member_never_reads_its_own_prompts_labels():
    rng = np.random.default_rng(1)
    n, prompts = 60, np.repeat(np.arange(12), 5)
    folds = prompts % 3
    R = rng.normal(size=(2 * n, 8)).astype(np.float32)
    R /= np.linalg.norm(R, axis=1, keepdims=True)
    y = rng.integers(0, 3, n)
    win = lambda y: np.concatenate([np.select([y == 0, y == 1], [1.0, 0.0], 0.5),  # noqa: E731
                                    np.select([y == 1, y == 0], [1.0, 0.0], 0.5)])
    base = cohort_probe.neighbour_member(R, prompts, win(y), folds, y, 5)
    assert base.shape == (n, 3) and np.allclose(base.sum(axis=1), 1)
    # Changing prompt 0's labels changes no prediction of prompt 0's rows: their
    # neighbours come from other prompts and their fold's model from other folds.
    y2 = y.copy()
    y2[prompts == 0] = (y[prompts == 0] + 1) % 3
    again = cohort_probe.neighbour_member(R, prompts, win(y2), folds, y2, 5)
    assert np.allclose(again[prompts == 0], base[prompts == 0])
    assert not np.allclose(again, base)
    # ... and no response's win rate (training rows' included) reads its own prompt.
    rp, pool = np.concatenate([prompts, prompts]), np.ones(2 * n, dtype=bool)
    r1 = cohort_probe.neighbour_win_rates(R, rp, win(y), pool, 5)
    r2 = cohort_probe.neighbour_win_rates(R, rp, win(y2), pool, 5)
    assert np.allclose(r1[rp == 0], r2[rp == 0]) and not np.allclose(r1, r2)


def test_bar_of_is_the_lower_peer_minus_the_margin():
    y = np.array([0, 1, 2, 0])
    good, bad = np.eye(3)[y] * 0.7 + 0.1, np.full((4, 3), 1 / 3)
    peer_p = {"length_lr": bad, "tfidf_lgbm": good, "emb_lr": bad, "peer_average": (good + bad) / 2}
    assert quality.bar_of(peer_p, y) == pytest.approx(-np.log(0.8) - quality.MARGIN)


def test_label_noise_vote_statistics():
    """Two pairs with three votes each (a a b; tie tie tie) and one pair judged once."""
    from bench import label_noise

    def row(p, a, b, label):
        return {"prompt": p, "response_a": a, "response_b": b,
                **{c: int(i == label) for i, c in enumerate(label_noise.LABELS)}}

    frame = pd.DataFrame([row("p1", "x", "y", 0), row("p1", "x", "y", 0), row("p1", "x", "y", 1),
                          row("p2", "u", "v", 2), row("p2", "u", "v", 2), row("p2", "u", "v", 2),
                          row("p3", "x", "y", 1)])
    s = label_noise.vote_stats(frame)
    assert (s["pairs"], s["pairs_judged_more_than_once"], s["votes_per_pair"]) == (3, 2, 3.0)
    assert s["unanimous"] == 0.5
    # Pair 1: one agreeing pair of votes out of three; pair 2: all three agree.
    assert s["agree"] == pytest.approx((1 / 3 + 1) / 2) and s["bound"] == pytest.approx(-np.log(2 / 3))
    # A vote from the others with alpha 1 and prior (2, 2, 3)/7: e.g. the first vote of pair
    # 1 sees one a and one b: p(a) = (1 + 2/7) / 3; its b vote sees two a: p(b) = (2/7) / 3.
    prior = np.array([2, 2, 3]) / 7
    p = [(1 + prior[0]) / 3, (1 + prior[0]) / 3, prior[1] / 3] + [(2 + prior[2]) / 3] * 3
    assert s["loo"][1.0] == pytest.approx(-np.mean(np.log(p)))
    assert label_noise.vote_stats(frame.iloc[[0, 3, 6]]) is None


def test_identity_member_learns_who_wins_from_other_folds_only():
    """Model 'x' beats 'y' whichever side it is on; a fold's own labels never reach its
    predictions; with one model name for all rows the member is the prior."""
    rng = np.random.default_rng(0)
    n = 200
    x_on_a = rng.random(n) < 0.5
    model_a = np.where(x_on_a, "x", "y")
    model_b = np.where(x_on_a, "y", "x")
    y = np.where(x_on_a, 0, 1)
    folds = np.arange(n) % 5
    p = cohort_probe.identity_member(model_a, model_b, folds, y)
    assert np.allclose(p.sum(axis=1), 1)
    assert (p[np.arange(n), y] > 0.8).all()
    y2 = y.copy()
    y2[folds == 0] = 2  # other labels in fold 0 change no prediction of fold 0
    q = cohort_probe.identity_member(model_a, model_b, folds, y2)
    assert np.allclose(q[folds == 0], p[folds == 0])
    same = cohort_probe.identity_member(np.full(n, "u"), np.full(n, "u"), folds, y)
    assert np.allclose(same, same[0]) and np.allclose(same[0][:2], 0.5, atol=1e-6)


def test_predicted_author_member_reads_only_other_folds_names_and_labels():
    """'x' writes from one vocabulary and beats 'y', which writes from another: the
    classifier names held-out authors right and the member learns who wins; a fold's own
    names and labels change none of its predictions; one name for all rows gives the prior."""
    rng = np.random.default_rng(0)
    n = 150
    vocab = {"x": ["alpha", "beta", "gamma", "delta"], "y": ["omega", "sigma", "kappa", "theta"]}

    def text(m):
        return " ".join(rng.choice(vocab[m], size=8))

    x_on_a = rng.random(n) < 0.5
    model_a, model_b = np.where(x_on_a, "x", "y"), np.where(x_on_a, "y", "x")
    texts_a = np.array([text(m) for m in model_a], dtype=object)
    texts_b = np.array([text(m) for m in model_b], dtype=object)
    prompts = np.arange(n) // 2
    folds = prompts % 5
    y = np.where(x_on_a, 0, 1)
    p, acc = cohort_probe.predicted_author_member(texts_a, texts_b, model_a, model_b, prompts, folds, y)
    assert acc == 1.0 and np.allclose(p.sum(axis=1), 1)
    assert (p[np.arange(n), y] > 0.7).all()
    held = folds == 0
    y2, a2, b2 = y.copy(), model_a.copy(), model_b.copy()
    y2[held], a2[held], b2[held] = 2, model_b[held], model_a[held]
    q, _ = cohort_probe.predicted_author_member(texts_a, texts_b, a2, b2, prompts, folds, y2)
    assert np.allclose(q[held], p[held])
    assert not np.allclose(q[~held], p[~held])  # other folds do read fold 0's rows
    same, acc = cohort_probe.predicted_author_member(texts_a, texts_b, np.full(n, "unknown"),
                                                     np.full(n, "unknown"), prompts, folds, y)
    assert np.isnan(acc) and np.allclose(same, same[0])


def test_quality_plot_writes_a_png_per_run(tmp_path):
    """One panel per file, from the rows bench/quality.py returns (a missed and a met bar)."""
    def row(name, stack):
        return {"file": name, "rows": 100, "prior": 1.0, "stack": (stack, 0.5), "best_peer": "emb_lr",
                "peers": {"length_lr": (0.9, 0.5), "tfidf_lgbm": (0.85, 0.5), "emb_lr": (0.8, 0.5),
                          "peer_average": (0.82, 0.5)},
                "members": {"m1": (0.81, 0.5), "m2": (0.83, 0.5)}, "ci_best": (-0.02, 0.01)}

    out = quality.quality_plot([row("f1", 0.79), row("f2", 0.7)], tmp_path / "q.png")
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert not list(tmp_path.glob(".*tmp"))  # written atomically, nothing left beside it


def test_long_text_probe_counts_responses_over_the_token_budget(tmp_path):
    """Of three distinct responses ("short" is repeated and counts once) one is far over
    MiniLM's 254-token budget; turns are joined as the embed stage joins them."""
    import json as _json

    from bench import long_text_probe
    from pipeline.config import Config

    long = "word " * 400
    rows = [{"id": i, "prompt": _json.dumps(["q"]), "response_a": _json.dumps([a]),
             "response_b": _json.dumps([b]), "winner_model_a": 1, "winner_model_b": 0,
             "winner_tie": 0}
            for i, (a, b) in enumerate([("short", long), ("short", "also short")])]
    path = tmp_path / "train.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    assert long_text_probe.over_budget(path, Config()) == pytest.approx(1 / 3)
    # Two turns of 150 words each: each fits, joined they do not.
    rows[1]["response_b"] = _json.dumps(["word " * 150, "word " * 150])
    pd.DataFrame(rows).to_csv(path, index=False)
    assert long_text_probe.over_budget(path, Config()) == pytest.approx(2 / 3)


def test_long_text_probe_table_gives_margins_and_means():
    from bench import long_text_probe

    cell = lambda s, b: {"stack": s, "bar": b, "linear_emb": s + 0.1}  # noqa: E731
    rows = {"f1": {"truncate": {42: cell(0.80, 0.79), 43: cell(0.70, 0.72)},
                   "chunk_mean": {42: cell(0.78, 0.79), 43: cell(0.70, 0.72)}}}
    text = long_text_probe.table(rows, {"f1": 0.5}, [42, 43], ["truncate", "chunk_mean"], "1.0", "now")
    assert "| f1 | 50% | truncate | 0.8000 (+0.0100) | 0.7000 (-0.0200) | 0.7500 | 0.8500 |" in text
    assert "| f1 | 50% | chunk_mean | 0.7800 (-0.0100) | 0.7000 (-0.0200) | 0.7400 | 0.8400 |" in text
    assert "truncate 0.7500, chunk_mean 0.7400" in text
