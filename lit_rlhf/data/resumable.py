"""Training batches as a pure function of a global position, so a resumed run continues mid-epoch.

A torch ``DataLoader`` with ``shuffle=True`` restarts its epoch after a resume: the batches between the start of
the epoch and the checkpoint are seen twice and the rest of the epoch in a different order. Here the k-th training
batch (counted over all epochs) is ``BatchPlan.indices(k)``: epoch ``k // batches_per_epoch`` is a permutation
seeded by ``(seed, epoch)``, and every rank takes its own slice of each global step. The data module counts the
batches the training loop has actually consumed (not the ones the loader prefetched), saves that count in the
checkpoint (``state_dict``) and the next iterator starts there.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

# Lightning warns that an IterableDataset's __len__ "could be inaccurate" with several workers unless each worker
# is configured independently: PositionedBatches shards positions by worker id, so its length is exact.
warnings.filterwarnings("ignore", message=r"Your `IterableDataset` has `__len__` defined")

# The batch's global position; the data module pops it before the batch reaches a training step.
POSITION_KEY = "_position"


@dataclass(frozen=True)
class BatchPlan:
    """Which rows make up each training batch of one rank.

    Attributes:
        n: rows in the dataset.
        batch_size: rows per batch on one rank.
        seed: seeds each epoch's permutation (together with the epoch number).
        shuffle: permute each epoch (False: file order every epoch).
        drop_last: drop the last incomplete global step of an epoch. Without it, the last step is cut short on one
            process and, on several, filled by wrapping to the start of the permutation (as torch's
            DistributedSampler pads), so every rank has a batch at every step.
        world_size: processes that split each global step. rank: this process.
    """

    n: int
    batch_size: int
    seed: int = 0
    shuffle: bool = True
    drop_last: bool = False
    world_size: int = 1
    rank: int = 0

    def __post_init__(self) -> None:
        if self.batch_size < 1 or self.world_size < 1 or not 0 <= self.rank < self.world_size:
            raise ValueError(f"BatchPlan: bad batch_size/world_size/rank in {self}")
        if len(self) == 0:
            raise ValueError(
                f"{self.n} rows make no batch of {self.batch_size} x {self.world_size} processes with drop_last"
            )

    def __len__(self) -> int:
        """Batches per epoch (global steps)."""
        per_step = self.batch_size * self.world_size
        return self.n // per_step if self.drop_last else math.ceil(self.n / per_step)

    def permutation(self, epoch: int) -> list[int]:
        """Row order of `epoch`: ``(n,)`` indices."""
        if not self.shuffle:
            return list(range(self.n))
        g = torch.Generator().manual_seed((self.seed * 1_000_003 + epoch) % 2**63)
        return torch.randperm(self.n, generator=g).tolist()

    def indices(self, position: int, permutation: Sequence[int] | None = None) -> list[int]:
        """Row indices of this rank's batch at global `position` (0-based, counted over epochs).

        Pass ``permutation(position // len(self))`` to reuse one computed per epoch.
        """
        epoch, step = divmod(position, len(self))
        perm = self.permutation(epoch) if permutation is None else permutation
        start = (step * self.world_size + self.rank) * self.batch_size
        slots = range(start, start + self.batch_size)
        if self.world_size == 1:
            return [perm[s] for s in slots if s < self.n]
        return [perm[s % self.n] for s in slots]


def window_total(plan: BatchPlan, counts: Sequence[int], position: int, accumulate: int) -> int:
    """Sum of ``counts[row]`` over every row of the optimizer step that batch `position` belongs to.

    With gradient accumulation an optimizer step takes `accumulate` consecutive batches of an epoch (Lightning
    counts windows from the epoch's first batch, and the epoch's last batch closes a short window), on every
    rank. Each rank can list every rank's rows (the plan is a pure function of the position), so all ranks agree
    on the total without a collective.
    """
    per_epoch = len(plan)
    epoch, step = divmod(position, per_epoch)
    first = (step // accumulate) * accumulate
    perm = plan.permutation(epoch)
    total = 0
    for s in range(first, min(first + accumulate, per_epoch)):
        for rank in range(plan.world_size):
            rows = dataclasses.replace(plan, rank=rank).indices(epoch * per_epoch + s, perm)
            total += sum(counts[i] for i in rows)
    return total


@dataclass(frozen=True)
class Source:
    """One stream of batches: rows, their plan and how a list of rows becomes a batch."""

    rows: Sequence[Any]
    plan: BatchPlan
    collate: Callable[[list[Any]], Any]


class PositionedBatches(IterableDataset):
    """Batches from one or more sources, starting at the position `start()` returns when iteration begins.

    Each item is a dict: with one source named ``""`` its collated batch (a dict) plus ``POSITION_KEY``; else
    ``{name: batch for each source, POSITION_KEY: k}``. The first source defines the epoch: iteration runs from
    the start position to the end of its epoch; the others cycle with their own epochs at the same position.
    With DataLoader workers, worker w yields positions start + w, start + w + W, ...; the DataLoader returns
    workers' items round-robin, so batches still come out in position order.
    """

    def __init__(
        self,
        sources: Mapping[str, Source],
        start: Callable[[], int],
        extra: Callable[[int], dict[str, Any]] | None = None,
    ) -> None:
        if not sources:
            raise ValueError("PositionedBatches needs at least one source")
        self.sources, self.start, self.extra = dict(sources), start, extra
        self._main = next(iter(self.sources.values())).plan

    def __len__(self) -> int:
        return len(self._main)

    def positions(self) -> range:
        """The global positions the next iteration yields: from start() to the end of its epoch."""
        begin = int(self.start())
        return range(begin, (begin // len(self._main) + 1) * len(self._main))

    def batch(self, position: int, _cache: dict | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for name, src in self.sources.items():
            epoch = position // len(src.plan)
            if _cache is not None and _cache.get(name, (None,))[0] != epoch:
                _cache[name] = (epoch, src.plan.permutation(epoch))
            perm = _cache[name][1] if _cache is not None else None
            rows = [src.rows[i] for i in src.plan.indices(position, perm)]
            out[name] = src.collate(rows)
        more = self.extra(position) if self.extra is not None else {}
        if list(out) == [""]:
            return {**out[""], **more, POSITION_KEY: position}
        return {**out, **more, POSITION_KEY: position}

    def __iter__(self) -> Iterator[dict[str, Any]]:
        positions = self.positions()
        info = get_worker_info()
        if info is not None:
            positions = positions[info.id :: info.num_workers]
        cache: dict[str, tuple[int, list[int]]] = {}
        for k in positions:
            yield self.batch(k, cache)


def positioned_loader(dataset: PositionedBatches, num_workers: int = 0) -> DataLoader:
    """A DataLoader over already-collated batches.

    Its own generator keeps the DataLoader's per-iterator seed draw off the global RNG, so creating an iterator
    (as a resumed run does mid-epoch) never shifts the random stream of the training steps.
    """
    return DataLoader(
        dataset, batch_size=None, num_workers=num_workers, generator=torch.Generator().manual_seed(0)
    )


class ResumablePosition:
    """Mixin for a LightningDataModule: counts consumed training batches and saves the count in checkpoints.

    The count comes from the ``POSITION_KEY`` of each training batch as the loop takes it (the prefetched batch
    is not counted), so a checkpoint written after batch k resumes at batch k + 1.
    """

    consumed: int = 0

    def world(self) -> tuple[int, int]:
        """(world_size, rank) of the attached trainer, (1, 0) without one."""
        trainer = getattr(self, "trainer", None)
        if trainer is None:
            return 1, 0
        return int(getattr(trainer, "world_size", 1)), int(getattr(trainer, "global_rank", 0))

    def resume_position(self) -> int:
        """Where the next training iterator starts: the batches consumed so far (restored on resume)."""
        return self.consumed

    def on_before_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        if isinstance(batch, dict) and POSITION_KEY in batch:
            self.consumed = int(batch.pop(POSITION_KEY)) + 1
        return batch

    def state_dict(self) -> dict[str, Any]:
        return {"consumed_batches": self.consumed}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.consumed = int(state_dict.get("consumed_batches", 0))
