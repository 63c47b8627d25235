"""Every stage in one place: what it reads, what it writes, and the function that runs it.

``reads`` and ``writes`` name artifact kinds of ``pipeline.artifacts.KINDS`` (and the
input files and run outputs). The runner reads them: a stage run on its own whose
upstream stage's output is incomplete (``missing``) is told so before it starts, since
it will then compute that part itself (``--stage stack`` on a fresh workdir embeds
every text) instead of doing it silently. The functions are imported lazily so
``--help`` and light stages start fast.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable

RAW = ("train.csv", "test.csv")


@dataclass(frozen=True)
class Stage:
    name: str
    target: str                  # "module:function", called with a RunContext
    reads: tuple[str, ...]       # artifact kinds and input files
    writes: tuple[str, ...]      # artifact kinds and run outputs
    help: str
    # "module:function"(ctx) -> None, or a sentence saying which of this stage's outputs
    # are not cached yet (for the stages downstream of it).
    missing: str | None = None

    def load(self) -> Callable:
        module, func = self.target.split(":")
        return getattr(importlib.import_module(module), func)

    def missing_outputs(self, ctx) -> str | None:
        if self.missing is None:
            return None
        module, func = self.missing.split(":")
        return getattr(importlib.import_module(module), func)(ctx)


STAGES: dict[str, Stage] = {
    s.name: s
    for s in (
        Stage("embed", "pipeline.embed:run_stage", RAW, ("embed-chunks",),
              "frozen sentence embeddings of prompt, response A and B (content-addressed cache)",
              "pipeline.embed:missing_outputs"),
        Stage("features", "pipeline.featurize:run_stage", (*RAW, "embed-chunks"), ("features",),
              "length, structure, overlap, embedding and position-swap difference features",
              "pipeline.featurize:missing_outputs"),
        Stage("finetune", "pipeline.finetune:run_stage", (*RAW, "folds"),
              ("folds", "finetune-fold"),
              "fine-tuned transformer per fold: out-of-fold and test logits"),
        Stage("stack", "pipeline.stack:run_stage",
              (*RAW, "features", "folds", "finetune-fold", "embed-chunks"),
              ("folds", "tfidf-counts", "view-state", "stack-member", "runs/<exp>/submission.csv",
               "runs/<exp>/oof.parquet", "runs/<exp>/metrics.json", "runs/<exp>/report.md",
               "runs/<exp>/models/"),
              "cross-fitted members (learner x feature views) + soft-voting blend -> submission and report"),
        Stage("predict", "pipeline.predict:run_stage",
              ("runs/<exp>/models/", "--test CSV"),
              ("runs/<exp>/predictions.csv",),
              "score new pairs with a finished run's fitted models (no retraining)"),
        Stage("report", "pipeline.report:run_experiments_table",
              ("runs/*/metrics.json",),
              ("runs/experiments.md",),
              "table of all past runs side by side with their scores"),
    )
}


def stages_for(name: str, finetune_in_all: bool) -> list[Stage]:
    """The stages one ``--stage`` value runs, in order."""
    if name == "all":
        order = ["embed", "features"] + (["finetune"] if finetune_in_all else []) + ["stack"]
        return [STAGES[n] for n in order]
    return [STAGES[name]]


def upstream(stage: Stage) -> list[Stage]:
    """The stages that can say what of their outputs is missing and whose outputs
    ``stage`` reads, in pipeline order."""
    return [s for s in STAGES.values()
            if s is not stage and s.missing is not None and set(s.writes) & set(stage.reads)]
