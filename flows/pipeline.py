"""``train_pipeline``: download -> tokenise -> train_model (torchrun, DDP) -> score_model -> write_samples -> promote_model -> report_run.

Orchestration only: every step is a call into ``charrnn``, and typed records
(``charrnn.report``) cross the task boundaries; everything heavy lives in the
content-addressed cache or in the run directory ``RUNS_DIR/<date>-<flow run name>/``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Annotated, Literal

from prefect import flow, get_run_logger
from prefect.runtime import flow_run
from pydantic import Field

from charrnn.config import Config, load_config
from charrnn.data.corpus import CorpusRef
from charrnn.data.tokens import TokenSet
from charrnn.distributed.launch import LaunchSpec
from charrnn.distributed.machine import auto_nproc
from charrnn.evaluation.sample import SampleSettings
from charrnn.registry.lines import model_line, pointer_path
from charrnn.registry.report import RunReport, RunResult
from charrnn.registry.runs import find_trained, record_result, training_key
from flows.report import report_run
from flows.tasks import download, promote_model, score_model, tokenise, train_model, write_samples

Positive = Annotated[int, Field(ge=1)]
NotNegative = Annotated[int, Field(ge=0)]
WandbMode = Literal["auto", "online", "offline", "disabled"]


def build_config(
    corpus: str,
    config_file: str | None,
    overrides: list[str],
    time_budget_s: float | None,
    max_steps: int | None,
    wandb_mode: str,
    wandb_project: str,
) -> Config:
    """Defaults < config file < overrides < the flow's explicit parameters."""
    cfg = load_config(config_file, overrides)
    cfg.data.corpus = corpus
    if time_budget_s is not None:
        cfg.train.time_budget_s = time_budget_s
    if max_steps is not None:
        cfg.train.max_steps = max_steps
    cfg.track.mode = wandb_mode
    cfg.track.project = wandb_project
    return cfg


def new_run(cfg: Config, runs_dir: str) -> tuple[str, Path]:
    """(run name, run directory) of this flow run; the config trains into it."""
    run_name = f"{datetime.now():%Y%m%d-%H%M%S}-{flow_run.get_name() or 'local'}"
    run_dir = Path(runs_dir) / run_name
    cfg.train.out_dir = str(run_dir)
    return run_name, run_dir


