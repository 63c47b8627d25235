"""Fine-tune stage: OOF coverage, resume, swap TTA, heads, LoRA, saved models, stack blend.

Most tests use a tiny random BERT saved to a temporary folder (with the bundled tokenizer),
which also checks that any local model path works; one slow test runs the real bundled
MiniLM end to end.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

import pipeline.finetune as FT
from features.seqpack import encode_pairs, specials_of
from pipeline.catalog import Catalog
from pipeline.config import Config, ConfigError, FinetuneConfig, apply_overrides
from pipeline.context import RunContext
from pipeline.data import load_pairs, swap_proba
from pipeline.folds import load_or_make_folds
from pipeline.heads import ModelSpec, build_classifier, load_classifier, save_weights
from tests.conftest import install_fake_features, make_rows, save_tiny_bert

FAST = {"max_length": 48, "batch_size": 4, "epochs": 1.0, "eval_batch_size": 16,
        "head_lr": 1e-3, "warmup_ratio": 0.0}


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory):
    """Folder of a seeded 2-layer, 32-dim BERT with the bundled model's tokenizer."""
    return save_tiny_bert(tmp_path_factory.mktemp("tiny-bert"))


@pytest.fixture(scope="module")
def tokenizer(tiny_model):
    return FT.load_tokenizer(tiny_model)


def _ctx(tmp_path, model, test_rows=5, test_start=100, n_train=12, **finetune):
    train, test = tmp_path / "train.csv", tmp_path / "test.csv"
    if not train.exists():
        make_rows(n_train).to_csv(train, index=False)
    make_rows(test_rows, with_labels=False, start_id=test_start).to_csv(test, index=False)
    cfg = apply_overrides(Config(), {"name": "t", "stack": {"n_folds": 2},
                                     "finetune": {"model": model, **FAST, **finetune}})
    return RunContext(config=cfg, catalog=Catalog(tmp_path / "work"), train_path=train,
                      test_path=test, device_request="cpu")


def _count_training(monkeypatch) -> list:
    calls = []
    real = FT.train_model

    def counting(*a, **k):
        calls.append(k.get("desc"))
        return real(*a, **k)

    monkeypatch.setattr(FT, "train_model", counting)
    return calls


# ------------------------------------------------------------------ stage, resume, member

def test_stage_covers_every_id_resumes_and_scores_new_test(tmp_path, tiny_model, monkeypatch, caplog):
    calls = _count_training(monkeypatch)
    caplog.set_level(logging.INFO, logger="pipeline.finetune")

    # Only fold 0: its files are written, but no member (partial OOF).
    ctx = _ctx(tmp_path, tiny_model, folds=[0])
    FT.run_stage(ctx)
    assert calls == ["fold 0 seed 0"]
    assert FT.member_for(_ctx(tmp_path, tiny_model)) is None
    plan = FT.make_plan(ctx)
    assert (plan.fold_dir(0) / "seed0.pt").is_file() and (plan.fold_dir(0) / "oof.parquet").is_file()
    assert not (plan.fold_dir(1) / "oof.parquet").exists()

    # All folds: fold 0 is skipped (resume), only fold 1 trains.
    caplog.clear()
    ctx = _ctx(tmp_path, tiny_model)
    FT.run_stage(ctx)
    assert calls == ["fold 0 seed 0", "fold 1 seed 0"]
    assert "fold 0 finished earlier (cached), skipped" in caplog.text
    member = FT.member_for(ctx)
    assert member is not None and member.name == "ft_" + FT.slug(tiny_model)
    train_ids = [str(i) for i in range(12)]
    assert sorted(member.oof["id"]) == sorted(train_ids) and member.oof["id"].is_unique
    assert list(member.oof.columns) == ["id", "fold", "logit_a", "logit_b", "logit_tie"]
    folds = load_or_make_folds(ctx.catalog, ctx.dataset.train, 2, ctx.config.stack.fold_seed)
    assert (member.oof.set_index("id").loc[folds["id"], "fold"].to_numpy() == folds["fold"].to_numpy()).all()
    assert list(member.test["id"]) == [str(i) for i in range(100, 105)]
    assert np.isfinite(member.test[FT.LOGITS].to_numpy()).all()
    assert json.loads((ctx.run_dir / "finetune" / "member.json").read_text())["rows"] == 12

    # The saved fold models reproduce the stage's test logits.
    again = FT.predict_logits(member.model_dir, ctx.dataset.test, ctx)
    assert np.allclose(again, member.test[FT.LOGITS].to_numpy(), atol=1e-4)

    # Everything cached: no training; a new test file is scored with the saved models.
    FT.run_stage(_ctx(tmp_path, tiny_model))
    new_ctx = _ctx(tmp_path, tiny_model, test_rows=3, test_start=200)
    FT.run_stage(new_ctx)
    assert len(calls) == 2
    new_member = FT.member_for(new_ctx)
    assert list(new_member.test["id"]) == ["200", "201", "202"]
    assert new_member.model_dir == member.model_dir

    # Other settings (another cache key): no member, and a warning that one exists.
    caplog.clear()
    assert FT.member_for(_ctx(tmp_path, tiny_model, lr=1e-3)) is None
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "exists for other settings" in warnings[0]
    assert Path(member.model_dir).name in warnings[0]


