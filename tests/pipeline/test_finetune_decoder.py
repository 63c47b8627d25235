"""Decoder LMs (Llama, Gemma-2, Qwen2) as the fine-tuned member, on the CPU.

Each family is a tiny random-weight model built from a transformers config and saved to a
temporary folder with a tokenizer that, like a decoder LM's, has bos / eos but no pad, cls
or sep token (``pipeline.randmodels``): nothing is downloaded.
"""
from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

import pipeline.finetune as FT
from features.seqpack import DECODER_MARKERS, encode_pairs, pack_ids, specials_of
from pipeline.config import ConfigError, FinetuneConfig, apply_overrides
from pipeline.data import load_pairs, swap_proba
from pipeline.heads import ModelSpec, build_classifier, load_classifier
from tests.conftest import DECODER_ARCHS, make_rows, save_tiny_decoder
from tests.pipeline.test_finetune import _ctx, _fake_features

FAST = {"max_length": 128, "batch_size": 4, "lr": 1e-3, "head_lr": 1e-3}


@pytest.fixture(scope="module", params=DECODER_ARCHS)
def decoder(request, tmp_path_factory):
    """(family, folder) of a tiny random decoder LM."""
    return request.param, save_tiny_decoder(tmp_path_factory.mktemp(request.param), request.param)


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
    return save_tiny_decoder(tmp_path_factory.mktemp("llama"), "llama")


def _frame(tmp_path, n: int = 6) -> pd.DataFrame:
    path = tmp_path / f"rows{n}.csv"
    make_rows(n).to_csv(path, index=False)
    return load_pairs(path, "train")


# ------------------------------------------------------------------ template and defaults

def test_decoder_template_has_markers_ends_on_the_question_and_swaps(llama, tmp_path):
    tok = FT.load_tokenizer(llama)
    assert tok.pad_token_id is None and tok.cls_token_id is None and tok.sep_token_id is None
    sp = specials_of(tok, decoder=True)
    assert sp.pad == tok.eos_token_id  # no pad token: pad with eos
    frame = _frame(tmp_path)
    fwd, swp = encode_pairs(frame, tok, 96, 0.2, 0.7, decoder=True)
    text = tok.decode(fwd[0])
    assert fwd[0][0] == tok.bos_token_id
    for marker in DECODER_MARKERS:
        assert marker.strip() in text
    assert text.index("## Prompt") < text.index("## Response A") < text.index("## Response B")
    assert text.rstrip().endswith(DECODER_MARKERS[-1].strip())
    assert all(len(s) <= 96 for s in fwd + swp)
    assert all(tok.eos_token_id not in s for s in fwd)  # pad (eos) never inside a sequence
    # Swapped = the same template with A and B exchanged.
    ids = lambda t: tok(t, add_special_tokens=False)["input_ids"]  # noqa: E731
    p, a, b = ids("a question"), ids("first answer"), ids("second, longer answer")
    assert pack_ids(p, b, a, sp, 96, 0.2, 0.7) == (
        list(sp.cls) + p + list(sp.after[0]) + b + list(sp.after[1]) + a + list(sp.after[2]))


def test_long_conversations_can_keep_their_end(llama, tmp_path):
    tok = FT.load_tokenizer(llama)
    frame = _frame(tmp_path, 12)
    long_row = int(np.argmax([sum(map(len, t)) for t in frame["response_b"]]))
    end_only, _ = encode_pairs(frame.iloc[[long_row]], tok, 100, 0.2, 0.0, decoder=True)
    start_only, _ = encode_pairs(frame.iloc[[long_row]], tok, 100, 0.2, 1.0, decoder=True)
    tail = tok.decode(end_only[0]).split("## Response B")[1]
    last_words = frame["response_b"].iloc[long_row][-1].split()[-1]
    assert last_words.strip(".") in tail
    assert end_only != start_only


