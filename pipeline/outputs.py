"""The stack's blend and run outputs: nested soft voting, metrics, submission, OOF,
saved models with their manifest, and the report.

Blend weights are chosen on out-of-fold predictions; the reported blend score is nested
(each fold blended with weights fitted on the other folds only).
"""
from __future__ import annotations

import hashlib
import logging
import os
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from features.turns import CLASS_NAMES
from pipeline.blend import normalize_proba
from pipeline.catalog import (CODE_VERSION, frame_hash, swap_in, write_bytes_atomic,
                              write_json_atomic, write_parquet_atomic)
from pipeline.learners.base import digest, learner_class

log = logging.getLogger(__name__)


@dataclass
class BlendResult:
    """Member probabilities, the honest (nested) blend and the final weights."""

    names: list[str]
    oof: list[np.ndarray]          # per member [n, 3]
    test: list[np.ndarray]         # per member [m, 3]
    nested_oof: np.ndarray         # [n, 3]: row i blended with weights not fitted on its fold
    fold_fits: list                # BlendFit per fold (fitted on the other folds)
    final: object                  # BlendFit on all OOF rows: used for the test set
    in_sample_oof: np.ndarray      # final weights applied to the rows they were fitted on
    test_blend: np.ndarray         # [m, 3]
    method: str = "soft_vote"      # which combination the nested_oof / test_blend come from
    soft_vote_oof: np.ndarray | None = None   # nested soft vote [n, 3]
    meta_oof: np.ndarray | None = None        # nested level-2 learner [n, 3]
    meta: object = None            # MetaFit on all OOF rows (used for the test set with "meta")


def blend_members(names: list[str], oof: list[np.ndarray], test: list[np.ndarray],
                  y: np.ndarray, folds: np.ndarray, temperature: bool, eps: float,
                  method: str = "soft_vote", meta_C: float = 0.03) -> BlendResult:
    """Nested scores of both combinations (soft vote and level-2 learner), then the chosen
    one fitted on all OOF rows for the test set."""
    from pipeline.blend import fit_blend, fit_meta, nested_blend, nested_meta

    if method not in ("soft_vote", "meta"):
        raise ValueError(f"stack.blend must be soft_vote or meta, got {method!r}")
    soft, fold_fits = nested_blend(oof, y, folds, temperature, eps)
    meta_nested = nested_meta(oof, y, folds, meta_C, eps)
    final = fit_blend(oof, y, temperature, eps)
    meta = fit_meta(oof, y, meta_C, eps)
    has_test = len(test[0]) > 0
    if method == "meta":
        chosen, in_sample = meta_nested, meta.apply(oof, eps)
        test_blend = meta.apply(test, eps) if has_test else test[0]
    else:
        chosen, in_sample = soft, final.apply(oof, eps)
        test_blend = final.apply(test, eps) if has_test else test[0]
    return BlendResult(names=names, oof=oof, test=test, nested_oof=chosen, fold_fits=fold_fits,
                       final=final, in_sample_oof=in_sample, test_blend=test_blend,
                       method=method, soft_vote_oof=soft, meta_oof=meta_nested, meta=meta)


def score_run(res: BlendResult, y: np.ndarray, folds: np.ndarray, eps: float) -> dict:
    """Metrics of a blended run: nested blend, in-sample blend, members, prior (same folds)."""
    from pipeline.blend import accuracy, log_loss, per_class_log_loss, prior_oof

    prior = prior_oof(y, folds, eps)
    per_fold = {}
    for k in np.unique(folds):
        rows = folds == k
        per_fold[str(int(k))] = round(log_loss(y[rows], res.nested_oof[rows], eps), 5)
    classes = CLASS_NAMES
    return {
        "oof_log_loss": log_loss(y, res.nested_oof, eps),
        "oof_accuracy": accuracy(y, res.nested_oof),
        "oof_log_loss_note": f"nested {res.method}: each fold combined by weights (or a level-2 "
                             "learner) fitted on the other folds only",
        "blend_method": res.method,
        "soft_vote_oof_log_loss": log_loss(y, res.soft_vote_oof, eps),
        "meta_oof_log_loss": log_loss(y, res.meta_oof, eps),
        "oof_log_loss_per_fold": per_fold,
        "oof_log_loss_in_sample_blend": log_loss(y, res.in_sample_oof, eps),
        "per_class_log_loss": {classes[c]: v for c, v in per_class_log_loss(y, res.nested_oof, eps).items()},
        "members": {n: {"oof_log_loss": log_loss(y, p, eps), "oof_accuracy": accuracy(y, p)}
                    for n, p in zip(res.names, res.oof)},
        "prior_log_loss": log_loss(y, prior, eps),
        "prior_accuracy": accuracy(y, prior),
        "blend_weights": {n: float(w) for n, w in zip(res.names, res.final.weights)},
        "blend_temperature": float(res.final.temperature),
        "blend_weights_per_fold": [
            {"weights": {n: round(float(w), 4) for n, w in zip(res.names, f.weights)},
             "temperature": round(float(f.temperature), 4)} for f in res.fold_fits],
        "label_counts": {classes[c]: int(v) for c, v in enumerate(np.bincount(y, minlength=3))},
    }


