"""The stages of a later round of iterated RLHF: the reward model trains further from the last round's reward stage,
and PPO continues the last round's policy against the new reward model, its KL still measured to the SFT model."""

from __future__ import annotations

import lightning as L
import torch

from lit_rlhf.backbone.build import RULES
from lit_rlhf.checkpoint.manifest import read_manifest
from lit_rlhf.checkpoint.stage_dir import _load_tensors, load_stage_dir, save_stage_dir
from lit_rlhf.stages.common import OptimConfig
from lit_rlhf.stages.reward import RewardModule

from .test_ppo import _data, _module, _stages, _trainer
from .test_reward_rules import _dm, _files


def _ppo_stage(tiny_dir, tmp):
    """Round 1: SFT, a reward stage, and a PPO stage (policy and critic adapters, value head) trained 2 steps."""
    sft, rm = _stages(tiny_dir, tmp)
    module = _module(sft, rm)
    L.seed_everything(0)
    _trainer(2).fit(module, _data(tmp))
    net = module.roles.shared
    heads = {"value": {"adapter": "critic", "bias": 0.0}}
    save_stage_dir(
        tmp / "ppo1", net, stage="ppo", adapters=["policy", "critic"], heads=heads, parent=str(sft)
    )
    return sft, rm, tmp / "ppo1"


def test_a_later_round_continues_the_policy_with_the_kl_to_the_sft_model(tiny_dir, tmp_path):
    sft, rm, ppo1 = _ppo_stage(tiny_dir, tmp_path)
    rm2, _ = load_stage_dir(rm)  # "the retrained reward model": the same, moved a little
    with torch.no_grad():
        for p in rm2.adapter_parameters("reward"):
            p.add_(0.05)
    save_stage_dir(
        tmp_path / "rm2", rm2, stage="reward", heads={"reward": {"adapter": "reward", "bias": 0.1}}
    )
    module = _module(ppo1, tmp_path / "rm2", reference_from=str(sft))
    module.configure_model()
    net = module.roles.shared
    saved = _load_tensors(ppo1 / "adapters/policy.safetensors")
    assert all(torch.equal(net.adapter_state("policy")[k], v) for k, v in saved.items())  # continued
    new_rm = _load_tensors(tmp_path / "rm2/adapters/reward.safetensors")
    assert all(
        torch.equal(net.adapter_state("critic")[k], v) for k, v in new_rm.items()
    )  # critic from the new RM
    assert module.roles.reference_adapter is None  # SFT trained the base: the reference is adapters off
    ro, _, stats = module.rollout(["a b =", "c d e ="])
    assert float(stats["kl"]) != 0.0  # measured to SFT, not to where this round started
    sft_net, _ = load_stage_dir(sft)
    sft_net.eval()
    p = ro.input_ids.shape[1] - ro.response_mask.shape[1]
    ref = sft_net.response_logprobs(ro.input_ids, ro.attention_mask, p) * ro.response_mask
    torch.testing.assert_close(ro.ref_logprobs * ro.response_mask, ref)
    # without reference_from the reference would be the round-1 policy itself: KL 0 at the start
    same = _module(ppo1, tmp_path / "rm2")
    same.configure_model()
    assert float(same.rollout(["a b =", "c d e ="])[2]["kl"]) == 0.0


def test_the_reward_model_trains_further_from_the_last_rounds_reward_stage(tiny_dir, tmp_path):
    """init_from a reward stage keeps its reward adapter, reward head and rule head (names included) as the
    starting point, on old + new comparisons."""
    from lit_rlhf.backbone.build import Backbone
    from lit_rlhf.backbone.config import BackboneConfig, LoraSettings

    sft = tmp_path / "sft"
    save_stage_dir(sft, Backbone.build(BackboneConfig(name_or_path=str(tiny_dir / "gpt2"))), stage="sft")
    paths = _files(tmp_path)
    first = RewardModule(init_from=str(sft), lora=LoraSettings(r=4, alpha=8, dropout=0.0), max_length=32)
    trainer = L.Trainer(max_steps=3, accelerator="cpu", logger=False, enable_checkpointing=False)
    trainer.fit(first, _dm(paths))
    heads = {"reward": {"adapter": "reward", "bias": 0.2}, RULES: {"adapter": "reward"}}
    save_stage_dir(tmp_path / "rm1", first.net, stage="reward", adapters=["reward"], heads=heads)

    seen = {}

    class AtStart(L.Callback):
        def on_train_start(self, trainer, module):
            seen["adapter"] = {k: v.clone() for k, v in module.net.adapter_state("reward").items()}
            seen["heads"] = {k: h.proj.weight.detach().clone() for k, h in module.net.heads.items()}

    again = RewardModule(
        init_from=str(tmp_path / "rm1"), optim=OptimConfig(lr=1e-3, warmup_steps=1), max_length=32
    )
    trainer = L.Trainer(
        max_steps=2, accelerator="cpu", logger=False, enable_checkpointing=False, callbacks=[AtStart()]
    )
    trainer.fit(again, _dm(paths))
    assert all(torch.equal(seen["adapter"][k], v) for k, v in first.net.adapter_state("reward").items())
    assert torch.equal(seen["heads"]["reward"], first.net.heads["reward"].proj.weight)
    assert torch.equal(seen["heads"][RULES], first.net.heads[RULES].proj.weight)
    assert again.net.heads[RULES].outputs == again.rule_names == ["has_x", "short"]
    moved = again.net.adapter_state("reward")
    assert any(not torch.equal(moved[k], v) for k, v in seen["adapter"].items())  # and it trains on
    assert read_manifest(tmp_path / "rm1").stage == "reward"
