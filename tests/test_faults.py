"""Fault matrix of the whole pipeline: killed runs, corrupt caches, concurrent runs, an
edited input CSV, determinism, a missing test file.

Every scenario compares against one clean, uninterrupted reference run (a real
subprocess) of the same experiment in its own workdir. Data: 48 generated training and
16 test pairs (pipeline.demo.make_demo, with its awkward cases). Models: a seeded
2-layer, 32-dim BERT saved to a temporary folder - as a sentence-transformer for
``embed`` and as the fine-tuning backbone - so the matrix runs in seconds on a CPU;
the fault handling is the same code for any model (the real bundled model is covered
by the stage tests).
"""
from __future__ import annotations

import json
import logging
import re
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

import pipeline.embed as E
from pipeline.catalog import Catalog, hash_texts
from pipeline.data import load_pairs
from pipeline.demo import make_demo
from pipeline.folds import load_or_make_folds
from tests import faultutil as fu

pytestmark = pytest.mark.slow

N_FOLDS = 3
EMB_GROUP = "emb-tiny-st"


# ----------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    """Tiny models, the data files and the experiment YAML (experiment name "exp")."""
    root = tmp_path_factory.mktemp("faults")
    st_model, bert = fu.make_tiny_models(root)
    data = root / "data"
    data.mkdir()
    make_demo(48, 7).to_csv(data / "train.csv", index=False)
    make_demo(16, 8, start_id=1000, with_labels=False).to_csv(data / "test.csv", index=False)
    exp = {
        "embed": {"models": [st_model], "chunk_size": 2, "batch_size": 4},
        "features": {"embed_diff_dims": 8},
        "stack": {"n_folds": N_FOLDS, "num_boost_round": 30, "early_stopping": False,
                  "use_finetune": False, "lgbm_params": {"min_data_in_leaf": 5},
                  "members": {"lgbm_all": ["all"], "lgbm_text": ["length", "structure", "overlap"],
                              "lgbm_emb": [EMB_GROUP, "length"]}},
        "finetune": {"model": bert, "max_length": 32, "batch_size": 8, "epochs": 2.0,
                     "eval_batch_size": 32, "head_lr": 1e-3, "warmup_ratio": 0.0},
    }
    (root / "a").mkdir()
    (root / "b").mkdir()
    config = root / "a" / "exp.yaml"
    config.write_text(json.dumps(exp))  # JSON is YAML
    seed1 = root / "b" / "exp_seed1.yaml"
    seed1.write_text(json.dumps({**exp, "stack": {**exp["stack"], "seeds": [1]}}))
    return {"root": root, "data": data, "config": config, "config_seed1": seed1}


def args(env, workdir: Path, stage: str, config: Path | None = None) -> list[str]:
    return fu.cli_args(config or env["config"], env["data"], workdir, stage)


@pytest.fixture(scope="module")
def ref(env):
    """The clean reference workdir: `--stage all` as a subprocess, then `--stage finetune`."""
    workdir = env["root"] / "ref"
    fu.finish(fu.start(args(env, workdir, "all"), env["root"] / "ref.log"))
    fu.run_inprocess(args(env, workdir, "finetune"))
    return workdir


@pytest.fixture
def encoded(monkeypatch):
    """Texts the embedding model is asked to encode in this process (a counting wrapper)."""
    seen: list[str] = []
    real = E.model_encoder

    def counting(cfg, model, device, export_root=None):
        encoder = real(cfg, model, device, export_root)

        def call(texts):
            seen.extend(texts)
            return encoder(texts)
        return call

    monkeypatch.setattr(E, "model_encoder", counting)
    return seen


def ft_dir(workdir: Path) -> Path:
    (folder,) = (workdir / "cache" / "finetune").glob("tiny-bert-*")
    return folder