def save_models(run_dir: Path, members: list, ft, res: BlendResult, ctx) -> None:
    """runs/<exp>/models/: every member's fitted learners and view states, and manifest.json.

    Built in a temporary folder beside it and swapped in by renames, so a reader (``--stage
    predict``) sees the old models or the new ones, never a mix.
    """
    final_dir = run_dir / "models"
    runs_root = ctx.catalog.runs_dir.resolve()
    if runs_root not in final_dir.resolve().parents:  # never delete outside runs/
        raise ValueError(f"{final_dir} is not inside {runs_root}; refusing to replace it")
    # Leftovers of a killed run of this experiment (the run lock keeps live ones away).
    for stale in list(run_dir.glob(".models.tmp-*")) + list(run_dir.glob(".models.old-*")):
        shutil.rmtree(stale, ignore_errors=True)
    models_dir = run_dir / f".models.tmp-{os.getpid()}"
    _write_models(models_dir, members, ft, res, ctx)
    old = run_dir / f".models.old-{os.getpid()}"
    if final_dir.exists():
        os.replace(final_dir, old)
    os.replace(models_dir, final_dir)
    shutil.rmtree(old, ignore_errors=True)


def _write_models(models_dir: Path, members: list, ft, res: BlendResult, ctx) -> None:
    manifest_members = {}
    for m in members:
        suffix = learner_class(m.spec.kind).suffix
        files, digests, states = {}, {}, {}
        for (k, s), data in sorted(m.fit.models.items()):
            rel = f"{m.spec.name}/fold{k}_seed{s}{suffix}"
            write_bytes_atomic(models_dir / rel, data)
            files[f"{k},{s}"] = rel
            digests[rel] = digest(data)
        for k, per_view in sorted(m.fit.view_states.items()):
            for view, data in per_view.items():
                rel = f"{m.spec.name}/view-{view}_fold{k}.pkl"
                write_bytes_atomic(models_dir / rel, data)
                states.setdefault(str(k), {})[view] = rel
                digests[rel] = digest(data)
        manifest_members[m.spec.name] = {
            "kind": m.spec.kind, "inputs": m.spec.inputs, "params": m.params,
            "views": [v.describe() for v in m.views], "models": files, "view_states": states,
            "sha256": digests}
    if ft is not None:
        manifest_members[ft[0]] = {"kind": "finetune", "model_dir": ft[3]}
    cfg = ctx.config.stack
    meta = {}
    if res.method == "meta":
        import pickle

        data = pickle.dumps(res.meta, protocol=pickle.HIGHEST_PROTOCOL)
        write_bytes_atomic(models_dir / "meta.pkl", data)
        meta = {"meta_model": "meta.pkl", "meta_sha256": digest(data)}
    write_json_atomic(models_dir / "manifest.json", {
        "version": 2,
        "blend": res.method,
        **meta,
        "members": manifest_members,
        "member_order": res.names,
        "weights": {n: float(w) for n, w in zip(res.names, res.final.weights)},
        "temperature": float(res.final.temperature),
        "swap_tta": cfg.swap_tta,
        "clip_eps": cfg.clip_eps,
        "classes": list(CLASS_NAMES),
        "config": ctx.config.to_dict(),
        "code_version": CODE_VERSION,
    })


def _warn_if_no_effect(ctx, metrics: dict) -> None:
    """Say so when another run with other settings gave bit-identical predictions: the
    settings that differ had no effect (the user would otherwise think them ignored)."""
    from pipeline.catalog import read_json

    for path in sorted(ctx.catalog.runs_dir.glob("*/metrics.json")):
        if path.parent == ctx.run_dir:
            continue
        try:
            other = read_json(path)
        except (OSError, ValueError):
            continue
        if (isinstance(other, dict) and other.get("result_sha256") == metrics["result_sha256"]
                and other.get("config", {}) | {"name": None} != metrics["config"] | {"name": None}):
            log.warning("stack: the predictions are bit-identical to run %r's: the settings in "
                        "which the two differ had no effect on this data (see --stage report)",
                        path.parent.name)
            return


def run_diagnostics(ctx, inp, members: list, res: BlendResult) -> dict:
    """Position bias per member (with swap TTA on) and the blend's length bias."""
    from pipeline.diagnostics import length_bias, position_bias, response_lengths

    len_a, len_b, identical = response_lengths(ctx.dataset.train)
    position = {}
    if ctx.config.stack.swap_tta:
        position = {m.spec.name: position_bias(m.fit.oof, m.fit.oof_single, identical)
                    for m in members if m.fit.oof_single is not None}
    return {"position_bias": position,
            "length_bias": length_bias(inp.y, res.nested_oof, len_a, len_b).to_dict("records")}