@flow(
    name="train-pipeline",
    log_prints=True,
    description="Fetch a corpus, tokenise it, train a stacked-LSTM char model with torchrun DDP, evaluate, sample, and publish.",
)
def train_pipeline(
    corpus: str = "shakespeare",
    config_file: str | None = None,
    overrides: list[str] | None = None,
    nproc_per_node: Positive | Literal["auto"] = "auto",
    nnodes: Positive = 1,
    rdzv_endpoint: str | None = None,
    local_addr: str | None = None,
    socket_ifname: str | None = None,
    max_restarts: NotNegative = 0,
    time_budget_s: Annotated[float, Field(ge=0)] | None = None,
    max_steps: NotNegative | None = None,
    wandb_mode: WandbMode = "auto",
    wandb_project: str = "charrnn",
    runs_dir: str = "runs",
    registry_dir: str = "runs/registry",
    model_name: str | None = None,
    skip_if_trained: bool = False,
    sample_prompts: list[str] | None = None,
    num_samples: Positive = 2,
    sample_length: Positive = 300,
    sample_temperature: Annotated[float, Field(gt=0)] = 0.8,
    train_retries: NotNegative = 2,
    retry_delay_s: Annotated[float, Field(ge=0)] = 10.0,
) -> RunResult:
    """Train a character-level language model end to end; the result is also the run's pipeline_result.json.

    Args:
        corpus: corpus URI: shakespeare (offline), tinyshakespeare, a path, file://, http(s)://, hf://datasets/NAME, fsspec URL.
        config_file: YAML with data/model/train/track sections (paths relative to the worker's directory).
        overrides: key=value config overrides, e.g. ["train.lr=3e-3", "hidden_size=512"].
        nproc_per_node: training processes per machine, or "auto": one per GPU; one process with all cores on an AVX-512 CPU, two on an AVX2 CPU (bench/RESULTS.md).
        nnodes: machines in the job; > 1 needs rdzv_endpoint (c10d rendezvous; the rendezvous id is this flow run's id).
        rdzv_endpoint: HOST:PORT of the c10d rendezvous for multi-node training.
        local_addr: this node's address for the rendezvous (multi-homed hosts).
        socket_ifname: network interface for gloo/NCCL traffic (GLOO_SOCKET_IFNAME, NCCL_SOCKET_IFNAME).
        max_restarts: torchrun restarts of the worker group inside one attempt (each resumes from a checkpoint).
        time_budget_s: wall-clock training budget (overrides train.time_budget_s).
        max_steps: step budget (overrides train.max_steps).
        wandb_mode: auto (online with credentials, else offline), online, offline or disabled.
        wandb_project: W&B project.
        runs_dir: where run directories are created.
        registry_dir: champion/challenger registry (a production.json per model line, and the promoted checkpoints).
        model_name: the model line this run competes in (letters, digits, - _ .); default: the corpus's name
            ("shakespeare", or the file stem of a path or URL). A challenger only ever replaces its own line's production model.
        skip_if_trained: report an earlier completed run of the same tokens and settings instead of training again.
        sample_prompts: prompts for the samples (default: a newline).
        num_samples: samples per prompt, generated as one batch.
        sample_length: characters per sample.
        sample_temperature: sampling temperature.
        train_retries: retries of the train_model task (each resumes from the newest checkpoint).
        retry_delay_s: first retry delay; it doubles for each further retry.
    """
    started = time.time()
    line = model_line(
        model_name, corpus
    )  # before any work: a bad name fails in a second, not after training
    cfg = build_config(
        corpus,
        config_file,
        list(overrides or []),
        time_budget_s,
        max_steps,
        wandb_mode,
        wandb_project,
    )
    corpus_ref = download(cfg)
    tokens = tokenise(corpus_ref, cfg)
    if nproc_per_node == "auto":
        nproc_per_node, why = auto_nproc(cfg.train.precision)
        get_run_logger().info(
            "layout: %d training process(es) per machine (auto: %s)", nproc_per_node, why
        )
    launch = LaunchSpec(
        nproc_per_node=nproc_per_node,
        nnodes=nnodes,
        rdzv_endpoint=rdzv_endpoint,
        max_restarts=max_restarts,
        local_addr=local_addr,
        socket_ifname=socket_ifname,
    )
    key = training_key(tokens, cfg, nproc_per_node * nnodes, line)
    previous = find_trained(runs_dir, key) if skip_if_trained else None
    if previous is not None:
        get_run_logger().info(
            "skip_if_trained: %s already trained this corpus with these settings; reporting it",
            previous.run_dir,
        )
        return previous
    sampling = SampleSettings(
        length=sample_length,
        temperature=sample_temperature,
        num_samples=num_samples,
        seed=cfg.train.seed,
    )
    retries = Retries(train_retries, [retry_delay_s * 2**i for i in range(max(train_retries, 1))])
    registry = Registry(registry_dir, line)
    result = train_and_report(
        cfg,
        corpus_ref,
        tokens,
        launch,
        runs_dir,
        registry,
        sample_prompts or ["\n"],
        sampling,
        retries,
        started,
    )
    record_result(runs_dir, key, result)
    return result


@dataclass(frozen=True)
class Registry:
    """Where the run's champion/challenger happens: the registry directory and the model line."""

    dir: str
    model_name: str


@dataclass(frozen=True)
class Retries:
    count: int
    delays_s: list[float]


def train_and_report(
    cfg: Config,
    corpus: CorpusRef,
    tokens: TokenSet,
    launch: LaunchSpec,
    runs_dir: str,
    registry: Registry,
    prompts: list[str],
    sampling: SampleSettings,
    retries: Retries,
    started: float,
) -> RunResult:
    """A new run directory: train, score, sample, champion/challenger, report; the run's result."""
    run_name, run_dir = new_run(cfg, runs_dir)
    launch.rdzv_id = str(flow_run.get_id() or run_name)
    get_run_logger().info(
        "run directory %s; training with %d process(es)",
        run_dir,
        launch.nproc_per_node * launch.nnodes,
    )
    trained = train_model.with_options(retries=retries.count, retry_delay_seconds=retries.delays_s)(
        cfg, tokens, launch
    )
    scores = score_model(trained, tokens, cfg.train.eval_batch_size)
    samples = write_samples(scores, str(run_dir), prompts, sampling)
    promotion = promote_model(
        registry.dir,
        scores,
        tokens,
        corpus,
        trained,
        registry.model_name,
        cfg.train.eval_batch_size,
    )
    run = RunReport(
        run_name,
        str(run_dir.resolve()),
        corpus,
        tokens,
        trained,
        scores,
        promotion,
        launch,
        cfg,
        time.time() - started,
        registry.model_name,
    )
    report, tracking, wandb = report_run(run, samples)
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
        production=str(pointer_path(registry.dir, registry.model_name).resolve()),
        model_name=registry.model_name,
        chars_per_s=trained.chars_per_s,
        train_seconds=trained.train_seconds,
    )