def test_folds_are_declared_artifacts_and_force_retrains_only_the_folds_asked_for(
        tmp_path, tiny_model, monkeypatch, caplog):
    from pipeline.artifacts import KINDS, lock_of, path_of

    calls = _count_training(monkeypatch)
    ctx = _ctx(tmp_path, tiny_model)
    FT.run_stage(ctx)
    assert calls == ["fold 0 seed 0", "fold 1 seed 0"]
    plan = FT.make_plan(ctx)
    items = FT._fold_items(plan, [0, 1])
    for k, item in enumerate(items):  # the declared kind names the stage's own folders
        assert path_of(ctx.catalog, KINDS["finetune-fold"], item) == plan.fold_dir(k)
        assert lock_of(ctx.catalog, KINDS["finetune-fold"], item).parent == plan.model_dir
        assert KINDS["finetune-fold"].read(plan.fold_dir(k), item.meta) is not None
    fold0 = (plan.fold_dir(0) / "oof.parquet").read_bytes()
    fold1_mtime = (plan.fold_dir(1) / "oof.parquet").stat().st_mtime_ns

    # --force with finetune.folds [1]: fold 1 trains again, fold 0 is left as it was.
    forced = _ctx(tmp_path, tiny_model, folds=[1])
    forced.force = True
    caplog.set_level(logging.INFO, logger="pipeline.finetune")
    FT.run_stage(forced)
    assert calls == ["fold 0 seed 0", "fold 1 seed 0", "fold 1 seed 0"]
    assert (plan.fold_dir(0) / "oof.parquet").read_bytes() == fold0
    assert (plan.fold_dir(1) / "oof.parquet").stat().st_mtime_ns != fold1_mtime
    assert FT.member_for(_ctx(tmp_path, tiny_model)) is not None

    # A new test file under --force: fold 1 retrains, fold 0 only scores it.
    caplog.clear()
    new = _ctx(tmp_path, tiny_model, folds=[1], test_rows=2, test_start=300)
    new.force = True
    FT.run_stage(new)
    assert calls[-1] == "fold 1 seed 0" and len(calls) == 4
    assert "fold 0 trained earlier; scoring this test file" in caplog.text
    assert list(FT.member_for(new).test["id"]) == ["300", "301"]


def test_max_rows_trains_a_subset_and_gives_no_member(tmp_path, tiny_model, monkeypatch):
    calls = _count_training(monkeypatch)
    ctx = _ctx(tmp_path, tiny_model, n_train=16, max_rows=10)
    FT.run_stage(ctx)
    assert len(calls) == 2
    oof = pd.read_parquet(FT.make_plan(ctx).oof_path)
    assert sorted(oof["id"]) == sorted(str(i) for i in range(10))
    assert FT.member_for(ctx) is None  # the stack needs every training row


