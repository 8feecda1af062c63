"""A real pretrained chat model through every stage: SmolLM2-135M-Instruct (bundled GGUF, BPE tokenizer, chat
template, ``<|im_end|>`` end of turn). Run alone with ``pytest -m real_model`` (or ``-k smollm``).

What the demo's word-level model hides is tested here: GGUF loading, chat-template prompts identical in every path,
rollouts sampled from exactly the distribution PPO scores (despite a hostile generation config), the reward model's
one token format, float32 log-probs under bf16, stage-directory and export round trips.
"""

from __future__ import annotations

from pathlib import Path

import lightning as L
import pytest
import torch

from lit_rlhf.backbone.build import REWARD, Backbone, position_ids_from_mask
from lit_rlhf.backbone.config import BackboneConfig, LoraSettings
from lit_rlhf.backbone.generate import SamplingConfig, encode_prompts, generate
from lit_rlhf.checkpoint.stage_dir import export_stage_dir, load_stage_dir, save_stage_dir
from lit_rlhf.data.comparisons import collate_comparisons, encode_comparison, reward_inputs
from lit_rlhf.data.formatting import TextFormat
from lit_rlhf.data.io import write_jsonl
from lit_rlhf.data.rows import Comparison
from lit_rlhf.data.sft import IGNORE_INDEX, SFTDataModule

pytestmark = pytest.mark.real_model

BUNDLED = "bundled:smollm2-135m-instruct"
LORA = LoraSettings(r=8, alpha=16, dropout=0.0)
CHAT = [  # demo-world tasks as chat rows
    {"messages": [{"role": "user", "content": p}, {"role": "assistant", "content": a}]}
    for p, a in [
        ("reverse c a b =", "b a c"),
        ("sort f d h =", "d f h"),
        ("count a b c d =", "4"),
        ("copy g h =", "g h"),
        ("add 3 4 =", "7"),
        ("reverse d e =", "e d"),
        ("sort c b a =", "a b c"),
        ("copy a =", "a"),
    ]
]


def _perturb(net: Backbone, adapter: str, scale: float, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in net.adapter_parameters(adapter):
            p.add_(scale * torch.randn(p.shape, generator=g))


@pytest.fixture(scope="module")
def stages(smollm_folder, tmp_path_factory) -> dict[str, Path]:
    """An SFT stage (a moved LoRA policy on the bundled base) and a reward stage (LoRA reward adapter + head)."""
    tmp = tmp_path_factory.mktemp("smollm")
    sft = Backbone.build(BackboneConfig(name_or_path=BUNDLED, lora=LORA))
    sft.add_adapter("policy")
    _perturb(sft, "policy", 0.02, 0)
    save_stage_dir(tmp / "sft", sft, stage="sft")
    rm, _ = load_stage_dir(tmp / "sft")
    rm.add_adapter(REWARD, state=rm.adapter_state("policy"))
    _perturb(rm, REWARD, 0.02, 1)
    torch.manual_seed(0)
    rm.add_head(REWARD)
    save_stage_dir(tmp / "rm", rm, stage="reward", adapters=[REWARD], heads={REWARD: {"adapter": REWARD}})
    return {"sft": tmp / "sft", "rm": tmp / "rm", "tmp": tmp}


def test_smollm_gguf_backbone_equals_transformers_own_gguf_reader(smollm_folder):
    from transformers import AutoModelForCausalLM

    from lit_rlhf.backbone.gguf import bundled_gguf, gguf_path, resolve_gguf

    path = bundled_gguf()
    # the three ways of naming the file resolve to one cached, converted folder
    assert gguf_path(BUNDLED) == path == gguf_path(str(path.parent), path.name) == gguf_path(str(path))
    assert resolve_gguf(str(path)) == resolve_gguf(BUNDLED) == smollm_folder
    net = Backbone.build(BackboneConfig(name_or_path=BUNDLED)).eval()
    assert type(net.hf_model).__name__ == "LlamaForCausalLM" and net.hf_model.config.num_hidden_layers == 30
    assert not net.is_quantized  # a plain model: save_pretrained, export and bitsandbytes all work on it
    reference = AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=path.name).eval()
    ids = net.tokenizer(["The capital of France is"], return_tensors="pt")
    with torch.no_grad():
        torch.testing.assert_close(net(ids["input_ids"], ids["attention_mask"]), reference(**ids).logits)


