"""Held-out figures of the rule heads (Sparrow's rule-violation classifiers), one set per rule.

For each rule, over the held-out entries labeled for it: ``accuracy`` (violation predicted when p > 0.5),
``auroc`` (how well p separates broken from followed, threshold-free; undefined while one class is missing),
``ece`` (expected calibration error of p over 10 equal-width bins: whether p = 0.7 means broken 70% of the time, as
the combined PPO reward reads it) and ``positive_rate`` (share labeled broken, to read the others against).
The states are torchmetrics', so they are summed over processes under data parallelism.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn
from torchmetrics import SumMetric
from torchmetrics.classification import BinaryAccuracy, BinaryAUROC, BinaryCalibrationError

ECE_BINS = 10
RULE_FIGURES = ("accuracy", "auroc", "ece", "positive_rate")


class RuleMetrics(nn.Module):
    """Per-rule accuracy, AUROC, calibration error and positive rate of violation probabilities.

    Args:
        names: The rules, in the order of the head's outputs (columns of every ``update``).
    """

    def __init__(self, names: Sequence[str]) -> None:
        super().__init__()
        self.names = list(names)
        self.per_rule = nn.ModuleList(
            nn.ModuleDict(
                {
                    "accuracy": BinaryAccuracy(),
                    "auroc": BinaryAUROC(),
                    "ece": BinaryCalibrationError(n_bins=ECE_BINS, norm="l1"),
                }
            )
            for _ in self.names
        )
        self.positives = nn.ModuleList(SumMetric() for _ in self.names)
        self.counts = nn.ModuleList(SumMetric() for _ in self.names)

    @torch.no_grad()
    def update(self, probs: Tensor, labels: Tensor, mask: Tensor) -> None:
        """Add a batch: probs, labels (1 = broken) and mask (1 = labeled), each ``(N, R)``."""
        if not (
            probs.dim() == 2
            and probs.shape == labels.shape == mask.shape
            and probs.shape[1] == len(self.names)
        ):
            raise ValueError(
                f"RuleMetrics: probs {tuple(probs.shape)}, labels {tuple(labels.shape)}, mask {tuple(mask.shape)} "
                f"must all be (N, {len(self.names)})"
            )
        for r in range(len(self.names)):
            keep = mask[:, r].bool()
            target = labels[keep, r].long()
            # every process updates every metric (with nothing, at worst) so their synced states line up
            self.counts[r].update(keep.sum().float())
            self.positives[r].update(target.sum().float())
            if keep.any():
                for metric in self.per_rule[r].values():
                    metric.update(probs[keep, r].float(), target)

    def compute(self) -> dict[str, float]:
        """``{"<rule>/<figure>": value}`` for the rules with held-out labels; auroc only where both classes occur."""
        out: dict[str, float] = {}
        for name, metrics, pos, count in zip(
            self.names, self.per_rule, self.positives, self.counts, strict=True
        ):
            n, p = float(count.compute()), float(pos.compute())
            if n == 0:
                continue
            out[f"{name}/accuracy"] = float(metrics["accuracy"].compute())
            out[f"{name}/ece"] = float(metrics["ece"].compute())
            if 0 < p < n:  # one class only: AUROC is undefined (torchmetrics would return 0)
                out[f"{name}/auroc"] = float(metrics["auroc"].compute())
            out[f"{name}/positive_rate"] = p / n
        return out

    def reset(self) -> None:
        for m in (*(x for d in self.per_rule for x in d.values()), *self.positives, *self.counts):
            m.reset()
