"""Per-rule held-out figures of the rule heads, against values worked out by hand."""

import pytest
import torch

from lit_rlhf.evaluation.rules import RuleMetrics


def test_rule_metrics_by_hand():
    # rule "banned": p = 0.95, 0.15, 0.65, 0.35 with labels 1, 0, 0, 1 (a 5th entry is unlabeled junk).
    #   accuracy at 0.5: predicted 1, 0, 1, 0 -> 2 of 4 right = 0.5
    #   auroc: positive vs negative pairs (0.95 > 0.15, 0.95 > 0.65, 0.35 > 0.15, 0.35 < 0.65) = 3/4
    #   ece (10 bins, one entry per bin): (|0.95 - 1| + |0.15 - 0| + |0.65 - 0| + |0.35 - 1|) / 4 = 0.375
    # rule "format": only followed (label 0) entries, p = 0.2, 0.4 -> accuracy 1, ece (0.2 + 0.4) / 2 = 0.3,
    #   no auroc (one class), positive rate 0
    probs = torch.tensor([[0.95, 0.2], [0.15, 0.4], [0.65, 0.9], [0.35, 0.9], [0.99, 0.9]])
    labels = torch.tensor([[1, 0], [0, 0], [0, 1], [1, 1], [0, 1]])
    mask = torch.tensor([[1, 1], [1, 1], [1, 0], [1, 0], [0, 0]])
    m = RuleMetrics(["banned", "format"])
    m.update(probs[:2], labels[:2], mask[:2])  # two batches: states accumulate
    m.update(probs[2:], labels[2:], mask[2:])
    out = m.compute()
    assert out == pytest.approx(
        {
            "banned/accuracy": 0.5,
            "banned/auroc": 0.75,
            "banned/ece": 0.375,
            "banned/positive_rate": 0.5,
            "format/accuracy": 1.0,
            "format/ece": 0.3,
            "format/positive_rate": 0.0,
        }
    )
    m.reset()
    m.update(probs[:1], labels[:1], mask[:1])
    assert m.compute()["banned/accuracy"] == 1.0  # reset forgot the first epoch


def test_rule_metrics_skip_a_rule_without_held_out_labels_and_check_shapes():
    m = RuleMetrics(["a", "b"])
    m.update(torch.tensor([[0.9, 0.5]]), torch.tensor([[1, 0]]), torch.tensor([[1, 0]]))
    assert set(m.compute()) == {"a/accuracy", "a/ece", "a/positive_rate"}
    with pytest.raises(ValueError, match=r"must all be \(N, 2\)"):
        m.update(torch.zeros(3, 3), torch.zeros(3, 3), torch.zeros(3, 3))
