import threading

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch.testing import assert_close

from lit_rlhf.rl.masked import global_moments, masked_mean, masked_sum, masked_var, whiten

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


def _two_ranks(fn, parts):
    """Run fn(part, all_reduce) on two threads whose all_reduce sums the argument over both (a fake gloo)."""
    barrier, slots, out = threading.Barrier(2), [None, None], [None, None]

    def all_reduce_of(rank):
        def all_reduce(t):
            slots[rank] = t.clone()
            barrier.wait()
            total = slots[0] + slots[1]
            barrier.wait()  # both have read before either writes the next round
            return total

        return all_reduce

    def work(rank):
        out[rank] = fn(*parts[rank], all_reduce_of(rank))

    threads = [threading.Thread(target=work, args=(r,)) for r in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def test_whiten_across_ranks_equals_whiten_of_the_whole_batch():
    # two ranks with different row counts and padding: together they are the 3-row batch below
    x0, m0 = torch.tensor([[1.0, 2.0, 9.0]]), torch.tensor([[1, 1, 0]])
    x1, m1 = torch.tensor([[4.0, 0.0, 0.0], [3.0, 5.0, 6.0]]), torch.tensor([[1, 0, 0], [1, 1, 1]])
    whole = whiten(torch.cat([x0, x1]), torch.cat([m0, m1]))
    w0, w1 = _two_ranks(lambda x, m, ar: whiten(x, m, all_reduce=ar), [(x0, m0), (x1, m1)])
    assert_close(torch.cat([w0, w1]), whole)
    # valid values 1,2,4,3,5,6: mean 3.5, unbiased variance 17.5 / 5 = 3.5 on both ranks
    (mean0, var0), (mean1, var1) = _two_ranks(global_moments, [(x0, m0), (x1, m1)])
    assert float(mean0) == float(mean1) == 3.5
    assert float(var0) == pytest.approx(3.5) and float(var1) == pytest.approx(3.5)
    assert_close(whiten(x0, m0, all_reduce=lambda t: t), whiten(x0, m0))  # one process: the plain form


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
