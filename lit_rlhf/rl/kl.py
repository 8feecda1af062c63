"""Per-token estimators of KL(pi || ref) from tokens sampled from pi.

Only the estimators live here; how they are masked, scaled by beta or summed is the caller's business
(see ``rewards.shape_rewards``).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

KLKind = Literal["k1", "k2", "k3", "abs"]


def kl_penalty(logp: Tensor, ref_logp: Tensor, kind: KLKind = "k1") -> Tensor:
    """Single-sample estimate of ``KL(pi || ref)`` at each token, for tokens drawn from ``pi``.

    With ``log r = ref_logp - logp`` (Schulman, "Approximating KL Divergence", 2020,
    http://joschu.net/blog/kl-approx.html):

    - ``k1 = -log r = logp - ref_logp``: unbiased, high variance, can be negative per token.
    - ``k2 = 0.5 * (log r)^2``: biased but low variance, always >= 0.
    - ``k3 = (r - 1) - log r``: unbiased and always >= 0 (``log r <= r - 1``).
    - ``abs = |logp - ref_logp|``: a heuristic, not an estimator of the KL; kept for comparison runs.

    Args:
        logp: ``(B, T)`` log pi of the sampled tokens.
        ref_logp: ``(B, T)`` log ref of the same tokens.
        kind: which estimator.

    Returns:
        ``(B, T)``; no masking is applied.
    """
    log_ratio = ref_logp - logp  # (B, T) log r
    if kind == "k1":
        return -log_ratio
    if kind == "k2":
        return 0.5 * log_ratio.square()
    if kind == "k3":
        # expm1 keeps r - 1 accurate when r is close to 1, which is the usual case near the reference.
        return torch.expm1(log_ratio) - log_ratio
    if kind == "abs":
        return log_ratio.abs()
    raise ValueError(f"unknown KL estimator kind {kind!r}; expected one of 'k1', 'k2', 'k3', 'abs'")
