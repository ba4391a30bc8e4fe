"""The run's dropout rate: fixed by the config, or decided by the run (``model.dropout=auto``).

With ``auto``, the rate comes from the epochs the run will see.

Dropout pays only once a run would otherwise memorise its corpus, and it costs
twice: a noisier gradient and, on CPU, time for the masks. bench/profile_ddp.py
put the two masks at ~20 % of a step; the head's now comes from uniform draws
(:class:`charrnn.model.lstm.UniformDropout`, ~3x cheaper), the LSTM's own between
its layers is still about half of that 20 %. On the generalisation benchmark
(bench/RESULTS.md, BF16 EPYC, 2 cores, default model):

* shakespeare, 120 s (~1 epoch): 0.3 costs ~0.05 nats/char against none;
* shakespeare, 600 s (~5 epochs): none 1.509, 0.1 1.524, 0.3 1.524 (with none
  the best checkpoint comes at ~93 % of the run: barely past its best);
* poems (234 k characters), 120 s (~20 epochs): none 1.786, 0.2 1.743, 0.3 1.732.

These were measured before ``train.weight_decay=0.1`` became the default
(2026-11-30, 32a1f75), which regularises long runs on its own; the two were not tuned
together. So: no dropout up to ``RAMP_EPOCHS[0]`` epochs, the full rate from
``RAMP_EPOCHS[1]``, linear between (no cliff for a run near the boundary). A
step- or epoch-limited run knows its epochs up front; a run on a clock learns
them from its pace over ``PACE_STEPS`` steps after ``PACE_FROM_STEP``, read from
the agreed clock so that every rank takes the same decision at the same step.
The rate decided is written into every checkpoint and kept on resume.
"""

from __future__ import annotations

from dataclasses import dataclass

from charrnn.train.schedule import AgreedClock, Budget

FULL_RATE = 0.3
RAMP_EPOCHS = (6.0, 12.0)
# the first steps are slow (allocations, warm caches): the pace is taken after them
PACE_FROM_STEP = 10
PACE_STEPS = 40  # so a run from scratch decides at step 50


def auto_rate(epochs: float) -> float:
    """The dropout rate for a run that will see its training split ``epochs`` times."""
    low, high = RAMP_EPOCHS
    return round(FULL_RATE * min(max((epochs - low) / (high - low), 0.0), 1.0), 3)


@dataclass
class DropoutPlan:
    """Owns the run's rate.

    ``rate`` is None until an ``auto`` plan has decided (the model runs without
    dropout until then).
    """

    auto: bool
    rate: float | None
    planned_epochs: float | None = None  # what an auto decision was based on
    # (step, agreed seconds) where the pace measurement starts
    pace_mark: tuple[int, float] | None = None

    @classmethod
    def from_config(cls, value: float | str) -> DropoutPlan:
        return cls(auto=True, rate=None) if value == "auto" else cls(auto=False, rate=float(value))

    @property
    def decided(self) -> bool:
        return self.rate is not None

    def decide_up_front(self, budget: Budget, windows_per_epoch: int) -> bool:
        """Decide now if the run's length is known in steps (no clock); True if decided."""
        if self.decided or budget.time_budget_s > 0:
            return False
        self._decide(budget.planned_steps(0, 0.0, 1.0), windows_per_epoch)
        return True

    def observe(
        self, step: int, clock: AgreedClock, budget: Budget, windows_per_epoch: int
    ) -> bool:
        """Called after every step of a run on a clock: mark the pace, then decide.

        True when it decides.
        """
        if self.decided or step < PACE_FROM_STEP:
            return False
        # step PACE_FROM_STEP, or the first step of a session resumed past it
        if self.pace_mark is None:
            self.pace_mark = (step, clock.at(step))
            return False
        mark_step, mark_s = self.pace_mark
        if step - mark_step < PACE_STEPS:
            return False
        pace = (clock.at(step) - mark_s) / (step - mark_step)
        self._decide(budget.planned_steps(step, clock.at(step), pace), windows_per_epoch)
        return True

    def _decide(self, planned_steps: float, windows_per_epoch: int) -> None:
        self.planned_epochs = planned_steps / windows_per_epoch
        self.rate = auto_rate(self.planned_epochs)

    def to_payload(self) -> dict:
        return {"auto": self.auto, "rate": self.rate, "planned_epochs": self.planned_epochs}

    def load_payload(self, payload: dict | None, shape_rate: float) -> None:
        """Keep the rate a checkpoint's run decided.

        A checkpoint from before this record used its shape's rate.
        """
        if payload is None:
            self.rate = self.rate if self.rate is not None else shape_rate
        elif self.auto and payload["rate"] is not None:
            self.rate, self.planned_epochs = payload["rate"], payload["planned_epochs"]
