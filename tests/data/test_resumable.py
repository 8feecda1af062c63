"""Batches as a function of their global position: coverage, ranks, resuming, workers; per-batch seeds."""

from __future__ import annotations

import pytest
import torch

from lit_rlhf.data.resumable import (
    POSITION_KEY,
    BatchPlan,
    PositionedBatches,
    ResumablePosition,
    Source,
    positioned_loader,
)
from lit_rlhf.seeding import batch_seed, seed_all


def test_unshuffled_plan_by_hand():
    plan = BatchPlan(5, 2, shuffle=False)
    assert len(plan) == 3
    assert [plan.indices(k) for k in range(4)] == [[0, 1], [2, 3], [4], [0, 1]]  # epoch 1 starts at k=3
    assert len(BatchPlan(5, 2, shuffle=False, drop_last=True)) == 2


def test_two_ranks_split_each_step_and_wrap_the_last():
    r0, r1 = (BatchPlan(5, 2, shuffle=False, world_size=2, rank=r) for r in (0, 1))
    assert len(r0) == len(r1) == 2
    assert [r0.indices(0), r1.indices(0)] == [[0, 1], [2, 3]]
    # the last step is filled from the start of the permutation, so both ranks have a full batch
    assert [r0.indices(1), r1.indices(1)] == [[4, 0], [1, 2]]


def test_each_epoch_is_a_seeded_permutation():
    plan = BatchPlan(10, 3, seed=7)
    for epoch in range(3):
        rows = [i for k in range(epoch * len(plan), (epoch + 1) * len(plan)) for i in plan.indices(k)]
        assert sorted(rows) == list(range(10))
    assert plan.permutation(0) != plan.permutation(1)
    assert plan.permutation(1) == BatchPlan(10, 3, seed=7).permutation(1)
    assert plan.permutation(0) != BatchPlan(10, 3, seed=8).permutation(0)


def test_ranks_are_disjoint_within_an_epoch():
    plans = [BatchPlan(64, 4, seed=1, drop_last=True, world_size=2, rank=r) for r in (0, 1)]
    seen = [i for p in plans for k in range(len(p)) for i in p.indices(k)]
    assert sorted(seen) == list(range(64))


def test_too_few_rows_for_drop_last_is_an_error():
    with pytest.raises(ValueError, match="3 rows make no batch of 2 x 2 processes"):
        BatchPlan(3, 2, drop_last=True, world_size=2)


def _stream(start: int, ptx: bool = False) -> PositionedBatches:
    sources = {"rows": Source(list(range(10)), BatchPlan(10, 3, seed=0), list)}
    if ptx:
        sources["ptx"] = Source(list("abcd"), BatchPlan(4, 2, seed=1, drop_last=True), "".join)
    return PositionedBatches(sources, lambda: start)


def test_iteration_starts_at_the_position_and_ends_with_the_epoch():
    full = list(_stream(0, ptx=True))
    assert [b[POSITION_KEY] for b in full] == [0, 1, 2, 3]
    resumed = list(_stream(2, ptx=True))
    assert resumed == full[2:]  # the same batches, both streams, as the uninterrupted epoch
    assert [b[POSITION_KEY] for b in _stream(5)] == [5, 6, 7]  # mid-epoch 1
    # the pretraining stream cycles on its own: 2 batches an epoch, so positions 0 and 2 start new epochs
    assert sorted(full[0]["ptx"] + full[1]["ptx"]) == list("abcd")


def test_workers_keep_position_order():
    single = [b[POSITION_KEY] for b in positioned_loader(_stream(1), num_workers=0)]
    batches = list(positioned_loader(_stream(1), num_workers=2))
    assert [b[POSITION_KEY] for b in batches] == single == [1, 2, 3]
    assert [b["rows"] for b in batches] == [b["rows"] for b in _stream(1)]


def test_single_unnamed_source_yields_its_batch_dict():
    source = Source([1, 2, 3], BatchPlan(3, 2, shuffle=False), lambda rows: {"x": torch.tensor(rows)})
    batch = next(iter(PositionedBatches({"": source}, lambda: 0)))
    assert batch[POSITION_KEY] == 0 and batch["x"].tolist() == [1, 2]


def test_the_module_counts_consumed_batches_and_restores_the_count():
    dm = ResumablePosition()
    batch = {"x": 1, POSITION_KEY: 6}
    assert dm.on_before_batch_transfer(batch, 0) == {"x": 1}  # the key never reaches the step
    assert dm.resume_position() == 7
    assert dm.on_before_batch_transfer({"val": 2}, 0) == {"val": 2} and dm.consumed == 7
    other = ResumablePosition()
    other.load_state_dict(dm.state_dict())
    assert other.resume_position() == 7


def test_batch_seeds_differ_by_rank_and_batch_and_repeat():
    seeds = {batch_seed(0, r, b) for r in range(2) for b in range(100)}
    assert len(seeds) == 200 and all(0 <= s < 2**63 for s in seeds)
    assert batch_seed(3, 1, 5) == batch_seed(3, 1, 5) != batch_seed(4, 1, 5)
    seed_all(batch_seed(0, 0, 1))
    a = torch.rand(3)
    torch.rand(5)
    seed_all(batch_seed(0, 0, 1))
    assert torch.equal(a, torch.rand(3))


def test_window_total_sums_every_rank_and_micro_batch_of_the_optimizer_step():
    from lit_rlhf.data.resumable import window_total

    counts = list(range(1, 11))  # row i counts i + 1
    plan = BatchPlan(10, 2, shuffle=False, world_size=2, rank=1)  # 3 global steps of 4 rows per epoch
    assert window_total(plan, counts, 0, 2) == window_total(plan, counts, 1, 2) == sum(range(1, 9))
    # the epoch's last step closes a short window; its last slots wrap to rows 0 and 1 (padding, as DDP pads)
    assert window_total(plan, counts, 2, 2) == 9 + 10 + 1 + 2
    assert window_total(plan, counts, 3, 2) == sum(range(1, 9))  # epoch 1 starts a new window
    assert window_total(plan, counts, 4, 1) == 5 + 6 + 7 + 8  # no accumulation: the step's rows on both ranks
