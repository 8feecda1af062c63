"""Evaluation sampling under DDP without padding duplicates."""

from __future__ import annotations

from typing import Any

from torch.utils.data import DistributedSampler, Sampler


def eval_sampler(dataset: Any, trainer: Any) -> Sampler | None:
    """A sampler that splits `dataset` across ranks WITHOUT repeating items, or None on one process.

    Lightning's default DistributedSampler pads the evaluation set with copies of its first items so every rank
    gets the same count; metrics reduced across ranks then count those copies (a 2-process RM accuracy differed
    from the 1-process one on the same data). Ranks may get unequal counts instead; our metrics are weighted
    sums (torchmetrics), so the reduction stays exact.

    Under FSDP2 every forward pass is a collective (it gathers each layer's shards from all ranks), so ranks must
    run the same number of batches: there every rank evaluates every item. The metrics are ratios of sums, which
    W identical copies leave unchanged; the cost is validation compute that is not split across ranks.
    """
    if trainer is None or getattr(trainer, "world_size", 1) <= 1:
        return None
    from lit_rlhf.backbone.sharding import uses_fsdp2

    if uses_fsdp2(trainer.strategy):
        # a one-replica DistributedSampler is every item in order; a plain sampler would be swapped by Lightning for
        # its padding DistributedSamplerWrapper (equal counts again, but with duplicates in the metrics)
        return DistributedSampler(dataset, num_replicas=1, rank=0, shuffle=False)
    from lightning.pytorch.overrides.distributed import UnrepeatedDistributedSampler

    return UnrepeatedDistributedSampler(
        dataset, num_replicas=trainer.world_size, rank=trainer.global_rank, shuffle=False
    )