def test_cache_key_follows_what_changes_logits():
    base = FinetuneConfig()
    key = FT.key_config(base)
    for change in ({"lr": 1e-4}, {"max_length": 128}, {"head": "cnn"}, {"lora": True},
                   {"seeds": (0, 1)}, {"swap_augment": False}, {"freeze_embeddings": True}):
        assert FT.key_config(FinetuneConfig(**change)) != key, change
    for same in ({"eval_batch_size": 4}, {"folds": (0,)}, {"gradient_checkpointing": True},
                 {"in_all": True}, {"model": "bundled"}):
        assert FT.key_config(FinetuneConfig(**same)) == key, same


def test_freeze_embeddings_trains_everything_but_the_token_embeddings(tmp_path, tiny_model):
    ctx = _ctx(tmp_path, tiny_model, freeze_embeddings=True, folds=[0])
    seen = {}
    real = FT.train_model

    def spy(model, *a, **k):
        before = {n: p.detach().clone() for n, p in model.named_parameters()}
        out = real(model, *a, **k)
        seen.update({n: bool((p.detach() != before[n]).any()) for n, p in model.named_parameters()})
        return out

    import pytest as _pytest
    with _pytest.MonkeyPatch.context() as mp:
        mp.setattr(FT, "train_model", spy)
        FT.run_stage(ctx)
    emb = [n for n in seen if "word_embeddings" in n]
    assert emb and not any(seen[n] for n in emb)
    assert any(changed for n, changed in seen.items() if "encoder" in n)


def test_bad_settings_name_the_field():
    with pytest.raises(ConfigError, match="finetune.head"):
        FT.check_config(FinetuneConfig(head="lstm"))
    with pytest.raises(ConfigError, match="fp16 needs a GPU"):
        FT.resolve_amp("fp16", "cpu")
    assert FT.resolve_amp("auto", "cpu") == (None, False)
    assert FT.resolve_amp("bf16", "cpu") == (torch.bfloat16, False)


# ------------------------------------------------------------------ swap TTA

def _frame(tmp_path, n: int = 7) -> pd.DataFrame:
    """Canonical frame of n conftest rows (multi-turn, null turn, surrogate included)."""
    path = tmp_path / f"rows{n}.csv"
    make_rows(n).to_csv(path, index=False)
    return load_pairs(path, "train")


class AsymmetricModel(torch.nn.Module):
    """Deterministic logits that depend on token order (A vs B position), not symmetric."""

    def forward(self, input_ids, attention_mask):
        ids = input_ids.float() * attention_mask
        n = attention_mask.sum(1).float()
        pos = torch.arange(ids.shape[1], dtype=torch.float32)
        first_half = (ids * (pos < n[:, None] / 2)).sum(1)
        return torch.stack([first_half / 1e4, (ids.sum(1) - first_half) / 1e4, n / 10], dim=1)


def test_swap_tta_maps_swapped_logits_back(tokenizer, tmp_path):
    frame = _frame(tmp_path)
    fwd, swp = encode_pairs(frame, tokenizer, 48, 0.2, 0.7)
    model = AsymmetricModel()
    pad = specials_of(tokenizer).pad
    plain = FT.predict_pairs(model, fwd, swp, pad, "cpu", 3, tta=False)
    on_swapped = FT.predict_pairs(model, swp, fwd, pad, "cpu", 3, tta=False)
    tta = FT.predict_pairs(model, fwd, swp, pad, "cpu", 3, tta=True)
    assert not np.allclose(plain, on_swapped[:, [1, 0, 2]])  # the fake really is asymmetric
    assert np.allclose(tta, (plain + on_swapped[:, [1, 0, 2]]) / 2, atol=1e-6)
    assert not np.allclose(tta, (plain + on_swapped) / 2)  # permuted, not copied
    # TTA predictions are exactly swap-consistent.
    tta_swapped = FT.predict_pairs(model, swp, fwd, pad, "cpu", 3, tta=True)
    assert np.allclose(tta_swapped, swap_proba(tta), atol=1e-6)


