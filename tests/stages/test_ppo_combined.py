"""PPO's combined reward: rule heads from the reward stage, a length penalty and programmatic reward functions in
the rollout's score, each component logged, and a bad function stopping the run before the first rollout."""

from __future__ import annotations

import json
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from torch.testing import assert_close

from lit_rlhf.backbone.config import LoraSettings
from lit_rlhf.checkpoint.stage_dir import load_stage_dir, save_stage_dir
from lit_rlhf.rewards import CombinedRewardConfig, RewardFunctionConfig, RewardFunctionError
from lit_rlhf.runs import RunLogger
from lit_rlhf.stages.ppo import PPOConfig

from .test_ppo import _data, _module, _stages, _trainer

RULES = ["has_x", "long"]


def _rule_stages(tiny_dir, tmp):
    """An SFT stage and a reward stage whose reward adapter also carries a `rules` head (has_x, long)."""
    sft, _ = _stages(tiny_dir, tmp)
    rm, _ = load_stage_dir(sft, backbone_overrides={"lora": LoraSettings(r=4, alpha=8, dropout=0.0).__dict__})
    rm.add_adapter("reward")
    rm.add_head("reward")
    rm.add_head("rules", outputs=RULES)
    torch.manual_seed(1)
    with torch.no_grad():
        for p in [*rm.adapter_parameters("reward"), *rm.heads["rules"].parameters()]:
            p.add_(0.3 * torch.randn_like(p))
    heads = {"reward": {"adapter": "reward", "bias": 0.0}, "rules": {"adapter": "reward"}}
    save_stage_dir(tmp / "rm_rules", rm, stage="reward", heads=heads)
    return sft, tmp / "rm_rules"


def _fn(target: str, **kw) -> RewardFunctionConfig:
    return RewardFunctionConfig(target=f"tests.test_rewards:{target}", **kw)


def test_combined_score_on_hand_computed_components(tiny_dir, tmp_path):
    """The rollout's sequence score is RM score + w_r log P(followed) + length penalty + w_f f, then the truncation
    penalty; each term and raw component is returned for logging."""
    sft, rm = _rule_stages(tiny_dir, tmp_path)
    reward = CombinedRewardConfig(
        rule_weights={"has_x": 2.0}, length_coef=0.5, length_target=3, functions=[_fn("has_x", weight=3.0)]
    )
    module = _module(sft, rm, reward=reward)
    module.ppo_cfg = PPOConfig(truncation_penalty=-7.0)
    module.configure_model()
    gen = SimpleNamespace(texts=["a x", "b", "c"], ended=torch.tensor([True, True, False]))
    raw = torch.tensor([1.0, -1.0, 0.5])
    logits = torch.tensor([[0.0, 9.0], [2.0, 9.0], [0.0, 9.0]])  # has_x, long (weight 0: not in rule_weights)
    rmask = torch.tensor([[1.0] * 5, [1.0] * 2 + [0.0] * 3, [1.0] * 5])  # lengths 5, 2, 5
    scores, stats = module._combined_score(["p", "q", "r"], gen, raw, logits, rmask)
    # 1: 1 + 2 * -ln 2 + -0.5 * (5 - 3) + 3 * 1 = 1.6137056; 2: -1 + 2 * -2.1269280 + 0 + 0 = -5.2538560
    # 3: not ended -> the truncation penalty -7
    assert_close(scores, torch.tensor([1.6137056, -5.2538560, -7.0]))
    assert_close(stats["reward/has_x"], torch.tensor(1.0))  # 3 * mean(1, 0, 0)
    assert_close(stats["reward_raw/has_x"], torch.tensor(1 / 3))
    assert_close(stats["reward/length"], torch.tensor(-2 / 3))  # mean(-1, 0, -1)
    assert_close(stats["rule/has_x"], torch.sigmoid(torch.tensor([0.0, 2.0, 0.0])).mean())
    assert {"reward/preference", "reward/rule_has_x", "rule/long"} <= set(stats)
    assert "reward/rule_long" not in stats  # a rule without a weight only reports its violation rate


def test_a_zero_preference_weight_pays_the_other_terms_alone(tiny_dir, tmp_path):
    """preference_weight 0 (e.g. a gold programmatic reward): the RM score is logged, the score is w_f f alone."""
    sft, rm = _stages(tiny_dir, tmp_path)
    reward = CombinedRewardConfig(preference_weight=0.0, functions=[_fn("has_x", weight=5.0)])
    module = _module(sft, rm, reward=reward)
    module.configure_model()
    gen = SimpleNamespace(texts=["a x", "b"], ended=torch.tensor([True, True]))
    scores, stats = module._combined_score(["p", "q"], gen, torch.tensor([3.0, -2.0]), None, torch.ones(2, 4))
    assert_close(scores, torch.tensor([5.0, 0.0]))
    assert_close(stats["reward/preference"], torch.tensor(0.0))
    assert_close(stats["reward/has_x"], torch.tensor(2.5))


def test_ppo_steps_log_every_component_and_rules_reach_the_rollout(tiny_dir, tmp_path):
    sft, rm = _rule_stages(tiny_dir, tmp_path)
    module = _module(sft, rm, reward=CombinedRewardConfig(functions=[_fn("has_x", weight=0.5)]))
    trainer = _trainer(2, logger=RunLogger(tmp_path / "runs/ppo/x"), log_every_n_steps=1)
    trainer.fit(module, _data(tmp_path))
    rows = [json.loads(x) for x in (tmp_path / "runs/ppo/x/metrics.jsonl").read_text().splitlines()]
    keys = set().union(*rows)
    expected = {
        "ppo/reward/preference",
        "ppo/reward/rule_has_x",  # no rule_weights: every rule head of the reward stage, weight 1
        "ppo/reward/rule_long",
        "ppo/reward/has_x",
        "ppo/reward_raw/has_x",
        "ppo/rule/has_x",
        "ppo/rule/long",
    }
    assert expected <= keys, expected - keys
    row = next(r for r in rows if "ppo/reward/has_x" in r)
    assert row["ppo/reward/has_x"] == pytest.approx(0.5 * row["ppo/reward_raw/has_x"])
    assert 0.0 < row["ppo/rule/long"] < 1.0


@pytest.mark.parametrize("target", ["raises", "not_a_number", "a_list"])
def test_a_bad_reward_function_stops_the_run_before_the_first_rollout(tiny_dir, tmp_path, target):
    sft, rm = _stages(tiny_dir, tmp_path)
    module = _module(sft, rm, reward=CombinedRewardConfig(functions=[_fn(target)]))
    calls = []
    module.rollout = lambda prompts: calls.append(prompts)  # never reached
    trainer = L.Trainer(max_steps=1, accelerator="cpu", logger=False, enable_checkpointing=False)
    with pytest.raises(RewardFunctionError, match=f"reward function '{target}'"):
        trainer.fit(module, _data(tmp_path))
    assert calls == []


def test_rule_weights_must_name_the_reward_stages_rule_heads(tiny_dir, tmp_path):
    sft, rm = _stages(tiny_dir, tmp_path)  # a reward stage without rule heads
    module = _module(sft, rm, reward=CombinedRewardConfig(rule_weights={"has_x": 1.0}))
    with pytest.raises(
        ValueError, match=r"rule_weights names \['has_x'\], which the reward stage has no rule"
    ):
        module.configure_model()
