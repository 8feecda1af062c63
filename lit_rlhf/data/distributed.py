"""Evaluation sampling under DDP without padding duplicates."""

from __future__ import annotations

from typing import Any

from torch.utils.data import Sampler


def eval_sampler(dataset: Any, trainer: Any) -> Sampler | None:
    """A sampler that splits `dataset` across ranks WITHOUT repeating items, or None on one process.

    Lightning's default DistributedSampler pads the evaluation set with copies of its first items so every rank
    gets the same count; metrics reduced across ranks then count those copies (a 2-process RM accuracy differed
    from the 1-process one on the same data). Ranks may get unequal counts instead; our metrics are weighted
    sums (torchmetrics), so the reduction stays exact.
    """
    if trainer is None or getattr(trainer, "world_size", 1) <= 1:
        return None
    from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler

    return UnrepeatedDistributedSampler(
        dataset, num_replicas=trainer.world_size, rank=trainer.global_rank, shuffle=False
    )
