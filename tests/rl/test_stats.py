import math

import torch
from torch.testing import assert_close

from lit_rlhf.rl.stats import explained_variance

# The 4th column is padding with junk in both tensors.
RETURNS = torch.tensor([[1.0, 2.0, 3.0, 50.0]])
MASK = torch.tensor([[1, 1, 1, 0]])


def test_perfect_critic_explains_everything():
    assert_close(explained_variance(torch.tensor([[1.0, 2.0, 3.0, -9.0]]), RETURNS, MASK), torch.tensor(1.0))


def test_constant_mean_critic_explains_nothing():
    assert_close(explained_variance(torch.tensor([[2.0, 2.0, 2.0, 9.0]]), RETURNS, MASK), torch.tensor(0.0))


def test_partial_fit_by_hand():
    # residuals R - V = [0, 0, 1]: mean 1/3, var (1/9 + 1/9 + 4/9) / 3 = 2/9
    # returns [1, 2, 3]: var 2/3  ->  1 - (2/9) / (2/3) = 2/3
    values = torch.tensor([[1.0, 2.0, 2.0, 0.0]], requires_grad=True)
    ev = explained_variance(values, RETURNS, MASK)
    assert_close(ev, torch.tensor(2.0 / 3.0))
    assert not ev.requires_grad


def test_constant_returns_give_nan():
    returns = torch.tensor([[4.0, 4.0, 4.0, 1.0]])
    assert math.isnan(explained_variance(torch.zeros(1, 4), returns, MASK).item())
