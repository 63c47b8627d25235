"""--stage predict: score new pairs with a finished run's saved models (no retraining).

Reads ``runs/<run>/models/manifest.json`` (members, their feature columns and booster
files, blend weights, temperature, swap TTA), computes the same features for the new
file with ``pipeline.featurize.features_for`` under the run's own saved config, averages
each member's fold/seed boosters (both A/B orders when the run used swap TTA), blends
with the saved weights and writes the Kaggle submission format.
"""
from __future__ import annotations

import dataclasses
import logging
import time
from pathlib import Path

import numpy as np
import pandas as pd

from pipeline.blend import blend, normalize_proba, softmax
from pipeline.catalog import read_json, write_csv_atomic
from pipeline.config import Config, apply_overrides
from pipeline.data import DataError, LABEL_COLUMNS, SUBMISSION_COLUMNS, load_pairs, validate_submission

log = logging.getLogger(__name__)


def load_manifest(run_dir: Path) -> dict:
    """The run's models/manifest.json; DataError naming the run and the fix if absent."""
    path = run_dir / "models" / "manifest.json"
    if not path.is_file():
        raise DataError(f"{path} not found: run `--stage stack` for experiment {run_dir.name!r} "
                        f"first, or pass --run with one of the folders in {run_dir.parent}")
    return read_json(path)


def lgbm_member_proba(models_dir: Path, member: dict, X: np.ndarray,
                      X_swapped: np.ndarray | None) -> np.ndarray:
    """Mean probability [n, 3] over a member's saved boosters (swap TTA when X_swapped)."""
    import lightgbm as lgb

    from pipeline.stack import predict_tta, text_digest

    total = np.zeros((len(X), 3))
    digests = member.get("booster_sha256", {})
    for rel in member["boosters"]:
        path = models_dir / rel
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise DataError(f"{path}: cannot read the saved booster ({exc}); rerun --stage "
                            "stack for this experiment") from exc
        if rel in digests and text_digest(text) != digests[rel]:
            raise DataError(f"{path} does not match the SHA-256 recorded in "
                            f"{models_dir / 'manifest.json'} (truncated or edited); rerun "
                            "--stage stack for this experiment")
        booster = lgb.Booster(model_str=text)
        total += predict_tta(booster, X, X_swapped)
    return total / len(member["boosters"])


def score_features(manifest: dict, models_dir: Path, feats: pd.DataFrame,
                   feats_swapped: pd.DataFrame | None,
                   finetune_proba: np.ndarray | None = None) -> np.ndarray:
    """Blended probabilities [n, 3] for rows with features ``feats`` (id + columns).

    ``feats_swapped``: the same rows' features with A and B exchanged (needed when the run
    used swap TTA); ``finetune_proba``: the fine-tuned member's probabilities, when the
    run blended one in. Rows sum to 1 after clipping to the run's clip_eps.
    """
    eps = manifest["clip_eps"]
    probas = []
    for name in manifest["member_order"]:
        member = manifest["members"][name]
        if member["kind"] == "finetune":
            if finetune_proba is None:
                raise DataError(f"the run blends the fine-tuned member {name!r} but its "
                                "predictions were not given")
            probas.append(finetune_proba)
            continue
        missing = [c for c in member["columns"] if c not in feats.columns]
        if missing:
            raise DataError(f"member {name!r} needs feature columns the new features lack "
                            f"(e.g. {missing[:3]}); the feature code or config changed since "
                            "the run was fitted: rerun --stage stack")
        X = feats[member["columns"]].to_numpy(np.float32)
        Xs = (feats_swapped[member["columns"]].to_numpy(np.float32)
              if manifest["swap_tta"] else None)
        probas.append(lgbm_member_proba(models_dir, member, X, Xs))
    weights = np.array([manifest["weights"][n] for n in manifest["member_order"]])
    return normalize_proba(blend(probas, weights, manifest["temperature"], eps), eps)


def run_stage(ctx) -> None:
    """Write runs/<run>/predictions.csv (or --out) for the pairs in --test."""
    from pipeline.featurize import features_for
    from pipeline.stack import _aligned, swapped_features

    t0 = time.perf_counter()
    run = ctx.run_name or ctx.config.name
    run_dir = ctx.catalog.runs_dir / run
    manifest = load_manifest(run_dir)
    # Features must be computed exactly as when the run was fitted: use its saved config.
    cfg = apply_overrides(Config(), {k: v for k, v in manifest["config"].items()},
                          where=f"{run_dir}/models/manifest.json")
    cfg = dataclasses.replace(cfg, device=ctx.config.device)
    run_ctx = dataclasses.replace(ctx, config=cfg)
    ctx.require_test()
    frame = load_pairs(ctx.test_path, "test")
    frame = frame.drop(columns=[c for c in ("label",) if c in frame.columns])
    log.info("predict: %d pairs from %s with run %r", len(frame), ctx.test_path, run)
    feats = _aligned(features_for(run_ctx, frame), frame["id"], "new")
    feats_swapped = swapped_features(feats) if manifest["swap_tta"] else None
    ft_proba = None
    ft = [m for m in manifest["members"].values() if m["kind"] == "finetune"]
    if ft:
        from pipeline.finetune import predict_logits

        ft_proba = softmax(np.asarray(predict_logits(ft[0]["model_dir"], frame, run_ctx)))
    proba = score_features(manifest, run_dir / "models", feats, feats_swapped, ft_proba)
    out = pd.DataFrame({"id": frame["id"].astype(str).to_numpy()})
    out[list(LABEL_COLUMNS)] = proba
    out = out[list(SUBMISSION_COLUMNS)]
    validate_submission(out, frame["id"])
    out_path = Path(ctx.out_path) if ctx.out_path else run_dir / "predictions.csv"
    write_csv_atomic(out_path, out)
    log.info("predict: wrote %s (%d rows) in %.1fs", out_path, len(out), time.perf_counter() - t0)
