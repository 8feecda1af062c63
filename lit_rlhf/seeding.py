"""Per-batch seeding: the randomness of training batch k is a function of (seed, rank, k) alone.

Saving and restoring generator states is not enough for an exact resume: between the checkpoint and the next
batch, a resumed run does things the uninterrupted one did not (Lightning's sanity validation, new DataLoader
iterators) and those draw from the global generators. Reseeding python, numpy and torch (CPU and every CUDA
device) before each training batch makes dropout masks and rollout sampling of batch k identical in both runs,
and different on every rank and every batch.
"""

from __future__ import annotations

import hashlib
import logging
import os
import random
from typing import Any

import lightning as L
import torch

log = logging.getLogger(__name__)


def batch_seed(seed: int, rank: int, batch: int) -> int:
    """A 63-bit seed for training batch `batch` (0-based, over epochs) of process `rank` in a run seeded `seed`."""
    digest = hashlib.blake2b(f"lit-rlhf:{seed}:{rank}:{batch}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") >> 1


def seed_all(seed: int) -> None:
    """Seed python's `random`, numpy (when installed) and torch on CPU and all CUDA devices."""
    random.seed(seed)
    try:
        import numpy as np
    except ImportError:  # numpy is optional for the library itself
        pass
    else:
        np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


class BatchSeeds(L.Callback):
    """Reseeds every generator before each training batch from (run seed, rank, global batch index).

    Args:
        seed: the run's seed; None takes the one ``seed_everything`` set (``PL_GLOBAL_SEED``), else 0.
            A checkpoint's seed wins over this one on resume, so the resumed batches match the original run.
    """

    def __init__(self, seed: int | None = None) -> None:
        self.seed = seed

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if self.seed is None:
            self.seed = int(os.environ.get("PL_GLOBAL_SEED", 0))

    def on_train_batch_start(
        self, trainer: L.Trainer, pl_module: L.LightningModule, batch: Any, batch_idx: int
    ):
        # total_batch_idx counts batches over epochs and is restored from checkpoints with the loop state
        seed_all(batch_seed(int(self.seed or 0), trainer.global_rank, trainer.fit_loop.total_batch_idx))

    def state_dict(self) -> dict[str, Any]:
        return {"seed": self.seed}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        saved = state_dict.get("seed")
        if saved is not None and self.seed is not None and int(saved) != int(self.seed):
            log.warning(
                "resuming with the checkpoint's seed %s (this run was started with %s)", saved, self.seed
            )
        if saved is not None:
            self.seed = int(saved)