def test_decoder_defaults_resolve_to_lora_on_all_linear_last_token_and_length_groups(decoder):
    arch, path = decoder
    cfg, is_decoder = FT.resolve_config(FinetuneConfig(model=path))
    assert is_decoder
    assert (cfg.head, cfg.lora, cfg.group_by_length) == ("last", True, True)
    enc, enc_decoder = FT.resolve_config(FinetuneConfig())  # the bundled MiniLM: as before
    assert not enc_decoder and (enc.head, enc.lora, enc.group_by_length) == ("mean", False, False)
    model = build_classifier(FT.model_spec(cfg, is_decoder), pad_token_id=2)
    adapted = {n.split(".lora_A")[0].split(".")[-1] for n, _ in model.named_parameters()
               if "lora_A" in n}
    assert {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"} <= adapted
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert all("lora_" in n or n.startswith("head.") for n in trainable)


def test_four_bit_needs_cuda_and_lora(llama, tmp_path):
    with pytest.raises(ConfigError, match="needs LoRA"):
        FT.check_config(FinetuneConfig(model=llama, load_in_4bit=True, lora=False))
    ctx = _ctx(tmp_path, llama, **FAST, load_in_4bit=True)
    with pytest.raises(ConfigError, match="load_in_4bit needs a CUDA GPU"):
        FT.run_stage(ctx)
    with pytest.raises(ConfigError, match="padding_side"):
        FT.check_config(FinetuneConfig(padding_side="middle"))


# ------------------------------------------------------------------ padding side, TTA

@pytest.mark.parametrize("head", ["last", "mean", "auto"])
def test_padding_side_does_not_change_the_logits(decoder, tmp_path, head):
    arch, path = decoder
    tok = FT.load_tokenizer(path)
    fwd, _ = encode_pairs(_frame(tmp_path), tok, 128, 0.2, 0.7, decoder=True)
    assert len({len(s) for s in fwd}) > 1  # really padded
    torch.manual_seed(0)
    model = build_classifier(ModelSpec(base=path, head=head, decoder=True, lora=True, lora_r=4),
                             pad_token_id=specials_of(tok, True).pad).eval()
    pad = specials_of(tok, True).pad
    with torch.no_grad():
        right = model(*FT.collate(fwd, pad, "cpu", "right"))
        left = model(*FT.collate(fwd, pad, "cpu", "left"))
        alone = torch.cat([model(*FT.collate([s], pad, "cpu")) for s in fwd])
    assert torch.isfinite(right).all()
    assert torch.allclose(right, left, atol=1e-4), (right - left).abs().max()
    assert torch.allclose(right, alone, atol=1e-4)  # padding changes nothing at all


def test_swap_tta_is_symmetric_for_a_decoder(llama, tmp_path):
    tok = FT.load_tokenizer(llama)
    fwd, swp = encode_pairs(_frame(tmp_path), tok, 128, 0.2, 0.7, decoder=True)
    torch.manual_seed(0)
    model = build_classifier(ModelSpec(base=llama, head="last", decoder=True, lora=True))
    pad = specials_of(tok, True).pad
    tta = FT.predict_pairs(model, fwd, swp, pad, "cpu", 4, tta=True)
    tta_swapped = FT.predict_pairs(model, swp, fwd, pad, "cpu", 4, tta=True)
    assert np.allclose(tta_swapped, swap_proba(tta), atol=1e-5)


def test_group_by_length_batches_cover_each_epoch_with_similar_lengths():
    rng = np.random.default_rng(0)
    lengths = list(rng.integers(10, 1000, size=1000))
    batches = FT._micro_batches(1000, 4, 250, np.random.default_rng(1), lengths)
    assert sorted(np.concatenate(batches)) == list(range(1000))
    spread = np.mean([np.ptp([lengths[i] for i in b]) for b in batches])
    plain = FT._micro_batches(1000, 4, 250, np.random.default_rng(1))
    plain_spread = np.mean([np.ptp([lengths[i] for i in b]) for b in plain])
    assert spread < plain_spread / 5
    first = [int(b[0]) for b in batches[:20]]
    assert first != sorted(first, key=lambda i: -lengths[i])  # batches in random order


# ------------------------------------------------------------------ the stages

def test_decoder_runs_through_finetune_and_stack(decoder, tmp_path, monkeypatch):
    arch, path = decoder
    from pipeline import stack

    _fake_features(monkeypatch)
    ctx = _ctx(tmp_path, path, n_train=16, **FAST)
    ctx.config = apply_overrides(ctx.config, {"stack": {
        "num_boost_round": 10, "early_stopping": False, "members": {"lgbm_all": ["all"]},
        "lgbm_params": {"min_data_in_leaf": 2, "num_leaves": 4, "num_threads": 1}}})
    FT.run_stage(ctx)
    plan = FT.make_plan(ctx)
    assert plan.decoder and plan.cfg.lora
    meta = json.loads((plan.model_dir / "finetune.json").read_text())
    assert meta["spec"]["decoder"] and meta["pack"]["decoder"]
    member = FT.member_for(ctx)
    assert member is not None and len(member.oof) == 16
    assert np.isfinite(member.oof[FT.LOGITS].to_numpy()).all()

    # Only the adapters and the head are saved, and the saved fold reloads to the same logits.
    saved = torch.load(plan.fold_dir(0) / "seed0.pt", weights_only=True)
    assert saved and all("lora_" in k or k.startswith("head.") for k in saved)
    model = load_classifier(ModelSpec.from_dict(meta["spec"]), plan.fold_dir(0) / "seed0.pt",
                            pad_token_id=2)
    tok = FT.load_tokenizer(path)
    va = plan.train[plan.train["fold"] == 0]
    fwd, swp = encode_pairs(va, tok, FAST["max_length"], plan.cfg.prompt_share,
                            plan.cfg.head_share, decoder=True)
    again = FT.predict_pairs(model, fwd, swp, specials_of(tok, True).pad, "cpu", 4, tta=True)
    oof = member.oof.set_index("id").loc[va["id"], FT.LOGITS].to_numpy()
    assert np.allclose(again, oof, atol=1e-4)

    stack.run_stage(ctx)
    metrics = json.loads((ctx.run_dir / "metrics.json").read_text())
    assert metrics["finetune_member"] == member.name
    assert np.isfinite(metrics["oof_log_loss"])
    assert member.name in metrics["members"]
