"""Report diagnostics: position bias, length bias, the feature legend, and which panels
a report shows."""
from __future__ import annotations

import numpy as np
import pandas as pd

from pipeline.diagnostics import legend, length_bias, position_bias
from pipeline.report import write_run_report


def test_position_bias_of_a_member_that_favours_a():
    # From its own order it says A 0.6 / B 0.3; from the swapped order (mapped back) A 0.3 /
    # B 0.6: the TTA mean is 0.45 / 0.45, and its argmax flips on every row.
    single = np.tile([0.6, 0.3, 0.1], (4, 1))
    other = np.tile([0.3, 0.6, 0.1], (4, 1))
    out = position_bias(0.5 * (single + other), single, np.array([True, False, False, True]))
    assert out["flip_rate"] == 1.0 and np.isclose(out["mean_abs_shift"], 0.3)
    assert out["identical_pairs"] == 2 and np.isclose(out["identical_a_minus_b"], 0.3)
    fair = position_bias(single, single, np.zeros(4, bool))
    assert fair["flip_rate"] == 0.0 and fair["mean_abs_shift"] == 0.0 and fair["identical_a_minus_b"] is None


def test_length_bias_bins_rates_by_length_ratio():
    rng = np.random.default_rng(0)
    n = 2000
    len_a, len_b = rng.integers(10, 2000, n), rng.integers(10, 2000, n)
    longer_a = len_a > len_b
    y = np.where(rng.random(n) < 0.8, np.where(longer_a, 0, 1), 2)
    proba = np.full((n, 3), 1 / 3)
    table = length_bias(y, proba, len_a, len_b, n_bins=10)
    assert len(table) == 10 and table["rows"].sum() == n
    assert table["mid"].is_monotonic_increasing
    # Where A is much longer, A wins most; where much shorter, B does.
    assert table["observed_a"].iloc[-1] > 0.7 and table["observed_b"].iloc[0] > 0.7
    assert np.allclose(table["predicted_a"], 1 / 3)


def test_legend_explains_only_what_occurs():
    lines = legend(["emb-all-minilm-l6-v2__diff_e51", "length__lr_chars", "tfidf__diff_svd3"])
    text = "\n".join(lines)
    assert "emb-all-minilm-l6-v2" in text and "projection component NN" in text
    assert "role `diff`" in text and "role `lr`" in text and "tfidf" in text
    assert "structure" not in text and "role `absdiff`" not in text


def _metrics(weights, position=None):
    return {"experiment": "x", "rows": 6, "n_folds": 2, "n_features": 3, "test_rows": 2,
            "date": "d", "oof_log_loss": 0.9, "oof_accuracy": 0.5, "oof_log_loss_in_sample_blend": 0.8,
            "prior_log_loss": 1.0, "prior_accuracy": 0.4, "blend_weights": weights,
            "members": {n: {"oof_log_loss": 0.9, "oof_accuracy": 0.5} for n in weights},
            "diagnostics": {"position_bias": position or {},
                            "length_bias": [{"lo": -1, "hi": 1, "mid": 0.0, "rows": 6,
                                             "observed_a": 0.5, "predicted_a": 0.4, "observed_b": 0.3,
                                             "predicted_b": 0.4, "observed_tie": 0.2,
                                             "predicted_tie": 0.2}]}}


def test_report_panels(tmp_path):
    y = np.array([0, 1, 2, 0, 1, 2])
    proba = np.full((6, 3), 1 / 3)
    imp = {"m": pd.Series([3.0, 1.0], index=["length__diff_chars", "emb-x__diff_e1"])}
    one = tmp_path / "one"
    one.mkdir()
    text = write_run_report(one, _metrics({"m": 1.0}), y, proba, imp).read_text()
    assert not (one / "blend_weights.png").exists() and "blend weights" not in text
    assert (one / "length_bias.png").is_file() and "## Length bias" in text
    assert "role `diff`" in text and "group `emb-x`" in text
    assert "## Position bias" not in text
    two = tmp_path / "two"
    two.mkdir()
    pos = {n: {"flip_rate": 0.1, "mean_abs_shift": 0.05, "identical_pairs": 3, "identical_a_minus_b": 0.02}
           for n in ("m", "k")}
    text = write_run_report(two, _metrics({"m": 0.5, "k": 0.5}, pos), y, proba, imp).read_text()
    assert (two / "blend_weights.png").is_file() and (two / "position_bias.png").is_file()
    assert "| m | 10.0% | 0.050 | 0.020 (3 pairs) |" in text


def test_importance_plot_member_follows_the_blend(tmp_path):
    y = np.array([0, 1, 2, 0, 1, 2])
    proba = np.full((6, 3), 1 / 3)
    imp = {"m": pd.Series([3.0], index=["length__diff_chars"]),
           "k": pd.Series([2.0], index=["overlap__p_jaccard"])}
    metrics = _metrics({"m": 0.9, "k": 0.1})
    metrics["members"] = {"m": {"oof_log_loss": 0.95, "oof_accuracy": 0.5},
                          "k": {"oof_log_loss": 0.90, "oof_accuracy": 0.5}}
    soft = tmp_path / "soft"
    soft.mkdir()
    # Soft voting: the largest weight (m); level-2 learner: the best member (k).
    import matplotlib.pyplot as plt

    titles = []
    real = plt.Axes.set_title
    try:
        plt.Axes.set_title = lambda self, t, *a, **k: titles.append(t) or real(self, t, *a, **k)
        write_run_report(soft, metrics, y, proba, imp)
        write_run_report(soft, {**metrics, "blend_method": "meta"}, y, proba, imp)
    finally:
        plt.Axes.set_title = real
    picked = [t for t in titles if t.startswith("Top feature importances")]
    assert picked == ["Top feature importances: m", "Top feature importances: k"]
