"""``train_pipeline``: the pipeline's tasks, in order.

download -> tokenise -> train_model (torchrun, DDP) -> score_model -> write_samples
-> promote_model -> report_run.

Orchestration only: every step is a call into ``charrnn``, and typed records
(``charrnn.registry.report``) cross the task boundaries; everything heavy lives in the
content-addressed cache or in the run directory ``RUNS_DIR/<date>-<flow run name>/``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from pydantic import Field

from charrnn.config import Config, load_config
from charrnn.data.corpus import CorpusRef
from charrnn.data.tokens import TokenSet
from charrnn.distributed.launch import LaunchSpec
from charrnn.distributed.machine import auto_nproc
from charrnn.evaluation.sample import SampleSettings
from charrnn.registry.lines import Decision, Promotion, model_line, pointer_path
from charrnn.registry.report import RunReport, RunResult
from charrnn.registry.runs import find_trained, record_result, training_key
from flows.params import LaunchParams, NotNegative, SamplingParams, StorageParams, TrackingParams
from flows.report import report_run
from flows.tasks import (
    download,
    promote_model,
    score_model,
    tell_study,
    tokenise,
    train_model,
    write_samples,
)


def build_config(
    corpus: str,
    config_file: str | None,
    overrides: list[str],
    time_budget_s: float | None,
    max_steps: int | None,
    tracking: TrackingParams,
) -> Config:
    """Defaults < config file < overrides < the flow's explicit parameters."""
    cfg = load_config(config_file, overrides)
    cfg.data.corpus = corpus
    if time_budget_s is not None:
        cfg.train.time_budget_s = time_budget_s
    if max_steps is not None:
        cfg.train.max_steps = max_steps
    cfg.track.mode = tracking.wandb_mode
    cfg.track.project = tracking.wandb_project
    return cfg


def new_run(cfg: Config, runs_dir: str) -> tuple[str, Path]:
    """(run name, run directory) of this flow run; the config trains into it."""
    run_name = f"{datetime.now():%Y%m%d-%H%M%S}-{flow_run.get_name() or 'local'}"
    run_dir = Path(runs_dir) / run_name
    cfg.train.out_dir = str(run_dir)
    return run_name, run_dir


def launch_spec(launch: LaunchParams, cfg: Config) -> LaunchSpec:
    """The torchrun layout; ``auto`` picks the fastest for this machine (and says why)."""
    nproc = launch.nproc_per_node
    if nproc == "auto":
        nproc, why = auto_nproc(cfg.train.precision)
        get_run_logger().info("layout: %d training process(es) per machine (auto: %s)", nproc, why)
    return LaunchSpec(
        nproc_per_node=nproc,
        nnodes=launch.nnodes,
        rdzv_endpoint=launch.rdzv_endpoint,
        max_restarts=launch.max_restarts,
        local_addr=launch.local_addr,
        socket_ifname=launch.socket_ifname,
    )


@flow(
    name="train-pipeline",
    log_prints=True,
    description="Fetch a corpus, tokenise it, train a stacked-LSTM char model with torchrun "
    "DDP, evaluate, sample, and publish.",
)
def train_pipeline(
    corpus: str = "shakespeare",
    model_name: str | None = None,
    config_file: str | None = None,
    overrides: list[str] | None = None,
    time_budget_s: Annotated[float, Field(ge=0)] | None = None,
    max_steps: NotNegative | None = None,
    skip_if_trained: bool = False,
    promote: bool = True,
    launch: LaunchParams = LaunchParams(),
    sampling: SamplingParams = SamplingParams(),
    storage: StorageParams = StorageParams(),
    tracking: TrackingParams = TrackingParams(),
) -> RunResult:
    """Train a character-level language model end to end.

    The result is also the run's pipeline_result.json.

    Args:
        corpus: corpus URI: shakespeare (offline), tinyshakespeare, a path, file://,
            http(s)://, hf://datasets/NAME, fsspec URL.
        model_name: the model line this run competes in (letters, digits, - _ .); default:
            the corpus's name ("shakespeare", or the file stem of a path or URL). A challenger
            only ever replaces its own line's production model.
        config_file: YAML with data/model/train/track sections (paths relative to the
            worker's directory).
        overrides: key=value config overrides, e.g. ["train.lr=3e-3", "hidden_size=512"].
        time_budget_s: wall-clock training budget (overrides train.time_budget_s).
        max_steps: step budget (overrides train.max_steps).
        skip_if_trained: report an earlier completed run of the same tokens and settings
            instead of training again.
        promote: challenge the line's production model (false for a sweep's trials: only
            the sweep's best trial challenges it).
        launch: processes, machines, torchrun restarts and task retries.
        sampling: the samples written after training.
        storage: where runs and the champion/challenger registry live.
        tracking: W&B mode and project.
    """
    started = time.time()
    line = model_line(model_name, corpus)  # before any work: a bad name fails in a second
    overrides = list(overrides or [])
    cfg = build_config(corpus, config_file, overrides, time_budget_s, max_steps, tracking)
    corpus_ref = download(cfg)
    tokens = tokenise(corpus_ref, cfg)
    spec = launch_spec(launch, cfg)
    key = training_key(tokens, cfg, spec.nproc_per_node * spec.nnodes, line)
    previous = find_trained(storage.runs_dir, key) if skip_if_trained else None
    if previous is not None:
        get_run_logger().info(
            "skip_if_trained: %s already trained this corpus with these settings; reporting it",
            previous.run_dir,
        )
        return previous
    result = train_and_report(
        cfg,
        Prepared(corpus_ref, tokens, line, started),
        spec,
        launch=launch,
        sampling=sampling,
        storage=storage,
        promote=promote,
    )
    record_result(storage.runs_dir, key, result)
    return result


