"""Numerical guards shared by the stage modules.

A non-finite loss or gradient skips that update (gradients dropped, so AdamW leaves every parameter and its moments
untouched), is counted and logged; `max_consecutive` in a row stop the run with a message naming the step and the
likely cause. PPO also flags an exploding KL and a collapsing response length in its metrics.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn

log = logging.getLogger(__name__)


class NonFiniteUpdates(RuntimeError):
    """Raised when too many updates in a row were non-finite."""


def grads_finite(params: Iterable[nn.Parameter]) -> bool:
    """True when every existing gradient is finite (this rank's shard of it, for FSDP2-sharded parameters)."""
    local = [
        p.grad.to_local() if hasattr(p.grad, "to_local") else p.grad for p in params if p.grad is not None
    ]
    return all(bool(torch.isfinite(g).all()) for g in local)


def drop_grads(params: Iterable[nn.Parameter]) -> None:
    """Set gradients to None: optimizers skip such parameters entirely (no step, no moment update)."""
    for p in params:
        p.grad = None


class NumericalGuard:
    """Counts skipped updates and stops the run after `max_consecutive` in a row.

    Args:
        stage: stage name for messages and metric names.
        max_consecutive: stop after this many skipped updates in a row (0 = never stop).
    """

    def __init__(self, stage: str, max_consecutive: int = 10) -> None:
        self.stage, self.max_consecutive = stage, max_consecutive
        self.skipped = 0
        self.consecutive = 0

    def loss_ok(self, loss: Tensor, step: int, all_ranks: Callable[[bool], bool] | None = None) -> bool:
        """Record whether the loss is finite; False means: skip this update.

        Under data parallelism pass `all_ranks` (True only when every process says True, e.g. Lightning's
        ``strategy.reduce_boolean_decision``): a rank that skipped its backward alone would leave the others
        waiting in the gradient all-reduce forever.
        """
        return self.record_loss(self.finite(loss, all_ranks), step)

    @staticmethod
    def finite(loss: Tensor, all_ranks: Callable[[bool], bool] | None = None) -> bool:
        """Whether `loss` is finite (on every rank, given `all_ranks`); records nothing.

        An update made of several backward passes (PPO's micro-batches and pretraining part) checks each part
        before its backward and records the update's outcome once, with `record_loss`: a skip then counts as one
        skipped update, and a finite first part cannot reset the count of non-finite updates in a row.
        """
        ok = bool(torch.isfinite(loss).all())
        return all_ranks(ok) if all_ranks is not None else ok

    def record_loss(self, ok: bool, step: int) -> bool:
        """Record an update's loss check (see `finite`); False means: skip this update."""
        return self._record(ok, step, "loss")

    def grads_ok(
        self, params: list[nn.Parameter], step: int, all_ranks: Callable[[bool], bool] | None = None
    ) -> bool:
        """Check gradients; on a non-finite one, drop all of them (skip the update) and record it.

        With no gradient at all (the step's loss was already skipped) there is no update to judge: nothing is
        recorded, so a run of skipped losses still counts as consecutive. Under DDP every rank holds the same
        all-reduced gradients; under FSDP2 each holds a shard, so `all_ranks` makes the skip a joint decision.
        """
        if all(p.grad is None for p in params):
            return True
        ok = grads_finite(params)
        if all_ranks is not None:
            ok = all_ranks(ok)
        if not ok:
            drop_grads(params)
        return self._record(ok, step, "gradient")

    def _record(self, ok: bool, step: int, what: str) -> bool:
        if ok:
            self.consecutive = 0
            return True
        self.skipped += 1
        self.consecutive += 1
        log.warning(
            "%s: non-finite %s at step %d: update skipped (%d skipped so far)",
            self.stage,
            what,
            step,
            self.skipped,
        )
        if self.max_consecutive and self.consecutive >= self.max_consecutive:
            raise NonFiniteUpdates(
                f"{self.stage}: {self.consecutive} non-finite updates in a row, the last at step {step} "
                f"(non-finite {what}). Likely causes: a learning rate too high for this model, fp16 overflow "
                "(use bf16-mixed or 32-true), or a degenerate batch (e.g. all labels masked). Resume from the last "
                "checkpoint with a lower learning rate."
            )
        return False

    def state_dict(self) -> dict[str, int]:
        return {"skipped": self.skipped, "consecutive": self.consecutive}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.skipped, self.consecutive = int(state.get("skipped", 0)), int(state.get("consecutive", 0))


def ppo_flags(
    kl: float,
    kl_target: float | None,
    length: float,
    first_length: float | None,
    kl_factor: float = 10.0,
    length_ratio: float = 0.3,
) -> dict[str, float]:
    """1.0/0.0 flags: KL above `kl_factor` x target (or 20 nats without a target); mean response length under
    `length_ratio` x the first rollout's (or under 1 token)."""
    limit = kl_factor * kl_target if kl_target else 20.0
    collapsed = length < 1.0 or (first_length is not None and length < length_ratio * first_length)
    return {
        "flag_kl_explode": float(not math.isfinite(kl) or kl > limit),
        "flag_length_collapse": float(collapsed),
    }
