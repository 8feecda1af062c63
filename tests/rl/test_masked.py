import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch.testing import assert_close

from lit_rlhf.rl.masked import masked_mean, masked_sum, masked_var, whiten

# Valid entries are 1, 2 and 4; everything else is junk that must never leak into a result.
X = torch.tensor([[1.0, 2.0, float("nan")], [4.0, 100.0, float("inf")]])
MASK = torch.tensor([[1, 1, 0], [1, 0, 0]])


def test_masked_sum_ignores_nan_and_inf_in_padding():
    assert_close(masked_sum(X, MASK), torch.tensor(7.0))  # 1 + 2 + 4
    assert_close(masked_sum(X, MASK, dim=1), torch.tensor([3.0, 4.0]))


def test_masked_sum_accepts_float_and_bool_masks():
    assert_close(masked_sum(X, MASK.float()), torch.tensor(7.0))
    assert_close(masked_sum(X, MASK.bool()), torch.tensor(7.0))


def test_masked_mean_whole_and_per_row():
    assert_close(masked_mean(X, MASK), torch.tensor(7.0 / 3.0))
    assert_close(masked_mean(X, MASK, dim=1), torch.tensor([1.5, 4.0]))  # (1+2)/2, 4/1


def test_masked_mean_of_empty_row_is_zero():
    mask = torch.tensor([[1, 1, 0], [0, 0, 0]])
    assert_close(masked_mean(X, mask, dim=1), torch.tensor([1.5, 0.0]))
    assert_close(masked_mean(X, torch.zeros_like(mask)), torch.tensor(0.0))


def test_masked_mean_broadcast_mask_counts_every_covered_entry():
    x = torch.tensor([[1.0, 2.0], [3.0, 5.0]])
    column_mask = torch.tensor([1, 0])  # (T,) broadcast over B: entries 1 and 3
    assert_close(masked_mean(x, column_mask), torch.tensor(2.0))


def test_masked_var_unbiased_and_biased():
    # mean 7/3; squared deviations 16/9 + 1/9 + 25/9 = 42/9
    assert_close(masked_var(X, MASK), torch.tensor(7.0 / 3.0))  # 42/9 / 2
    assert_close(masked_var(X, MASK, unbiased=False), torch.tensor(14.0 / 9.0))  # 42/9 / 3


def test_masked_var_needs_enough_entries():
    one = torch.tensor([[1, 0, 0], [0, 0, 0]])
    with pytest.raises(ValueError, match="at least 2"):
        masked_var(X, one)
    assert_close(masked_var(X, one, unbiased=False), torch.tensor(0.0))
    with pytest.raises(ValueError, match="at least 1"):
        masked_var(X, torch.zeros_like(one), unbiased=False)


def test_whiten_uses_only_valid_entries_and_zeroes_the_rest():
    # Valid entries 1, 3, 5: mean 3, unbiased variance (4 + 0 + 4) / 2 = 4, std 2 -> -1, 0, 1.
    x = torch.tensor([[1.0, 3.0, 99.0], [5.0, -7.0, 8.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]])
    assert_close(whiten(x, mask), torch.tensor([[-1.0, 0.0, 0.0], [1.0, 0.0, 0.0]]))
    # Without the shift the mean 3 is added back: -1+3, 0+3, 1+3.
    assert_close(whiten(x, mask, shift_mean=False), torch.tensor([[2.0, 3.0, 0.0], [4.0, 0.0, 0.0]]))


def test_whiten_eps_bounds_the_scale_of_a_constant_input():
    x = torch.tensor([[2.0, 2.0, 2.0]])
    mask = torch.ones_like(x)
    assert_close(whiten(x, mask, shift_mean=False, eps=1.0), torch.tensor([[2.0, 2.0, 2.0]]))
    assert_close(whiten(x, mask, eps=1.0), torch.zeros(1, 3))


@st.composite
def masked_batches(draw):
    """(B, T) float64 values with a right-padded mask of at least 2 valid entries."""
    b, t = draw(st.integers(1, 4)), draw(st.integers(2, 6))
    values = st.floats(-10, 10, allow_nan=False)
    x = torch.tensor([[draw(values) for _ in range(t)] for _ in range(b)], dtype=torch.float64)
    lengths = [draw(st.integers(0, t)) for _ in range(b)]
    mask = torch.tensor([[j < n for j in range(t)] for n in lengths])
    assume(int(mask.sum()) >= 2)
    return x, mask


@settings(max_examples=50, deadline=None)
@given(masked_batches())
def test_whitened_values_have_mean_0_and_std_1_over_the_mask(batch):
    x, mask = batch
    # eps shrinks the std by about eps / (2 var); keep that below float64's default tolerance (1e-7).
    assume(float(x[mask].var()) > 0.1)
    out = whiten(x, mask)
    assert_close(out[mask].mean(), torch.tensor(0.0, dtype=torch.float64), atol=1e-6, rtol=0)
    assert_close(out[mask].std(), torch.tensor(1.0, dtype=torch.float64))
    assert bool((out[~mask] == 0).all())
