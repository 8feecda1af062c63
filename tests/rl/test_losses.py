import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.testing import assert_close

from lit_rlhf.rl.losses import (
    kwise_ranking_loss,
    lm_loss,
    lm_loss_at_targets,
    ppo_policy_loss,
    target_positions,
    value_loss,
)

# --- PPO policy loss -------------------------------------------------------------------------------------
# Ratios 1.5, 0.5, 1.1 (and a padded 4th token with junk), eps = 0.2:
#   A =  1, r = 1.5: max(-1.5, -1.2) = -1.2   (clipped term wins)
#   A =  1, r = 0.5: max(-0.5, -0.8) = -0.5
#   A = -2, r = 1.1: max( 2.2,  2.2) =  2.2
# loss = (-1.2 - 0.5 + 2.2) / 3 = 1/6; clip_frac = 1/3
# approx_kl = 0.5 * (ln(1.5)^2 + ln(0.5)^2 + ln(1.1)^2) / 3 = 0.1089898
OLD = torch.tensor([[-1.0, -1.0, -1.0, -1.0]])
RATIOS = torch.tensor([[1.5, 0.5, 1.1, 50.0]])
ADV = torch.tensor([[1.0, 1.0, -2.0, 100.0]])
PPO_MASK = torch.tensor([[1, 1, 1, 0]])


def test_ppo_policy_loss_by_hand():
    logp = (OLD + RATIOS.log()).requires_grad_(True)
    loss, stats = ppo_policy_loss(logp, OLD, ADV, PPO_MASK, clip_range=0.2)
    assert_close(loss, torch.tensor(1.0 / 6.0))
    assert_close(stats.clip_frac, torch.tensor(1.0 / 3.0))
    assert_close(stats.approx_kl, torch.tensor(0.1089898))
    assert not stats.approx_kl.requires_grad
    loss.backward()
    # d/dlogp of -A * r / 3 is -A * r / 3 where unclipped; 0 where the clipped term won, and on padding.
    assert_close(logp.grad, torch.tensor([[0.0, -0.5 / 3.0, 2.2 / 3.0, 0.0]]))


@settings(max_examples=50, deadline=None)
@given(st.lists(st.floats(-10, 10, allow_nan=False), min_size=1, max_size=8), st.floats(0.05, 0.5))
def test_ppo_loss_is_minus_mean_advantage_at_ratio_one(advantages, clip_range):
    adv = torch.tensor([advantages], dtype=torch.float64)
    logp = torch.full_like(adv, -0.7)
    loss, stats = ppo_policy_loss(logp, logp.clone(), adv, torch.ones_like(adv), clip_range)
    assert_close(loss, -adv.mean())
    assert stats.clip_frac == 0 and stats.approx_kl == 0


# --- value loss ------------------------------------------------------------------------------------------


def test_value_loss_by_hand():
    # eps 0.2:
    #   v 1.0, old 0.5 -> clipped 0.7; R 2: (1-2)^2 = 1 vs (0.7-2)^2 = 1.69 -> 1.69 (clipped larger)
    #   v 2.0, old 2.1 -> within range;  R 1: 1 vs 1                        -> 1
    #   v 0.0, old 0.0;                  R 1: 1 vs 1                        -> 1
    # loss = 0.5 * (1.69 + 1 + 1) / 3 = 0.615; clip_frac = 1/3; the 4th token is padding.
    values = torch.tensor([[1.0, 2.0, 0.0, 40.0]], requires_grad=True)
    old = torch.tensor([[0.5, 2.1, 0.0, 0.0]])
    returns = torch.tensor([[2.0, 1.0, 1.0, -40.0]])
    loss, clip_frac = value_loss(values, old, returns, PPO_MASK, clip_range=0.2)
    assert_close(loss, torch.tensor(0.615))
    assert_close(clip_frac, torch.tensor(1.0 / 3.0))
    loss.backward()
    # 0.5 * 2 * (v - R) / 3 where unclipped; token 0 is clipped to a constant so it gets no gradient.
    assert_close(values.grad, torch.tensor([[0.0, 1.0 / 3.0, -1.0 / 3.0, 0.0]]))


# --- K-wise ranking loss ---------------------------------------------------------------------------------


