"""The combined PPO reward: a preference score plus rule, length and programmatic terms, each normalised alike.

``score = sum_k w_k * c_k`` over named components ``c_k`` (B,): the reward model's preference score (w = 1), a
rule-follow term per rule head (Sparrow, Glaese et al. 2022), a length penalty and programmatic reward functions.
With running moments every component is normalised by its own before weighting, so a weight means "this many
standard deviations of that component", whatever its units. The sequence score then goes through the usual
truncation penalty and clipping (``rewards.py``) and is paid at the last token.
Nothing here calls a model or a user function; ``lit_rlhf.rewards`` gathers the components.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor

from lit_rlhf.rl.rewards import RunningMoments, normalize_scores


class CombinedScore(NamedTuple):
    """The combined sequence score and each component's share of it."""

    total: Tensor  # (B,) sum of the terms
    terms: dict[str, Tensor]  # name -> (B,) weight * (normalised) component: what it adds to total


def rule_follow_terms(logits: Tensor) -> Tensor:
    """log P(rule followed) from the rule heads' violation logits: ``log(1 - sigmoid(z)) = -softplus(z)``.

    Near 0 for a response the head is sure follows the rule, about -z for a sure violation: unbounded below, so no
    preference gain can buy a confident violation back at any fixed weight (a bounded ``-p`` term would cap the
    price of breaking a rule at the weight). Computed from the logit, so it stays finite where p rounds to 1.

    Args:
        logits: ``(B, R)`` logit of "the response breaks rule r".

    Returns:
        ``(B, R)``, every entry <= 0.
    """
    return -F.softplus(logits)


def length_penalty(lengths: Tensor, coef: float, target: float = 0.0) -> Tensor:
    """``-coef * max(0, length - target)``: a cost per token past `target` (0: per token).

    Args:
        lengths: ``(B,)`` response lengths in tokens.
        coef: cost per token (>= 0).
        target: free length.

    Returns:
        ``(B,)`` float, every entry <= 0.
    """
    if coef < 0:
        raise ValueError(f"length penalty coef must be >= 0, got {coef}")
    return -coef * (lengths.float() - target).clamp(min=0.0)


def combine_components(
    components: Mapping[str, Tensor],
    weights: Mapping[str, float],
    moments: Mapping[str, RunningMoments] | None = None,
    gather: Callable[[Tensor], Tensor] | None = None,
) -> CombinedScore:
    """``total = sum_k weights[k] * c_k``, with ``c_k`` normalised by its own running moments when given.

    Args:
        components: name -> ``(B,)`` raw component values (every one must have a weight).
        weights: name -> its weight.
        moments: name -> running moments, updated here with the component's values (`gather` first: under data
            parallelism every rank must see every rank's values, so the moments stay identical everywhere); None =
            no normalisation.
        gather: ``(B,) -> (W*B,)`` values of all processes (None: this one's).

    Returns:
        ``CombinedScore``; terms in the order of `components`.
    """
    missing = sorted(set(components) - set(weights))
    if missing:
        raise ValueError(f"combine_components: no weight for {missing}")
    sizes = {tuple(c.shape) for c in components.values()}
    if len(sizes) > 1 or any(len(s) != 1 for s in sizes):
        raise ValueError(f"combine_components: every component must be (B,), got {sorted(sizes)}")
    terms = {}
    for name, value in components.items():
        value = value.float()
        if moments is not None:
            moments[name].update(gather(value) if gather is not None else value)
            value = normalize_scores(value, moments[name])
        terms[name] = weights[name] * value
    total = torch.stack(list(terms.values())).sum(0) if terms else torch.zeros(0)
    return CombinedScore(total=total, terms=terms)
