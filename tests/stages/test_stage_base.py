"""The stage modules share one base (lit_rlhf.stages.base.StageModule): what the CLI and RunStatus read of them."""

from __future__ import annotations

from lit_rlhf.backbone.config import BackboneConfig
from lit_rlhf.stages.base import StageModule
from lit_rlhf.stages.common import OptimConfig
from lit_rlhf.stages.ppo import PPOModule, PPOOptimConfig
from lit_rlhf.stages.reward import RewardModule
from lit_rlhf.stages.sft import SFTModule


def test_every_stage_is_a_stage_module_with_its_name():
    assert [m.STAGE for m in (SFTModule, RewardModule, PPOModule)] == ["sft", "reward", "ppo"]
    assert all(issubclass(m, StageModule) for m in (SFTModule, RewardModule, PPOModule))
    assert issubclass(PPOOptimConfig, OptimConfig)


def _sft() -> SFTModule:
    model_config = {"model_type": "gpt2", "n_layer": 1, "n_embd": 16, "n_head": 2, "n_positions": 32}
    return SFTModule(backbone=BackboneConfig(model_config=model_config, tokenizer="unused"))


def test_guard_state_round_trips_through_the_checkpoint():
    module = _sft()
    assert module.parent_dir is None and module.stage_dir_written is None and module.status_fields == {}
    module.guard.skipped, module.guard.consecutive = 3, 2
    checkpoint: dict = {}
    module.on_save_checkpoint(checkpoint)
    # the key checkpoints always had
    assert checkpoint == {"lit_rlhf_guard": {"skipped": 3, "consecutive": 2}}
    fresh = _sft()
    fresh.on_load_checkpoint(checkpoint)
    assert (fresh.guard.skipped, fresh.guard.consecutive) == (3, 2)
    assert fresh.guard.stage == "sft"
