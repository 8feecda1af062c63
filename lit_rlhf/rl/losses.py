"""Training losses: the PPO clipped policy and value losses, InstructGPT's K-wise ranking loss for the reward
model, Sparrow's multi-label rule-violation loss, and the next-token loss used by SFT and the PPO-ptx term. Each returns the scalar to minimise plus
detached statistics; nothing here logs or steps an optimiser.
"""

from __future__ import annotations

from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from lit_rlhf.rl.logprobs import gather_logprobs
from lit_rlhf.rl.masked import masked_mean


class PolicyStats(NamedTuple):
    """Detached diagnostics of one PPO policy-loss evaluation (scalars)."""

    clip_frac: Tensor  # () fraction of valid tokens where the clipped term was the one used
    approx_kl: Tensor  # () masked mean of 0.5 * (logp - old_logp)^2, the k2 estimate of KL(pi_old || pi)


class RankingOutput(NamedTuple):
    """K-wise ranking loss and its statistics (scalars)."""

    loss: Tensor  # () mean over groups of each group's mean pair loss
    n_pairs: Tensor  # () long, number of ordered (better, worse) pairs in the batch
    accuracy: Tensor  # () fraction of pairs with s_better > s_worse; NaN when n_pairs == 0
    margin: Tensor  # () mean of s_better - s_worse over pairs; NaN when n_pairs == 0


def ppo_policy_loss(
    logp: Tensor, old_logp: Tensor, advantages: Tensor, mask: Tensor, clip_range: float
) -> tuple[Tensor, PolicyStats]:
    """PPO clipped surrogate (Schulman et al. 2017, eq. 7), negated to be minimised.

    ``loss = mean_t max(-A_t * ratio_t, -A_t * clip(ratio_t, 1 - eps, 1 + eps))`` over valid tokens, with
    ``ratio_t = exp(logp_t - old_logp_t)``.

    Args:
        logp: ``(B, T)`` log pi of the rollout tokens under the current policy (with grad).
        old_logp: ``(B, T)`` the same under the rollout policy (detached).
        advantages: ``(B, T)`` (detached, usually whitened).
        mask: ``(B, T)`` 1 on valid response tokens.
        clip_range: ``eps``.

    Returns:
        ``(loss (), PolicyStats)``.
    """
    log_ratio = logp - old_logp  # (B, T)
    ratio = torch.exp(log_ratio)
    unclipped = -advantages * ratio
    clipped = -advantages * ratio.clamp(1.0 - clip_range, 1.0 + clip_range)
    loss = masked_mean(torch.maximum(unclipped, clipped), mask)
    with torch.no_grad():
        stats = PolicyStats(
            clip_frac=masked_mean((clipped > unclipped).to(logp.dtype), mask),
            approx_kl=masked_mean(0.5 * log_ratio.square(), mask),
        )
    return loss, stats


def value_loss(
    values: Tensor, old_values: Tensor, returns: Tensor, mask: Tensor, clip_range: float
) -> tuple[Tensor, Tensor]:
    """Clipped value loss ``0.5 * mean_t max((v - R)^2, (clip(v, old - eps, old + eps) - R)^2)``.

    Clipping the new value to a trust region around the rollout's value follows the PPO reference
    implementation (OpenAI baselines ``ppo2``); see Engstrom et al. 2020, "Implementation Matters in Deep
    Policy Gradients", for its effect.

    Args:
        values: ``(B, T)`` current critic values (with grad).
        old_values: ``(B, T)`` critic values at rollout time (detached).
        returns: ``(B, T)`` value targets from GAE (detached).
        mask: ``(B, T)`` 1 on valid response tokens.
        clip_range: ``eps``, in the units of the values.

    Returns:
        ``(loss (), clip_frac ())``; ``clip_frac`` is the detached fraction of valid tokens where the clipped
        error was the larger one.
    """
    clipped_values = old_values + (values - old_values).clamp(-clip_range, clip_range)
    err_unclipped = (values - returns).square()
    err_clipped = (clipped_values - returns).square()
    loss = 0.5 * masked_mean(torch.maximum(err_unclipped, err_clipped), mask)
    with torch.no_grad():
        clip_frac = masked_mean((err_clipped > err_unclipped).to(values.dtype), mask)
    return loss, clip_frac


