"""The Python API, for notebooks: the same stages, caches and run folders as the command
line (both run through ``pipeline.runner.execute``; there is no second implementation).

    from pipeline.api import Experiment, load_run

    exp = Experiment(stack={"seeds": [0, 1]})              # defaults < your changes
    run = exp.fit(train_df, test_df)                        # DataFrames or CSV paths
    run.oof_log_loss, run.member_scores                     # scores
    run.submission.to_csv("submission.csv", index=False)    # Kaggle's format
    run = load_run("default")                               # a finished run, later
    run.predict_proba(new_pairs_df)                         # DataFrame in, DataFrame out

DataFrames are in Kaggle's layout (id, prompt, response_a, response_b, and for training
the winner_model_a / winner_model_b / winner_tie columns). They are written once under
``<workdir>/raw/api/`` (named by their content, so a refit finds every cache) and read back
through the same checks as a CSV given to the command line.
"""
from __future__ import annotations

import logging
from pathlib import Path

import pandas as pd

from pipeline.catalog import Catalog, frame_hash, read_json, run_lock, write_csv_atomic
from pipeline.config import Config, build_config
from pipeline.context import RunContext
from pipeline.runner import execute

log = logging.getLogger("prefstack")


def _ensure_logging(verbose: bool) -> None:
    """Log lines in a notebook unless the caller configured logging already."""
    root = logging.getLogger()
    if verbose or not any(h for h in root.handlers if not getattr(h, "_prefstack", False)):
        from pipeline.cli import setup_logging

        setup_logging(verbose)


def _frame_path(catalog: Catalog, frame: pd.DataFrame, role: str) -> Path:
    """Where a DataFrame given to the API is kept as CSV: named by its content."""
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"{role}: expected a pandas DataFrame or a CSV path, got {type(frame).__name__}")
    digest = frame_hash(frame)
    path = catalog.raw_dir / "api" / f"{role}-{digest}.csv"
    if not path.is_file():
        write_csv_atomic(path, frame)
    return path


def _pairs_path(catalog: Catalog, pairs, role: str) -> Path:
    return Path(pairs) if isinstance(pairs, (str, Path)) else _frame_path(catalog, pairs, role)


class Experiment:
    """One experiment: a config (defaults < demo settings < ``config`` < keyword changes)
    and a workdir whose caches every fit shares.

    ``config``: a YAML path, a dict of differences, a Config, or None. Keyword arguments
    are more differences, by section: ``stack={"seeds": [0, 1]}``, ``name="seeds2"``.
    ``demo``: start from the demo's settings (and fit on the demo data by default).
    """

    def __init__(self, config=None, *, workdir: str | Path = "data", demo: bool = False,
                 verbose: bool = False, **changes):
        from pipeline.demo import demo_overrides

        _ensure_logging(verbose)
        self.catalog = Catalog(Path(workdir))
        self.demo = bool(demo)
        self.config: Config = build_config(config, demo_layer=demo_overrides() if demo else None,
                                           overrides=changes or None)

    @property
    def name(self) -> str:
        return self.config.name

    def _context(self, train, test, force: bool = False) -> RunContext:
        if train is None and self.demo:
            from pipeline.demo import write_demo

            train_path, demo_test = write_demo(self.catalog.demo_dir)
            test_path = demo_test if test is None else _pairs_path(self.catalog, test, "test")
        else:
            train_path = (self.catalog.raw_dir / "train.csv" if train is None
                          else _pairs_path(self.catalog, train, "train"))
            test_path = (self.catalog.raw_dir / "test.csv" if test is None
                         else _pairs_path(self.catalog, test, "test"))
        return RunContext(config=self.config, catalog=self.catalog, train_path=train_path,
                          test_path=test_path, device_request=self.config.device, force=force)

    def fit(self, train=None, test=None, *, finetune: bool | None = None, force: bool = False,
            wait: bool = True) -> "Run":
        """Run embed, features, [finetune], stack and return the finished run.

        ``train`` / ``test``: DataFrames or CSV paths (default: the demo data with
        ``demo=True``, else ``<workdir>/raw/{train,test}.csv``). ``finetune``: include the
        fine-tuned member (None: the config's ``finetune.in_all``, by default only on a
        GPU). ``force``: recompute cached artifacts. ``wait``: wait for another run of this
        experiment to finish (else RunBusy).
        """
        ctx = self._context(train, test, force)
        execute(ctx, "all", wait=wait, finetune_in_all=finetune)
        return Run(ctx.run_dir, self.catalog.workdir)

    def stage(self, name: str, train=None, test=None, *, force: bool = False) -> "Run | None":
        """Run one stage ("embed", "features", "finetune", "stack"); the Run after a stack."""
        if name not in ("embed", "features", "finetune", "stack"):
            raise ValueError(f"stage must be embed, features, finetune or stack, got {name!r}")
        ctx = self._context(train, test, force)
        metrics = execute(ctx, name)
        return Run(ctx.run_dir, self.catalog.workdir) if metrics is not None else None


