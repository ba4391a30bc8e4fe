"""Batching: contiguous streams, hopping segments, and independence from the number of ranks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from charrnn.data.batches import IGNORE_INDEX, StreamBatcher, eval_windows, rank_slice
from charrnn.errors import ConfigError

TOKENS = np.arange(10_000, dtype=np.int64) % 251  # position-revealing data


def test_classic_streams_are_contiguous_slices():
    b = StreamBatcher(TOKENS, 4, 10)
    length = len(TOKENS) // 4
    for step in (0, 1, 5):
        batch = b.batch(step)
        expected = np.stack(
            [TOKENS[r * length + step * 10 : r * length + step * 10 + 11] for r in range(4)]
        )
        assert torch.equal(batch.inputs, torch.from_numpy(expected[:, :-1]))
        assert torch.equal(batch.targets, torch.from_numpy(expected[:, 1:]))
    assert b.batch(b.windows_per_epoch).window == 0 and b.batch(b.windows_per_epoch).epoch == 1


@pytest.mark.parametrize("segment_windows", [0, 5])
def test_ranks_split_the_global_batch_exactly(segment_windows):
    whole = StreamBatcher(TOKENS, 6, 8, segment_windows=segment_windows, seed=3)
    parts = [
        StreamBatcher(TOKENS, 6, 8, rank=r, world_size=3, segment_windows=segment_windows, seed=3)
        for r in range(3)
    ]
    for step in (0, 4, 5, 17, whole.windows_per_epoch + 2):
        joined = torch.cat([p.batch(step).inputs for p in parts])
        assert torch.equal(joined, whole.batch(step).inputs)


def test_segments_hop_and_cover_the_split_once_per_epoch():
    data = np.arange(5_000, dtype=np.int64)  # value = position
    b = StreamBatcher(data, 4, 10, segment_windows=5, seed=0)
    firsts = []
    for step in range(0, b.windows_per_epoch, b.segment_windows):  # the first window of every round
        batch = b.batch(step)
        assert batch.window == 0
        firsts.extend(batch.inputs[:, 0].tolist())
    assert len(set(firsts)) == len(firsts) == b.rounds_per_epoch * 4  # no segment twice in an epoch
    assert all(start % b.stride == 0 for start in firsts)
    assert not np.array_equal(b._segment_order(0), b._segment_order(1))  # a new order every epoch


def test_segment_windows_continue_within_a_segment():
    data = np.arange(5_000, dtype=np.int64)  # value = position
    b = StreamBatcher(data, 4, 10, segment_windows=5, seed=1)
    first, second = b.batch(0).inputs, b.batch(1).inputs
    assert torch.equal(second[:, 0], first[:, 0] + 10)  # same segment, next window
    # new segments start at a boundary
    assert torch.equal(b.batch(5).inputs[:, 0] % 50, torch.zeros(4, dtype=torch.long))
    assert not torch.equal(b.batch(5).inputs[:, 0], first[:, 0] + 50)  # ... somewhere else


def test_bad_layouts_are_explained():
    with pytest.raises(ConfigError, match="not divisible by 4"):
        StreamBatcher(TOKENS, 6, 8, world_size=4)
    with pytest.raises(ConfigError, match="segment_windows"):
        StreamBatcher(TOKENS, 64, 8, segment_windows=100)


@pytest.mark.parametrize("world_size", [1, 3])
def test_eval_windows_cover_every_target_once(world_size):
    data = np.arange(103)
    rows = []
    for rank in range(world_size):
        windows = list(eval_windows(data, 7, 4, rank=rank, world_size=world_size))
        assert all(x.shape[1] <= 4 for x, _ in windows)
        rows += list(
            zip(
                torch.cat([x for x, _ in windows], 1),
                torch.cat([y for _, y in windows], 1),
                strict=True,
            )
        )
    assert len(rows) == 7  # 7 streams of 15 positions, shared out over the ranks
    inputs, targets = torch.stack([x for x, _ in rows]), torch.stack([y for _, y in rows])
    valid = targets != IGNORE_INDEX
    assert valid.sum() == 102
    assert sorted(targets[valid].tolist()) == list(range(1, 103))
    assert torch.equal(targets[valid], inputs[valid] + 1)
    assert torch.equal(valid.int(), valid.int().cummin(dim=1).values)  # padding only at a row's end


def test_rank_slice_is_balanced_and_complete():
    for n, w in [(10, 3), (7, 7), (5, 2)]:
        sizes = [len(range(n)[rank_slice(n, r, w)]) for r in range(w)]
        assert sum(sizes) == n and max(sizes) - min(sizes) <= 1
