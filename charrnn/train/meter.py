"""Training time and throughput.

The run's clock, the window since the last log line and the session's average.
Time spent validating or checkpointing still counts as training time (the
budget's clock is wall-clock), but it is left out of the logged chars/s, which
measures the optimiser steps alone.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator

import torch


class ThroughputMeter:
    """The clocks one rank reads, and the loss summed since the last log line.

    The loss is summed on the device: no host sync.
    """

    def __init__(self, chars_per_step: int, device: torch.device):
        self.chars_per_step = chars_per_step
        self.loss_sum = torch.zeros((), device=device)
        self.start_session(0.0)

    def start_session(self, train_seconds: float) -> None:
        """Start counting; a resumed run's clock continues from the ``train_seconds`` it had."""
        self.session_start = time.perf_counter()
        self.train_seconds_at_start = train_seconds
        self.restart_window()

    def elapsed(self) -> float:
        """Training seconds of the whole run so far (this session plus what it resumed)."""
        return time.perf_counter() - self.session_start + self.train_seconds_at_start

    def count(self, loss: torch.Tensor) -> None:
        """One optimiser step and its loss."""
        self.loss_sum += loss
        self.window_steps += 1

    def window_seconds(self) -> float:
        """Seconds of the steps in this window (after a host sync, so the GPU's work is in them)."""
        return time.perf_counter() - self.window_start

    def restart_window(self) -> None:
        """A new window of logged loss and throughput (after each log line)."""
        self.loss_sum.zero_()
        self.window_start, self.window_steps = time.perf_counter(), 0

    @contextlib.contextmanager
    def off_the_clock(self) -> Iterator[None]:
        """Leave the time of the block (an evaluation, a checkpoint) out of the window's chars/s."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.window_start += time.perf_counter() - started

    def session_seconds(self, train_seconds: float) -> float:
        """The training seconds of this session alone."""
        return train_seconds - self.train_seconds_at_start

    def average_rate(self, steps_this_session: int, step: int, train_seconds: float) -> float:
        """chars/s of this session (evaluation included).

        For a run resumed at its end, of the whole run.
        """
        if steps_this_session:
            seconds = time.perf_counter() - self.session_start
            return steps_this_session * self.chars_per_step / max(seconds, 1e-9)
        return step * self.chars_per_step / train_seconds if train_seconds > 0 else 0.0
