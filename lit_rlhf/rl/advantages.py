"""Generalised advantage estimation over token-level rewards. Whitening lives in ``masked.whiten``."""

from __future__ import annotations

import torch
from torch import Tensor


def gae(rewards: Tensor, values: Tensor, mask: Tensor, gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """GAE(gamma, lambda) advantages and value targets (Schulman et al. 2016, "High-Dimensional Continuous
    Control Using Generalized Advantage Estimation", sec. 3).

    ``delta_t = r_t + gamma * V_{t+1} - V_t`` and ``A_t = delta_t + gamma * lam * A_{t+1}``, i.e.
    ``A_t = sum_l (gamma * lam)^l delta_{t+l}``. Each row's episode ends at its last valid token: the value
    after it is bootstrapped as 0 (the response is complete and the reward model has paid its score) and
    nothing later leaks back. Valid tokens are assumed to form one contiguous span per row; a gap in the
    mask would end the episode there.

    Args:
        rewards: ``(B, T)`` per-token rewards (e.g. ``shape_rewards(...).rewards``).
        values: ``(B, T)`` critic values ``V(s_t)``.
        mask: ``(B, T)`` 1 on valid response tokens.
        gamma: discount.
        lam: GAE lambda; 0 gives the TD residual, 1 the Monte-Carlo return minus ``V``.

    Returns:
        ``(advantages, returns)``, each ``(B, T)`` with ``returns = advantages + values``; both 0 at invalid
        positions. Pass detached tensors: these are targets, not something to differentiate.
    """
    valid = mask.to(values.dtype)
    r = rewards * valid
    v = values * valid
    next_valid = torch.cat([valid[:, 1:], torch.zeros_like(valid[:, :1])], dim=1)  # (B, T)
    next_v = torch.cat([v[:, 1:], torch.zeros_like(v[:, :1])], dim=1)  # (B, T), 0 past the end
    deltas = r + gamma * next_v - v  # (B, T)
    advantages = torch.zeros_like(deltas)
    running = torch.zeros_like(deltas[:, 0])  # (B,) A_{t+1}
    for t in reversed(range(deltas.shape[1])):
        running = deltas[:, t] + gamma * lam * next_valid[:, t] * running
        advantages[:, t] = running
    advantages = advantages * valid
    return advantages, (advantages + v) * valid
