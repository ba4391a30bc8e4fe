"""The training loop: truncated BPTT over carried streams, AdamW, warm-up then linear (or cosine) decay.

One function, :func:`train`, serves a single process and every rank under
``torchrun``. Rank 0 alone writes checkpoints, metrics and logs; all ranks run
the same number of steps because the global batch is split evenly.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import random
import signal
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

from . import distributed as dist_utils
from .checkpoint import list_checkpoints, load_latest_valid, save_checkpoint
from .config import Config, TrainConfig, dump_config
from .data import StreamBatcher, rank_slice
from .distributed import DistEnv
from .errors import ConfigError, DivergenceError, PeerLostError
from .evaluate import LN2, EvalResult, evaluate_tokens
from .fsutil import atomic_write_json, atomic_write_text
from .model import CharLSTM, ModelShape
from .progress import format_duration, format_rate
from .storage import RemoteRunDir, is_remote
from .tokens import TokenSet, load_split
from .tracking import Tracker, dataset_artifact_name, make_tracker, memory_metrics, sample_rows

log = logging.getLogger("charrnn")


@dataclass
class TrainResult:
    run_dir: str
    checkpoint: str
    best_checkpoint: str | None
    step: int
    resumed_from: int
    val: dict | None
    test: dict | None
    best_val_loss: float | None
    chars_per_s: float
    train_seconds: float
    interrupted: bool = False
    tracking: dict = field(default_factory=dict)  # W&B run id, mode, URL or offline dir + sync command
    remote_dir: str | None = None  # the run directory's fsspec URL when train.out_dir is one

    def to_dict(self) -> dict:
        return asdict(self)


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 autocast where the hardware has bf16 kernels (CUDA, or CPUs with AVX512-BF16/AMX)."""
    if precision not in ("auto", "fp32", "bf16"):
        raise ConfigError(f"unknown precision {precision!r}", where="train.precision", fix="use auto, fp32 or bf16")
    if precision == "fp32":
        return None
    if device.type == "cuda":
        supported = torch.cuda.is_bf16_supported()
    else:
        try:  # oneDNN builds its bf16 LSTM only on CPUs with native bf16 (AVX512-BF16 or AMX)
            supported = torch.ops.mkldnn._is_mkldnn_bf16_supported()
        except (AttributeError, RuntimeError):
            supported = False
    if precision == "bf16" and not supported:
        raise ConfigError(
            f"this {device.type.upper()} has no bf16 LSTM kernels (oneDNN needs AVX512-BF16 or AMX on a CPU; CUDA needs compute capability >= 8.0)",
            where="train.precision=bf16",
            fix="use train.precision=auto (bf16 where the hardware has it, else fp32) or fp32",
        )
    return torch.bfloat16 if supported else None


LR_SCHEDULES = ("linear", "cosine")


def check_schedule(schedule: str) -> None:
    """Refuse an unknown schedule before the run writes anything."""
    if schedule not in LR_SCHEDULES:
        raise ConfigError(f"unknown learning-rate schedule {schedule!r}", where="train.lr_schedule", fix=f"use one of: {', '.join(LR_SCHEDULES)}")


