"""The validator: when to validate, on which text, when to stop early, the exact final scores.

It owns what validation needs across a run (the schedule, the fixed val
subsample, the count and cost of validations, why early stopping ended the
run); the early-stopping record itself lives in the :class:`TrainState`,
because a checkpoint carries it. Every rank holds a validator and takes part
in every score (the loss is all-reduced), so every rank takes the same decision
at the same step; only rank 0's sink writes.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

import numpy as np
import torch

from charrnn.config import Config
from charrnn.data.tokens import TokenSet, load_split
from charrnn.distributed.group import DistEnv
from charrnn.evaluation.evaluate import EvalResult, evaluate_tokens, format_score
from charrnn.evaluation.sample import sample_rows
from charrnn.tracking import Tracker
from charrnn.train.metrics import MetricsSink, score_record
from charrnn.train.pruning import TrialPruner
from charrnn.train.state import TrainState
from charrnn.train.validation import EvalSchedule, val_chars_for, val_subsample

log = logging.getLogger("charrnn")


class Validator:
    """One rank's validation during a run, and the final scores of the models it keeps."""

    def __init__(
        self,
        cfg: Config,
        tokens: TokenSet,
        env: DistEnv,
        device: torch.device,
        sink: MetricsSink,
        tracker: Tracker,
        chars_per_step: int,
        pruner: TrialPruner | None = None,
    ):
        self.cfg, self.tokens, self.env, self.device = cfg, tokens, env, device
        self.sink, self.tracker, self.chars_per_step = sink, tracker, chars_per_step
        self.val_tokens = load_split(tokens, "val")
        self.schedule = EvalSchedule.from_config(cfg.train)
        self.sample: np.ndarray | None = None  # the fixed subsample every validation scores
        self.first_step = 0  # where this session started: the training before a validation
        self.validations = 0  # in this session
        self.seconds = 0.0  # their cost, inside the training time
        self.stopped_early: str | None = None
        self.pruner = pruner  # a sweep's trial: its study may stop the run
        self.pruned_at: int | None = None

    def start_session(self, step: int, fraction: float) -> None:
        """A resumed run has passed the validations up to where it stopped: none is repeated."""
        self.first_step = step
        self.schedule.resume_at(fraction)

    def due(self, step: int, fraction: float) -> bool:
        """Whether to validate after ``step``, with ``fraction`` of the horizon done.

        Agreed by all ranks.
        """
        return self.schedule.due(step, fraction)

    def validate(self, state: TrainState, final: bool = False) -> EvalResult | None:
        """Score the fixed subsample; rank 0 records it, with a row of samples for W&B.

        ``final``: the run's last validation, which a sweep's pruner reads but never acts on.
        """
        if len(self.val_tokens) < 2:
            return None
        started, early = time.perf_counter(), state.early_stopping
        val = self.score(state.model, self.text(state))
        best = early.observe(val.loss_nats, state.step)
        number = self.schedule.number(state.step)
        if self.pruner and self.pruner.should_stop(number, val.loss_nats, final):
            self.pruned_at = state.step
        standing = (
            "new best"
            if best
            else f"best {early.best_loss:.4f} at step {early.best_step} "
            f"({early.stale}/{early.patience or 'no'} patience)"
        )
        self.sink.record(
            state.step,
            score_record("val", val) | {"val/chars": val.chars, "time_s": state.train_seconds},
            f"step {state.step} | val {val.loss_nats:.4f} nats/char | {val.bpc:.4f} bits/char "
            f"| ppl {val.perplexity:.3f} | {standing}",
        )
        if self.env.is_main and self.tracker.run_id is not None:
            rows = sample_rows(
                state.model,
                self.tokens.vocab,
                self.cfg.track,
                self.device,
                seed=self.cfg.train.seed,
            )
            self.tracker.log_samples(state.step, rows)
        self.validations += 1
        self.seconds += time.perf_counter() - started
        return val

    def text(self, state: TrainState) -> np.ndarray:
        """The subsample every validation scores.

        It is sized at the run's first validation and kept in checkpoints.
        """
        if not state.val_chars:  # the training between two validations sets its size
            between = self.schedule.chars_between(state.step - self.first_step, self.chars_per_step)
            state.val_chars = val_chars_for(between, self.cfg.train.val_chars)
        if self.sample is None:
            self.sample = val_subsample(
                self.val_tokens, state.val_chars, self.cfg.train.eval_batch_size
            )
            if self.env.is_main:
                log.info(
                    "validation: %s of the %s val characters, the same ones each time",
                    f"{len(self.sample):,}",
                    f"{len(self.val_tokens):,}",
                )
        return self.sample

    def early_stop(self, state: TrainState) -> bool:
        """Whether patience has run out; the reason goes to the log, W&B and the summary."""
        early = state.early_stopping
        if self.pruned_at is not None:
            self.stopped_early = f"pruned at step {self.pruned_at}"
        elif early.exhausted:
            self.stopped_early = early.reason()
        else:
            return False
        if self.env.is_main:
            log.warning("%s: stopping; best.pt is step %s", self.stopped_early, early.best_step)
        self.tracker.set_summary({"stopped_early": self.stopped_early})
        return True

    def score_kept_models(
        self, state: TrainState, load_best: Callable[[], None]
    ) -> dict[str, EvalResult]:
        """Exact full-split scores: ``last_val`` of the last model, ``val`` and ``test`` of best.pt.

        Without a best.pt (no validation) or when best.pt is the final model, ``val`` and
        ``test`` score the final model. ``load_best`` puts best.pt's weights into the model.
        """
        step, best_step, scores = state.step, state.early_stopping.best_step, {}
        if len(self.val_tokens) >= 2:
            scores["last_val"] = scores["val"] = self.score(state.model, self.val_tokens)
            self.sink.record(
                step,
                score_record("val_full", scores["val"]),
                f"step {step} | full val {format_score(scores['val'].to_dict())} (last model)",
            )
        if best_step is not None and best_step != step:
            load_best()
            scores["val"] = self.score(state.model, self.val_tokens)
        test_tokens = load_split(self.tokens, "test")
        if len(test_tokens) >= 2:
            scores["test"] = self.score(state.model, test_tokens)
        self.record_final(scores, step, best_step)
        return scores

    def record_final(self, scores: dict[str, EvalResult], step: int, best_step: int | None) -> None:
        record = {}
        if "val" in scores:
            record = {
                f"best/{key}": value for key, value in score_record("val", scores["val"]).items()
            }
        record |= score_record("test", scores["test"]) if "test" in scores else {}
        which = "the last model" if best_step in (None, step) else f"best.pt, step {best_step}"
        line = " | ".join(
            f"{split} {format_score(scores[split].to_dict())}"
            for split in ("val", "test")
            if split in scores
        )
        self.sink.record(
            step,
            record | {"best_step": step if best_step is None else best_step},
            f"final scores of {which}: {line}",
        )

    def score(self, model: torch.nn.Module, tokens) -> EvalResult:
        """Exact scores in fp32 whatever the training precision.

        So they match ``charrnn evaluate``.
        """
        return evaluate_tokens(
            model,
            tokens,
            num_streams=self.cfg.train.eval_batch_size,
            device=self.device,
            env=self.env,
        )