def test_kwise_k3_with_a_tie():
    # ranks [0, 1, 1]: responses 1 and 2 tie, so the pairs are (0, 1) and (0, 2):
    # loss = (log(1 + e^-1) + log(1 + e^-2)) / 2 = (0.3132617 + 0.1269280) / 2 = 0.2200948
    scores = torch.tensor([2.0, 1.0, 0.0], requires_grad=True)
    out = kwise_ranking_loss(scores, torch.tensor([0, 1, 1]), torch.tensor([0, 0, 0]))
    assert_close(out.loss, torch.tensor(0.2200948))
    assert out.n_pairs.item() == 2
    assert_close(out.accuracy, torch.tensor(1.0))
    assert_close(out.margin, torch.tensor(1.5))  # (1 + 2) / 2
    out.loss.backward()
    # d/ds_i -log sigmoid(s_i - s_j) = -sigmoid(s_j - s_i); sigmoid(-1) = 0.2689414, sigmoid(-2) = 0.1192029
    assert_close(scores.grad, torch.tensor([-0.1940722, 0.1344707, 0.0596015]))


def test_kwise_k2_is_the_pairwise_loss():
    # The better response (rank 0) scores 0.5, the worse 1.5: -log sigmoid(-1) = log(1 + e) = 1.3132617
    out = kwise_ranking_loss(torch.tensor([0.5, 1.5]), torch.tensor([0, 1]), torch.tensor([4, 4]))
    assert_close(out.loss, torch.tensor(1.3132617))
    assert_close(out.accuracy, torch.tensor(0.0))
    assert_close(out.margin, torch.tensor(-1.0))


def test_kwise_groups_of_different_k_each_count_once():
    # Group 7 (K=2): one pair, loss log(1 + e^-1) = 0.3132617.
    # Group 3 (K=3, no ties, all scores 0): three pairs of log 2 each, mean 0.6931472.
    # Per-group average: (0.3132617 + 0.6931472) / 2 = 0.5032044 (pooling pairs would give 0.5981758).
    scores = torch.tensor([0.0, 1.0, 0.0, 0.0, 0.0])
    ranks = torch.tensor([2, 0, 0, 1, 1])
    group = torch.tensor([3, 7, 3, 3, 7])
    out = kwise_ranking_loss(scores, ranks, group)
    assert_close(out.loss, torch.tensor(0.5032044))
    assert out.n_pairs.item() == 4
    assert_close(out.accuracy, torch.tensor(0.25))  # only group 7's pair has s_better > s_worse
    assert_close(out.margin, torch.tensor(0.25))  # (1 + 0 + 0 + 0) / 4


def test_kwise_without_pairs_is_a_zero_loss_with_nan_stats():
    scores = torch.tensor([1.0, 2.0, 3.0], requires_grad=True)
    out = kwise_ranking_loss(scores, torch.tensor([0, 0, 0]), torch.tensor([0, 1, 1]))
    assert out.loss.item() == 0.0 and out.n_pairs.item() == 0
    assert math.isnan(out.accuracy.item()) and math.isnan(out.margin.item())
    out.loss.backward()
    assert_close(scores.grad, torch.zeros(3))


def test_kwise_rejects_mismatched_shapes():
    with pytest.raises(ValueError, match=r"\(N,\)"):
        kwise_ranking_loss(torch.zeros(3), torch.zeros(2, dtype=torch.long), torch.zeros(3, dtype=torch.long))


# --- LM loss ---------------------------------------------------------------------------------------------


def test_lm_loss_shifts_and_ignores_masked_labels():
    logits = torch.zeros(1, 3, 3)
    logits[0, 0] = torch.tensor([1.0, 2.0, 1.0]).log()  # predicts labels[1] = 1: p 1/2
    logits[0, 1] = torch.tensor([1.0, 1.0, 3.0]).log()  # predicts labels[2] = 2: p 3/5
    logits[0, 2] = 100.0  # predicts past the end: unused
    # (-log 1/2 - log 3/5) / 2 = (0.6931472 + 0.5108256) / 2
    assert_close(lm_loss(logits, torch.tensor([[-100, 1, 2]])), torch.tensor(0.6019864))
    # A prompt token marked -100 drops out of the mean.
    assert_close(lm_loss(logits, torch.tensor([[0, -100, 2]])), torch.tensor(0.5108256))
    assert_close(lm_loss(logits, torch.tensor([[0, 9, 2]]), ignore_index=9), torch.tensor(0.5108256))