def write_run_outputs(ctx, inp, members: list, ft, stats: dict, t_start: float) -> dict:
    """Blend, score and write every run artifact; returns the metrics dict."""
    from pipeline.catalog import write_csv_atomic
    from pipeline.data import LABEL_COLUMNS, SUBMISSION_COLUMNS, validate_submission
    from pipeline.report import write_run_report

    cfg = ctx.config.stack
    eps = cfg.clip_eps
    names = [m.spec.name for m in members]
    oof = [m.fit.oof for m in members]
    test = [m.fit.test for m in members]
    timing = {f"member_{m.spec.name}_s": round(m.seconds, 2) for m in members}
    if ft is not None:
        names.append(ft[0])
        oof.append(ft[1])
        test.append(ft[2])
    t0 = time.perf_counter()
    res = blend_members(names, oof, test, inp.y, inp.folds, cfg.temperature, eps, cfg.blend,
                        cfg.meta_C)
    timing["blend_s"] = round(time.perf_counter() - t0, 2)
    metrics = score_run(res, inp.y, inp.folds, eps)
    # Everything is written to a staging folder and swapped in at the end (swap_in), so a
    # reader sees the previous run's outputs or this one's, never a mix.
    final_dir = ctx.run_dir
    for stale in ctx.catalog.runs_dir.glob(f".{final_dir.name}.staging-*"):
        shutil.rmtree(stale, ignore_errors=True)  # a killed run's (the run lock keeps live ones away)
    run_dir = ctx.catalog.runs_dir / f".{final_dir.name}.staging-{os.getpid()}"
    run_dir.mkdir(parents=True)

    sub = pd.DataFrame({"id": ctx.dataset.test["id"].astype(str).to_numpy()})
    sub[list(LABEL_COLUMNS)] = normalize_proba(res.test_blend, eps)
    sub = sub[list(SUBMISSION_COLUMNS)]
    validate_submission(sub, ctx.dataset.test["id"])
    write_csv_atomic(run_dir / "submission.csv", sub)

    frame = pd.DataFrame({"id": inp.train_ids, "fold": inp.folds.astype(np.int8),
                          "label": inp.y.astype(np.int8)})
    for n, p in zip(names, oof):
        for c, col in enumerate(CLASS_NAMES):
            frame[f"{n}_{col}"] = p[:, c]
    for c, col in enumerate(CLASS_NAMES):
        frame[f"blend_{col}"] = res.nested_oof[:, c]
    write_parquet_atomic(run_dir / "oof.parquet", frame)
    save_models(run_dir, members, ft, res, ctx)

    timing["total_s"] = round(time.perf_counter() - t_start, 2)
    transductive = [m.spec.name for m in members
                    if any(v.describe().get("transductive") for v in m.views)]
    metrics.update({
        "experiment": ctx.config.name,
        "rows": int(len(inp.y)),
        "test_rows": int(len(inp.test_ids)),
        "n_features": int(len(inp.columns)),
        "n_folds": int(len(np.unique(inp.folds))),
        "member_names": names,
        "member_kinds": {m.spec.name: m.spec.kind for m in members},
        "member_inputs": {m.spec.name: m.spec.inputs for m in members},
        "member_summaries": {m.spec.name: {f"{k},{s}": v for (k, s), v in m.fit.summaries.items()}
                             for m in members},
        "best_iterations": {m.spec.name: {f"{k},{s}": v for (k, s), v in m.fit.best_iterations.items()}
                            for m in members if m.fit.best_iterations},
        "transductive_members": transductive,
        "cache_hits": {m.spec.name: m.cache_hit for m in members},
        "view_fits": stats,
        "finetune_member": ft[0] if ft is not None else None,
        "train_path": str(ctx.train_path),
        "test_path": str(ctx.test_path),
        # What the run saw and what it produced, for the experiments table: the training
        # data's content hash, and a hash of the blended OOF and test probabilities (two
        # runs with equal hashes gave bit-identical results).
        "train_sha256": frame_hash(ctx.dataset.train),
        "result_sha256": hashlib.sha256(np.ascontiguousarray(res.nested_oof).tobytes()
                                        + np.ascontiguousarray(res.test_blend).tobytes()).hexdigest(),
        "config": ctx.config.to_dict(),
        "timing": timing,
        "date": time.strftime("%Y-%m-%d %H:%M:%S"),
        "code_version": CODE_VERSION,
    })
    metrics["diagnostics"] = run_diagnostics(ctx, inp, members, res)
    write_json_atomic(run_dir / "metrics.json", metrics)
    importances = {m.spec.name: m.fit.importance for m in members if m.fit.importance is not None}
    write_run_report(run_dir, metrics, inp.y, res.nested_oof, importances)
    swap_in(run_dir, final_dir)
    run_dir = final_dir
    _warn_if_no_effect(ctx, metrics)
    log.info("stack: members %s", ", ".join(
        f"{n} {v['oof_log_loss']:.4f}" for n, v in metrics["members"].items()))
    log.info("stack: nested soft vote %.4f, nested level-2 learner %.4f (%s used)",
             metrics["soft_vote_oof_log_loss"], metrics["meta_oof_log_loss"], res.method)
    log.info("stack: OOF log loss %.4f (nested %s; in-sample %.4f), accuracy %.3f, "
             "class prior %.4f -> %s", metrics["oof_log_loss"], res.method,
             metrics["oof_log_loss_in_sample_blend"], metrics["oof_accuracy"],
             metrics["prior_log_loss"], run_dir)
    return metrics
