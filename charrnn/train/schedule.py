"""How far along a run is: its stopping rule, the learning-rate schedule and the progress line.

A run stops at the first of ``max_steps``, ``epochs`` and ``time_budget_s``.
:class:`Budget` owns that horizon and answers "what fraction is done?" for the
schedule, the stop rule and the progress line alike, so the three never disagree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from charrnn.config import TrainConfig
from charrnn.errors import ConfigError


def lr_factor(
    step: int, progress: float, warmup_steps: int, min_ratio: float, schedule: str = "linear"
) -> float:
    """Linear warm-up over steps, then a linear or cosine decay to ``min_ratio``.

    The decay runs over ``progress`` in [0, 1].
    """
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(progress, 1.0)
    shape = 1 - progress if schedule == "linear" else 0.5 * (1 + math.cos(math.pi * progress))
    return min_ratio + (1 - min_ratio) * shape


@dataclass(frozen=True)
class Budget:
    """The run's horizon: a step count, a wall-clock budget, or both.

    The step count comes from ``max_steps`` or ``epochs``.
    """

    horizon: int | None  # steps; None when only the clock stops the run
    time_budget_s: float  # 0: no clock limit
    # an explicit lr decay horizon: a run can be extended without changing its schedule
    decay_steps: int = 0

    @classmethod
    def from_config(cls, t: TrainConfig, windows_per_epoch: int) -> Budget:
        bounds = []
        if t.max_steps > 0:
            bounds.append(t.max_steps)
        if t.epochs > 0:
            bounds.append(math.ceil(t.epochs * windows_per_epoch))
        if not bounds and t.time_budget_s <= 0:
            raise ConfigError(
                "no stopping rule: max_steps, epochs and time_budget_s are all 0",
                where="train",
                fix="set train.max_steps=N, train.epochs=E or train.time_budget_s=SECONDS",
            )
        return cls(min(bounds) if bounds else None, t.time_budget_s, t.lr_decay_steps)

    def fraction(self, step: int, elapsed_s: float) -> float:
        """The share of the run done after ``step`` steps and ``elapsed_s`` seconds (may pass 1)."""
        by_steps = step / self.horizon if self.horizon else 0.0
        by_time = elapsed_s / self.time_budget_s if self.time_budget_s > 0 else 0.0
        return max(by_steps, by_time)

    def lr_progress(self, step: int, elapsed_s: float) -> float:
        """Where the lr decay stands.

        On the explicit decay horizon if one is set, else on the run's own.
        """
        return step / self.decay_steps if self.decay_steps > 0 else self.fraction(step, elapsed_s)

    def planned_steps(self, step: int, elapsed_s: float, pace_s: float) -> float:
        """The steps the run will have taken at its end, at ``pace_s`` seconds a step from here."""
        by_time = (
            step + max(self.time_budget_s - elapsed_s, 0.0) / max(pace_s, 1e-9)
            if self.time_budget_s > 0
            else math.inf
        )
        return min(float(self.horizon) if self.horizon else math.inf, by_time)

    def steps_done(self, step: int) -> bool:
        return self.horizon is not None and step >= self.horizon

    def time_up(self, elapsed_s: float) -> bool:
        return self.time_budget_s > 0 and elapsed_s >= self.time_budget_s

    def eta_s(self, step: int, elapsed_s: float) -> float:
        done = min(self.fraction(step, elapsed_s), 1.0)
        return elapsed_s * (1 - done) / done if done > 0 else float("nan")

    def describe(self, step: int, elapsed_s: float) -> str:
        """``step 120/1000 ( 12.0%)`` for the progress line."""
        return (
            f"step {step}"
            + (f"/{self.horizon}" if self.horizon else "")
            + f" ({min(self.fraction(step, elapsed_s), 1.0):5.1%})"
        )


class AgreedClock:
    """Training time as every rank agrees on it, for the learning rate and the stop rule.

    Each rank's own clock starts when it reaches the loop, and rank 0 gets there
    later (it sets up W&B first), so a schedule read from per-rank clocks gives
    each rank its own learning rate at the same step; DDP averages gradients
    but never re-syncs parameters, and the replicas drift apart. This clock
    holds the largest elapsed time over the ranks at the last agreement step
    (an all-reduce the loop makes anyway to agree on stopping) and, between
    agreements, extrapolates by steps at the agreed pace: a value every rank
    computes identically.
    """

    def __init__(self, step: int, seconds: float):
        self.start_step, self.start_s = step, seconds
        self.step, self.seconds = step, seconds

    def agree(self, step: int, seconds: float) -> None:
        """Record the agreed (all-reduced maximum) elapsed time at ``step``."""
        self.step, self.seconds = step, seconds

    def at(self, step: int) -> float:
        """The agreed elapsed time at ``step`` (extrapolated past the last agreement)."""
        if step <= self.step or self.step == self.start_step:
            return self.seconds
        pace = (self.seconds - self.start_s) / (self.step - self.start_step)
        return self.seconds + (step - self.step) * pace