@dataclass(frozen=True)
class Prepared:
    """What the flow has before training: the corpus, its tokens, the model line, the start time."""

    corpus: CorpusRef
    tokens: TokenSet
    model_name: str
    started: float


def train_and_report(
    cfg: Config,
    prepared: Prepared,
    spec: LaunchSpec,
    *,
    launch: LaunchParams,
    sampling: SamplingParams,
    storage: StorageParams,
    promote: bool = True,
) -> RunResult:
    """A new run directory: train, score, sample, champion/challenger, report; the run's result."""
    tokens, line = prepared.tokens, prepared.model_name
    run_name, run_dir = new_run(cfg, storage.runs_dir)
    spec.rdzv_id = str(flow_run.get_id() or run_name)
    get_run_logger().info(
        "run directory %s; training with %d process(es)",
        run_dir,
        spec.nproc_per_node * spec.nnodes,
    )
    train = train_model.with_options(
        retries=launch.retries, retry_delay_seconds=launch.retry_delays_s()
    )
    trained = train(cfg, tokens, spec)
    streams = cfg.train.eval_batch_size
    scores = score_model(trained, tokens, streams)
    settings = SampleSettings(
        length=sampling.length,
        temperature=sampling.temperature,
        num_samples=sampling.num_samples,
        seed=cfg.train.seed,
    )
    samples = write_samples(scores, str(run_dir), list(sampling.prompts), settings)
    if promote:
        promotion = promote_model(
            storage.registry_dir, scores, tokens, prepared.corpus, trained, line, streams
        )
    else:
        promotion = not_challenged(scores, line)
    run = RunReport(
        run_name,
        str(run_dir.resolve()),
        prepared.corpus,
        tokens,
        trained,
        scores,
        promotion,
        spec,
        cfg,
        time.time() - prepared.started,
        line,
    )
    report, tracking, wandb = report_run(run, samples)
    if cfg.train.trial_study:
        tell_study(cfg, trained, scores)
    return RunResult(
        run_dir=run.run_dir,
        checkpoint=scores.checkpoint,
        step=scores.step,
        val=scores.val,
        test=scores.test,
        samples=str(run_dir.resolve() / "samples.txt"),
        first_sample=samples[0].text if samples else "",
        report=report,
        wandb=wandb,
        tracking=tracking,
        promoted=promotion.promoted,
        production=str(pointer_path(storage.registry_dir, line).resolve()),
        model_name=line,
        chars_per_s=trained.chars_per_s,
        train_seconds=trained.train_seconds,
    )


def not_challenged(scores, line: str) -> Promotion:
    """The record of a run that did not challenge production (a sweep's trial)."""
    held_out = scores.held_out or {}
    decision = Decision(
        promoted=False,
        challenger_bpc=held_out.get("bpc", float("nan")),
        champion_bpc=None,
        held_out="not compared",
        held_out_chars=0,
        reason="a sweep trial: only the sweep's best trial challenges the production model",
    )
    return Promotion(decision=decision, model_name=line)