def ft_logits(workdir: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    folder = ft_dir(workdir)
    (test,) = folder.glob("test-*.parquet")
    return pd.read_parquet(folder / "oof.parquet"), pd.read_parquet(test)


def assert_same_logits(got: pd.DataFrame, want: pd.DataFrame) -> None:
    # Exact: on the CPU, training with the same seeds (torch.manual_seed per fold and seed,
    # a seeded batch order), the same data and the same thread count repeats bit for bit,
    # also across processes (a fold trained by the killed subprocess, the rest in this one).
    assert got["id"].tolist() == want["id"].tolist()
    cols = ["logit_a", "logit_b", "logit_tie"]
    np.testing.assert_array_equal(got[cols].to_numpy(), want[cols].to_numpy())


# ----------------------------------------------------------------------------- 2. SIGKILL


def test_killed_embed_resumes_and_reuses_finished_chunks(env, ref, tmp_path, encoded):
    workdir = tmp_path / "w"
    proc = fu.start(args(env, workdir, "embed"), tmp_path / "killed.log")
    fu.kill_when(proc, lambda: len(fu.chunk_files(workdir)) >= 2)
    before = fu.snapshot(workdir / "cache" / "embed", "*/chunk-*.parquet")
    done = fu.embeddings(workdir)
    total = fu.embeddings(ref)
    assert 2 <= len(before) and len(done) < len(total), "the kill must land part-way"

    fu.run_inprocess(args(env, workdir, "embed"))

    after = fu.snapshot(workdir / "cache" / "embed", "*/chunk-*.parquet")
    assert {k: after[k] for k in before} == before  # finished chunks untouched (inode, mtime)
    assert len(encoded) == len(total) - len(done)  # only the unfinished texts were encoded
    assert not set(hash_texts(encoded)) & set(done)
    fu.assert_same_embeddings(fu.embeddings(workdir), total)
    assert not fu.temp_files(workdir / "cache" / "embed")


def test_killed_features_resumes_and_equals_clean_run(env, ref, tmp_path, caplog):
    # No embed stage first: the features stage embeds the texts itself, after the
    # text groups of the training split are written.
    workdir = tmp_path / "w"
    feats = workdir / "cache" / "features"

    def midway():
        return bool(list(feats.glob("overlap-train-*.parquet"))) and len(fu.chunk_files(workdir)) >= 1

    fu.kill_when(fu.start(args(env, workdir, "features"), tmp_path / "killed.log"), midway)
    before = {**fu.snapshot(feats, "*.parquet"),
              **fu.snapshot(workdir / "cache", "embed/*/chunk-*.parquet")}
    assert any(k.startswith("overlap-train") for k in before)
    assert len(list(feats.glob("*.parquet"))) < len(list((ref / "cache" / "features").glob("*.parquet")))

    caplog.set_level(logging.DEBUG)
    fu.run_inprocess(args(env, workdir, "features") + ["-v"])  # cache hits are DEBUG lines

    after = {**fu.snapshot(feats, "*.parquet"),
             **fu.snapshot(workdir / "cache", "embed/*/chunk-*.parquet")}
    assert {k: after[k] for k in before} == before
    assert "features overlap/train: read" in caplog.text
    # The uninterrupted twin: `--stage features` on a fresh workdir, so that texts are
    # embedded in the same batches (train, then test) - equal bit for bit.
    clean = tmp_path / "clean"
    fu.run_inprocess(args(env, clean, "features"))
    fu.assert_same_frames(fu.feature_frames(workdir), fu.feature_frames(clean))
    fu.assert_same_embeddings(fu.embeddings(workdir), fu.embeddings(clean))
    # The reference ran `--stage embed` first (train and test texts in one sorted pass);
    # a vector's float32 rounding depends on the texts padded into its batch, so the same
    # texts agree to ~1e-7, not bit for bit.
    fu.assert_same_embeddings(fu.embeddings(workdir), fu.embeddings(ref), atol=1e-6)


def test_killed_finetune_skips_finished_folds_and_equals_clean_run(env, ref, tmp_path, caplog):
    workdir = tmp_path / "w"
    fu.kill_when(fu.start(args(env, workdir, "finetune"), tmp_path / "killed.log"),
                 lambda: bool(list(workdir.glob("cache/finetune/*/fold0/oof.parquet"))))
    folder = ft_dir(workdir)
    finished = [k for k in range(N_FOLDS) if (folder / f"fold{k}" / "oof.parquet").is_file()]
    assert 0 in finished and len(finished) < N_FOLDS
    # The kill may land while a fold's provenance JSON is being written: its temporary file
    # is not part of the finished fold (the next run sweeps it, checked below).
    before = {k: {f: v for f, v in fu.snapshot(folder / f"fold{k}").items() if not f.endswith(".tmp")}
              for k in finished}

    caplog.set_level(logging.INFO)
    fu.run_inprocess(args(env, workdir, "finetune"))
    assert not fu.temp_files(workdir)

    for k in finished:
        assert f"finetune: fold {k} finished earlier (cached), skipped" in caplog.text
        assert f"finetune: fold {k} seed 0: training" not in caplog.text
        after = fu.snapshot(folder / f"fold{k}")
        assert {f: after[f] for f in before[k]} == before[k]  # weights, logits untouched
    for k in set(range(N_FOLDS)) - set(finished):
        assert f"finetune: fold {k} seed 0: training" in caplog.text
    oof, test = ft_logits(workdir)
    ref_oof, ref_test = ft_logits(ref)
    assert_same_logits(oof, ref_oof)
    assert_same_logits(test, ref_test)


def test_killed_stack_reuses_finished_members_and_equals_clean_run(env, ref, tmp_path, caplog):
    workdir = fu.copy_workdir(ref, tmp_path / "w", ("cache",))
    shutil.rmtree(workdir / "cache" / "stack")
    shutil.rmtree(workdir / "cache" / "folds")
    stack = workdir / "cache" / "stack"
    fu.kill_when(fu.start(args(env, workdir, "stack"), tmp_path / "killed.log"),
                 lambda: bool(list(stack.glob("lgbm_all-*/meta.json"))))
    done = [p.parent.name for p in stack.glob("*/meta.json")]
    assert any(d.startswith("lgbm_all-") for d in done)
    before = {d: fu.snapshot(stack / d) for d in done}

    caplog.set_level(logging.INFO)
    fu.run_inprocess(args(env, workdir, "stack"))

    for d in done:
        assert f"stack: member {d.rsplit('-', 1)[0]} read from cache {d}" in caplog.text
        assert fu.snapshot(stack / d) == before[d]
    fu.assert_same_run(workdir / "runs" / "exp", ref / "runs" / "exp")


# ----------------------------------------------------------------------------- 3. corrupt caches


def test_corrupt_caches_are_detected_warned_and_recomputed(env, ref, tmp_path, caplog, encoded):
    workdir = fu.copy_workdir(ref, tmp_path / "w")
    cache = workdir / "cache"
    chunk = fu.chunk_files(workdir)[3]
    chunk_rows = int(re.match(r"chunk-[0-9a-f]+-(\d+)\.parquet", chunk.name).group(1))
    (folds_file,) = (cache / "folds").glob("*.parquet")
    (structure_train,) = (cache / "features").glob("structure-train-*.parquet")
    (overlap_test,) = (cache / "features").glob("overlap-test-*.parquet")
    (member_oof,) = (cache / "stack").glob("lgbm_text-*/oof.parquet")
    fu.truncate(chunk)
    fu.flip_parquet_values(structure_train)  # bit rot inside the data pages, same size
    fu.truncate(overlap_test)
    fu.truncate(folds_file)
    fu.truncate(member_oof)

    caplog.set_level(logging.INFO)
    fu.run_inprocess(args(env, workdir, "all"))

    warnings = "\n".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    for path in (chunk, structure_train, overlap_test, folds_file, member_oof):
        assert path.name in warnings, f"no warning names the corrupt {path}"
    assert len(encoded) == chunk_rows  # only the lost chunk's texts were encoded again
    assert "member lgbm_text (" in caplog.text and "fitted" in caplog.text  # refitted
    assert "stack: member lgbm_all read from cache" in caplog.text  # the others were not
    fu.assert_same_embeddings(fu.embeddings(workdir), fu.embeddings(ref))
    fu.assert_same_frames(fu.feature_frames(workdir), fu.feature_frames(ref))
    pd.testing.assert_frame_equal(pd.read_parquet(folds_file),
                                  pd.read_parquet(ref / folds_file.relative_to(workdir)))
    pd.testing.assert_frame_equal(pd.read_parquet(member_oof),
                                  pd.read_parquet(ref / member_oof.relative_to(workdir)))
    fu.assert_same_run(workdir / "runs" / "exp", ref / "runs" / "exp")


def test_truncated_booster_is_refitted_in_the_cache_and_refused_by_predict(env, ref, tmp_path, caplog):
    from pipeline.cli import main

    workdir = fu.copy_workdir(ref, tmp_path / "w")
    (booster,) = (workdir / "cache" / "stack").glob("lgbm_text-*/models/fold1_seed0.txt")
    fu.truncate(booster)
    caplog.set_level(logging.INFO)
    fu.run_inprocess(args(env, workdir, "stack"))
    warnings = "\n".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert str(booster) in warnings
    assert "member lgbm_text (" in caplog.text and "fitted" in caplog.text  # refitted
    assert "stack: member lgbm_all read from cache" in caplog.text  # the others were not
    assert booster.read_text() == (ref / booster.relative_to(workdir)).read_text()
    fu.assert_same_run(workdir / "runs" / "exp", ref / "runs" / "exp")

    # A saved run's booster cut short: predict refuses it by name and writes nothing.
    saved = workdir / "runs" / "exp" / "models" / "lgbm_all" / "fold0_seed0.txt"
    fu.truncate(saved)
    before = fu.snapshot(workdir / "runs")
    caplog.clear()
    assert main(args(env, workdir, "predict") + ["--run", "exp"]) == 2
    assert str(saved) in caplog.text and "SHA-256" in caplog.text
    assert fu.snapshot(workdir / "runs") == before


def test_bit_rot_in_a_cached_parquet_is_never_read_silently(env, ref, tmp_path, caplog):
    """Every single-byte flip inside the column chunks of a feature file: the checked read
    gives the original frame or None with a warning - never other values. (Without page
    checksums about a quarter of such flips decoded into wrong numbers, silently.)"""
    from pipeline.catalog import read_parquet_checked, write_parquet_atomic

    (src,) = (ref / "cache" / "features").glob("structure-train-*.parquet")
    frame = pd.read_parquet(src)
    path = tmp_path / "f.parquet"
    write_parquet_atomic(path, frame)
    raw = path.read_bytes()
    meta = pq.ParquetFile(path).metadata.row_group(0)
    rng = np.random.default_rng(0)
    detected = 0
    for _ in range(120):
        chunk = meta.column(int(rng.integers(meta.num_columns)))
        start = chunk.dictionary_page_offset or chunk.data_page_offset
        offset = int(rng.integers(start, chunk.data_page_offset + chunk.total_compressed_size))
        data = bytearray(raw)
        data[offset] ^= 0xFF
        path.write_bytes(bytes(data))
        caplog.clear()
        got = read_parquet_checked(path, expected_rows=len(frame), columns=["id"])
        if got is None:
            detected += 1
            assert path.name in caplog.text
        else:
            pd.testing.assert_frame_equal(got, frame, check_exact=True)
    assert detected > 60


def test_corrupt_finetune_logits_retrain_or_rescore_only_that_fold(env, ref, tmp_path, caplog):
    workdir = fu.copy_workdir(ref, tmp_path / "w")
    folder = ft_dir(workdir)
    fu.truncate(folder / "fold1" / "oof.parquet")
    (fold2_test,) = (folder / "fold2").glob("test-*.parquet")
    fu.flip_bytes(fold2_test, n=4096)
    fold0 = fu.snapshot(folder / "fold0")

    caplog.set_level(logging.INFO)
    fu.run_inprocess(args(env, workdir, "finetune"))

    warnings = "\n".join(r.getMessage() for r in caplog.records if r.levelno == logging.WARNING)
    assert "fold1/oof.parquet" in warnings and f"fold2/{fold2_test.name}" in warnings
    assert "finetune: fold 0 finished earlier (cached), skipped" in caplog.text
    assert "finetune: fold 1 seed 0: training" in caplog.text
    assert "finetune: fold 2 seed 0: training" not in caplog.text
    assert "fold 2 trained earlier; scoring this test file with its saved models" in caplog.text
    assert fu.snapshot(folder / "fold0") == fold0
    oof, test = ft_logits(workdir)
    ref_oof, ref_test = ft_logits(ref)
    assert_same_logits(oof, ref_oof)
    assert_same_logits(test, ref_test)


# ----------------------------------------------------------------------------- 4. concurrency


def test_two_experiments_at_once_on_one_workdir(env, ref, tmp_path):
    from pipeline.catalog import file_lock

    workdir = tmp_path / "shared"
    (lock_name,) = [p.name for p in (ref / "cache" / "embed").glob("*.lock")]
    lock = workdir / "cache" / "embed" / lock_name
    # Hold the embedding cache's lock until both runs wait for it, so that they really
    # contend for the shared cache (instead of one finishing before the other starts).
    with file_lock(lock):
        procs = [fu.start(args(env, workdir, "all"), tmp_path / "a.log"),
                 fu.start(args(env, workdir, "all", env["config_seed1"]), tmp_path / "b.log")]
        fu.wait_for_waiters(lock, procs)
    logs = [fu.finish(p) for p in procs]
    total = fu.embeddings(ref)
    # Each text was encoded once, by one of them; the other read it from the cache.
    assert sum(fu.computed_texts(log) for log in logs) == len(total)
    fu.assert_same_embeddings(fu.embeddings(workdir), total)
    fu.assert_same_frames(fu.feature_frames(workdir), fu.feature_frames(ref))
    assert len(list((workdir / "cache" / "folds").glob("*.parquet"))) == 1
    fu.assert_same_run(workdir / "runs" / "exp", ref / "runs" / "exp")
    solo = fu.copy_workdir(ref, tmp_path / "solo", ("cache",))
    fu.run_inprocess(args(env, solo, "stack", env["config_seed1"]))
    fu.assert_same_run(workdir / "runs" / "exp_seed1", solo / "runs" / "exp_seed1")
    assert not fu.temp_files(workdir)


def test_two_runs_of_the_same_experiment_at_once_take_turns(env, ref, tmp_path):
    from pipeline.catalog import Catalog, run_lock

    workdir = fu.copy_workdir(ref, tmp_path / "same", ("cache",))
    lock = workdir / "runs" / ".exp.lock"
    # Hold the experiment's run lock until both runs wait for it: they really overlap.
    with run_lock(Catalog(workdir), "exp"):
        procs = [fu.start(args(env, workdir, "stack"), tmp_path / f"{k}.log") for k in "ab"]
        fu.wait_for_waiters(lock, procs)
    logs = [fu.finish(p) for p in procs]
    assert all("waiting for it to finish" in log for log in logs)
    fu.assert_same_run(workdir / "runs" / "exp", ref / "runs" / "exp")
    assert not list((workdir / "runs" / "exp").glob(".models.*"))
    assert not fu.temp_files(workdir)


def test_no_wait_exits_2_while_the_experiment_runs(env, ref, tmp_path, caplog):
    from pipeline.catalog import Catalog, RunBusy, run_lock
    from pipeline.cli import main

    workdir = fu.copy_workdir(ref, tmp_path / "busy", ("cache",))
    with run_lock(Catalog(workdir), "exp"):
        assert main([*args(env, workdir, "stack"), "--no-wait"]) == 2
        assert "another run of experiment 'exp' is in progress" in caplog.text
        with pytest.raises(RunBusy):
            with run_lock(Catalog(workdir), "exp", wait=False):
                pass
        with run_lock(Catalog(workdir), "other", wait=False):  # other experiments never wait
            pass


def test_predict_out_pointing_at_a_folder_is_exit_2(env, ref, tmp_path, caplog):
    from pipeline.cli import main

    workdir = fu.copy_workdir(ref, tmp_path / "out", ("cache", "runs"))
    folder = tmp_path / "a-folder"
    folder.mkdir()
    assert main([*args(env, workdir, "predict"), "--out", str(folder)]) == 2
    assert f"Is a directory: {folder}" in caplog.text and "--out" in caplog.text
    assert "Traceback" not in caplog.text and not list(folder.iterdir())


# ----------------------------------------------------------------------------- 5. edited CSV


def test_an_edited_row_invalidates_exactly_what_depends_on_it(env, ref, tmp_path, caplog, encoded):
    workdir = fu.copy_workdir(ref, tmp_path / "w", ("cache",))
    data = tmp_path / "data"
    data.mkdir()
    shutil.copy(env["data"] / "test.csv", data / "test.csv")
    train = pd.read_csv(env["data"] / "train.csv")
    new_text = "An edited answer: restart the router, then call the provider."
    row = int(np.flatnonzero(train["id"] == 10)[0])
    train.loc[row, "response_a"] = json.dumps([new_text])
    train.to_csv(data / "train.csv", index=False)
    feats_dir = workdir / "cache" / "features"
    before = fu.snapshot(workdir / "cache", "**/*.parquet")
    old = fu.feature_frames(workdir)

    caplog.set_level(logging.DEBUG)
    cli = fu.cli_args(env["config"], data, workdir, "embed")
    fu.run_inprocess(cli)
    fu.run_inprocess(cli[:1] + ["features"] + cli[2:] + ["-v"])  # cache hits are DEBUG lines

    assert encoded == [new_text]  # the encoder saw exactly the edited text, nothing else
    after = fu.snapshot(workdir / "cache", "**/*.parquet")
    new_files = sorted(set(after) - set(before))
    assert {k: after[k] for k in before} == before  # nothing existing was rewritten
    new_chunks = [f for f in new_files if "/chunk-" in f]
    assert len(new_chunks) == 1 and new_chunks[0].endswith("-1.parquet")
    new_feats = sorted(f for f in new_files if f.startswith("features/") and f.endswith(".parquet"))
    groups = ["length", "structure", "overlap", EMB_GROUP]
    assert [f.split("/")[1].rsplit("-", 1)[0] for f in new_feats] == sorted(f"{g}-train" for g in groups)
    assert "features length/test: read" in caplog.text  # test split untouched
    for name in new_feats:
        name = name.split("/")[1]
        group = name.rsplit("-", 2)[0]
        (old_name,) = [n for n in old if n.startswith(f"{group}-train-")]
        new_frame = pd.read_parquet(feats_dir / name)
        other = new_frame["id"] != "10"
        pd.testing.assert_frame_equal(new_frame[other], old[old_name][other], check_exact=True)
        changed = new_frame[~other].drop(columns="id").to_numpy() != old[old_name][~other].drop(columns="id").to_numpy()
        assert changed.any(), f"{group}: the edited row's features did not change"
    # Folds depend on ids, prompts and labels only: a response edit keeps them.
    catalog = Catalog(workdir)
    edited = load_pairs(data / "train.csv")
    row = int(np.flatnonzero(edited["id"].astype(str) == "10")[0])
    folds = load_or_make_folds(catalog, edited, N_FOLDS, 42)
    assert fu.snapshot(workdir / "cache" / "folds", "*.parquet") == {
        k[6:]: v for k, v in before.items() if k.startswith("folds/")}
    (ref_folds,) = (ref / "cache" / "folds").glob("*.parquet")
    pd.testing.assert_frame_equal(folds, pd.read_parquet(ref_folds).astype({"id": folds["id"].dtype}))
    # A prompt edit changes the grouping, so the folds are assigned again (new file).
    prompts = edited["prompt"].tolist()
    prompts[row] = ["A prompt nobody else asked."]
    edited = edited.assign(prompt=prompts)
    load_or_make_folds(catalog, edited, N_FOLDS, 42)
    assert len(list((workdir / "cache" / "folds").glob("*.parquet"))) == 2


# ----------------------------------------------------------------------------- 6. determinism


def test_same_config_and_seed_give_identical_outputs(env, ref, tmp_path):
    workdir = tmp_path / "again"
    fu.run_inprocess(args(env, workdir, "all"))
    fu.assert_same_embeddings(fu.embeddings(workdir), fu.embeddings(ref))
    fu.assert_same_frames(fu.feature_frames(workdir), fu.feature_frames(ref))
    fu.assert_same_run(workdir / "runs" / "exp", ref / "runs" / "exp")


# ----------------------------------------------------------------------------- missing test file


def test_missing_test_file_fails_before_writing_anything(env, ref, tmp_path, caplog):
    from pipeline.cli import main

    workdir = tmp_path / "w"
    missing = tmp_path / "nope" / "test.csv"
    cli = args(env, workdir, "all")
    cli[cli.index("--test") + 1] = str(missing)
    assert main(cli) == 2
    assert str(missing) in caplog.text
    assert not (workdir / "cache").exists() and not (workdir / "runs").exists()
    # Scoring new pairs with a finished run: the same clean error, the run left as it was.
    run = fu.copy_workdir(ref, tmp_path / "r", ("runs",))
    before = fu.snapshot(run)
    cli = args(env, run, "predict")
    cli[cli.index("--test") + 1] = str(missing)
    assert main(cli + ["--run", "exp"]) == 2
    assert fu.snapshot(run) == before
