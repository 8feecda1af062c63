"""The shared backbone on tiny GPT-2 and Llama, in none / 8-bit / 4-bit."""

from __future__ import annotations

import pytest
import torch

from lit_rlhf.backbone.build import Backbone, detect_lora_targets, last_token_index
from lit_rlhf.backbone.config import BackboneConfig, LoraSettings
from lit_rlhf.backbone.generate import SamplingConfig, generate, response_mask_from_ids

ARCHS = ("gpt2", "llama")
QUANTS = ("none", "8bit", "4bit")
PROMPTS = ["a b c =", "d e ="]


def _build(tiny_dir, arch, quant, lora=True) -> Backbone:
    torch.manual_seed(0)  # LoRA's initialisation draws from the global RNG: keep it independent of test order
    cfg = BackboneConfig(
        name_or_path=str(tiny_dir / arch),
        quantization=quant,
        lora=LoraSettings(r=4, alpha=8, dropout=0.0) if lora else None,
    )
    bb = Backbone.build(cfg)
    if lora:
        bb.add_adapter("policy")
    return bb


def _batch(bb: Backbone):
    enc = bb.tokenizer(["a b c = c b a", "d e = e d"], return_tensors="pt", padding=True)
    return enc["input_ids"], enc["attention_mask"]


def _loss(bb, ids, mask):
    logits = bb(ids, mask)[:, :-1]
    target = ids[:, 1:].masked_fill(mask[:, 1:] == 0, -100)
    return torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), target.reshape(-1))


def _base_snapshot(bb):
    return {n: p.detach().clone() for n, p in bb.base_named_parameters()}


@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("quant", QUANTS)
def test_generate_then_train_moves_lora_and_keeps_base(tiny_dir, arch, quant):
    """Generate first (the 4-bit CPU trap), then train: LoRA grads non-zero, loss moves, base bit-identical."""
    bb = _build(tiny_dir, arch, quant)
    gen = generate(bb.model, bb.text_format, PROMPTS, SamplingConfig(max_new_tokens=4, do_sample=False))
    assert gen.response_ids.shape == (2, 4) and len(gen.texts) == 2
    base_before = _base_snapshot(bb)
    ids, mask = _batch(bb)
    params = [p for p in bb.parameters() if p.requires_grad]
    assert params and all("lora_" in n for n, p in bb.named_parameters() if p.requires_grad)
    opt = torch.optim.AdamW(params, lr=3e-2)
    losses = []
    for _ in range(4):
        loss = _loss(bb, ids, mask)
        loss.backward()
        grad = sum(float(p.grad.abs().sum()) for p in params if p.grad is not None)
        assert grad > 0, "LoRA received no gradient"
        opt.step()
        opt.zero_grad()
        losses.append(float(loss))
    assert losses[-1] < losses[0] - 1e-3, losses
    for n, p in bb.base_named_parameters():
        assert torch.equal(p.detach(), base_before[n]), f"base weight {n} changed"


@pytest.mark.parametrize("arch", ARCHS)
def test_full_finetune_trains_base(tiny_dir, arch):
    bb = _build(tiny_dir, arch, "none", lora=False)
    before = _base_snapshot(bb)
    ids, mask = _batch(bb)
    opt = torch.optim.AdamW(bb.parameters(), lr=1e-2)
    loss0 = _loss(bb, ids, mask)
    loss0.backward()
    opt.step()
    assert float(_loss(bb, ids, mask)) < float(loss0)
    assert any(not torch.equal(p.detach(), before[n]) for n, p in bb.base_named_parameters())


def test_lora_targets_per_architecture(tiny_dir):
    gpt2 = Backbone.build(BackboneConfig(name_or_path=str(tiny_dir / "gpt2")))
    llama = Backbone.build(BackboneConfig(name_or_path=str(tiny_dir / "llama")))
    assert detect_lora_targets(gpt2.model) == ["c_attn", "c_fc", "c_proj"]  # Conv1D layers
    assert detect_lora_targets(llama.model) == [
        "down_proj",
        "gate_proj",
        "k_proj",
        "o_proj",
        "q_proj",
        "up_proj",
        "v_proj",
    ]


def test_named_adapters_switch_and_keep_their_trainability(tiny_dir):
    bb = _build(tiny_dir, "gpt2", "none")
    bb.add_adapter("reference", trainable=False)
    ids, mask = _batch(bb)
    with torch.no_grad():
        for p in bb.adapter_parameters("policy"):
            p.add_(0.05)  # make the policy differ from the reference
    bb.eval()
    with bb.use_adapter("policy"):
        pol = bb(ids, mask)
    with bb.use_adapter("reference"):
        ref = bb(ids, mask)
    with bb.use_adapter(None):
        base = bb(ids, mask)
    # a fresh LoRA adapter has B = 0, so the reference adapter equals the bare base
    assert torch.equal(ref, base)
    assert not torch.allclose(pol, ref)
    assert all(p.requires_grad for p in bb.adapter_parameters("policy"))
    assert not any(p.requires_grad for p in bb.adapter_parameters("reference"))