def _pair_mask(ranks: Tensor, group: Tensor) -> Tensor:
    """``(N, N)`` bool, True at ``[i, j]`` when i and j answer the same prompt and i is ranked better."""
    same_group = group[:, None] == group[None, :]
    return same_group & (ranks[:, None] < ranks[None, :])


def kwise_ranking_loss(scores: Tensor, ranks: Tensor, group: Tensor) -> RankingOutput:
    """InstructGPT's reward-model loss (Ouyang et al. 2022, eq. 1) over K-wise rankings.

    Every pair ``(i, j)`` in the same group with ``rank_i < rank_j`` (lower rank = better) contributes
    ``-log sigmoid(s_i - s_j)``. The pair losses are averaged within each group, then over groups, so each
    prompt weighs the same whatever its K and however many ties it has (without ties a group's mean is its
    sum over ``C(K, 2)`` pairs, as in eq. 1). Ties form no pair; a group with no pair is left out.

    Args:
        scores: ``(N,)`` reward-model score of each response, each response scored once.
        ranks: ``(N,)`` long, rank of the response within its group.
        group: ``(N,)`` long, id of the prompt the response answers (any values).

    Returns:
        ``RankingOutput``; the loss is a zero connected to ``scores`` when the batch has no pair.
    """
    if not (scores.dim() == 1 and scores.shape == ranks.shape == group.shape):
        raise ValueError(
            f"scores {tuple(scores.shape)}, ranks {tuple(ranks.shape)} and group {tuple(group.shape)} "
            "must all be (N,)"
        )
    pairs = _pair_mask(ranks, group)  # (N, N)
    diff = scores[:, None] - scores[None, :]  # (N, N) s_i - s_j
    zero = torch.zeros((), dtype=scores.dtype, device=scores.device)
    pair_loss = torch.where(pairs, -F.logsigmoid(diff), zero)  # (N, N)
    # Rows are the better response of each pair; sum rows into their group, then divide per group.
    group_ids, group_index = torch.unique(group, return_inverse=True)  # (G,), (N,) in [0, G)
    n_groups = group_ids.numel()
    group_sum = scores.new_zeros(n_groups).index_add(0, group_index, pair_loss.sum(1))  # (G,)
    group_pairs = scores.new_zeros(n_groups).index_add(0, group_index, pairs.sum(1).to(scores.dtype))
    has_pairs = group_pairs > 0  # (G,)
    per_group = group_sum / group_pairs.clamp(min=1)
    loss = torch.where(has_pairs, per_group, zero).sum() / has_pairs.sum().clamp(min=1)
    with torch.no_grad():
        n_pairs = pairs.sum()
        accuracy = (pairs & (diff > 0)).sum() / n_pairs  # NaN (0 / 0) when there is no pair
        margin = torch.where(pairs, diff, zero).sum() / n_pairs
    return RankingOutput(loss=loss, n_pairs=n_pairs, accuracy=accuracy, margin=margin)


class RuleLossOutput(NamedTuple):
    """Rule-violation loss and its statistics (scalars)."""

    loss: Tensor  # () mean binary cross-entropy over the labeled (row, rule) entries
    n_labels: Tensor  # () long, number of labeled entries
    accuracy: Tensor  # () fraction of labeled entries where (logit > 0) == broken; NaN when n_labels == 0


