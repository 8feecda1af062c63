"""Metric functions shared by every evaluation path: judge figures and win rate with its Wilson interval, KL to
the SFT model from sampled ids, means. No models, no files; torch only inside the tensor functions, so the demo
world and the dashboard can import the rest without it.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from lit_rlhf.judges import compare_scores, judge_item

if TYPE_CHECKING:
    from torch import Tensor

# Two-sided 95% standard normal quantile, Phi^-1(0.975).
_Z95 = 1.959963984540054


@dataclass(frozen=True)
class WinRate:
    """Mean outcome with its 95% Wilson score interval; n is the number of comparisons."""

    rate: float
    ci_low: float
    ci_high: float
    n: int


def win_rate(outcomes: Sequence[float]) -> WinRate:
    """Mean of comparison outcomes (1 win, 0.5 tie, 0 loss) with a 95% Wilson score interval.

    Ties count half a win, so the interval treats the mean as a proportion over n comparisons
    (Wilson 1927). Raises ValueError on an empty sequence or an outcome outside [0, 1].
    """
    n = len(outcomes)
    if n == 0:
        raise ValueError("win_rate needs at least one outcome")
    bad = [o for o in outcomes if not 0.0 <= o <= 1.0]
    if bad:
        raise ValueError(f"win_rate outcomes must be in [0, 1]; got {bad[:5]}")
    p = sum(outcomes) / n
    z2 = _Z95 * _Z95
    denominator = 1.0 + z2 / n
    centre = (p + z2 / (2 * n)) / denominator
    half_width = _Z95 * math.sqrt(p * (1.0 - p) / n + z2 / (4 * n * n)) / denominator
    # The exact interval always contains p and lies in [0, 1]; clamping only removes float round-off.
    ci_low = min(max(centre - half_width, 0.0), p)
    ci_high = max(min(centre + half_width, 1.0), p)
    return WinRate(rate=p, ci_low=ci_low, ci_high=ci_high, n=n)


def judge_metrics(
    judge: Any,
    prompts: Sequence[Any],
    responses: Sequence[str],
    references: Sequence[str | None] | None = None,
    baseline: Sequence[str] | None = None,
) -> dict[str, float]:
    """The judge's figures over the items it can judge.

    Returns ``judge_score`` (mean score), the mean of each detail the judge reports (e.g. ``exact_match``),
    ``judged`` (how many items it judged) and, with `baseline` (the SFT model's responses to the same prompts),
    ``win_rate_vs_sft`` with ``win_rate_ci_low``/``win_rate_ci_high``: per prompt 1 if the response scores
    higher than the baseline's, 0.5 on a tie, 0 if lower, and the 95% Wilson interval of the mean. Empty when
    nothing could be judged.
    """
    refs = list(references) if references is not None else [None] * len(prompts)
    items = [judge_item(judge, p, r, ref) for p, r, ref in zip(prompts, responses, refs, strict=True)]
    judged = [i for i, item in enumerate(items) if item]
    if not judged:
        return {}
    out: dict[str, float] = {"judged": float(len(judged))}
    for key in dict.fromkeys(k for i in judged for k in items[i]):
        values = [items[i][key] for i in judged if key in items[i]]
        out["judge_score" if key == "score" else key] = sum(values) / len(values)
    if baseline is not None:
        base = [judge_item(judge, prompts[i], baseline[i], refs[i]) for i in judged]
        outcomes = [
            compare_scores(items[i]["score"], b["score"]) for i, b in zip(judged, base, strict=True) if b
        ]
        if outcomes:
            wr = win_rate(outcomes)
            out.update(win_rate_vs_sft=wr.rate, win_rate_ci_low=wr.ci_low, win_rate_ci_high=wr.ci_high)
    return out


def kl_k1_per_sequence(logp: Tensor, ref_logp: Tensor, response_mask: Tensor) -> list[float]:
    """sum_t (log pi - log pi_sft) over each row's response tokens (the k1 estimate of KL(pi || pi_sft)).

    Computed on the SAMPLED token ids and their mask (never re-tokenized text), so a truncated response counts
    exactly the tokens it has.

    Args:
        logp: (B, R) log pi of the sampled tokens. ref_logp: (B, R) log pi_sft of the same tokens.
        response_mask: (B, R) 1 on response tokens (the stop token included).
    Returns:
        B floats.
    """
    from lit_rlhf.rl.kl import kl_penalty

    return (kl_penalty(logp, ref_logp, "k1") * response_mask).sum(1).tolist()


def mean_or_none(values: Sequence[float] | None) -> float | None:
    """Mean of `values`; None when there are none or the mean is not finite (JSON has no NaN)."""
    if not values:
        return None
    m = sum(values) / len(values)
    return m if math.isfinite(m) else None


def weighted_mean(values: Sequence[float], weights: Sequence[float]) -> float:
    """sum(v * w) / sum(w): per-batch mean losses back to a per-token mean, whatever the batch sizes."""
    total = sum(weights)
    if total <= 0:
        raise ValueError("weighted_mean needs a positive total weight")
    return sum(v * w for v, w in zip(values, weights, strict=True)) / total
