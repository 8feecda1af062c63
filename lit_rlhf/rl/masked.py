"""Statistics over the valid positions of a masked tensor.

A mask is a bool or float tensor, broadcastable to ``x``, with 1 (or True) on valid positions and 0 elsewhere;
any non-zero entry counts as valid (masks are not weights). Invalid positions never enter a result, even when
they hold NaN or inf. Nothing here knows about rewards or policies.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor

AllReduce = Callable[[Tensor], Tensor]  # sums a tensor over all processes (data parallelism)


def _valid(x: Tensor, mask: Tensor) -> Tensor:
    """Boolean mask expanded to ``x``'s shape, so counts are right when ``mask`` broadcasts."""
    return mask.bool().expand_as(x)


def masked_sum(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Sum of ``x`` over valid positions.

    Args:
        x: any shape, e.g. ``(B, T)``.
        mask: broadcastable to ``x``.
        dim: dimension to reduce; ``None`` reduces everything to a scalar.

    Returns:
        ``x.sum(dim)``-shaped tensor, e.g. ``(B,)`` for ``dim=1`` or ``()`` for ``dim=None``.
    """
    # where() rather than x * mask: padding may hold NaN/inf (e.g. log 0), and NaN * 0 is NaN.
    picked = torch.where(_valid(x, mask), x, torch.zeros((), dtype=x.dtype, device=x.device))
    return picked.sum() if dim is None else picked.sum(dim)


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of ``x`` over valid positions; 0 where there are none.

    An empty selection gives 0 rather than NaN so that a loss over an all-padding batch stays finite and
    its gradient is zero instead of poisoning the optimiser.

    Args:
        x: any shape, e.g. ``(B, T)``.
        mask: broadcastable to ``x``.
        dim: dimension to reduce; ``None`` reduces everything to a scalar.

    Returns:
        ``x.mean(dim)``-shaped tensor.
    """
    valid = _valid(x, mask)
    count = valid.sum() if dim is None else valid.sum(dim)
    return masked_sum(x, valid, dim) / count.clamp(min=1)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance of all valid entries of ``x`` (one scalar over every dimension).

    Args:
        x: any shape, e.g. ``(B, T)``.
        mask: broadcastable to ``x``.
        unbiased: Bessel's correction, divide by ``n - 1`` instead of ``n``.

    Returns:
        Scalar tensor ``()``.

    Raises:
        ValueError: fewer than 2 valid entries (unbiased) or none (biased): the variance is undefined.
    """
    valid = _valid(x, mask)
    n = int(valid.sum())
    if n < (2 if unbiased else 1):
        raise ValueError(f"masked_var needs at least {2 if unbiased else 1} valid entries, got {n}")
    centred = x - masked_mean(x, valid)
    var = masked_sum(centred.square(), valid) / n
    return var * (n / (n - 1)) if unbiased else var


def global_moments(x: Tensor, mask: Tensor, all_reduce: AllReduce) -> tuple[Tensor, Tensor]:
    """Mean and unbiased variance of the valid entries of ``x`` on ALL processes together.

    Two passes, each one ``all_reduce`` (a sum over processes): sum and count, then the squared deviations
    from the global mean. With ``all_reduce`` the identity it equals ``masked_mean`` and ``masked_var``.

    Returns:
        ``(mean, var)``, scalar tensors ``()``, the same on every process.

    Raises:
        ValueError: fewer than 2 valid entries over all processes.
    """
    valid = _valid(x, mask)
    sums = all_reduce(torch.stack([masked_sum(x, valid), valid.sum().to(x.dtype)]))  # (2,)
    n = sums[1]
    if float(n) < 2:
        raise ValueError(f"global_moments needs at least 2 valid entries over all processes, got {int(n)}")
    mean = sums[0] / n
    var = all_reduce(masked_sum((x - mean).square(), valid)) / (n - 1)
    return mean, var


def whiten(
    x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8, all_reduce: AllReduce | None = None
) -> Tensor:
    """Standardise ``x`` with the mean and (unbiased) variance of its valid entries.

    Used on PPO advantages (mean 0, std 1 over the batch's valid tokens) and, with ``shift_mean=False``, on
    rewards, where only the scale should change.

    Args:
        x: any shape, e.g. ``(B, T)``.
        mask: broadcastable to ``x``; needs at least 2 valid entries.
        shift_mean: if False, add the mean back so only the scale changes.
        eps: added to the variance before the square root.
        all_reduce: under data parallelism, a sum over processes: the moments are then those of every
            process's valid entries together (``global_moments``), so all ranks whiten alike.

    Returns:
        Same shape as ``x``; invalid positions are 0.
    """
    valid = _valid(x, mask)
    if all_reduce is None:
        mean, var = masked_mean(x, valid), masked_var(x, valid)
    else:
        mean, var = global_moments(x, valid, all_reduce)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return torch.where(valid, out, torch.zeros((), dtype=out.dtype, device=out.device))