def rule_loss(logits: Tensor, labels: Tensor, mask: Tensor) -> RuleLossOutput:
    """Multi-label binary cross-entropy of the rule heads (Sparrow, Glaese et al. 2022: one classifier per rule).

    Each response is labeled for some rules and not others (``null`` = unsure, or a rule the row does not name):
    only the labeled entries count, each once, so a rule labeled more often weighs more, as its data does.

    Args:
        logits: ``(N, R)`` logit of "the response breaks rule r".
        labels: ``(N, R)`` 1 where it breaks it, 0 where it follows it (any value where unlabeled).
        mask: ``(N, R)`` 1 where the entry is labeled.

    Returns:
        ``RuleLossOutput``; the loss is a zero connected to ``logits`` when nothing is labeled.
    """
    if not (logits.dim() == 2 and logits.shape == labels.shape == mask.shape):
        raise ValueError(
            f"logits {tuple(logits.shape)}, labels {tuple(labels.shape)} and mask {tuple(mask.shape)} must all "
            "be (N, R)"
        )
    keep = mask.bool()
    target = torch.where(keep, labels.to(logits.dtype), torch.zeros_like(logits))
    per_entry = F.binary_cross_entropy_with_logits(logits, target, reduction="none")  # (N, R)
    loss = masked_mean(per_entry, keep)
    with torch.no_grad():
        n_labels = keep.sum()
        right = ((logits > 0) == target.bool()) & keep
        accuracy = right.sum() / n_labels  # NaN (0 / 0) when nothing is labeled
    return RuleLossOutput(loss=loss, n_labels=n_labels, accuracy=accuracy)


def lm_loss(
    logits: Tensor, labels: Tensor, ignore_index: int = -100, num_targets: Tensor | float | None = None
) -> Tensor:
    """Next-token cross-entropy, averaged over the labels that are not ``ignore_index``.

    ``labels`` is aligned with the model input, as in Hugging Face: the shift happens here, so
    ``logits[:, t]`` is scored against ``labels[:, t + 1]``. Mask prompt and padding tokens with
    ``ignore_index`` so only response tokens are learned.

    Args:
        logits: ``(B, T, V)``.
        labels: ``(B, T)`` long.
        ignore_index: label value that contributes nothing.
        num_targets: divide the summed loss by this instead of by this batch's own target count: the number of
            targets in the whole batch this one is a part of (all micro-batches of a gradient-accumulation window,
            all ranks), so every token weighs the same however the batch was split.

    Returns:
        Scalar ``()`` float32; 0 (still connected to ``logits``) when every label is ignored.
    """
    if logits.shape[:2] != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} disagree on (B, T)")
    targets = labels[:, 1:]  # (B, T-1)
    keep = targets != ignore_index
    # Ignored slots need some in-range index for the gather; their values are masked out below.
    logp = gather_logprobs(logits[:, :-1], torch.where(keep, targets, 0))  # (B, T-1)
    if num_targets is None:
        return -masked_mean(logp, keep)
    return -(logp * keep).sum() / num_targets


def target_positions(labels: Tensor, ignore_index: int = -100) -> Tensor:
    """Where a causal LM's prediction is scored: ``(B, T)`` labels -> ``(B, T)`` bool, true at ``t`` when
    ``labels[:, t + 1]`` is a target (the last position never is)."""
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != ignore_index
    return keep


def lm_loss_at_targets(
    target_logits: Tensor, labels: Tensor, ignore_index: int = -100, num_targets: Tensor | float | None = None
) -> Tensor:
    """`lm_loss` from the logits of the scored positions only: the same value, without the vocabulary projection
    at the positions that are not scored (the prompt's, in SFT).

    Args:
        target_logits: ``(N, V)`` the logits at ``target_positions(labels)``, in row-major order (as boolean
            indexing ``logits[target_positions(labels)]`` gives them); ``N`` is the number of targets.
        labels: ``(B, T)`` long, aligned with the model input as in `lm_loss`.
        ignore_index: label value that contributes nothing.
        num_targets: as in `lm_loss`.

    Returns:
        Scalar ``()`` float32; 0 (still connected to ``target_logits``) when every label is ignored.
    """
    targets = labels[:, 1:][labels[:, 1:] != ignore_index]  # (N,) in the row-major order of the positions
    if target_logits.shape[0] != targets.shape[0]:
        raise ValueError(
            f"target_logits has {target_logits.shape[0]} rows for {targets.shape[0]} targets in labels"
        )
    logp = gather_logprobs(target_logits.unsqueeze(0), targets.unsqueeze(0))[0]  # (N,)
    total = -logp.sum()
    return total / (max(targets.numel(), 1) if num_targets is None else num_targets)
