"""Numerical guards: non-finite updates are skipped and counted; too many in a row stop the run."""

from __future__ import annotations

import lightning as L
import pytest
import torch

from lit_rlhf.backbone.config import BackboneConfig
from lit_rlhf.data.sft import SFTDataModule
from lit_rlhf.stages.common import OptimConfig, SampleConfig
from lit_rlhf.stages.guards import NonFiniteUpdates, NumericalGuard, ppo_flags
from lit_rlhf.stages.sft import SFTModule


def test_guard_counts_and_stops_after_n_in_a_row():
    g = NumericalGuard("sft", max_consecutive=3)
    assert g.loss_ok(torch.tensor(1.0), 0)
    assert not g.loss_ok(torch.tensor(float("nan")), 1)
    assert not g.loss_ok(torch.tensor(float("inf")), 2)
    assert g.loss_ok(torch.tensor(0.5), 3)  # a finite one resets the run of failures
    assert (g.skipped, g.consecutive) == (2, 0)
    assert not g.loss_ok(torch.tensor(float("nan")), 4)
    assert not g.loss_ok(torch.tensor(float("nan")), 5)
    with pytest.raises(NonFiniteUpdates, match=r"sft: 3 non-finite updates in a row, the last at step 6"):
        g.loss_ok(torch.tensor(float("nan")), 6)


def test_non_finite_gradient_drops_all_grads():
    p, q = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
    p.grad, q.grad = torch.tensor([1.0, float("nan")]), torch.tensor([1.0, 1.0])
    g = NumericalGuard("ppo")
    assert not g.grads_ok([p, q], step=7)
    assert p.grad is None and q.grad is None and g.skipped == 1


def test_ppo_flags_by_hand():
    assert ppo_flags(kl=35.0, kl_target=3.0, length=5.0, first_length=5.0) == {
        "flag_kl_explode": 1.0,
        "flag_length_collapse": 0.0,
    }
    assert ppo_flags(kl=1.0, kl_target=None, length=1.4, first_length=5.0) == {
        "flag_kl_explode": 0.0,
        "flag_length_collapse": 1.0,
    }  # 1.4 < 0.3 * 5


class _NaNEvery(SFTModule):
    """An SFT module whose loss is NaN on chosen steps (a fault injected for the test)."""

    bad_steps: set[int] = set()

    def _train_losses(self, batch):
        loss, mean = super()._train_losses(batch)
        return (loss * float("nan"), mean) if self.global_step in self.bad_steps else (loss, mean)


def _fit(demo_data, bad_steps, steps, max_bad=10):
    torch.manual_seed(0)
    _NaNEvery.bad_steps = bad_steps
    module = _NaNEvery(
        backbone=BackboneConfig(
            model_config={"model_type": "gpt2", "n_layer": 1, "n_embd": 32, "n_head": 2, "n_positions": 64},
            tokenizer=str(demo_data / "tokenizer"),
        ),
        optim=OptimConfig(lr=1e-3, warmup_steps=0),
        samples=SampleConfig(every_n_steps=0),
        max_nonfinite_updates=max_bad,
    )
    data = SFTDataModule(str(demo_data / "sft_train.jsonl"), batch_size=8, max_length=64)
    trainer = L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_train_batches=steps + 5,
    )
    trainer.fit(module, data)
    return module, trainer


def test_sft_skips_nan_steps_and_keeps_weights_finite(demo_data):
    module, _ = _fit(demo_data, bad_steps={2, 3}, steps=6)
    assert module.guard.skipped == 2
    assert all(bool(torch.isfinite(p).all()) for p in module.net.parameters())


def test_sft_stops_after_too_many_nan_steps(demo_data):
    with pytest.raises(NonFiniteUpdates, match="non-finite updates in a row"):
        _fit(demo_data, bad_steps={0, 1, 2, 3, 4, 5, 6, 7}, steps=8, max_bad=3)


def test_no_gradients_is_not_a_good_update():
    g = NumericalGuard("sft", max_consecutive=2)
    assert not g.loss_ok(torch.tensor(float("nan")), 0)
    assert g.grads_ok([torch.nn.Parameter(torch.ones(1))], 0)  # no grad: nothing recorded
    assert g.consecutive == 1


def test_sharding_strategies_lit_rlhf_does_not_drive_are_refused_before_loading():
    from types import SimpleNamespace

    from lightning.pytorch.strategies import DDPStrategy, FSDPStrategy, ModelParallelStrategy

    from lit_rlhf.distributed import FSDP2Strategy
    from lit_rlhf.stages.common import check_strategy

    with pytest.raises(ValueError, match=r"sft: strategy FSDPStrategy \(FSDP1\) is not supported.*fsdp2"):
        check_strategy(FSDPStrategy(), "sft")
    with pytest.raises(ValueError, match="reward: DeepSpeed ZeRO stage 3.*fsdp2"):
        check_strategy(SimpleNamespace(zero_stage_3=True), "reward")
    check_strategy(DDPStrategy(), "sft")  # whole parameters on every rank: fine
    check_strategy(SimpleNamespace(zero_stage_3=False), "reward")  # DeepSpeed ZeRO-2
    check_strategy(FSDP2Strategy(), "ppo")  # the stage modules shard the backbone themselves
    check_strategy(
        ModelParallelStrategy(), "ppo"
    )  # (its tensor-parallel size is checked once the mesh exists)


def test_grads_ok_takes_the_joint_decision_of_all_ranks():
    """Under FSDP2 each rank sees only its shard of a gradient: one rank's inf must skip the update everywhere."""
    g = NumericalGuard("sft", max_consecutive=0)
    p = torch.nn.Parameter(torch.ones(2))
    p.grad = torch.ones(2)  # finite here, but another rank's shard was not
    assert not g.grads_ok([p], 3, all_ranks=lambda ok: False)
    assert p.grad is None and g.skipped == 1
    p.grad = torch.ones(2)
    assert g.grads_ok([p], 4, all_ranks=lambda ok: ok)