def lr_factor(step: int, progress: float, warmup_steps: int, min_ratio: float, schedule: str = "linear") -> float:
    """Linear warm-up over steps, then a linear or cosine decay to ``min_ratio`` over ``progress`` in [0, 1]."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = min(progress, 1.0)
    shape = 1 - progress if schedule == "linear" else 0.5 * (1 + math.cos(math.pi * progress))
    return min_ratio + (1 - min_ratio) * shape


def make_optimizer(model: torch.nn.Module, t: TrainConfig) -> torch.optim.Optimizer:
    """AdamW; the fused (single-kernel) implementation where PyTorch has one for the device."""
    device_type = next(model.parameters()).device.type
    return torch.optim.AdamW(
        model.parameters(),
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
    """One TBPTT update. Returns (loss, grad norm, detached state), all still on device: no host sync."""
    with torch.autocast(inputs.device.type, dtype=amp_dtype or torch.bfloat16, enabled=amp_dtype is not None):
        logits, state = model(inputs, state)
    loss = F.cross_entropy(logits.float().flatten(0, 1), targets.flatten())  # fp32 loss, fused log-softmax + NLL
    loss.backward()
    params = [p for group in optimizer.param_groups for p in group["params"]]
    grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip if grad_clip > 0 else float("inf"))
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return loss.detach(), grad_norm.detach(), (state[0].detach().float(), state[1].detach().float())


def total_steps(cfg: Config, windows_per_epoch: int) -> int | None:
    t = cfg.train
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
    return min(bounds) if bounds else None


class _StopRequest:
    """SIGINT/SIGTERM ask the loop to stop after the current step and checkpoint."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, object] = {}

    def __enter__(self) -> _StopRequest:
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.requested:  # second signal: stop now
            raise KeyboardInterrupt
        self.requested = True
        log.warning("received %s: stopping after this step and saving a checkpoint", signal.Signals(signum).name)

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


