import math

import pytest
import torch
from torch.testing import assert_close

from lit_rlhf.rl.rewards import (
    RunningMoments,
    clip_scores,
    last_valid_index,
    leave_one_out_baseline,
    normalize_scores,
    shape_rewards,
    truncation_penalty,
)


def test_last_valid_index_handles_padding_on_either_side():
    mask = torch.tensor([[1, 1, 1], [1, 1, 0], [0, 1, 0], [0, 0, 0]])
    assert last_valid_index(mask).tolist() == [2, 1, 1, -1]
    assert last_valid_index(mask.bool()).tolist() == [2, 1, 1, -1]


# Row 0 fills all 3 columns; row 1 is right-padded after 2 tokens (its column 2 holds junk).
SCORES = torch.tensor([1.0, 2.0])
LOGP = torch.tensor([[-1.0, -1.0, -1.0], [-1.0, -2.0, -5.0]])
REF = torch.tensor([[-1.5, -1.0, -0.5], [-2.0, -2.0, 0.0]])
MASK = torch.tensor([[1, 1, 1], [1, 1, 0]])


def test_score_lands_on_the_last_valid_token_only_with_right_padding():
    parts = shape_rewards(SCORES, LOGP, REF, MASK, beta=0.1)
    # k1 = logp - ref: row 0 [0.5, 0, -0.5]; row 1 [1, 0, masked]
    assert_close(parts.kl, torch.tensor([[0.5, 0.0, -0.5], [1.0, 0.0, 0.0]]))
    assert_close(parts.non_score, torch.tensor([[-0.05, 0.0, 0.05], [-0.1, 0.0, 0.0]]))
    # Scores 1 and 2 go on columns 2 and 1 respectively, not on every token and not on column T-1 of row 1.
    assert_close(parts.rewards, torch.tensor([[-0.05, 0.0, 1.05], [-0.1, 2.0, 0.0]]))


def test_kl_kind_is_passed_to_the_estimator():
    parts = shape_rewards(SCORES, LOGP, REF, MASK, beta=1.0, kl_kind="k2")
    # k2 = 0.5 * (logp - ref)^2: row 0 [0.125, 0, 0.125]; row 1 [0.5, 0, masked]
    assert_close(parts.kl, torch.tensor([[0.125, 0.0, 0.125], [0.5, 0.0, 0.0]]))
    assert_close(parts.rewards, torch.tensor([[-0.125, 0.0, 0.875], [-0.5, 2.0, 0.0]]))


def test_beta_zero_leaves_only_the_score():
    parts = shape_rewards(SCORES, LOGP, REF, MASK.bool(), beta=0.0)
    assert_close(parts.rewards, torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 0.0]]))


def test_empty_response_cannot_take_a_score():
    with pytest.raises(ValueError, match=r"rows \[1\]"):
        shape_rewards(SCORES, LOGP, REF, torch.tensor([[1, 1, 1], [0, 0, 0]]), beta=0.1)


def test_mismatched_shapes_are_rejected():
    with pytest.raises(ValueError, match="must be"):
        shape_rewards(SCORES[:1], LOGP, REF, MASK, beta=0.1)
    with pytest.raises(ValueError, match="must be"):
        shape_rewards(SCORES, LOGP, REF[:, :2], MASK, beta=0.1)


def test_clip_scores():
    scores = torch.tensor([-5.0, 0.5, 3.0])
    assert_close(clip_scores(scores, 2.0), torch.tensor([-2.0, 0.5, 2.0]))
    assert_close(clip_scores(scores, None), scores)
    with pytest.raises(ValueError, match="positive"):
        clip_scores(scores, 0.0)


def test_truncation_penalty_replaces_scores_without_eos():
    scores = torch.tensor([1.0, 2.0, 3.0])
    eos = torch.tensor([True, False, True])
    assert_close(truncation_penalty(scores, eos, -1.0), torch.tensor([1.0, -1.0, 3.0]))
    assert_close(truncation_penalty(scores, eos, None), scores)
    with pytest.raises(ValueError, match="differ"):
        truncation_penalty(scores, eos[:2], -1.0)


def test_leave_one_out_baseline_by_hand():
    # prompt 0: 1, 2, 6 -> 1 - 4, 2 - 3.5, 6 - 1.5; prompt 1: 0, 0, 3 -> 0 - 1.5, 0 - 1.5, 3 - 0
    scores = torch.tensor([1.0, 2.0, 6.0, 0.0, 0.0, 3.0])
    out = leave_one_out_baseline(scores, 3)
    assert_close(out, torch.tensor([-3.0, -1.5, 4.5, -1.5, -1.5, 3.0]))
    assert_close(out.view(2, 3).sum(1), torch.zeros(2))  # each prompt's advantages sum to 0


def test_leave_one_out_baseline_removes_a_per_prompt_constant():
    # the reward model's score is defined up to a per-prompt shift: the baseline makes the result ignore it
    scores = torch.tensor([0.3, -0.2, 1.1, 0.4])
    shifted = scores + torch.tensor([5.0, 5.0, -7.0, -7.0])
    assert_close(leave_one_out_baseline(shifted, 2), leave_one_out_baseline(scores, 2))
    assert_close(leave_one_out_baseline(scores, 2), torch.tensor([0.5, -0.5, 0.7, -0.7]))


def test_leave_one_out_baseline_rejects_bad_groups():
    with pytest.raises(ValueError, match="group_size must be >= 2"):
        leave_one_out_baseline(torch.zeros(4), 1)
    with pytest.raises(ValueError, match="multiple of the group size 3"):
        leave_one_out_baseline(torch.zeros(4), 3)


def test_running_moments_merge_batches():
    moments = RunningMoments()
    # [1, 2, 3]: mean 2, unbiased var (1 + 0 + 1) / 2 = 1
    assert moments.update(torch.tensor([1.0, 2.0, 3.0])) == pytest.approx((2.0, 1.0))
    # all of [1..5]: mean 3, unbiased var (4 + 1 + 0 + 1 + 4) / 4 = 2.5
    mean, std = moments.update(torch.tensor([[4.0], [5.0]]))
    assert (mean, std) == pytest.approx((3.0, math.sqrt(2.5)))
    assert moments.count == 5


def test_running_moments_std_is_zero_for_a_single_value():
    moments = RunningMoments()
    assert moments.update(torch.tensor([7.0])) == pytest.approx((7.0, 0.0))
    with pytest.raises(ValueError, match="empty"):
        moments.update(torch.tensor([]))


def test_running_moments_state_dict_round_trip():
    moments = RunningMoments()
    moments.update(torch.tensor([1.0, 2.0, 3.0]))
    assert moments.state_dict() == {"mean": 2.0, "m2": 2.0, "count": 3}
    restored = RunningMoments()
    restored.load_state_dict(moments.state_dict())
    assert restored.update(torch.tensor([4.0, 5.0])) == pytest.approx((3.0, math.sqrt(2.5)))
    with pytest.raises(ValueError, match="m2"):
        restored.load_state_dict({"mean": 0.0, "count": 1})


def test_normalize_scores_uses_the_running_moments():
    moments = RunningMoments()
    moments.update(torch.tensor([1.0, 2.0, 3.0]))  # mean 2, std 1
    assert_close(normalize_scores(torch.tensor([2.0, 4.0, 0.0]), moments), torch.tensor([0.0, 2.0, -2.0]))
    with pytest.raises(ValueError, match="update"):
        normalize_scores(torch.tensor([1.0]), RunningMoments())
