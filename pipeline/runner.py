"""Running stages for one RunContext: the checks before any stage starts, the run lock,
the stages in order with their banners. The command line (``pipeline.cli``) and the
notebook API (``pipeline.api``) both run through ``execute``, so they cannot drift apart.
"""
from __future__ import annotations

import contextlib
import logging
import time

from pipeline.catalog import read_json, run_lock, sweep_stale_temp_files
from pipeline.context import RunContext
from pipeline.stages import STAGES, stages_for, upstream

log = logging.getLogger("prefstack")


def check_before_start(ctx: RunContext, stage: str) -> None:
    """Everything that can be refused before a stage writes anything: the stack's members,
    the input files, whether the folds can be made. Raises ConfigError / DataError."""
    if stage in ("all", "stack"):
        from pipeline.stack import check_config as check_stack_config

        check_stack_config(ctx.config)  # a bad member fails before embed and features run
    if stage not in ("predict", "report"):
        ctx.dataset  # validate the inputs before any stage starts writing
    if stage in ("all", "stack", "finetune"):
        from pipeline.folds import check_can_cross_validate

        check_can_cross_validate(ctx.dataset.train, ctx.config.stack.n_folds,
                                 ctx.config.stack.fold_seed,
                                 ctx.config.finetune.max_rows if stage == "finetune" else None)


def announce_missing_inputs(ctx: RunContext, stage) -> list[str]:
    """WARNING for each upstream stage whose output ``stage`` reads but is not cached:
    ``stage`` will compute it itself, which should never happen unannounced (a stack run
    that quietly embeds 100k texts). Returns the messages."""
    said = []
    for up in upstream(stage):
        what = up.missing_outputs(ctx)
        if what:
            said.append(f"stage {stage.name}: {what}; this run computes it as part of "
                        f"{stage.name} (run --stage {up.name} first to do it on its own)")
            log.warning("%s", said[-1])
    return said


def execute(ctx: RunContext, stage: str = "all", wait: bool = True,
            finetune_in_all: bool | None = None) -> dict | None:
    """Run ``stage`` ("all" = embed, features, [finetune], stack) for ``ctx``.

    ``finetune_in_all``: whether "all" includes the fine-tune (None: the config's
    ``finetune.in_all``, whose own None means only on a GPU). Returns the run's metrics
    when the stack ran, else None.
    """
    check_before_start(ctx, stage)
    t_all = time.perf_counter()
    swept = [t for d in (ctx.catalog.cache_dir, ctx.catalog.runs_dir)
             for t in sweep_stale_temp_files(d)]
    if swept:
        log.info("removed %d temporary file(s) left by killed runs (e.g. %s)", len(swept), swept[0])
    in_all = ctx.config.finetune.in_all if finetune_in_all is None else finetune_in_all
    if stage == "all" and in_all is None:
        in_all = ctx.device.startswith("cuda")
        if not in_all:
            log.info("finetune: skipped in --stage all on the CPU (slow); run --stage "
                     "finetune, or set finetune.in_all: true, to add it to the blend")
    if stage not in ("all", "predict", "report"):
        announce_missing_inputs(ctx, STAGES[stage])
    experiment = (ctx.run_name or ctx.config.name) if stage == "predict" else ctx.config.name
    ran = []
    from tqdm.contrib.logging import logging_redirect_tqdm

    # While stages run, log lines are written through tqdm, so they never break a bar.
    with (contextlib.nullcontext() if stage == "report"
          else run_lock(ctx.catalog, experiment, wait=wait)), logging_redirect_tqdm():
        try:
            for st in stages_for(stage, bool(in_all)):
                t0 = time.perf_counter()
                log.info("== stage %s: %s", st.name, st.help)
                st.load()(ctx)
                ran.append(st.name)
                log.info("== stage %s finished in %.1fs", st.name, time.perf_counter() - t0)
        finally:
            ctx.close_executor()
    log.info("all done in %.1fs (experiment %r, workdir %s)", time.perf_counter() - t_all,
             ctx.config.name, ctx.catalog.workdir)
    if "stack" not in ran:
        return None
    metrics = read_json(ctx.run_dir / "metrics.json")
    log.info("OOF log loss %.4f (class prior %.4f), accuracy %.3f; submission %s",
             metrics["oof_log_loss"], metrics["prior_log_loss"], metrics["oof_accuracy"],
             ctx.run_dir / "submission.csv")
    return metrics


def summary_line(ctx: RunContext, metrics: dict) -> dict:
    """The machine-readable summary of a finished stack run (one JSON line on stdout)."""
    return {"experiment": ctx.config.name, "run_dir": str(ctx.run_dir),
            "oof_log_loss": round(float(metrics["oof_log_loss"]), 6),
            "accuracy": round(float(metrics["oof_accuracy"]), 6),
            "submission": str(ctx.run_dir / "submission.csv")}