def test_lm_loss_over_a_larger_batch_divides_the_sum_by_its_target_count():
    logits = torch.zeros(1, 3, 3)
    logits[0, 0] = torch.tensor([1.0, 2.0, 1.0]).log()
    logits[0, 1] = torch.tensor([1.0, 1.0, 3.0]).log()
    # the same two targets, as part of a batch of 5: (0.6931472 + 0.5108256) / 5
    assert_close(lm_loss(logits, torch.tensor([[-100, 1, 2]]), num_targets=5), torch.tensor(0.2407946))
    # split one batch into micro-batches of unequal length: the parts sum to the whole batch's token mean
    full = torch.randn(2, 4, 3)
    labels = torch.tensor([[-100, 1, 2, 0], [-100, -100, 1, -100]])
    parts = lm_loss(full[:1], labels[:1], num_targets=4) + lm_loss(full[1:], labels[1:], num_targets=4)
    assert_close(parts, lm_loss(full, labels))


def test_lm_loss_with_every_label_ignored_is_zero():
    logits = torch.randn(2, 3, 5, requires_grad=True)
    loss = lm_loss(logits, torch.full((2, 3), -100))
    assert loss.item() == 0.0
    loss.backward()
    assert_close(logits.grad, torch.zeros(2, 3, 5))


def test_target_positions_by_hand():
    labels = torch.tensor([[-100, -100, 4, 5], [-100, 7, -100, -100]])
    assert target_positions(labels).tolist() == [[False, True, True, False], [True, False, False, False]]


def test_lm_loss_at_targets_equals_lm_loss_from_the_scored_positions_only():
    logits = torch.zeros(1, 3, 3)
    logits[0, 0] = torch.tensor([1.0, 2.0, 1.0]).log()  # predicts labels[1] = 1: p 1/2
    logits[0, 1] = torch.tensor([1.0, 1.0, 3.0]).log()  # predicts labels[2] = 2: p 3/5
    labels = torch.tensor([[-100, 1, 2]])
    assert_close(lm_loss_at_targets(logits[0, :2], labels), torch.tensor(0.6019864))  # as by hand above
    assert_close(lm_loss_at_targets(logits[0, :2], labels, num_targets=5), torch.tensor(0.2407946))
    full = torch.randn(3, 6, 11, requires_grad=True)
    labels = torch.tensor([[-100, -100, 3, 4, -100, -100], [-100, 1, 2, 3, 4, 5], [-100] * 6])
    at = lm_loss_at_targets(full[target_positions(labels)], labels)
    assert_close(at, lm_loss(full, labels))
    (grad,) = torch.autograd.grad(at, full)
    (expected,) = torch.autograd.grad(lm_loss(full, labels), full)
    assert_close(grad, expected)
    empty = lm_loss_at_targets(full[:, :0].reshape(0, 11), torch.full((2, 3), -100))
    assert empty.item() == 0.0 and empty.requires_grad
    with pytest.raises(ValueError, match="3 rows for 2 targets"):
        lm_loss_at_targets(torch.zeros(3, 11), torch.tensor([[-100, 1, 2]]))


# --- rule (multi-label) loss ----------------------------------------------------------------------------


def test_rule_loss_by_hand():
    from lit_rlhf.rl.losses import rule_loss

    # labeled entries: (logit 2, broken) softplus(-2) = 0.1269280; (0, followed) ln 2 = 0.6931472;
    # (-1, followed) softplus(-1) = 0.3132617; the 4th entry (logit 3) is unlabeled.
    # loss = 1.1333369 / 3 = 0.3777790; accuracy: 2 > 0 broken, 0 not > 0 followed, -1 followed: 3/3
    logits = torch.tensor([[2.0, 0.0], [-1.0, 3.0]], requires_grad=True)
    labels = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    mask = torch.tensor([[1, 1], [1, 0]])
    out = rule_loss(logits, labels, mask)
    assert_close(out.loss, torch.tensor(0.3777790))
    assert int(out.n_labels) == 3 and float(out.accuracy) == 1.0
    out.loss.backward()
    # d/dz BCE = (sigmoid(z) - y) / 3 on labeled entries, 0 on the unlabeled one
    expected = (torch.sigmoid(torch.tensor([[2.0, 0.0], [-1.0, 3.0]])) - labels) / 3
    assert_close(logits.grad, expected * mask)


def test_rule_loss_with_nothing_labeled_is_a_connected_zero_and_checks_shapes():
    from lit_rlhf.rl.losses import rule_loss

    logits = torch.randn(2, 3, requires_grad=True)
    out = rule_loss(logits, torch.ones(2, 3), torch.zeros(2, 3))
    assert float(out.loss.detach()) == 0.0 and out.loss.requires_grad and math.isnan(float(out.accuracy))
    with pytest.raises(ValueError, match=r"must all be \(N, R\)"):
        rule_loss(logits, torch.ones(2, 2), torch.ones(2, 2))
