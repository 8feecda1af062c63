from typing import NamedTuple

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.testing import assert_close

from lit_rlhf.rl.minibatch import index_record, minibatch_indices


def test_minibatch_sizes_and_reproducibility():
    batches = minibatch_indices(5, 2, torch.Generator().manual_seed(0))
    assert [len(b) for b in batches] == [2, 2, 1]
    again = minibatch_indices(5, 2, torch.Generator().manual_seed(0))
    assert [b.tolist() for b in batches] == [b.tolist() for b in again]


def test_minibatch_indices_are_shuffled():
    batches = minibatch_indices(64, 64, torch.Generator().manual_seed(0))
    assert batches[0].tolist() != list(range(64))


def test_minibatch_rejects_bad_sizes():
    with pytest.raises(ValueError, match="batch_size"):
        minibatch_indices(4, 0, torch.Generator())


@settings(max_examples=50, deadline=None)
@given(st.integers(0, 40), st.integers(1, 12), st.integers(0, 2**31 - 1))
def test_minibatch_indices_partition_range(n, batch_size, seed):
    batches = minibatch_indices(n, batch_size, torch.Generator().manual_seed(seed))
    assert len(batches) == -(-n // batch_size)
    assert all(len(b) <= batch_size for b in batches)
    flat = torch.cat(batches).tolist() if batches else []
    assert sorted(flat) == list(range(n))


class Rollout(NamedTuple):
    tokens: torch.Tensor  # (N,)
    values: torch.Tensor  # (N, 2)
    note: str
    extra: torch.Tensor | None


def test_index_record_indexes_tensors_and_keeps_the_rest():
    record = Rollout(torch.tensor([10, 20, 30, 40]), torch.arange(8.0).reshape(4, 2), "epoch 1", None)
    out = index_record(record, torch.tensor([3, 1]))
    assert isinstance(out, Rollout)
    assert out.tokens.tolist() == [40, 20]
    assert_close(out.values, torch.tensor([[6.0, 7.0], [2.0, 3.0]]))
    assert out.note == "epoch 1" and out.extra is None


def test_micro_batches_by_hand():
    from lit_rlhf.rl.minibatch import micro_batches

    assert micro_batches(5, 2) == [slice(0, 2), slice(2, 4), slice(4, 5)]
    assert micro_batches(4, 0) == [slice(0, 4)] == micro_batches(4, 4) == micro_batches(4, 9)
    assert micro_batches(0, 2) == [slice(0, 0)]
    with pytest.raises(ValueError):
        micro_batches(-1, 2)


def test_token_shares_make_part_means_add_up_to_the_whole_mean():
    from lit_rlhf.rl.masked import masked_mean
    from lit_rlhf.rl.minibatch import micro_batches, token_shares

    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [1.0, 1.0, 1.0]])  # 2 + 1 + 3 = 6 tokens
    parts = micro_batches(3, 2)
    shares = token_shares(mask, parts)
    assert torch.equal(shares, torch.tensor([3 / 6, 3 / 6]))
    x = torch.tensor([[1.0, 2.0, 100.0], [3.0, 100.0, 100.0], [4.0, 5.0, 6.0]])
    parts_mean = sum(s * masked_mean(x[p], mask[p]) for s, p in zip(shares, parts, strict=True))
    torch.testing.assert_close(parts_mean, masked_mean(x, mask))  # (1+2+3+4+5+6) / 6 = 3.5
    assert float(parts_mean) == pytest.approx(3.5)
    assert torch.equal(token_shares(torch.zeros(2, 3), micro_batches(2, 1)), torch.zeros(2))
