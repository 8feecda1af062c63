"""Shuffled minibatches over a rollout, and slicing a record of per-sample tensors with them."""

from __future__ import annotations

from typing import NamedTuple, TypeVar

import torch
from torch import Tensor

R = TypeVar("R", bound=NamedTuple)


def minibatch_indices(n: int, batch_size: int, generator: torch.Generator) -> list[Tensor]:
    """One epoch of shuffled minibatches: every index in ``range(n)`` appears exactly once.

    Args:
        n: number of samples.
        batch_size: samples per minibatch; the last one may be smaller.
        generator: source of the shuffle, so a seeded run is reproducible.

    Returns:
        ``ceil(n / batch_size)`` long tensors of shape ``(<= batch_size,)``.
    """
    if n < 0 or batch_size <= 0:
        raise ValueError(f"need n >= 0 and batch_size > 0, got n={n}, batch_size={batch_size}")
    if n == 0:
        return []  # split() would hand back one empty batch, and an empty loss is a NaN or a wasted step
    order = torch.randperm(n, generator=generator, device=generator.device)
    return list(order.split(batch_size))


def index_record(record: R, idx: Tensor) -> R:
    """The same record with every tensor field indexed along its first dimension by ``idx``.

    Non-tensor fields (``None``, numbers, strings) are kept as they are.

    Args:
        record: a NamedTuple whose tensor fields are ``(N, ...)``.
        idx: ``(M,)`` long indices (or a bool mask of ``(N,)``).

    Returns:
        A record of the same type whose tensor fields are ``(M, ...)``.
    """
    return type(record)(*(f[idx] if isinstance(f, Tensor) else f for f in record))


def micro_batches(n: int, size: int) -> list[slice]:
    """Consecutive slices of ``range(n)`` of at most ``size`` rows (``size <= 0``: one slice, the whole range).

    Returns:
        ``ceil(n / size)`` slices covering ``range(n)`` in order (one empty slice when ``n == 0``).
    """
    if n < 0:
        raise ValueError(f"need n >= 0, got n={n}")
    if size <= 0 or size >= n:
        return [slice(0, n)]
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def token_shares(mask: Tensor, parts: list[slice]) -> Tensor:
    """Each part's share of the valid tokens of ``mask``: a masked mean over the whole batch equals the sum over
    parts of ``share * (the part's own masked mean)``, so micro-batched gradients equal the whole batch's.

    Args:
        mask: ``(N, T)`` 1 on valid tokens.
        parts: row slices of ``mask`` (``micro_batches``).

    Returns:
        ``(len(parts),)`` shares summing to 1 (all zeros when ``mask`` has no valid token).
    """
    counts = torch.stack([mask[part].sum() for part in parts]).to(torch.float32)
    return counts / counts.sum().clamp_min(1.0)
