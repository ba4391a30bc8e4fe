"""Validation during training: when to validate, on which text, and when to stop.

* :class:`EvalSchedule`: validations at fixed fractions of the run's horizon
  (``evals_per_run`` of them, whatever rule stops the run: steps, epochs or the
  clock), or every ``eval_interval`` steps when that is set.
* :func:`val_subsample`: the fixed slice of the validation split each of them
  scores, sized so that validating costs about :data:`EVAL_SHARE` of the
  training time. The same characters every time, so two scores compare two
  models, not two samples of text. The exact full-split scores come at the end.
* :class:`EarlyStopping`: the best score so far, its step, and how many
  validations have passed without beating it. Part of the checkpoint, so a
  resumed run keeps its patience and its best.

Every rank takes the same decisions: the schedule reads the agreed clock and
the scores are all-reduced, so no extra collective is needed.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from charrnn.config import ValidationConfig

# Validating should cost about this share of the training time.
EVAL_SHARE = 0.05
# Validation characters scored per second, per training character per second. Scoring is
# a forward pass only, but in fp32: on a 2-core AVX512-BF16 EPYC it ran ~48k chars/s
# against 27-36k for bf16 training (2026-11-29), and issue 13 reports bf16 training at
# ~60k on another such machine. 0.8 is below both ratios, so the subsample errs on the
# cheap side.
EVAL_SPEED_RATIO = 0.8
# Fewer characters than this make the scores too noisy to pick a best checkpoint by. A short
# run sits on this floor (120 s: ~7 s between validations), where 16,384 cost 5.0 % of
# `make run` with the W&B sample rows; 12,288 ranked its last three checkpoints as the full
# val split did, with the same gaps to within 0.005 nats/char (bench/RESULTS.md, validation floor).
MIN_VAL_CHARS = 12_288


@dataclass
class EvalSchedule:
    """When the next validation is due; ``done`` counts the planned fractions already passed."""

    interval: int  # steps between validations; 0: use the fractions
    count: int  # validations spread over the run (at fractions 1/count ... 1); 0: only at the end
    done: int = 0

    @classmethod
    def from_config(cls, t: ValidationConfig) -> EvalSchedule:
        return cls(t.eval_interval, 0 if t.eval_interval else t.evals_per_run)

    def resume_at(self, fraction: float) -> None:
        """A resumed run has passed the fractions up to where it stopped.

        No validation is repeated.
        """
        self.done = min(self.count, math.floor(fraction * self.count + 1e-9))

    def due(self, step: int, fraction: float) -> bool:
        """Whether to validate after ``step``, with ``fraction`` of the horizon done.

        Agreed by all ranks.
        """
        if self.interval:
            return step % self.interval == 0
        if self.count == 0 or fraction * self.count + 1e-9 < self.done + 1:
            return False
        self.resume_at(fraction)  # a slow step may pass two fractions: validate once
        return True

    def number(self, step: int) -> int:
        """The number (1, 2, ...) of the validation after ``step`` in the whole run.

        Counted across resumed sessions, so a retried trial reports its scores to its
        study where it left off. Read after :meth:`due`; the run's last validation
        counts as the fraction it reached, or as the interval it started.
        """
        if self.interval:
            return -(-step // self.interval)
        return max(self.done, 1)

    def chars_between(self, step: int, chars_per_step: int) -> int:
        """Training characters between two validations, judged at the first one (at ``step``)."""
        return (self.interval or step) * chars_per_step


def val_chars_for(train_chars_between: int, configured: int) -> int:
    """Characters each validation scores.

    ``train.val_chars`` when set, else :data:`EVAL_SHARE` of the time.
    """
    if configured:
        return configured
    return max(MIN_VAL_CHARS, int(EVAL_SHARE * EVAL_SPEED_RATIO * train_chars_between))


def val_subsample(tokens: np.ndarray, chars: int, streams: int) -> np.ndarray:
    """``chars`` characters of the split as ``streams`` evenly spaced slices.

    One slice per scoring stream. Spread over the split, not its first ``chars``:
    a split's start is one play, one file or one author. The whole split when it
    is no longer than ``chars``.
    """
    if chars >= len(tokens):
        return np.asarray(tokens)
    streams = max(1, min(streams, chars))
    length = -(-chars // streams)
    starts = np.linspace(0, len(tokens) - length, streams).astype(np.int64)
    return np.concatenate([np.asarray(tokens[s : s + length]) for s in starts])


@dataclass
class EarlyStopping:
    """The best validation so far and the validations since; ``patience`` 0 never stops."""

    patience: int
    best_loss: float = math.inf
    best_step: int | None = None
    stale: int = 0  # validations since the best

    def observe(self, loss: float, step: int) -> bool:
        """Record a validation; True when it is a new best."""
        if loss < self.best_loss:
            self.best_loss, self.best_step, self.stale = loss, step, 0
            return True
        self.stale += 1
        return False

    @property
    def exhausted(self) -> bool:
        return self.patience > 0 and self.stale >= self.patience

    def reason(self) -> str:
        return (
            f"early stopping: {self.stale} validations without a new best "
            f"(best {self.best_loss:.4f} nats/char at step {self.best_step})"
        )

    def to_payload(self) -> dict[str, Any]:
        return {
            "best_val_loss": self.best_loss if math.isfinite(self.best_loss) else None,
            "best_step": self.best_step,
            "stale_evals": self.stale,
        }

    def load_payload(self, payload: dict[str, Any]) -> None:
        """From a checkpoint.

        Checkpoints written before early stopping existed carry only ``best_val_loss``.
        """
        best = payload.get("best_val_loss")
        self.best_loss = best if best is not None else math.inf
        self.best_step, self.stale = payload.get("best_step"), payload.get("stale_evals", 0)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
