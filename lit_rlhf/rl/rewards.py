"""Turning reward-model scores into per-token PPO rewards.

Here: placing the score on the last response token, the per-token KL penalty, score clipping, running
score normalisation, the penalty for responses cut off before EOS and the per-prompt (leave-one-out) baseline of
several samples of one prompt. Advantages and losses live elsewhere.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import NamedTuple

import torch
from torch import Tensor

from lit_rlhf.rl.kl import KLKind, kl_penalty


class RewardParts(NamedTuple):
    """Per-token rewards and their pieces; all 0 at invalid positions."""

    rewards: Tensor  # (B, T) non_score + score on the last valid token
    kl: Tensor  # (B, T) per-token KL(pi || ref) estimate
    non_score: Tensor  # (B, T) -beta * kl


def last_valid_index(mask: Tensor) -> Tensor:
    """Column of the last valid entry of each row, wherever the valid span sits.

    Args:
        mask: ``(B, T)`` bool or float.

    Returns:
        ``(B,)`` long; -1 for a row with no valid entry.
    """
    columns = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)  # (B, T)
    return torch.where(mask.bool(), columns, -1).max(dim=1).values


def shape_rewards(
    scores: Tensor,
    logp: Tensor,
    ref_logp: Tensor,
    mask: Tensor,
    beta: float,
    kl_kind: KLKind = "k1",
) -> RewardParts:
    """Per-token reward ``r_t = -beta * KL_t``, plus the sequence score on the last valid token.

    This is the RL objective of InstructGPT (Ouyang et al. 2022, eq. 2) without the ptx term, spread over
    tokens as in Ziegler et al. 2019: the reward model judges whole responses, so its score is paid once, at
    the end, and the KL penalty at every token keeps each step close to the reference policy.

    Args:
        scores: ``(B,)`` reward-model score per response (already clipped/normalised if wanted).
        logp: ``(B, T)`` log pi of the response tokens.
        ref_logp: ``(B, T)`` log ref of the same tokens.
        mask: ``(B, T)`` 1 on valid response tokens; may be right-padded.
        beta: KL coefficient.
        kl_kind: estimator, see ``kl.kl_penalty``.

    Returns:
        ``RewardParts`` of ``(B, T)`` tensors, 0 at invalid positions.

    Raises:
        ValueError: shapes disagree, or a row has no valid token, so there is nowhere to put its score.
    """
    if not (logp.shape == ref_logp.shape == mask.shape and scores.shape == mask.shape[:1]):
        raise ValueError(
            f"shape_rewards: scores {tuple(scores.shape)} must be (B,) and logp {tuple(logp.shape)}, "
            f"ref_logp {tuple(ref_logp.shape)}, mask {tuple(mask.shape)} all (B, T)"
        )
    valid = mask.bool()
    last = last_valid_index(mask)  # (B,)
    if bool((last < 0).any()):
        rows = torch.nonzero(last < 0).flatten().tolist()
        raise ValueError(f"shape_rewards: rows {rows} have an empty response mask; cannot place the score")
    zero = torch.zeros((), dtype=logp.dtype, device=logp.device)
    kl = torch.where(valid, kl_penalty(logp, ref_logp, kl_kind), zero)  # (B, T)
    non_score = -beta * kl
    columns = torch.arange(mask.shape[1], device=mask.device)
    at_last = columns[None, :] == last[:, None]  # (B, T) one True per row
    rewards = non_score + torch.where(at_last, scores[:, None].to(non_score.dtype), zero)
    return RewardParts(rewards=rewards, kl=kl, non_score=non_score)


def clip_scores(scores: Tensor, clip: float | None) -> Tensor:
    """Clamp scores to ``[-clip, clip]``; ``None`` returns them unchanged.

    Args:
        scores: ``(B,)``.
        clip: positive bound or ``None``.

    Returns:
        ``(B,)``.
    """
    if clip is None:
        return scores
    if clip <= 0:
        raise ValueError(f"clip must be positive or None, got {clip}")
    return scores.clamp(-clip, clip)


def truncation_penalty(scores: Tensor, ended_with_eos: Tensor, penalty: float | None) -> Tensor:
    """Replace the score of responses that hit the length limit without EOS by ``penalty``.

    A truncated response is unfinished, so the reward model's opinion of it is not trusted; a fixed low
    score teaches the policy to finish. ``None`` leaves all scores alone.

    Args:
        scores: ``(B,)``.
        ended_with_eos: ``(B,)`` bool, True where the response ended with EOS.
        penalty: the replacement score, or ``None``.

    Returns:
        ``(B,)``.
    """
    if scores.shape != ended_with_eos.shape:
        raise ValueError(
            f"scores {tuple(scores.shape)} and ended_with_eos {tuple(ended_with_eos.shape)} differ"
        )
    if penalty is None:
        return scores
    return torch.where(ended_with_eos.bool(), scores, torch.full_like(scores, penalty))


def leave_one_out_baseline(scores: Tensor, group_size: int) -> Tensor:
    """Each score minus the mean of the other samples of its prompt (RLOO: Kool et al. 2019, "Buy 4 REINFORCE
    Samples, Get a Baseline for Free!"; Ahmadian et al. 2024 for RLHF).

    A reward model trained on comparisons is only defined up to a per-prompt constant: the Bradley-Terry loss sees
    differences of two answers to one prompt, never a score's level. Part of a raw score is therefore the prompt,
    not the answer, and a critic has to learn it away before the advantages mean anything. Several samples of one
    prompt give that constant for free: the mean of the *other* samples does not depend on this sample, so
    subtracting it keeps the policy gradient unbiased, and what is left is what the reward model was trained to
    tell apart.

    Args:
        scores: ``(G * n,)`` one score per sample; rows ``g*n .. g*n + n - 1`` are the ``n`` samples of prompt ``g``.
        group_size: ``n >= 2`` samples per prompt.

    Returns:
        ``(G * n,)``: ``scores[i] - mean(scores[j] for j != i in i's group)``, i.e. ``n / (n - 1)`` times the
        score's distance from its group mean. Each group's values sum to 0.

    Raises:
        ValueError: ``group_size < 2`` or ``scores`` is not ``(B,)`` with ``B`` a multiple of it.
    """
    if group_size < 2:
        raise ValueError(f"leave_one_out_baseline: group_size must be >= 2, got {group_size}")
    if scores.dim() != 1 or scores.shape[0] % group_size:
        raise ValueError(
            f"leave_one_out_baseline: scores {tuple(scores.shape)} must be (B,) with B a multiple of the group "
            f"size {group_size}"
        )
    groups = scores.view(-1, group_size)  # (G, n)
    others = (groups.sum(1, keepdim=True) - groups) / (group_size - 1)  # (G, n) mean of the other n - 1
    return (groups - others).reshape(-1)


class RunningMoments:
    """Running mean and variance of every value ever passed to ``update``.

    Batches are merged with the parallel form of Welford's algorithm (Chan, Golub & LeVeque 1979), kept in
    Python floats (double precision) so long runs do not drift. Under data parallelism, gather the scores
    of all ranks before calling ``update`` so that every rank holds the same moments.
    """

    def __init__(self) -> None:
        self.mean = 0.0
        self.m2 = 0.0  # sum of squared deviations from the mean
        self.count = 0

    @property
    def std(self) -> float:
        """Unbiased standard deviation; 0 until there are two values."""
        return math.sqrt(self.m2 / (self.count - 1)) if self.count > 1 else 0.0

    def update(self, x: Tensor) -> tuple[float, float]:
        """Merge the values of ``x`` (any shape, at least one element).

        Returns:
            The running ``(mean, std)`` after the merge.
        """
        values = x.detach().flatten().to(torch.float64)
        n = values.numel()
        if n == 0:
            raise ValueError("RunningMoments.update got an empty tensor")
        batch_mean = float(values.mean())
        batch_m2 = float((values - batch_mean).square().sum())
        total = self.count + n
        delta = batch_mean - self.mean
        self.mean += delta * n / total
        self.m2 += batch_m2 + delta * delta * self.count * n / total
        self.count = total
        return self.mean, self.std

    def state_dict(self) -> dict[str, float | int]:
        return {"mean": self.mean, "m2": self.m2, "count": self.count}

    def load_state_dict(self, state: Mapping[str, float | int]) -> None:
        missing = {"mean", "m2", "count"} - set(state)
        if missing:
            raise ValueError(f"RunningMoments state is missing {sorted(missing)}")
        self.mean, self.m2, self.count = float(state["mean"]), float(state["m2"]), int(state["count"])


def normalize_scores(scores: Tensor, moments: RunningMoments, eps: float = 1e-8) -> Tensor:
    """``(scores - mean) / (std + eps)`` with the running moments (update them first).

    Args:
        scores: ``(B,)``.
        moments: statistics that have seen at least one value.
        eps: keeps the division finite while ``std`` is 0.

    Returns:
        ``(B,)``, same dtype as ``scores``.
    """
    if moments.count == 0:
        raise ValueError("normalize_scores: RunningMoments has seen no values; call update() first")
    return (scores - moments.mean) / (moments.std + eps)