def test_training_batch_holds_both_orders_with_permuted_labels(tokenizer, tmp_path, monkeypatch):
    frame = _frame(tmp_path, 4)
    fwd, swp = encode_pairs(frame, tokenizer, 32, 0.2, 0.7)
    seen = []

    class Recorder(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(3))

        def forward(self, ids, mask):
            seen.append(ids.clone())
            return self.w.expand(len(ids), 3)

    real_ce = FT.F.cross_entropy
    targets = []
    monkeypatch.setattr(FT.F, "cross_entropy", lambda z, t: targets.append(t.clone()) or real_ce(z, t))
    labels = np.array([0, 1, 2, 0])
    FT.train_model(Recorder(), fwd, swp, labels, FinetuneConfig(batch_size=4, epochs=1.0), 0, "cpu", 0)
    ids, y = seen[0], targets[0].numpy()
    assert len(ids) == 8
    rows = [list(r[r != 0].numpy()) for r in ids]  # pad id 0
    for i in range(4):
        j = fwd.index(rows[i])
        assert rows[i + 4] == swp[j]
        assert y[i] == labels[j] and y[i + 4] == [1, 0, 2][labels[j]]


# ------------------------------------------------------------------ heads, LoRA, save/load

@pytest.mark.parametrize("head", ["auto", "mean", "cnn"])
def test_each_head_gives_three_logits_and_trains(tiny_model, tokenizer, tmp_path, head):
    frame = _frame(tmp_path, 6)
    fwd, swp = encode_pairs(frame, tokenizer, 40, 0.2, 0.7)
    torch.manual_seed(0)
    model = build_classifier(ModelSpec(base=tiny_model, head=head, cnn_channels=16))
    ids, mask = FT.collate(fwd[:5], 0, "cpu")
    assert model(ids, mask).shape == (5, 3)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    cfg = FinetuneConfig(batch_size=3, epochs=1.0, lr=1e-3, warmup_ratio=0.0)
    stats = FT.train_model(model, fwd, swp, frame["label"].to_numpy(), cfg, 0, "cpu", 0)
    assert stats["steps"] == 2 and np.isfinite(stats["train_loss"])
    changed = [n for n, p in model.named_parameters() if not torch.equal(p, before[n])]
    assert any("embeddings" in n for n in changed)  # the backbone is fine-tuned, not frozen
    assert any(n.startswith("head.") or "classifier" in n for n in changed)


@pytest.mark.parametrize("kind", ["cnn", "mean"])
def test_heads_ignore_padding(kind):
    from pipeline.heads import CNNHead, MeanHead

    torch.manual_seed(0)
    head = (CNNHead(hidden=8, channels=4, kernel=3, dropout=0.5) if kind == "cnn"
            else MeanHead(hidden=8, dropout=0.5)).eval()
    states = torch.randn(1, 5, 8)
    short = head(states[:, :3], torch.ones(1, 3, dtype=torch.long))
    padded = states.clone()
    padded[:, 3:] = 100.0  # junk hidden states at padded positions
    longer = head(padded, torch.tensor([[1, 1, 1, 0, 0]]))
    assert short.shape == (1, 3)
    assert torch.allclose(short, longer, atol=1e-5)


@pytest.mark.parametrize("head", ["auto", "mean"])
def test_lora_builds_trains_a_step_and_round_trips(tiny_model, tokenizer, tmp_path, head):
    frame = _frame(tmp_path, 4)
    fwd, swp = encode_pairs(frame, tokenizer, 32, 0.2, 0.7)
    spec = ModelSpec(base=tiny_model, head=head, lora=True, lora_r=4, lora_alpha=8)
    torch.manual_seed(0)
    model = build_classifier(spec)
    frozen = {n: p.detach().clone() for n, p in model.named_parameters() if not p.requires_grad}
    trainable = {n: p.detach().clone() for n, p in model.named_parameters() if p.requires_grad}
    assert any("lora_" in n for n in trainable) and frozen
    assert any(n.startswith("head.") or "classifier" in n for n in trainable)  # head kept trainable
    cfg = FinetuneConfig(batch_size=4, epochs=1.0, lr=1e-2, warmup_ratio=0.0, lora=True)
    FT.train_model(model, fwd, swp, frame["label"].to_numpy(), cfg, 0, "cpu", 0)
    params = dict(model.named_parameters())
    assert all(torch.equal(params[n], v) for n, v in frozen.items())
    assert any(not torch.equal(params[n], v) for n, v in trainable.items() if "lora_B" in n)
    save_weights(model, tmp_path / "w.pt")
    saved = torch.load(tmp_path / "w.pt", weights_only=True)
    assert set(saved) == set(trainable)  # adapters + head only, not the base
    ids, mask = FT.collate(fwd, 0, "cpu")
    model.eval()
    loaded = load_classifier(spec, tmp_path / "w.pt")
    assert torch.allclose(model(ids, mask), loaded(ids, mask), atol=1e-5)