def test_smollm_chat_template_and_end_of_turn(smollm_folder):
    net = Backbone.build(BackboneConfig(name_or_path=BUNDLED))
    fmt = net.text_format
    assert fmt.uses_chat and net.tokenizer.convert_ids_to_tokens(fmt.end_of_turn_id) == "<|im_end|>"
    text = fmt.render_prompt("sort f d h =")
    assert text.startswith("<|im_start|>system\n") and text.endswith(
        "<|im_start|>user\nsort f d h =<|im_end|>\n<|im_start|>assistant\n"
    )
    # a raw prompt and the same prompt as one user message are the same tokens
    assert fmt.prompt_ids("sort f d h =") == fmt.prompt_ids((("user", "sort f d h ="),))
    prompt, response = fmt.sequence("sort f d h =", "d f h")
    assert response[-1] == fmt.end_of_turn_id and fmt.decode_response(response) == "d f h"


def test_smollm_prompt_ids_identical_in_every_path(stages, tmp_path):
    """SFT examples, RM examples, reward inputs, and generation (PPO rollouts, collection, evaluate, the
    dashboard all generate through `generate`) see one prompt as the same token ids."""
    from dashboard.modeling import LoadedModel, generate_ids
    from lit_rlhf.evaluation.command import sample

    net, _ = load_stage_dir(stages["sft"])
    fmt = net.text_format
    for prompt in ("sort f d h =", (("user", "sort f d h ="),)):
        want = fmt.prompt_ids(prompt)
        row = {"prompt": prompt, "response": "d f h"} if isinstance(prompt, str) else {}
        if not row:
            row = {
                "messages": [
                    {"role": "user", "content": prompt[0][1]},
                    {"role": "assistant", "content": "d f h"},
                ]
            }
        write_jsonl(tmp_path / "sft.jsonl", [row])
        dm = SFTDataModule(str(tmp_path / "sft.jsonl"), tokenizer=fmt, max_length=128)
        dm.setup("fit")
        example = dm._data["train"][0]
        masked = example.labels.count(IGNORE_INDEX)
        assert example.input_ids[:masked] == want  # SFT
        enc, _ = encode_comparison(Comparison(prompt, ("d f h", "f d h"), (0, 1)), fmt, 128, "error")
        assert all(ids[: len(want)] == want for ids in enc.input_ids)  # reward-model training
        ids, _ = reward_inputs(fmt, [prompt], ["d f h"])
        assert ids[0, : len(want)].tolist() == want  # reward-model scoring (PPO, evaluate, dashboard)
        pids, pmask = encode_prompts(fmt, [prompt, "a much longer prompt that forces left padding here"])
        assert pids[0][pmask[0].bool()].tolist() == want  # generation (rollouts, collection)
        gens = sample(net.eval(), [prompt], SamplingConfig(max_new_tokens=2, do_sample=False), 1, 0)
        assert gens[0].prompt_ids[0].tolist() == want  # evaluate
        full, p, _ = generate_ids(
            LoadedModel("x", "x", "sft", net, "policy"), prompt, SamplingConfig(2, False), 0
        )
        assert full[0, :p].tolist() == want  # the dashboard's Compare page


def test_smollm_rm_score_identical_through_training_and_ppo_paths(stages):
    """Including a response cut at max_new_tokens (no end-of-turn): both paths score prompt + text + <|im_end|>."""
    from lit_rlhf.stages.ppo import EvalConfig, PPOModule

    module = PPOModule(
        str(stages["sft"]), str(stages["rm"]), sampling=SamplingConfig(3), eval=EvalConfig(samples_per_step=0)
    )
    module.configure_model()
    prompts = ["sort f d h =", "reverse c a b ="]
    ro, gen, stats = module.rollout(prompts)
    assert not bool(gen.ended.all())  # 3 new tokens: at least one response was cut short
    ppo_scores = stats["rm_score"]  # (mean) of the PPO path's raw scores
    rm, manifest = load_stage_dir(stages["rm"])
    fmt = rm.text_format
    for prompt, text, score in zip(
        prompts, gen.texts, module.roles.reward_of(prompts, gen.texts), strict=True
    ):
        enc, _ = encode_comparison(Comparison(prompt, (text, "x"), (0, 1)), fmt, 256, "error")
        batch = collate_comparisons([enc], fmt.pad_id)  # the reward stage's training batch
        rm.eval()
        with torch.no_grad(), rm.use_adapter(REWARD):
            trained = rm.score(REWARD, batch["input_ids"], batch["attention_mask"])[0]
        torch.testing.assert_close(score, trained, rtol=0, atol=1e-5)
    torch.testing.assert_close(ppo_scores, module.roles.reward_of(prompts, gen.texts).mean())