class Run:
    """A finished run folder (``<workdir>/runs/<experiment>/``): its scores, submission,
    out-of-fold predictions and fitted models."""

    def __init__(self, run_dir: str | Path, workdir: str | Path | None = None):
        self.run_dir = Path(run_dir)
        self.workdir = Path(workdir) if workdir is not None else self.run_dir.parent.parent
        if not (self.run_dir / "metrics.json").is_file():
            from pipeline.data import DataError

            raise DataError(f"{self.run_dir} holds no finished run (no metrics.json): fit the "
                            "experiment first (Experiment(...).fit or --stage stack)")
        self._metrics: dict | None = None

    def __repr__(self) -> str:
        return (f"Run({self.name!r}, oof_log_loss={self.oof_log_loss:.4f}, "
                f"accuracy={self.accuracy:.3f}, rows={self.metrics.get('rows')})")

    @property
    def name(self) -> str:
        return self.run_dir.name

    @property
    def metrics(self) -> dict:
        """Everything ``metrics.json`` records (scores, members, timing, config)."""
        if self._metrics is None:
            self._metrics = read_json(self.run_dir / "metrics.json")
        return self._metrics

    @property
    def oof_log_loss(self) -> float:
        """The nested out-of-fold log loss of the blend (the honest score)."""
        return float(self.metrics["oof_log_loss"])

    @property
    def accuracy(self) -> float:
        return float(self.metrics["oof_accuracy"])

    @property
    def prior_log_loss(self) -> float:
        return float(self.metrics["prior_log_loss"])

    @property
    def member_scores(self) -> pd.DataFrame:
        """One row per member: OOF log loss, accuracy, blend weight; best first."""
        weights = self.metrics.get("blend_weights", {})
        rows = [{"member": n, "oof_log_loss": v.get("oof_log_loss"),
                 "accuracy": v.get("oof_accuracy"), "blend_weight": weights.get(n)}
                for n, v in self.metrics.get("members", {}).items()]
        return pd.DataFrame(rows).sort_values("oof_log_loss").reset_index(drop=True)

    @property
    def submission(self) -> pd.DataFrame:
        """The test predictions in Kaggle's submission format."""
        return pd.read_csv(self.run_dir / "submission.csv", dtype={"id": str})

    @property
    def oof(self) -> pd.DataFrame:
        """Out-of-fold predictions: id, fold, label, each member's and the blend's [a, b, tie]."""
        return pd.read_parquet(self.run_dir / "oof.parquet")

    @property
    def report_path(self) -> Path:
        return self.run_dir / "report.md"

    @property
    def config(self) -> dict:
        return dict(self.metrics.get("config", {}))

    def predict_proba(self, pairs) -> pd.DataFrame:
        """Probabilities of new pairs (DataFrame or CSV path, Kaggle's test layout) from
        this run's fitted models, with the run's swap TTA: a submission-format DataFrame
        (no retraining; the same code as ``--stage predict``)."""
        from pipeline.predict import predict_frame

        catalog = Catalog(self.workdir)
        path = _pairs_path(catalog, pairs, "predict")
        cfg = Config(name=self.name)
        ctx = RunContext(config=cfg, catalog=catalog, train_path=path, test_path=path,
                         run_name=self.name)
        with run_lock(catalog, self.name):
            return predict_frame(ctx)


def load_run(name: str = "default", workdir: str | Path = "data") -> Run:
    """The finished run of experiment ``name`` in ``workdir``."""
    from pipeline.config import check_name

    check_name(name, "run")
    return Run(Catalog(Path(workdir)).run_dir(name), workdir)
