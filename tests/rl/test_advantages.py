import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.testing import assert_close

from lit_rlhf.rl.advantages import gae


def test_gae_three_steps_by_hand():
    # gamma 0.9, lam 0.95 (gamma * lam = 0.855), bootstrap V_3 = 0:
    # delta_2 = 1 + 0.9*0   - 0.7 = 0.3     A_2 = 0.3
    # delta_1 = 0 + 0.9*0.7 - 0.6 = 0.03    A_1 = 0.03 + 0.855*0.3    = 0.2865
    # delta_0 = 0 + 0.9*0.6 - 0.5 = 0.04    A_0 = 0.04 + 0.855*0.2865 = 0.2849575
    rewards = torch.tensor([[0.0, 0.0, 1.0]])
    values = torch.tensor([[0.5, 0.6, 0.7]])
    adv, ret = gae(rewards, values, torch.ones(1, 3), gamma=0.9, lam=0.95)
    assert_close(adv, torch.tensor([[0.2849575, 0.2865, 0.3]]))
    assert_close(ret, torch.tensor([[0.7849575, 0.8865, 1.0]]))  # A + V


def test_gae_stops_at_the_last_valid_token_of_a_right_padded_row():
    # Column 2 is padding holding junk; V after column 1 is bootstrapped as 0:
    # delta_1 = 1 - 0.6 = 0.4; delta_0 = 0.9*0.6 - 0.5 = 0.04; A_0 = 0.04 + 0.855*0.4 = 0.382
    rewards = torch.tensor([[0.0, 1.0, 5.0]])
    values = torch.tensor([[0.5, 0.6, 9.0]])
    adv, ret = gae(rewards, values, torch.tensor([[True, True, False]]), gamma=0.9, lam=0.95)
    assert_close(adv, torch.tensor([[0.382, 0.4, 0.0]]))
    assert_close(ret, torch.tensor([[0.882, 1.0, 0.0]]))


def test_gae_a_gap_in_the_mask_ends_the_episode():
    # Column 1 is masked out: delta_0 = 1 + 0 - 0.5 = 0.5 and nothing from column 2 flows back;
    # delta_2 = 2 - 0.25 = 1.75.
    rewards = torch.tensor([[1.0, 5.0, 2.0]])
    values = torch.tensor([[0.5, 9.0, 0.25]])
    adv, ret = gae(rewards, values, torch.tensor([[1, 0, 1]]), gamma=0.9, lam=0.95)
    assert_close(adv, torch.tensor([[0.5, 0.0, 1.75]]))
    assert_close(ret, torch.tensor([[1.0, 0.0, 2.0]]))


@st.composite
def rollouts(draw):
    """float64 (rewards, values, mask) of shape (B, T) with right-padded masks."""
    b, t = draw(st.integers(1, 3)), draw(st.integers(1, 6))
    floats = st.floats(-5, 5, allow_nan=False)

    def matrix():
        return torch.tensor([[draw(floats) for _ in range(t)] for _ in range(b)], dtype=torch.float64)

    lengths = [draw(st.integers(0, t)) for _ in range(b)]
    mask = torch.tensor([[j < n for j in range(t)] for n in lengths])
    return matrix(), matrix(), mask


@settings(max_examples=50, deadline=None)
@given(rollouts(), st.floats(0, 1))
def test_lam_zero_gives_the_td_residual(rollout, gamma):
    rewards, values, mask = rollout
    adv, _ = gae(rewards, values, mask, gamma=gamma, lam=0.0)
    b, t = rewards.shape
    for i in range(b):
        for j in range(t):
            if not mask[i, j]:
                assert adv[i, j] == 0
                continue
            next_v = values[i, j + 1] if j + 1 < t and mask[i, j + 1] else 0.0
            expected = rewards[i, j] + gamma * next_v - values[i, j]
            assert_close(adv[i, j], torch.as_tensor(expected, dtype=torch.float64))


@settings(max_examples=50, deadline=None)
@given(rollouts())
def test_lam_one_gamma_one_gives_reward_to_go_minus_value(rollout):
    rewards, values, mask = rollout
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    b, t = rewards.shape
    for i in range(b):
        for j in range(t):
            if not mask[i, j]:
                assert adv[i, j] == 0 and ret[i, j] == 0
                continue
            to_go = sum(float(rewards[i, k]) for k in range(j, t) if mask[i, k])
            assert_close(adv[i, j], torch.as_tensor(to_go - float(values[i, j]), dtype=torch.float64))
            assert_close(ret[i, j], torch.as_tensor(to_go, dtype=torch.float64))
