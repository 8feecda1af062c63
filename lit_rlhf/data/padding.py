"""Right-padding token rows into tensors: the one place that builds (ids, mask) from variable-length rows."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor


def pad_right(rows: Sequence[Sequence[int]], pad_id: int) -> tuple[Tensor, Tensor]:
    """Right-pad token rows.

    Args:
        rows: N rows of token ids, any lengths >= 1.
        pad_id: id written after each row's end.
    Returns:
        input_ids (N, T) long and attention_mask (N, T) long, T = the longest row.
    """
    if not rows:
        raise ValueError("pad_right needs at least one row")
    t = max(len(r) for r in rows)
    ids = torch.full((len(rows), t), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), t), dtype=torch.long)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = torch.as_tensor(list(r), dtype=torch.long)
        mask[i, : len(r)] = 1
    return ids, mask
