"""The combined PPO reward on hand-computed components."""

import pytest
import torch
from torch.testing import assert_close

from lit_rlhf.rl.combined import combine_components, length_penalty, rule_follow_terms
from lit_rlhf.rl.rewards import RunningMoments


def test_rule_follow_terms_are_log_probability_of_following():
    # -softplus(z): z = 2 -> -ln(1 + e^2) = -2.1269280; z = -1 -> -0.3132617; z = 0 -> -ln 2; z = 40 -> about -40
    out = rule_follow_terms(torch.tensor([[2.0, -1.0], [0.0, 40.0]]))
    assert_close(out, torch.tensor([[-2.1269280, -0.3132617], [-0.6931472, -40.0]]))


def test_length_penalty_by_hand():
    assert_close(length_penalty(torch.tensor([5, 12, 8]), 0.1, target=8), torch.tensor([0.0, -0.4, 0.0]))
    assert_close(length_penalty(torch.tensor([3, 0]), 0.5), torch.tensor([-1.5, 0.0]))
    with pytest.raises(ValueError, match="coef must be >= 0"):
        length_penalty(torch.tensor([1]), -1.0)


def test_combined_reward_on_hand_computed_components():
    # preference [1, -2]; rule term 0.5 * [-2.1269280, -0.3132617]; length [0, -0.4]; correct 2 * [1, 0]
    # total = [1 - 1.0634640 + 0 + 2, -2 - 0.1566308 - 0.4 + 0] = [1.9365360, -2.5566308]
    components = {
        "preference": torch.tensor([1.0, -2.0]),
        "rule_banned": rule_follow_terms(torch.tensor([[2.0], [-1.0]]))[:, 0],
        "length": length_penalty(torch.tensor([5, 12]), 0.1, 8),
        "correct": torch.tensor([1.0, 0.0]),
    }
    weights = {"preference": 1.0, "rule_banned": 0.5, "length": 1.0, "correct": 2.0}
    out = combine_components(components, weights)
    assert_close(out.total, torch.tensor([1.9365360, -2.5566308]))
    assert list(out.terms) == ["preference", "rule_banned", "length", "correct"]
    assert_close(out.terms["rule_banned"], torch.tensor([-1.0634640, -0.1566308]))
    assert_close(sum(out.terms.values()), out.total)  # the logged shares add up to the score


def test_each_component_is_normalised_by_its_own_running_moments():
    # a: [1, 3] -> mean 2, std sqrt(2) -> [-0.7071068, 0.7071068], weight 2; b: [10, 10] -> std 0 -> [0, 0]
    # next batch a: [2, 2] -> all four values: mean 2, std sqrt(2/3) -> [0, 0]
    moments = {"a": RunningMoments(), "b": RunningMoments()}
    first = combine_components(
        {"a": torch.tensor([1.0, 3.0]), "b": torch.tensor([10.0, 10.0])}, {"a": 2.0, "b": 1.0}, moments
    )
    assert_close(first.terms["a"], torch.tensor([-1.4142136, 1.4142136]))
    assert_close(first.terms["b"], torch.tensor([0.0, 0.0]))
    second = combine_components(
        {"a": torch.tensor([2.0, 2.0]), "b": torch.tensor([10.0, 10.0])}, {"a": 2.0, "b": 1.0}, moments
    )
    assert_close(second.total, torch.tensor([0.0, 0.0]))
    assert moments["a"].std == pytest.approx((2 / 3) ** 0.5)
    # under data parallelism the moments see every rank's values
    gathered = {"a": RunningMoments()}
    combine_components({"a": torch.tensor([1.0, 3.0])}, {"a": 1.0}, gathered, gather=lambda x: x.repeat(2))
    assert gathered["a"].count == 4


def test_combine_components_refuses_missing_weights_and_bad_shapes():
    with pytest.raises(ValueError, match=r"no weight for \['b'\]"):
        combine_components({"a": torch.zeros(2), "b": torch.zeros(2)}, {"a": 1.0})
    with pytest.raises(ValueError, match=r"must be \(B,\)"):
        combine_components({"a": torch.zeros(2), "b": torch.zeros(3)}, {"a": 1.0, "b": 1.0})