def test_config_collects_every_problem():
    cfg = BackboneConfig(model_config={"n_layer": 2}, quantization="4bit", lora=LoraSettings(r=0))
    problems = cfg.problems()
    text = "\n".join(problems)
    assert "model_type" in text and "backbone.tokenizer" in text and "pretrained weights" in text
    assert "r and backbone.lora.alpha must be positive" in text
    with pytest.raises(ValueError, match="set exactly one"):
        BackboneConfig().validate()
    assert BackboneConfig(name_or_path="x").trust_remote_code is False


def test_last_token_index_left_and_right_padding():
    right = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]])
    left = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 1], [1, 1, 1, 1]])
    assert last_token_index(right).tolist() == [2, 3, 0]
    assert last_token_index(left).tolist() == [3, 3, 3]


@pytest.mark.parametrize("arch", ARCHS)
def test_response_logits_are_float32_under_bf16_autocast(tiny_dir, arch):
    """The log-softmax of response tokens is fed fp32 logits computed from the same hidden states, not the
    model's own bf16 logits (whose rounding is ~0.005 nats of log-ratio noise)."""
    from lit_rlhf.backbone.build import position_ids_from_mask

    bb = _build(tiny_dir, arch, "none").eval()
    ids, mask = _batch(bb)
    pos = position_ids_from_mask(mask)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        out = bb.response_logits(ids, mask, pos, start=2)  # predictions of tokens 2..L-1
        hidden = bb.hidden_states(ids, mask, pos)
        own = bb(ids, mask, pos)
    assert out.dtype == torch.float32 and own.dtype == torch.bfloat16
    weight = bb.hf_model.get_output_embeddings().weight
    torch.testing.assert_close(out, hidden[:, 1:-1].float() @ weight.float().T)
    assert (out - own[:, 1:-1].float()).abs().max() > 0  # the bf16 logits were rounded
    with torch.no_grad():  # without autocast: exactly the model's own logits, shifted to the response
        torch.testing.assert_close(bb.response_logits(ids, mask, pos, 2), bb(ids, mask, pos)[:, 1:-1])
        logp = bb.response_logprobs(ids, mask, 2)
    expected = torch.log_softmax(bb(ids, mask, pos)[:, 1:-1].float(), -1).gather(-1, ids[:, 2:, None])[..., 0]
    torch.testing.assert_close(logp, expected.detach())


@pytest.mark.parametrize("arch", ARCHS)
def test_target_logits_are_the_models_own_logits_at_the_marked_positions(tiny_dir, arch):
    """SFT's projection at the response positions only: the model's own logits there (bf16 under bf16 autocast,
    as its forward computes them), packed rows included, and a final-logit transform kept."""
    from lit_rlhf.backbone.build import position_ids_from_mask

    bb = _build(tiny_dir, arch, "none").eval()
    ids, mask = _batch(bb)
    pos = position_ids_from_mask(mask)
    keep = torch.zeros_like(mask, dtype=torch.bool)
    keep[0, 2:5] = True
    keep[1, 1] = True
    with torch.no_grad():
        torch.testing.assert_close(bb.target_logits(ids, mask, pos, keep), bb(ids, mask, pos)[keep])
        with torch.autocast("cpu", dtype=torch.bfloat16):
            at, own = bb.target_logits(ids, mask, pos, keep), bb(ids, mask, pos)
        assert at.dtype == own.dtype == torch.bfloat16
        torch.testing.assert_close(at, own[keep])
        # two examples packed in one row, position ids restarting: each sees only itself
        packed = torch.cat([ids[0][mask[0].bool()], ids[1][mask[1].bool()]])[None]
        restart = torch.cat([torch.arange(int(mask[0].sum())), torch.arange(int(mask[1].sum()))])[None]
        marks = torch.ones_like(packed, dtype=torch.bool)
        torch.testing.assert_close(
            bb.target_logits(packed, None, restart, marks), bb(packed, None, restart)[0]
        )
        plain = bb(ids, mask, pos)[keep]
        bb.hf_model.config.logit_scale = 0.5  # Cohere's final-logit transform: applied here too
        torch.testing.assert_close(bb.target_logits(ids, mask, pos, keep), 0.5 * plain)


def test_response_mask_stops_after_first_eos():
    ids = torch.tensor([[5, 6, 3, 7, 3], [5, 5, 5, 5, 5]])
    mask, ended = response_mask_from_ids(ids, 3)
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert ended.tolist() == [True, False]


def test_response_mask_stops_at_whichever_stop_token_comes_first():
    # a chat model ends its turn with end-of-turn (4), a base model with eos (3): either ends the response
    ids = torch.tensor([[5, 4, 3, 7], [5, 3, 4, 7], [5, 5, 5, 5]])
    mask, ended = response_mask_from_ids(ids, (4, 3))
    assert mask.tolist() == [[1, 1, 0, 0], [1, 1, 0, 0], [1, 1, 1, 1]]
    assert ended.tolist() == [True, True, False]