def test_smollm_shared_prefix_scores_equal_separate_rows(stages):
    """The chat-template prompt once per row (BPE, ``<|im_end|>`` closing each response): the reward stage's
    ``shared_prefix`` scores equal one sequence per response, with fewer tokens through the model."""
    from lit_rlhf.data.shared_prefix import pack_shared_prefix

    rm, _ = load_stage_dir(stages["rm"])
    fmt = rm.text_format
    items = [
        Comparison("sort f d h =", ("d f h", "f d h", "d h f"), (0, 2, 1)),
        Comparison("reverse c a b =", ("b a c", "b a"), (0, 1)),
    ]
    encoded = [encode_comparison(c, fmt, 256, "error")[0] for c in items]
    batch = collate_comparisons(encoded, fmt.pad_id)
    rm.eval()
    with torch.no_grad(), rm.use_adapter(REWARD):
        separate = rm.score(REWARD, batch["input_ids"], batch["attention_mask"])
        rows = pack_shared_prefix(batch["input_ids"], batch["attention_mask"], batch["group"], fmt.pad_id)
        packed = rm.score_shared_prefix((REWARD,), rows)[REWARD]
    assert rows.input_ids.shape[0] == 2 and int((rows.segments >= 0).sum()) < int(
        batch["attention_mask"].sum()
    )
    torch.testing.assert_close(packed, separate, rtol=1e-4, atol=1e-4)