def test_full_finetune_round_trip_and_gradient_checkpointing(tiny_model, tokenizer, tmp_path):
    frame = _frame(tmp_path, 4)
    fwd, swp = encode_pairs(frame, tokenizer, 32, 0.2, 0.7)
    spec = ModelSpec(base=tiny_model, head="cnn", cnn_channels=8)
    model = build_classifier(spec)
    model.enable_gradient_checkpointing()
    FT.train_model(model, fwd, swp, frame["label"].to_numpy(),
                   FinetuneConfig(batch_size=2, epochs=1.0, grad_accum=2), 0, "cpu", 0)
    save_weights(model, tmp_path / "w.pt")
    model.eval()
    ids, mask = FT.collate(fwd, 0, "cpu")
    assert torch.allclose(model(ids, mask), load_classifier(spec, tmp_path / "w.pt")(ids, mask), atol=1e-5)


# ------------------------------------------------------------------ stack blend

def _fake_features(monkeypatch):
    """Tiny stand-ins for pipeline.featurize / features.swap so the stack runs without encoders."""

    def feats_of(frame):
        la = np.array([sum(map(len, t)) for t in frame["response_a"]], dtype=np.float32)
        lb = np.array([sum(map(len, t)) for t in frame["response_b"]], dtype=np.float32)
        return pd.DataFrame({"id": frame["id"].astype(str), "length__a_chars": la,
                             "length__b_chars": lb, "length__diff_chars": la - lb})

    def swap(df):
        return df.assign(**{"length__a_chars": df["length__b_chars"],
                            "length__b_chars": df["length__a_chars"],
                            "length__diff_chars": -df["length__diff_chars"]})

    install_fake_features(monkeypatch, feats_of, swap)


def test_stack_blend_picks_the_member_up(tmp_path, tiny_model, monkeypatch):
    stack = pytest.importorskip("pipeline.stack")
    _fake_features(monkeypatch)
    ctx = _ctx(tmp_path, tiny_model, n_train=20)
    ctx.config = apply_overrides(ctx.config, {"stack": {
        "num_boost_round": 20, "early_stopping": False, "members": {"lgbm_all": ["all"]},
        "lgbm_params": {"min_data_in_leaf": 2, "num_leaves": 4, "num_threads": 1}}})
    FT.run_stage(ctx)
    stack.run_stage(ctx)
    metrics = json.loads((ctx.run_dir / "metrics.json").read_text())
    assert metrics["finetune_member"] == "ft_" + FT.slug(tiny_model)
    assert "ft_" + FT.slug(tiny_model) in metrics["blend_weights"]
    # --stage predict rescores the test file through predict_logits and the saved fold models.
    from pipeline import predict

    out = tmp_path / "preds.csv"
    pctx = _ctx(tmp_path, tiny_model, n_train=20)
    pctx.config = ctx.config
    pctx.run_name, pctx.out_path = "t", out
    predict.run_stage(pctx)
    preds = pd.read_csv(out, dtype={"id": str})
    sub = pd.read_csv(ctx.run_dir / "submission.csv", dtype={"id": str})
    assert list(preds["id"]) == list(sub["id"])
    assert np.allclose(preds.iloc[:, 1:].to_numpy(), sub.iloc[:, 1:].to_numpy(), atol=1e-4)


# ------------------------------------------------------------------ real bundled model

@pytest.mark.slow
def test_end_to_end_with_the_bundled_model(tmp_path):
    ctx = _ctx(tmp_path, "all-MiniLM-L6-v2", max_length=32, batch_size=6)
    FT.run_stage(ctx)
    member = FT.member_for(ctx)
    assert member is not None and member.name == "ft_all-MiniLM-L6-v2"
    assert sorted(member.oof["id"]) == sorted(str(i) for i in range(12))
    assert len(member.test) == 5 and np.isfinite(member.test[FT.LOGITS].to_numpy()).all()
