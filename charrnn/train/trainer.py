"""The training loop: truncated BPTT over carried streams, AdamW, warm-up then linear/cosine decay.

:func:`train` serves a single process and every rank under ``torchrun``: it
starts W&B on rank 0, runs a :class:`Trainer` and turns a lost peer into a
clear error. Rank 0 alone writes checkpoints, metrics and logs; all ranks run
the same number of steps because the global batch is split evenly.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import signal
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from charrnn.config import Config, OptimiserConfig, dump_config
from charrnn.data.batches import StreamBatcher
from charrnn.data.tokens import TokenSet, load_split
from charrnn.distributed import group as dist_utils
from charrnn.distributed.group import DistEnv
from charrnn.errors import DivergenceError, PeerLostError
from charrnn.evaluation.evaluate import LN2, EvalResult
from charrnn.fsutil import atomic_write_json, atomic_write_text
from charrnn.io.checkpoint import list_checkpoints
from charrnn.io.storage import RunDir
from charrnn.model.lstm import CharLSTM, ModelShape
from charrnn.model.precision import autocast_dtype
from charrnn.progress import format_duration, format_rate
from charrnn.tracking import Tracker, dataset_artifact_name, make_tracker
from charrnn.train.checkpointer import Checkpointer
from charrnn.train.dropout import FULL_RATE, RAMP_EPOCHS, DropoutPlan
from charrnn.train.meter import ThroughputMeter
from charrnn.train.metrics import MetricsSink, memory_metrics
from charrnn.train.pruning import TrialPruner
from charrnn.train.schedule import AgreedClock, Budget, lr_factor
from charrnn.train.state import TrainState, seed_everything
from charrnn.train.validation import EarlyStopping
from charrnn.train.validator import Validator

log = logging.getLogger("charrnn")


@dataclass
class TrainResult:
    run_dir: str
    checkpoint: str
    best_checkpoint: str | None
    step: int
    resumed_from: int
    val: dict | None  # exact full-split scores of the model the run keeps: best.pt's, else the last
    test: dict | None
    best_val_loss: float | None  # on the validation subsample (what picks best.pt)
    chars_per_s: float
    train_seconds: float
    interrupted: bool = False
    # the signal this process got that stopped the run early (SIGINT, SIGTERM)
    stopped_by: str | None = None
    # W&B run id, mode, URL or offline dir + sync command
    tracking: dict = field(default_factory=dict)
    remote_dir: str | None = None  # the run directory's fsspec URL when train.out_dir is one
    # the step of best.pt, which val and test score; None: no validation, they score the
    # last model
    best_step: int | None = None
    last_val: dict | None = None  # exact full-split val score of the last model
    stopped_early: str | None = None  # why early stopping (or a sweep's pruner) ended the run
    pruned_at: int | None = None  # the step a sweep's pruner stopped this trial at
    validations: int = 0  # validations during this session
    eval_seconds: float = 0.0  # their cost, inside train_seconds

    @property
    def scored_step(self) -> int:
        """The step of the model that ``val`` and ``test`` score."""
        return self.step if self.best_step is None else self.best_step

    def scores_at(self, step: int) -> dict[str, dict]:
        """The exact split scores this run already has for its model at ``step``.

        There are none for another step.
        """
        if step != self.scored_step:
            return {}
        return {split: score for split, score in (("val", self.val), ("test", self.test)) if score}

    def to_dict(self) -> dict:
        return asdict(self)


def make_optimizer(model: torch.nn.Module, t: OptimiserConfig) -> torch.optim.Optimizer:
    """AdamW; the fused (single-kernel) implementation where PyTorch has one for the device.

    Weight decay applies to the matrices (embedding, LSTM and head weights) only:
    decaying the biases would pull the forget gate's bias of 1 back to 0.
    """
    device_type = next(model.parameters()).device.type
    params = list(model.parameters())
    groups = [
        {"params": [p for p in params if p.dim() >= 2]},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(
        groups,
        lr=t.lr,
        betas=(t.beta1, t.beta2),
        weight_decay=t.weight_decay,
        fused=device_type in ("cuda", "cpu"),
    )


def train_step(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    inputs: torch.Tensor,
    targets: torch.Tensor,
    state,
    *,
    amp_dtype: torch.dtype | None,
    grad_clip: float,
):
    """One TBPTT update.

    Returns (loss, grad norm, detached state), all still on device: no host sync.
    """
    with torch.autocast(
        inputs.device.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None
    ):
        logits, state = model(inputs, state)
    # fp32 loss, fused log-softmax + NLL
    loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())
    loss.backward()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip > 0 else float("inf"))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach(), grad_norm.detach(), (state[0].detach().float(), state[1].detach().float())


class _StopRequest:
    """SIGINT/SIGTERM ask the loop to stop after the current step and checkpoint.

    There is no evaluation first.
    """

    def __init__(self) -> None:
        self.requested = False
        self.signal: str | None = None  # the first signal's name: the exit code is 128 + its number
        self._previous: dict[int, object] = {}

    def __enter__(self) -> _StopRequest:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:  # second signal: stop now
            raise KeyboardInterrupt
        self.requested, self.signal = True, signal.Signals(signum).name
        log.warning(
            "received %s: stopping after this step and saving a checkpoint",
            signal.Signals(signum).name,
        )

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def train(cfg: Config, tokens: TokenSet, env: DistEnv | None = None) -> TrainResult:
    """Train (or resume) the run in ``cfg.train.out_dir`` on a prepared token set."""
    env = env or DistEnv.from_env()
    device = dist_utils.pick_device(cfg.train.device, env)
    run_dir = RunDir(cfg.train.out_dir)
    # W&B starts on rank 0 before the process group exists, with its own timeout, so
    # a slow or broken W&B delays nobody's collectives and cannot hang other ranks.
    tracker = make_tracker(
        cfg.track, is_main=env.is_main, run_dir=run_dir.path, config=cfg.to_dict()
    )
    try:
        result = Trainer(cfg, tokens, env, device, tracker, run_dir).fit()
    except RuntimeError as exc:  # torch.distributed.DistBackendError is a RuntimeError
        tracker.finish(exit_code=1)
        if env.distributed and _is_peer_failure(exc):
            last = next(reversed(list_checkpoints(run_dir.path)), None)
            raise PeerLostError(
                f"lost contact with another training process ({_first_line(exc)})",
                where=f"rank {env.rank} of {env.world_size}",
                fix="a worker or its machine died; run the job again with --resume: "
                "it continues from the newest valid checkpoint"
                + (f" ({last.name})" if last else " (none written yet: it starts over)")
                + ", or use --max-restarts to let torchrun do it",
            ) from exc
        raise
    except BaseException:
        tracker.finish(exit_code=1)
        raise
    tracker.finish()
    return result


def _is_peer_failure(exc: RuntimeError) -> bool:
    text = str(exc)
    return isinstance(exc, torch.distributed.DistBackendError) or any(
        marker in text
        for marker in (
            "Connection closed by peer",
            "Connection reset by peer",
            "Broken pipe",
            "NCCL communicator was aborted",
        )
    )


def _first_line(exc: BaseException) -> str:
    return next(
        (line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__
    )[:300]


class Trainer:
    """One rank's share of a run, made of parts that each own their state.

    * :class:`TrainState`: what a checkpoint holds (model, optimiser, streams, step, best);
    * :class:`Budget`: how far along the run is; :class:`AgreedClock`: the time every rank reads;
    * :class:`ThroughputMeter`: training time and the logged loss and chars/s;
    * :class:`Validator`: when to validate, on which text, early stopping, the final scores;
    * :class:`Checkpointer`: when to save, where to resume from;
    * :class:`MetricsSink` and :class:`RunDir`: where records and files go.

    :meth:`fit` runs them in one loop, a heading per stage.
    """

    def __init__(
        self,
        cfg: Config,
        tokens: TokenSet,
        env: DistEnv,
        device: torch.device,
        tracker: Tracker,
        run_dir: RunDir,
    ):
        t = self.t = cfg.train
        self.cfg, self.tokens, self.env, self.device = cfg, tokens, env, device
        self.tracker, self.run_dir = tracker, run_dir
        self.threads = dist_utils.configure_threads(env) if device.type == "cpu" else None
        dist_utils.init_process_group(env, device)
        self.amp_dtype = autocast_dtype(t.precision, device)
        self.batcher = StreamBatcher(
            load_split(tokens, "train"),
            t.batch_size,
            t.seq_len,
            rank=env.rank,
            world_size=env.world_size,
            segment_windows=t.segment_windows,
            seed=t.seed,
            source=f"{tokens.dir} (train split)",
        )
        self.budget = Budget.from_config(t, self.batcher.windows_per_epoch)

        seed_everything(t.seed + env.rank)
        model = CharLSTM(ModelShape.from_config(cfg.model, tokens.vocab.size)).to(device)
        self.dropout = DropoutPlan.from_config(cfg.model.dropout)
        if self.dropout.decide_up_front(self.budget, self.batcher.windows_per_epoch):
            # so that a Trainer used step by step (bench/profile_ddp.py) trains as fit() would
            model.set_dropout(self.dropout.rate)
        initial = model.initial_state(self.batcher.local_batch_size, device)
        self.state = TrainState(
            model, make_optimizer(model, t), initial, early_stopping=EarlyStopping(t.patience)
        )
        self.train_model: torch.nn.Module = model  # DDP- and compile-wrapped by fit()
        self.resumed_from = 0
        if env.is_main:
            self.sink = MetricsSink(run_dir.path / "metrics.jsonl", tracker)
        else:
            self.sink = MetricsSink.disabled()
        chars_per_step = self.batcher.chars_per_step
        self.meter = ThroughputMeter(chars_per_step, device)
        pruner = TrialPruner.from_config(t, env)
        self.validator = Validator(
            cfg, tokens, env, device, self.sink, tracker, chars_per_step, pruner=pruner
        )
        self.checkpointer = Checkpointer(cfg, tokens, env, tracker, run_dir)
        # Every rank must take the same stop decision at the same step, or the next
        # collective hangs: the step horizon is deterministic, but the wall clock and
        # signals are per process, so those are agreed through an all-reduce. On CPU
        # that is cheap enough every step; on GPU it is a host sync, so every 10 steps
        # (at most): a signal still stops the run within seconds.
        self.agree_every = 1 if device.type == "cpu" else min(t.log_interval, 10)
        self.clock = AgreedClock(0, 0.0)
        self.grad_norm = torch.zeros((), device=device)
        self.lr = 0.0

    # ------------------------------------------------------------------ the loop

    def fit(self) -> TrainResult:
        """Resume, then step / log / validate / checkpoint until the run ends.

        The budget, early stopping or a signal ends it.
        """
        t, s = self.t, self.state
        # -- set up: resume, dropout, DDP and compile, the run's files, the clocks
        self.resume()
        self.apply_dropout()
        self.wrap_model()
        self.write_run_info()
        self.meter.start_session(s.train_seconds)
        self.clock = AgreedClock(s.step, s.train_seconds)
        self.validator.start_session(s.step, self.budget.fraction(s.step, s.train_seconds))
        finished, interrupted = self.agree_stop(False)
        with _StopRequest() as stop:
            while not (finished or interrupted):
                # -- one optimiser step
                self.step()
                # -- agree on stopping: every rank stops at the same step
                if s.step % self.agree_every == 0 or self.budget.steps_done(s.step):
                    finished, interrupted = self.agree_stop(stop.requested)
                # -- model.dropout=auto on a clock: decided from the agreed pace, early in the run
                windows = self.batcher.windows_per_epoch
                if self.dropout.observe(s.step, self.clock, self.budget, windows):
                    self.apply_dropout()
                # -- log
                if s.step % t.log_interval == 0 or finished or interrupted:
                    self.log()
                # -- validate on schedule and at the end (not on a signal: the checkpoint
                #    must land within the grace period)
                val = None
                fraction = self.budget.fraction(s.step, self.clock.at(s.step))
                # asked even at the end: it counts the fractions passed, which number the scores
                val_due = self.validator.due(s.step, fraction)
                if not interrupted and (finished or val_due):
                    with self.meter.off_the_clock():
                        val = self.validator.validate(s, final=finished)
                    finished = finished or self.validator.early_stop(s)
                # -- checkpoint: periodically, at the end, and whenever validation finds a new best
                is_best = val is not None and s.early_stopping.best_step == s.step
                due = self.checkpointer.due(
                    s.step, finished=finished, interrupted=interrupted, is_best=is_best
                )
                if due:
                    with self.meter.off_the_clock():
                        self.checkpointer.save(s, val, is_best=is_best, identity=self.identity())
        # -- the exact full-split scores: the last model's val, then best.pt's val and test
        scores = {}
        if finished and not interrupted:
            with self.meter.off_the_clock():
                scores = self.validator.score_kept_models(s, self.load_best)
        return self.summarise(scores, stop.signal if interrupted else None, interrupted=interrupted)

    # ------------------------------------------------------------------ stages

    def resume(self) -> None:
        """Continue from the checkpoint every rank agreed on, if the run resumes.

        It resumes too when torchrun restarted it.
        """
        env = self.env
        # torchrun restarted the worker group: continue, whatever train.resume says
        restarted = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0
        found = self.checkpointer.find_resume(restarted=restarted)
        if found is None:
            return
        payload, path = found
        self.state.load_payload(payload, env, batch_size=self.t.batch_size, seed=self.t.seed)
        self.dropout.load_payload(payload.get("dropout"), payload["model_shape"]["dropout"])
        self.resumed_from = self.state.step
        if env.is_main:
            if restarted:
                log.warning(
                    "worker group restarted by torchrun (restart %s)",
                    os.environ["TORCHELASTIC_RESTART_COUNT"],
                )
            log.info(
                "resumed from %s (step %d, data cursor epoch %d window %d)",
                path,
                self.state.step,
                *divmod(self.state.step, self.batcher.windows_per_epoch),
            )

    def apply_dropout(self) -> None:
        """Set the model's dropout to the plan's rate, and say why.

        The model runs without dropout while an auto plan is undecided.
        """
        plan = self.dropout
        self.state.model.set_dropout(plan.rate or 0.0)
        if not (plan.decided and self.env.is_main):
            return
        why = "set in the config"
        if plan.planned_epochs is not None:
            why = (
                f"auto: ~{plan.planned_epochs:.1f} epochs planned; "
                f"none up to {RAMP_EPOCHS[0]:g}, {FULL_RATE:g} from {RAMP_EPOCHS[1]:g}"
            )
        log.info("dropout %g (%s)", plan.rate, why)
        self.tracker.update_config(
            {"dropout_rate": plan.rate, "dropout_planned_epochs": plan.planned_epochs}
        )

    def wrap_model(self) -> None:
        if self.env.distributed:
            # Gradients live in DDP's buckets (no extra copy); every step uses every parameter.
            ddp = DistributedDataParallel(
                self.state.model, find_unused_parameters=False, gradient_as_bucket_view=True
            )
            if self.t.grad_compression == "bf16":
                # the average is taken in bf16, then cast back into the fp32 gradients
                ddp.register_comm_hook(None, dist_utils.bf16_allreduce_hook)
            self.train_model = ddp
        if self.t.compile:
            self.train_model = torch.compile(self.train_model)

    def write_run_info(self) -> None:
        """Rank 0: the run directory's config and vocabulary, the W&B config and dataset.

        And the banner.
        """
        if not self.env.is_main:
            return
        cfg, tokens, model, path = self.cfg, self.tokens, self.state.model, self.run_dir.path
        path.mkdir(parents=True, exist_ok=True)
        atomic_write_text(path / "config.yaml", dump_config(cfg))
        tokens.vocab.save(path / "vocab.json")
        self.sink.truncate_after(self.state.step)
        facts = {
            "corpus_uri": cfg.data.corpus,
            "corpus_sha256": tokens.corpus_sha256,
            "tokens_key": tokens.key,
            "vocab_size": tokens.vocab.size,
        }
        self.tracker.update_config(
            {
                **facts,
                "world_size": self.env.world_size,
                "device": str(self.device),
                "torch_version": torch.__version__,
                "parameters": model.num_parameters(),
            }
        )
        # Logged by every session (an unchanged dataset is the same W&B version, not a new
        # upload), so the model artefacts of a resumed run still record their dataset lineage.
        files = {
            name: Path(tokens.dir) / name
            for name in ("vocab.json", "meta.json", "train.bin", "val.bin", "test.bin")
            if (Path(tokens.dir) / name).exists()
        }
        self.tracker.log_dataset(
            dataset_artifact_name(tokens.corpus_sha256, tokens.key),
            files,
            {**facts, "num_tokens": tokens.num_tokens},
            cfg.track.dataset_max_mb,
        )
        log.info(
            "model %s: %.2fM parameters | vocab %d | world size %d | device %s%s | precision %s | "
            "%s chars/step | %d windows/epoch",
            f"{model.shape.num_layers}x{model.shape.hidden_size}",
            model.num_parameters() / 1e6,
            tokens.vocab.size,
            self.env.world_size,
            self.device,
            f" ({self.threads} threads/process)" if self.threads else "",
            "bf16 autocast" if self.amp_dtype else "fp32",
            f"{self.batcher.chars_per_step:,}",
            self.batcher.windows_per_epoch,
        )

    def step(self) -> None:
        """One TBPTT update of this rank's streams; no host sync."""
        s, t = self.state, self.t
        batch = self.batcher.batch(s.step, pin_memory=self.device.type == "cuda")
        # each stream starts a new segment: its carried state no longer applies
        if batch.window == 0:
            s.hidden = s.model.initial_state(self.batcher.local_batch_size, self.device)
        # The agreed clock, not this rank's own: every rank must use the same lr at the same step.
        progress = self.budget.lr_progress(s.step, self.clock.at(s.step))
        self.lr = t.lr * lr_factor(s.step, progress, t.warmup_steps, t.min_lr_ratio, t.lr_schedule)
        for group in s.optimizer.param_groups:
            group["lr"] = self.lr
        x, y = batch.to(self.device)
        loss, self.grad_norm, s.hidden = train_step(
            self.train_model,
            s.optimizer,
            x,
            y,
            s.hidden,
            amp_dtype=self.amp_dtype,
            grad_clip=t.grad_clip,
        )
        self.meter.count(loss)
        s.step += 1
        # before any evaluation: checkpoints record training time
        s.train_seconds = self.meter.elapsed()

    def agree_stop(self, requested: bool) -> tuple[bool, bool]:
        """(finished, interrupted), identical on every rank; also sets the agreed clock."""
        elapsed = self.meter.elapsed()
        if self.env.distributed:  # the slowest rank's clock, and whether any rank got a signal
            flags = dist_utils.all_reduce_max(
                torch.tensor([elapsed, float(requested)], dtype=torch.float64, device=self.device)
            )
            elapsed, requested = flags[0].item(), bool(flags[1].item())
        self.clock.agree(self.state.step, elapsed)
        finished = self.budget.steps_done(self.state.step)
        return finished or self.budget.time_up(elapsed), requested and not finished

    def log(self) -> None:
        """Mean loss and grad norm over ranks since the last log line; a diverged run stops here."""
        s, meter = self.state, self.meter
        stats = dist_utils.all_reduce_sum(torch.stack([meter.loss_sum, self.grad_norm.float()]))
        stats = stats / self.env.world_size
        mean_loss, norm = stats[0].item() / meter.window_steps, stats[1].item()
        self.check_divergence(mean_loss, norm)
        seconds = meter.window_seconds()
        chars_per_s = meter.window_steps * self.batcher.chars_per_step / seconds
        values = {
            "train/loss_nats": mean_loss,
            "train/bpc": mean_loss / LN2,
            "lr": self.lr,
            "grad_norm": norm,
            "perf/chars_per_s": chars_per_s,
            "perf/step_time_s": seconds / meter.window_steps,
            "time_s": s.train_seconds,
        }
        eta = self.budget.eta_s(s.step, s.train_seconds)
        line = (
            f"{self.budget.describe(s.step, s.train_seconds)} | loss {mean_loss:.4f} nats "
            f"{mean_loss / LN2:.3f} bpc | lr {self.lr:.2e} | |g| {norm:.2f} | "
            f"{format_rate(chars_per_s)} chars/s | elapsed {format_duration(s.train_seconds)} "
            f"| ETA {format_duration(eta)}"
        )
        self.sink.record(s.step, values, line, wandb_extra=memory_metrics(self.device))
        meter.restart_window()

    def check_divergence(self, mean_loss: float, norm: float) -> None:
        """Uniform guessing scores ln(vocab); ten times worse than that, or a NaN, is divergence."""
        limit = 10 * math.log(self.tokens.vocab.size)
        if math.isfinite(mean_loss) and math.isfinite(norm) and mean_loss <= limit:
            return
        raise DivergenceError(
            f"training diverged: loss {mean_loss:.4g} nats/char (grad norm {norm:.4g}) "
            f"by step {self.state.step}",
            where=str(self.run_dir.path),
            fix=f"lower train.lr (now {self.t.lr:g}) or train.grad_clip, "
            "then resume from the last checkpoint with --resume",
        )

    def load_best(self) -> None:
        """Every rank takes best.pt's weights (for its final scores)."""
        self.checkpointer.load_best(self.state)

    def summarise(
        self, scores: dict[str, EvalResult], stopped_by: str | None, *, interrupted: bool
    ) -> TrainResult:
        """The run's result; rank 0 writes it as ``train_summary.json``."""
        s, early, validator = self.state, self.state.early_stopping, self.validator
        last_path, best = self.checkpointer.newest(), self.run_dir.path / "best.pt"
        score = {split: result.to_dict() for split, result in scores.items()}
        result = TrainResult(
            run_dir=str(self.run_dir.path),
            checkpoint=str(last_path) if last_path else "",
            best_checkpoint=str(best) if best.exists() else None,
            step=s.step,
            resumed_from=self.resumed_from,
            val=score.get("val"),
            test=score.get("test"),
            best_val_loss=early.best_loss if math.isfinite(early.best_loss) else None,
            chars_per_s=self.meter.average_rate(
                s.step - self.resumed_from, s.step, s.train_seconds
            ),
            train_seconds=s.train_seconds,
            interrupted=interrupted,
            stopped_by=stopped_by,
            tracking=self.tracker.summary(),
            remote_dir=self.run_dir.url,
            best_step=early.best_step if best.exists() else None,
            last_val=score.get("last_val"),
            stopped_early=validator.stopped_early,
            pruned_at=validator.pruned_at,
            validations=validator.validations,
            eval_seconds=validator.seconds,
        )
        if self.env.is_main:
            if validator.validations:
                share = validator.seconds / max(self.meter.session_seconds(s.train_seconds), 1e-9)
                log.info(
                    "validation: %d passes took %s, %.1f%% of the training time",
                    validator.validations,
                    format_duration(validator.seconds),
                    100 * share,
                )
            atomic_write_json(self.run_dir.path / "train_summary.json", result.to_dict())
            self.run_dir.publish_files()
        return result

    # ------------------------------------------------------------------ helpers

    def identity(self) -> dict[str, Any]:
        """What a checkpoint records about the run beside its state."""
        return {
            "lr_schedule": f"warmup_{self.t.lr_schedule}",
            "config": self.cfg.to_dict(),
            "model_shape": asdict(self.state.model.shape),  # with the dropout rate in force
            "dropout": self.dropout.to_payload(),
            "vocab": list(self.tokens.vocab.chars),
            "tokens": {"key": self.tokens.key, "corpus_sha256": self.tokens.corpus_sha256},
        }
