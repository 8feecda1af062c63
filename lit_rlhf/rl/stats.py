"""Diagnostics computed from rollout tensors. No losses here."""

from __future__ import annotations

import torch
from torch import Tensor

from lit_rlhf.rl.masked import masked_mean


def explained_variance(values: Tensor, returns: Tensor, mask: Tensor) -> Tensor:
    """``1 - Var[R - V] / Var[R]`` over valid tokens: how much of the returns the critic predicts.

    1 is perfect, 0 is no better than predicting the mean, negative is worse than that.

    Args:
        values: ``(B, T)`` critic values.
        returns: ``(B, T)`` value targets.
        mask: ``(B, T)`` 1 on valid tokens.

    Returns:
        Detached scalar ``()``; NaN when the returns have no variance (the ratio is undefined).
    """
    values, returns = values.detach(), returns.detach()

    def var(x: Tensor) -> Tensor:
        # Biased on both sides: the n / (n - 1) factors cancel in the ratio, and one token is allowed.
        return masked_mean((x - masked_mean(x, mask)).square(), mask)

    var_returns = var(returns)
    ratio = var(returns - values) / var_returns
    return torch.where(var_returns > 0, 1.0 - ratio, torch.full_like(ratio, float("nan")))