def _rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state()[1].tolist(), "python": list(random.getstate()[1])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def _set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", np.array(state["numpy"], dtype=np.uint32), 624, 0, 0.0))
    random.setstate((3, tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def train(cfg: Config, tokens: TokenSet, env: DistEnv | None = None) -> TrainResult:
    """Train (or resume) the run in ``cfg.train.out_dir`` on a prepared token set."""
    env = env or DistEnv.from_env()
    device = dist_utils.pick_device(cfg.train.device, env)
    remote = RemoteRunDir(cfg.train.out_dir) if is_remote(cfg.train.out_dir) else None
    run_dir = remote.local if remote else Path(cfg.train.out_dir)
    # W&B starts on rank 0 before the process group exists, with its own timeout, so
    # a slow or broken W&B delays nobody's collectives and cannot hang other ranks.
    tracker = make_tracker(cfg.track, is_main=env.is_main, run_dir=run_dir, config=cfg.to_dict())
    try:
        result = _train(cfg, tokens, env, device, tracker, run_dir, remote)
    except RuntimeError as exc:  # torch.distributed.DistBackendError is a RuntimeError
        tracker.finish(exit_code=1)
        if env.distributed and _is_peer_failure(exc):
            last = next(reversed(list_checkpoints(run_dir)), None)
            raise PeerLostError(
                f"lost contact with another training process ({_first_line(exc)})",
                where=f"rank {env.rank} of {env.world_size}",
                fix="a worker or its machine died; run the job again with --resume: it continues from the newest valid checkpoint"
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
        marker in text for marker in ("Connection closed by peer", "Connection reset by peer", "Broken pipe", "NCCL communicator was aborted")
    )


def _first_line(exc: BaseException) -> str:
    return next((line.strip() for line in str(exc).splitlines() if line.strip()), type(exc).__name__)[:300]


def _train(cfg: Config, tokens: TokenSet, env: DistEnv, device: torch.device, tracker: Tracker, run_dir: Path, remote: RemoteRunDir | None) -> TrainResult:
    """The training loop. ``run_dir`` is local: the run directory itself, or the staging copy of ``remote``."""
    t = cfg.train
    threads = dist_utils.configure_threads(env) if device.type == "cpu" else None
    dist_utils.init_process_group(env, device)
    amp_dtype = autocast_dtype(t.precision, device)

    vocab = tokens.vocab
    batcher = StreamBatcher(
        load_split(tokens, "train"),
        t.batch_size,
        t.seq_len,
        rank=env.rank,
        world_size=env.world_size,
        segment_windows=t.segment_windows,
        seed=t.seed,
        source=f"{tokens.dir} (train split)",
    )
    val_tokens = load_split(tokens, "val")
    horizon = total_steps(cfg, batcher.windows_per_epoch)
    check_schedule(t.lr_schedule)

    _seed_everything(t.seed + env.rank)
    shape = ModelShape.from_config(cfg.model, vocab.size)
    model = CharLSTM(shape).to(device)
    optimizer = make_optimizer(model, t)
    state = model.initial_state(batcher.local_batch_size, device)
    step, train_seconds, best_val = 0, 0.0, math.inf
    resumed_from = 0

    restarted = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")) > 0  # torchrun restarted the group
    if remote is not None and (t.resume or restarted):
        remote.pull_latest_checkpoint()  # every rank: this machine may never have seen the earlier attempt
    existing = [p.name for p in list_checkpoints(run_dir)] or (remote.checkpoint_names() if remote is not None else [])
    if t.resume or restarted:
        found = load_latest_valid(run_dir, map_location=device)
        if found is None:
            if env.is_main:
                log.info("--resume: no valid checkpoint in %s, starting from scratch", run_dir)
        else:
            payload, path = found
            model.load_state_dict(payload["model"])
            model.lstm.flatten_parameters()
            optimizer.load_state_dict(payload["optimizer"])
            step = resumed_from = payload["step"]
            train_seconds = payload["train_seconds"]
            best_val = payload["best_val_loss"] if payload["best_val_loss"] is not None else math.inf
            full_h, full_c = payload["hidden"]  # global [layers, batch, hidden]: slice ours
            rows = rank_slice(t.batch_size, env.rank, env.world_size)
            state = (full_h[:, rows].to(device).contiguous(), full_c[:, rows].to(device).contiguous())
            if payload["world_size"] == env.world_size:
                _set_rng_state(payload["rng"][env.rank])
            else:  # RNG streams are per rank; a new world size gets fresh, seeded ones
                _seed_everything(t.seed + env.rank + 7919 * step)
            if env.is_main:
                if restarted:
                    log.warning("worker group restarted by torchrun (restart %s)", os.environ["TORCHELASTIC_RESTART_COUNT"])
                log.info("resumed from %s (step %d, data cursor epoch %d window %d)", path, step, *divmod(step, batcher.windows_per_epoch))
    elif existing:  # every rank sees the run directory, so every rank stops here
        raise ConfigError(
            f"run directory already holds {len(existing)} checkpoint(s)",
            where=remote.url if remote is not None else str(run_dir),
            fix="pass --resume (train.resume=true) to continue it, or choose another train.out_dir",
        )

    train_model = DistributedDataParallel(model, find_unused_parameters=False) if env.distributed else model
    if t.compile:
        train_model = torch.compile(train_model)

    if env.is_main:
        run_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(run_dir / "config.yaml", dump_config(cfg))
        vocab.save(run_dir / "vocab.json")
        _truncate_metrics(run_dir / "metrics.jsonl", step)
        tracker.update_config(
            {
                "corpus_sha256": tokens.corpus_sha256,
                "corpus_uri": cfg.data.corpus,
                "tokens_key": tokens.key,
                "vocab_size": vocab.size,
                "world_size": env.world_size,
                "device": str(device),
                "torch_version": torch.__version__,
                "parameters": model.num_parameters(),
            }
        )
        # Logged by every session (an unchanged dataset is the same W&B version, not a new upload),
        # so the model artefacts of a resumed run still record their dataset lineage.
        tracker.log_dataset(
            dataset_artifact_name(tokens.corpus_sha256, tokens.key),
            {name: Path(tokens.dir) / name for name in ("vocab.json", "meta.json", "train.bin", "val.bin", "test.bin") if (Path(tokens.dir) / name).exists()},
            {"corpus_uri": cfg.data.corpus, "corpus_sha256": tokens.corpus_sha256, "tokens_key": tokens.key, "vocab_size": vocab.size, "num_tokens": tokens.num_tokens},
            cfg.track.dataset_max_mb,
        )
        log.info(
            "model %s: %.2fM parameters | vocab %d | world size %d | device %s%s | precision %s | %s chars/step | %d windows/epoch",
            f"{shape.num_layers}x{shape.hidden_size}",
            model.num_parameters() / 1e6,
            vocab.size,
            env.world_size,
            device,
            f" ({threads} threads/process)" if threads else "",
            "bf16 autocast" if amp_dtype else "fp32",
            f"{batcher.chars_per_step:,}",
            batcher.windows_per_epoch,
        )

    def payload_for(current_step: int, val: EvalResult | None) -> dict:
        h, c = _gather_state(state, env)
        return {
            "model": model.state_dict(),
            "optimizer": optimizer.state_dict(),
            "scheduler": {"kind": f"warmup_{t.lr_schedule}", "step": current_step, "train_seconds": train_seconds},
            "scaler": None,  # bf16 autocast needs no loss scaling
            "rng": _gather_rng(env),
            "step": current_step,
            "train_seconds": train_seconds,
            "hidden": (h, c),
            "world_size": env.world_size,
            "best_val_loss": best_val if math.isfinite(best_val) else None,
            "val": val.to_dict() if val else None,
            "config": cfg.to_dict(),
            "model_shape": asdict(shape),
            "vocab": list(vocab.chars),
            "tokens": {"key": tokens.key, "corpus_sha256": tokens.corpus_sha256},
        }

    def checkpoint(current_step: int, val: EvalResult | None) -> Path | None:
        nonlocal best_val
        is_best = val is not None and val.loss_nats < best_val
        if is_best:
            best_val = val.loss_nats
        payload = payload_for(current_step, val)  # collective when distributed: all ranks
        path = None
        if env.is_main:
            path = save_checkpoint(run_dir, payload, step=current_step, is_best=is_best, keep_last=t.keep_last)
            if remote is not None:  # publish: the checkpoint, then its sidecar; then drop what was pruned here
                remote.publish_checkpoint(path)
                if is_best:
                    remote.publish_checkpoint(run_dir / "best.pt")
                remote.prune({p.name for p in list_checkpoints(run_dir)})
                remote.publish_files()
            if cfg.track.log_checkpoints:
                metadata = {"val_bpc": val.bpc if val else None, "val_loss_nats": val.loss_nats if val else None, "corpus_sha256": tokens.corpus_sha256, "config": cfg.to_dict()}
                tracker.log_model(path, step=current_step, aliases=["latest", "best"] if is_best else ["latest"], metadata=metadata)
        dist_utils.barrier()
        return path

    def validate() -> EvalResult | None:
        if len(val_tokens) < 2:
            return None
        return evaluate_tokens(model, val_tokens, num_streams=t.eval_batch_size, device=device, env=env, autocast_dtype=amp_dtype)

    metrics = _MetricsWriter(run_dir / "metrics.jsonl") if env.is_main else None
    loss_sum = torch.zeros((), device=device)
    window_start, window_steps = time.perf_counter(), 0
    last_val: EvalResult | None = None
    last_path: Path | None = None
    session_start = time.perf_counter() - train_seconds

    # Every rank must take the same stop decision at the same step, or the next
    # collective hangs: the step horizon is deterministic, but the wall clock and
    # signals are per process, so those are agreed through an all-reduce. On CPU
    # that is cheap enough every step; on GPU it is a host sync, so only at log steps.
    agree_every = 1 if device.type == "cpu" else t.log_interval

    def agreed_stop(current_step: int, requested: bool) -> tuple[bool, bool]:
        """(finished, interrupted), identical on every rank."""
        finished = horizon is not None and current_step >= horizon
        time_up = t.time_budget_s > 0 and time.perf_counter() - session_start >= t.time_budget_s
        if env.distributed:
            flags = dist_utils.all_reduce_sum(torch.tensor([float(time_up), float(requested)], device=device))
            time_up, requested = bool(flags[0] > 0), bool(flags[1] > 0)
        return finished or time_up, requested and not finished

    def progress(current_step: int) -> float:
        if t.lr_decay_steps > 0:  # an explicit horizon: a run can be extended without changing its schedule
            return current_step / t.lr_decay_steps
        by_steps = current_step / horizon if horizon else 0.0
        by_time = (time.perf_counter() - session_start) / t.time_budget_s if t.time_budget_s > 0 else 0.0
        return max(by_steps, by_time)

    train_model.train()
    loop_start = time.perf_counter()
    finished, interrupted = agreed_stop(step, False)
    with _StopRequest() as stop:
        while not finished:
            batch = batcher.batch(step, pin_memory=device.type == "cuda")
            if batch.window == 0:  # each stream starts a new segment: its carried state no longer applies
                state = model.initial_state(batcher.local_batch_size, device)
            lr = t.lr * lr_factor(step, progress(step), t.warmup_steps, t.min_lr_ratio, t.lr_schedule)
            for group in optimizer.param_groups:
                group["lr"] = lr
            x = batch.inputs.to(device, non_blocking=True)
            y = batch.targets.to(device, non_blocking=True)
            loss, grad_norm, state = train_step(train_model, optimizer, x, y, state, amp_dtype=amp_dtype, grad_clip=t.grad_clip)
            loss_sum += loss
            step += 1
            window_steps += 1
            train_seconds = time.perf_counter() - session_start  # before any evaluation: checkpoints record training time

            if step % agree_every == 0 or (horizon is not None and step >= horizon):
                finished, interrupted = agreed_stop(step, stop.requested)
            is_last = finished or interrupted
            if step % t.log_interval == 0 or is_last:
                stats = dist_utils.all_reduce_sum(torch.stack([loss_sum, grad_norm.float()])) / env.world_size
                mean_loss, norm = stats[0].item() / window_steps, stats[1].item()
                # Uniform guessing scores ln(vocab); ten times worse than that is divergence.
                if not (math.isfinite(mean_loss) and math.isfinite(norm)) or mean_loss > 10 * math.log(vocab.size):
                    raise DivergenceError(
                        f"training diverged: loss {mean_loss:.4g} nats/char (grad norm {norm:.4g}) by step {step}",
                        where=str(run_dir),
                        fix=f"lower train.lr (now {t.lr:g}) or train.grad_clip, then resume from the last checkpoint with --resume",
                    )
                now = time.perf_counter()
                chars_per_s = window_steps * batcher.chars_per_step / (now - window_start)
                if env.is_main:
                    record = {
                        "step": step,
                        "train/loss_nats": mean_loss,
                        "train/bpc": mean_loss / LN2,
                        "lr": lr,
                        "grad_norm": norm,
                        "perf/chars_per_s": chars_per_s,
                        "perf/step_time_s": (now - window_start) / window_steps,
                        "time_s": train_seconds,
                    }
                    metrics.write(record)
                    tracker.log({k: v for k, v in record.items() if k != "step"} | memory_metrics(device), step)
                    log.info(_progress_line(step, horizon, t.time_budget_s, train_seconds, mean_loss, lr, norm, chars_per_s))
                loss_sum.zero_()
                window_start, window_steps = time.perf_counter(), 0

            want_eval = is_last or (t.eval_interval > 0 and step % t.eval_interval == 0)
            if want_eval:
                val = validate()
                if val is not None:
                    last_val = val
                    if env.is_main:
                        metrics.write({"step": step, "val/loss_nats": val.loss_nats, "val/bpc": val.bpc, "time_s": train_seconds})
                        tracker.log({"val/loss_nats": val.loss_nats, "val/bpc": val.bpc, "val/perplexity": val.perplexity}, step)
                        log.info("step %d | val %.4f nats/char | %.4f bits/char | ppl %.3f", step, val.loss_nats, val.bpc, val.perplexity)
                        if tracker.run_id is not None:
                            tracker.log_samples(step, sample_rows(model, vocab, cfg.track, device, seed=t.seed))
                window_start = time.perf_counter()  # evaluation time is not training throughput
            if is_last or step % t.checkpoint_interval == 0:
                last_path = checkpoint(step, last_val if want_eval else None) or last_path
                window_start = time.perf_counter()
            if interrupted:
                break

    test: EvalResult | None = None
    test_tokens = load_split(tokens, "test")
    if finished and not interrupted and len(test_tokens) > 1:  # the held-out score of the final model
        test = evaluate_tokens(model, test_tokens, num_streams=t.eval_batch_size, device=device, env=env, autocast_dtype=amp_dtype)
        if env.is_main:
            metrics.write({"step": step, "test/loss_nats": test.loss_nats, "test/bpc": test.bpc})
            tracker.log({"test/loss_nats": test.loss_nats, "test/bpc": test.bpc}, step)
            log.info("step %d | test %.4f nats/char | %.4f bits/char", step, test.loss_nats, test.bpc)

    if last_path is None and env.is_main:  # resumed at or past the end: nothing to do
        last_path = next(reversed(list_checkpoints(run_dir)), None)
    result = TrainResult(
        run_dir=str(run_dir),
        checkpoint=str(last_path) if last_path else "",
        best_checkpoint=str(run_dir / "best.pt") if (run_dir / "best.pt").exists() else None,
        step=step,
        resumed_from=resumed_from,
        val=last_val.to_dict() if last_val else None,
        test=test.to_dict() if test else None,
        best_val_loss=best_val if math.isfinite(best_val) else None,
        chars_per_s=_overall_rate(step - resumed_from, batcher.chars_per_step, loop_start),
        train_seconds=train_seconds,
        interrupted=interrupted,
        tracking=tracker.summary(),
        remote_dir=remote.url if remote else None,
    )
    if env.is_main:
        atomic_write_json(run_dir / "train_summary.json", result.to_dict())
        if remote is not None:
            remote.publish_files()
    return result


def _overall_rate(steps: int, chars_per_step: int, loop_start: float) -> float:
    """Average training throughput of this session (evaluation included)."""
    return steps * chars_per_step / max(time.perf_counter() - loop_start, 1e-9) if steps else 0.0


def _gather_state(state, env: DistEnv) -> tuple[torch.Tensor, torch.Tensor]:
    """The carried hidden state of every stream, on CPU (collective when distributed)."""
    h, c = (s.detach().float() for s in state)
    if env.distributed:
        import torch.distributed as dist

        parts_h = [torch.empty_like(h) for _ in range(env.world_size)]
        parts_c = [torch.empty_like(c) for _ in range(env.world_size)]
        dist.all_gather(parts_h, h.contiguous())
        dist.all_gather(parts_c, c.contiguous())
        h, c = torch.cat(parts_h, dim=1), torch.cat(parts_c, dim=1)
    return h.cpu(), c.cpu()


def _gather_rng(env: DistEnv) -> list:
    """Every rank's RNG state (index = rank)."""
    mine = _rng_state()
    if not env.distributed:
        return [mine]
    import torch.distributed as dist

    states: list = [None] * env.world_size
    dist.all_gather_object(states, mine)
    return states


def _progress_line(step: int, horizon: int | None, budget_s: float, elapsed: float, loss: float, lr: float, norm: float, chars_per_s: float) -> str:
    fractions = []
    if horizon:
        fractions.append(step / horizon)
    if budget_s > 0:
        fractions.append(elapsed / budget_s)
    done = min(max(fractions), 1.0) if fractions else 0.0
    eta = elapsed * (1 - done) / done if done > 0 else float("nan")
    where = f"step {step}" + (f"/{horizon}" if horizon else "")
    return (
        f"{where} ({done:5.1%}) | loss {loss:.4f} nats {loss / LN2:.3f} bpc | lr {lr:.2e} | |g| {norm:.2f} | "
        f"{format_rate(chars_per_s)} chars/s | elapsed {format_duration(elapsed)} | ETA {format_duration(eta)}"
    )


class _MetricsWriter:
    """Append-only JSON lines, flushed per record so a crash loses nothing logged."""

    def __init__(self, path: Path):
        self.path = path

    def write(self, record: dict) -> None:
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(record) + "\n")


def _truncate_metrics(path: Path, step: int) -> None:
    """On resume, drop records past the checkpoint (they are about to be recomputed)."""
    if not path.exists():
        return
    kept = [line for line in path.read_text().splitlines() if line.strip() and json.loads(line).get("step", 0) <= step]
    atomic_write_text(path, "".join(line + "\n" for line in kept))