def test_smollm_ppo_logprobs_match_the_distribution_generate_sampled_from(stages, monkeypatch):
    """The model's own generation config (repetition penalty, no-repeat n-grams, temperature 0.7, top-k) must
    not shape rollouts: PPO's stored log-probs equal the log-softmax of the scores `generate` sampled from."""
    import lit_rlhf.stages.ppo as ppo_module

    module = ppo_module.PPOModule(
        str(stages["sft"]),
        str(stages["rm"]),
        optim=ppo_module.PPOOptimConfig(lr=1e-4),
        ppo=ppo_module.PPOConfig(ppo_epochs=1, minibatch_size=2),
        sampling=SamplingConfig(max_new_tokens=8),
        eval=ppo_module.EvalConfig(samples_per_step=0),
    )
    module.configure_model()
    hf = module.roles.shared.hf_model
    hf.generation_config.update(repetition_penalty=1.3, no_repeat_ngram_size=2, temperature=0.7, top_k=20)
    seen = {}

    def generate_with_scores(*args, **kwargs):
        seen["gen"] = generate(*args, **kwargs, return_scores=True)
        return seen["gen"]

    real_rollout = module.rollout

    def rollout(prompts):
        seen["rollout"] = real_rollout(prompts)
        return seen["rollout"]

    monkeypatch.setattr(ppo_module, "generate", generate_with_scores)
    monkeypatch.setattr(module, "rollout", rollout)
    data = stages["tmp"] / "ppo_prompts.jsonl"
    write_jsonl(data, [{"prompt": r["messages"][0]["content"]} for r in CHAT])
    from lit_rlhf.data.prompts import PPODataModule

    trainer = L.Trainer(
        max_steps=1,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(module, PPODataModule(str(data), batch_size=2))
    ro, gen = seen["rollout"][0], seen["gen"]
    mask = ro.response_mask.bool()
    sampled = torch.log_softmax(gen.scores, -1).gather(-1, gen.response_ids.unsqueeze(-1)).squeeze(-1)
    # fp32 noise floor: KV-cached decoding and one full forward differ by up to ~2.4e-5 nats on SmolLM2 (sdpa
    # and eager alike); the model's own processors (temperature 0.7 alone) would shift them by tenths of a nat.
    assert (ro.logprobs - sampled)[mask].abs().max() < 5e-5
    tempered = torch.log_softmax(gen.scores / 0.7, -1).gather(-1, gen.response_ids.unsqueeze(-1)).squeeze(-1)
    assert (ro.logprobs - tempered)[mask].abs().max() > 0.05  # what sampling with its config would have cost
    assert gen.response_mask.sum() > 4  # real tokens were compared
    assert hf.generation_config.repetition_penalty == 1.3  # the model's own config is left as it was


def test_smollm_sft_loss_falls_on_chat_rows(smollm_folder, tmp_path):
    from lit_rlhf.stages.common import OptimConfig, SampleConfig
    from lit_rlhf.stages.sft import SFTModule

    write_jsonl(tmp_path / "chat.jsonl", CHAT)
    module = SFTModule(
        backbone=BackboneConfig(name_or_path=BUNDLED, lora=LORA),
        optim=OptimConfig(lr=2e-3, warmup_steps=0),
        samples=SampleConfig(every_n_steps=0),
    )
    dm = SFTDataModule(str(tmp_path / "chat.jsonl"), batch_size=4, max_length=96)
    module.configure_model()
    dm.tokenizer = module.text_format
    dm.setup("fit")
    batch = {
        k: v
        for k, v in next(iter(dm.train_dataloader())).items()
        if k in ("input_ids", "attention_mask", "labels")
    }
    for labels in batch["labels"]:  # every response is trained to end its turn with <|im_end|>
        assert labels[labels != IGNORE_INDEX][-1] == module.text_format.end_of_turn_id
    module.net.eval()
    with torch.no_grad():
        before = float(module._loss(batch))
    trainer = L.Trainer(
        max_steps=6,
        accelerator="cpu",
        precision="bf16-mixed",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(module, dm)
    module.net.eval()
    with torch.no_grad():
        after = float(module._loss(batch))
    assert after < before - 0.3, (before, after)


def test_smollm_stage_dir_and_export_round_trips(stages, tmp_path):
    from transformers import AutoModelForCausalLM

    net, manifest = load_stage_dir(stages["sft"])
    assert manifest.base == {"kind": "pretrained", "name_or_path": BUNDLED, "revision": None}
    assert manifest.prompt_format == {"template": "auto", "system_prompt": None}
    net.eval()
    again, _ = load_stage_dir(stages["sft"])
    ids = net.tokenizer(["<|im_start|>user\nsort f d h =<|im_end|>\n"], return_tensors="pt")
    with torch.no_grad():
        assert torch.equal(net(ids["input_ids"]), again.eval()(ids["input_ids"]))
    greedy = SamplingConfig(max_new_tokens=12, do_sample=False)
    prompts = ["sort f d h =", "What is the capital of France? Answer in one word."]
    expected = generate(net.model, net.text_format, prompts, greedy).texts
    out = export_stage_dir(stages["sft"], tmp_path / "hf")
    plain = AutoModelForCausalLM.from_pretrained(str(out)).eval()
    assert "Peft" not in type(plain).__name__
    fmt = TextFormat(net.tokenizer)
    assert generate(plain, fmt, prompts, greedy).texts == expected
    assert "Paris" in expected[1]


@pytest.mark.parametrize("precision", ["32-true", "bf16-mixed"])
def test_smollm_lora_backbone_trains_in_fp32_and_bf16_mixed(smollm_folder, precision):
    """Backward through the 30-layer base reaches only the adapter, under either precision; log-probs stay fp32."""
    net = Backbone.build(BackboneConfig(name_or_path=BUNDLED, lora=LORA))
    net.add_adapter("policy")
    fmt = net.text_format
    prompt, response = fmt.sequence("copy g h =", "g h")
    ids = torch.tensor([prompt + response])
    mask = torch.ones_like(ids)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16-mixed"):
        logits = net.response_logits(ids, mask, position_ids_from_mask(mask), len(prompt))
        loss = -torch.log_softmax(logits, -1).gather(-1, ids[:, len(prompt) :, None]).mean()
    assert logits.dtype == torch.float32
    loss.backward()
    grads = {n: p.grad for n, p in net.named_parameters() if p.grad is not None}
    assert (
        grads and all("lora_" in n for n in grads) and any(float(g.abs().sum()) > 0 for g in grads.values())
    )


@pytest.mark.parametrize("quantization", ["4bit", "8bit"])
def test_smollm_quantized_lora_generates_then_trains(smollm_folder, quantization):
    """The GGUF base quantizes like any other (it loads from the converted folder): generate first (the 4-bit CPU
    repacking trap), then a backward pass reaches the adapter."""
    net = Backbone.build(BackboneConfig(name_or_path=BUNDLED, quantization=quantization, lora=LORA))
    net.add_adapter("policy")
    assert net.is_quantized
    gen = generate(
        net.model, net.text_format, ["copy g h ="], SamplingConfig(max_new_tokens=3, do_sample=False)
    )
    assert gen.response_ids.shape == (1, 3)
    prompt, response = net.text_format.sequence("copy g h =", "g h")
    ids = torch.tensor([prompt + response])
    net.train()
    (-net.response_logprobs(ids, torch.ones_like(ids), len(prompt)).mean()).backward()
    grads = [p.grad for n, p in net.named_parameters() if p.grad is not None]
    assert grads and all("lora_" in n for n, p in net.named_parameters() if p.grad is not None)
    assert sum(float(g.abs().sum()) for g in grads) > 0
