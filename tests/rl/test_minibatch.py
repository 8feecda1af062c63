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
