"""--stage predict: score new pairs with a finished run's saved models (no retraining).

Reads ``runs/<run>/models/manifest.json`` (members: learner kind, views, fitted learner and
view-state files with their SHA-256; blend weights, temperature, swap TTA), computes the
same features for the new file with ``pipeline.featurize.features_for`` under the run's
own saved config, loads every member through the learner registry, applies each fold's
saved view states and averages its fold/seed learners (both A/B orders when the run used
swap TTA), blends with the saved weights and writes the Kaggle submission format.
"""
from __future__ import annotations

import dataclasses
import hashlib
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
    try:
        manifest = read_json(path)
    except (OSError, ValueError) as exc:
        raise DataError(f"{path} cannot be read ({exc}): the run's models are damaged; run "
                        f"`--stage stack` for experiment {run_dir.name!r} again") from None
    if not isinstance(manifest, dict) or "members" not in manifest:
        raise DataError(f"{path} is not a models manifest: run `--stage stack` for experiment "
                        f"{run_dir.name!r} again")
    return manifest


def member_proba(models_dir: Path, name: str, member: dict, src, ctx=None) -> np.ndarray:
    """Mean probability [n, 3] over a member's saved fold/seed learners for the rows of
    ``src`` (pipeline.views.Source), each fold's views applied with that fold's saved state
    and both A/B orders averaged when the run used swap TTA (``member['swap_tta']``)."""
    from pipeline.crossfit import predict_tta
    from pipeline.learners.base import learner_class, load_learner
    from pipeline.stack import hstack
    from pipeline.views import state_from_bytes, view_from_description

    digests = member["sha256"]

    def read(rel: str) -> bytes:
        path = models_dir / rel
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise DataError(f"{path}: cannot read the saved model ({exc}); rerun --stage "
                            "stack for this experiment") from exc
        if digests.get(rel) != hashlib.sha256(data).hexdigest():
            raise DataError(f"{path} does not match the SHA-256 recorded in "
                            f"{models_dir / 'manifest.json'} (truncated or edited); rerun "
                            "--stage stack for this experiment")
        return data

    views = [view_from_description(d, ctx.config if ctx is not None else None)
             for d in member["views"]]
    try:
        preps = [v.prepare(ctx, src) for v in views]
    except ValueError as exc:
        raise DataError(f"member {name!r}: {exc}") from None
    sparse_ok = learner_class(member["kind"]).accepts_sparse
    total, count = np.zeros((len(src.frame), 3)), 0
    by_fold: dict[int, list[str]] = {}
    for ks, rel in member["models"].items():
        by_fold.setdefault(int(ks.split(",")[0]), []).append(rel)
    for k, rels in sorted(by_fold.items()):
        states = member["view_states"].get(str(k), {})
        blocks, blocks_sw = [], []
        for view, prep in zip(views, preps):
            state = state_from_bytes(read(states[view.name])) if view.name in states else None
            X, Xs, _ = view.transform(state, prep)
            blocks.append(X), blocks_sw.append(Xs)
        X, Xs = hstack(blocks, sparse_ok), hstack(blocks_sw, sparse_ok)
        for rel in rels:
            learner = load_learner(member["kind"], read(rel))
            total += predict_tta(learner, X, Xs, member.get("swap_tta", True))
            count += 1
    return total / count


def score_features(manifest: dict, models_dir: Path, src,
                   finetune_proba: np.ndarray | None = None, ctx=None) -> np.ndarray:
    """Blended probabilities [n, 3] for the rows of ``src`` (pipeline.views.Source: the
    canonical frame and its dense features, both A/B orders).

    ``finetune_proba``: the fine-tuned member's probabilities, when the run blended one in.
    Rows sum to 1 after clipping to the run's clip_eps.
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
        member = {**member, "swap_tta": manifest["swap_tta"]}
        probas.append(member_proba(models_dir, name, member, src, ctx))
    if manifest.get("blend", "soft_vote") == "meta":
        import pickle

        path = models_dir / manifest["meta_model"]
        data = path.read_bytes()
        if hashlib.sha256(data).hexdigest() != manifest["meta_sha256"]:
            raise DataError(f"{path} does not match the SHA-256 recorded in "
                            f"{models_dir / 'manifest.json'}; rerun --stage stack")
        meta = pickle.loads(data)  # noqa: S301 (our own file, checked above)
        return normalize_proba(meta.apply(probas, eps), eps)
    weights = np.array([manifest["weights"][n] for n in manifest["member_order"]])
    return normalize_proba(blend(probas, weights, manifest["temperature"], eps), eps)


def predict_frame(ctx) -> pd.DataFrame:
    """Submission-format probabilities (id, winner_model_a, winner_model_b, winner_tie) of
    the pairs in ``ctx.test_path`` from the fitted models of run ``ctx.run_name`` (else the
    config's experiment): the same features, views and swap TTA as when it was fitted."""
    from pipeline.featurize import features_for
    from pipeline.stack import _aligned, swapped_features
    from pipeline.views import Source

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
    if manifest.get("version", 1) < 2:
        raise DataError(f"{run_dir / 'models' / 'manifest.json'} was written by an older "
                        "prefstack; rerun --stage stack for this experiment")
    feats = _aligned(features_for(run_ctx, frame), frame["id"], "new")
    feats_swapped = swapped_features(feats)
    columns = [c for c in feats.columns if c != "id"]
    src = Source("new", frame, columns, feats[columns].to_numpy(np.float32),
                 feats_swapped[columns].to_numpy(np.float32))
    ft_proba = None
    ft = [m for m in manifest["members"].values() if m["kind"] == "finetune"]
    if ft:
        from pipeline.finetune import predict_logits

        ft_proba = softmax(np.asarray(predict_logits(ft[0]["model_dir"], frame, run_ctx)))
    proba = score_features(manifest, run_dir / "models", src, ft_proba, run_ctx)
    out = pd.DataFrame({"id": frame["id"].astype(str).to_numpy()})
    out[list(LABEL_COLUMNS)] = proba
    out = out[list(SUBMISSION_COLUMNS)]
    validate_submission(out, frame["id"])
    log.info("predict: %d pairs scored in %.1fs", len(out), time.perf_counter() - t0)
    return out


def run_stage(ctx) -> None:
    """Write runs/<run>/predictions.csv (or --out) for the pairs in --test."""
    out = predict_frame(ctx)
    run_dir = ctx.catalog.runs_dir / (ctx.run_name or ctx.config.name)
    out_path = Path(ctx.out_path) if ctx.out_path else run_dir / "predictions.csv"
    write_csv_atomic(out_path, out)
    log.info("predict: wrote %s (%d rows)", out_path, len(out))