def test_scalar_head_reads_last_real_token(tiny_dir):
    bb = _build(tiny_dir, "llama", "none", lora=False)
    bb.add_head("reward")
    bb.eval()
    tok = bb.tokenizer
    right = tok(["a b c", "d"], return_tensors="pt", padding=True)
    tok.padding_side = "left"
    left = tok(["a b c", "d"], return_tensors="pt", padding=True)
    tok.padding_side = "right"
    alone = tok(["d"], return_tensors="pt")
    s_right = bb.score("reward", right["input_ids"], right["attention_mask"])
    s_left = bb.score("reward", left["input_ids"], left["attention_mask"])
    s_alone = bb.score("reward", alone["input_ids"], alone["attention_mask"])
    assert s_right.shape == (2,)
    torch.testing.assert_close(s_right[1], s_alone[0])
    torch.testing.assert_close(s_left, s_right, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("lora", [True, False])
def test_gradient_checkpointing_gives_the_same_gradients(tiny_dir, lora):
    grads = []
    for ckpt in (False, True):
        cfg = BackboneConfig(
            name_or_path=str(tiny_dir / "llama"),
            gradient_checkpointing=ckpt,
            lora=LoraSettings(r=4, alpha=8, dropout=0.0) if lora else None,
        )
        bb = Backbone.build(cfg)
        if lora:
            torch.manual_seed(0)  # peft draws LoRA A from the global RNG
            bb.add_adapter("policy")
            with torch.no_grad():
                for p in bb.adapter_parameters("policy"):
                    p.add_(0.1 * torch.randn_like(p))
        bb.train()
        assert bb.hf_model.is_gradient_checkpointing is ckpt
        ids, mask = _batch(bb)
        _loss(bb, ids, mask).backward()
        grads.append({n: p.grad.clone() for n, p in bb.named_parameters() if p.grad is not None})
    assert grads[0].keys() == grads[1].keys() and grads[0]
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], rtol=1e-4, atol=1e-6)


def test_gradient_checkpointing_gives_the_same_adapter_and_head_gradients(tiny_dir):
    """SFT and the reward model train one adapter (plus a head): checkpointing recomputes the same forward."""

    def grads(checkpointing: bool) -> dict[str, torch.Tensor]:
        torch.manual_seed(0)
        cfg = BackboneConfig(
            name_or_path=str(tiny_dir / "llama"),
            lora=LoraSettings(r=4, alpha=8, dropout=0.0),
            gradient_checkpointing=checkpointing,
        )
        bb = Backbone.build(cfg)
        bb.add_adapter("reward")
        bb.add_head("reward")
        bb.train()
        ids, mask = _batch(bb)
        (_loss(bb, ids, mask) + bb.score("reward", ids, mask).square().sum()).backward()
        return {n: p.grad.clone() for n, p in bb.named_parameters() if p.grad is not None}

    plain, checkpointed = grads(False), grads(True)
    assert plain.keys() == checkpointed.keys() and any("lora_" in n for n in plain)
    for name, g in plain.items():
        torch.testing.assert_close(checkpointed[name], g)


def test_seeded_generation_leaves_the_callers_random_state_alone(tiny_dir):
    """Evaluation inside a run samples with fixed seeds; the run's own random stream must not be reseeded."""
    bb = _build(tiny_dir, "gpt2", "none")
    sampling = SamplingConfig(max_new_tokens=4)
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    first = generate(bb.model, bb.text_format, PROMPTS, sampling, generator_seed=7)
    assert torch.equal(torch.rand(3), expected_next)
    again = generate(bb.model, bb.text_format, PROMPTS, sampling, generator_seed=7)
    assert torch.equal(first.response_ids, again.response_ids)  # the seed still decides the samples


def test_generation_ignores_the_models_own_generation_config(tiny_dir):
    """Only SamplingConfig shapes samples: a generation_config.json with a repetition penalty, banned n-gram
    repeats, a minimum length and top_k changes nothing, and is left as it was."""
    bb = _build(tiny_dir, "llama", "none", lora=False)
    greedy = SamplingConfig(max_new_tokens=6, do_sample=False)
    plain = generate(bb.model, bb.text_format, PROMPTS, greedy).response_ids
    config = bb.hf_model.generation_config
    config.update(repetition_penalty=5.0, no_repeat_ngram_size=1, min_new_tokens=6, top_k=1)
    assert torch.equal(generate(bb.model, bb.text_format, PROMPTS, greedy).response_ids, plain)
    assert bb.hf_model.generation_config is config and config.repetition_penalty == 5.0
    out = bb.hf_model.generate(
        **bb.tokenizer(PROMPTS[:1], return_tensors="pt"), max_new_tokens=6, do_sample=False
    )
    assert len(set(out[0, -6:].tolist())) == 6  # transformers itself does apply it (no token repeats) ...
    assert out[0, -6:].tolist() != plain[0].tolist()  # ... and it would have changed the samples
