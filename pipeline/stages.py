"""Every stage in one place: what it reads, what it writes, and the function that runs it.

The functions are imported lazily so ``--help`` and light stages start fast.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Callable


@dataclass(frozen=True)
class Stage:
    name: str
    target: str  # "module:function", called with a RunContext
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    help: str

    def load(self) -> Callable:
        module, func = self.target.split(":")
        return getattr(importlib.import_module(module), func)


STAGES: dict[str, Stage] = {
    s.name: s
    for s in (
        Stage("embed", "pipeline.embed:run_stage",
              ("train.csv", "test.csv"),
              ("cache/embed/<model>-<key>/chunk-*.parquet",),
              "frozen sentence embeddings of prompt, response A and B (content-addressed cache)"),
        Stage("features", "pipeline.featurize:run_stage",
              ("train.csv", "test.csv", "cache/embed"),
              ("cache/features/<group>-<key>.parquet",),
              "length, structure, overlap, embedding and position-swap difference features"),
        Stage("finetune", "pipeline.finetune:run_stage",
              ("train.csv", "test.csv", "cache/folds"),
              ("cache/finetune/<model>-<key>/{oof,test}.parquet", "runs/<exp>/finetune/"),
              "fine-tuned transformer per fold: out-of-fold and test logits"),
        Stage("stack", "pipeline.stack:run_stage",
              ("cache/features", "cache/folds", "cache/finetune", "cache/embed (embedding-full view)"),
              ("cache/views/", "cache/stack/<member>-<key>/",
               "runs/<exp>/submission.csv", "runs/<exp>/oof.parquet", "runs/<exp>/metrics.json",
               "runs/<exp>/report.md", "runs/<exp>/models/"),
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
