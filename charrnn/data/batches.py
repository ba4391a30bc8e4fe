"""Batching for truncated BPTT, char-rnn style, with a global data cursor.

The training split is cut into ``batch_size`` contiguous streams (the *global*
batch). Step ``s`` reads window ``s mod windows_per_epoch`` of every stream, so
the hidden state carried from one window to the next has really seen the text
before it. Rank ``r`` of ``W`` owns streams ``[r*B/W, (r+1)*B/W)``: the
layout, and so the data a step sees, depends only on the global batch size
and the step, never on the number of processes. That is what lets a
checkpoint written by W processes resume on a different W.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from charrnn.data.tokens import check_trainable
from charrnn.errors import ConfigError

IGNORE_INDEX = -100


@dataclass(frozen=True)
class Batch:
    tokens: torch.Tensor  # [local_batch, seq_len + 1] int64, contiguous (pinned for a CUDA copy)
    epoch: int
    window: int  # index within the stream's current segment; 0 -> the hidden state must be reset

    @property
    def inputs(self) -> torch.Tensor:
        return self.tokens[:, :-1]

    @property
    def targets(self) -> torch.Tensor:
        return self.tokens[:, 1:]

    def to(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(inputs, targets) on ``device``: one asynchronous copy, then two views.

        The copy is of the contiguous window: copying the non-contiguous views
        themselves would stage each through a pageable temporary with a
        blocking copy, every step.
        """
        tokens = self.tokens.to(device, non_blocking=True)
        return tokens[:, :-1], tokens[:, 1:]


def rank_slice(n: int, rank: int, world_size: int) -> slice:
    """Contiguous, balanced share of ``n`` items for ``rank`` (sizes differ by at most 1)."""
    base, extra = divmod(n, world_size)
    start = rank * base + min(rank, extra)
    return slice(start, start + base + (rank < extra))


class StreamBatcher:
    """``batch_size`` streams of consecutive windows over the training split.

    Classic char-rnn (``segment_windows=0``): stream ``b`` is the ``b``-th
    contiguous slice of the split and runs through it window by window.

    Segments (``segment_windows=K``): the split is cut into segments of ``K``
    windows; every ``K`` steps each stream moves on to a new segment, taken in
    a seeded random order that changes every epoch, and the carried state is
    reset. A short budget then sees hundreds of places in the corpus instead of
    ``batch_size``, which generalises better, while the state is still carried
    across the windows of a segment.
    """

    def __init__(
        self,
        tokens: np.ndarray,
        batch_size: int,
        seq_len: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        segment_windows: int = 0,
        seed: int = 0,
        source: str = "train split",
    ):
        if batch_size % world_size:
            raise ConfigError(
                f"train.batch_size={batch_size} (global streams) is not divisible by "
                f"{world_size} processes",
                fix=f"use a multiple of {world_size}, e.g. "
                f"{batch_size - batch_size % world_size or world_size}",
            )
        # prepare() and the pipeline flow refuse such a split earlier; this is the only
        # check on `train --tokens DIR`.
        check_trainable(len(tokens), batch_size, seq_len, source)
        self.tokens = tokens
        self.batch_size, self.seq_len, self.seed = batch_size, seq_len, seed
        self.rows = rank_slice(batch_size, rank, world_size)
        if segment_windows <= 0:  # one segment per stream, in order
            self.stride = len(tokens) // batch_size
            self.segment_windows = (self.stride - 1) // seq_len
            self.num_segments, self.shuffle = batch_size, False
        else:
            self.stride = segment_windows * seq_len
            self.segment_windows = segment_windows
            self.num_segments, self.shuffle = (len(tokens) - 1) // self.stride, True
            if self.num_segments < batch_size:
                raise ConfigError(
                    f"train.segment_windows={segment_windows} x seq_len={seq_len} leaves "
                    f"{self.num_segments} segments for {batch_size} streams",
                    where=source,
                    fix="lower train.segment_windows (0: one contiguous stream per batch row)",
                )
        self.rounds_per_epoch = self.num_segments // batch_size
        self.windows_per_epoch = self.rounds_per_epoch * self.segment_windows
        self._order: tuple[int, np.ndarray] | None = None
        self._offsets = np.arange(seq_len + 1)

    @property
    def local_batch_size(self) -> int:
        return self.rows.stop - self.rows.start

    @property
    def chars_per_step(self) -> int:
        """Characters consumed per optimisation step, over all ranks."""
        return self.batch_size * self.seq_len

    def _segment_order(self, epoch: int) -> np.ndarray:
        if self._order is None or self._order[0] != epoch:
            order = (
                np.random.default_rng([self.seed, epoch]).permutation(self.num_segments)
                if self.shuffle
                else np.arange(self.num_segments)
            )
            self._order = (epoch, order)
        return self._order[1]

    def batch(self, step: int, *, pin_memory: bool = False) -> Batch:
        """The window of ``step`` for this rank's streams.

        ``pin_memory`` lets a CUDA copy run asynchronously.
        """
        epoch, in_epoch = divmod(step, self.windows_per_epoch)
        round_, window = divmod(in_epoch, self.segment_windows)
        segments = self._segment_order(epoch)[
            round_ * self.batch_size : (round_ + 1) * self.batch_size
        ][self.rows]
        starts = segments * self.stride + window * self.seq_len
        chunk = torch.from_numpy(
            np.asarray(self.tokens)[starts[:, None] + self._offsets].astype(np.int64)
        )
        if pin_memory:
            chunk = chunk.pin_memory()
        return Batch(chunk, epoch, window)


def eval_windows(
    tokens: np.ndarray, num_streams: int, window: int, *, rank: int = 0, world_size: int = 1
):
    """Cut a split into ``num_streams`` rows and yield it window by window.

    The rows cover every next-character target once. Yields ``(inputs, targets)``
    int64 tensors of shape [this rank's rows, <= window]; positions past a row's
    end have targets of ``IGNORE_INDEX``. Target ``t+1`` is predicted from tokens
    ``<= t`` of its own row, so the sum of losses over all rows and ranks is the
    loss of every character from the second on. Each window is read from
    ``tokens`` (a memmap) as it is needed: memory stays flat however long the
    split.
    """
    n_targets = len(tokens) - 1
    if n_targets < 1:
        return
    num_streams = max(1, min(num_streams, n_targets))
    length = -(-n_targets // num_streams)
    starts = np.arange(num_streams)[rank_slice(num_streams, rank, world_size)] * length
    if not starts.size:
        return
    # a row's inputs are [start, end), its targets one later
    ends = np.minimum(starts + length, n_targets)
    data = np.asarray(tokens)
    for offset in range(0, length, window):
        positions = starts[:, None] + offset + np.arange(min(window, length - offset) + 1)
        chunk = torch.from_numpy(data[np.minimum(positions, n_targets)].astype(np.int64))
        valid = torch.from_numpy(positions[:, :-1] < ends[:, None])
        yield chunk[:, :-1].masked_fill(~valid, 0), chunk[:, 1:].masked_fill(~valid, IGNORE_INDEX)
