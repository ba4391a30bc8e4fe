"""``train_pipeline``: fetch_corpus -> tokenise -> train (torchrun, DDP) -> evaluate -> generate_samples -> promote -> publish.

Orchestration only: every step is a call into ``charrnn``. Only paths and
small JSON values cross task boundaries; everything heavy lives in the
content-addressed cache or in the run directory ``RUNS_DIR/<date>-<flow run name>/``.
"""

from __future__ import annotations

import json
import time
from datetime import datetime
from pathlib import Path
from typing import Literal

from prefect import flow, get_run_logger
from prefect.runtime import flow_run

from charrnn.config import Config, dump_config, load_config
from charrnn.fsutil import atomic_write_json, atomic_write_text, sha256_bytes
from charrnn.tokens import check_trainable
from flows.publish import publish
from flows.tasks import evaluate, fetch_corpus, generate_samples, promote_if_better, tokenise, train

RESULT_FILE = "pipeline_result.json"


def build_config(corpus: str, config_file: str | None, overrides: list[str], time_budget_s: float | None, max_steps: int | None, wandb_mode: str, wandb_project: str) -> Config:
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


def training_key(tokens_key: str, cfg: Config, world_size: int) -> str:
    """Identifies "this model trained on these tokens with these settings" for ``skip_if_trained``."""
    train = {k: v for k, v in cfg.to_dict()["train"].items() if k not in ("out_dir", "resume")}
    return sha256_bytes(json.dumps([tokens_key, cfg.to_dict()["model"], train, world_size], sort_keys=True).encode())


def _previous_result(index: Path) -> dict | None:
    """The result of an earlier completed run with the same training key, if its checkpoint still verifies."""
    from charrnn.checkpoint import verify_checkpoint
    from charrnn.errors import CheckpointError

    if not index.is_file():
        return None
    result_path = Path(json.loads(index.read_text())["result"])
    if not result_path.is_file():
        return None
    result = json.loads(result_path.read_text())
    try:
        verify_checkpoint(result["checkpoint"])
    except CheckpointError:
        return None
    return result


@flow(name="train-pipeline", log_prints=True, description="Fetch a corpus, tokenise it, train a stacked-LSTM char model with torchrun DDP, evaluate, sample, and publish.")
def train_pipeline(
    corpus: str = "shakespeare",
    config_file: str | None = None,
    overrides: list[str] | None = None,
    nproc_per_node: int = 2,
    nnodes: int = 1,
    rdzv_endpoint: str | None = None,
    local_addr: str | None = None,
    socket_ifname: str | None = None,
    max_restarts: int = 0,
    time_budget_s: float | None = None,
    max_steps: int | None = None,
    wandb_mode: Literal["auto", "online", "offline", "disabled"] = "auto",
    wandb_project: str = "charrnn",
    runs_dir: str = "runs",
    registry_dir: str = "runs/registry",
    skip_if_trained: bool = False,
    sample_prompts: list[str] | None = None,
    num_samples: int = 2,
    sample_length: int = 300,
    sample_temperature: float = 0.8,
    train_retries: int = 2,
    retry_delay_s: float = 10.0,
) -> dict:
    """Train a character-level language model end to end.

    Args:
        corpus: corpus URI: shakespeare (offline), tinyshakespeare, a path, file://, http(s)://, hf://datasets/NAME, fsspec URL.
        config_file: YAML with data/model/train/track sections (paths relative to the worker's directory).
        overrides: key=value config overrides, e.g. ["train.lr=3e-3", "hidden_size=512"].
        nproc_per_node: training processes per machine (one per GPU; on CPU the cores are shared out).
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
        registry_dir: champion/challenger registry (production.json and promoted checkpoints).
        skip_if_trained: report an earlier completed run of the same tokens and settings instead of training again.
        sample_prompts: prompts for the samples (default: a newline).
        num_samples: samples per prompt, generated as one batch.
        sample_length: characters per sample.
        sample_temperature: sampling temperature.
        train_retries: retries of the train task (each resumes from the newest checkpoint).
        retry_delay_s: first retry delay; it doubles for each further retry.
    """
    logger = get_run_logger()
    started = time.time()
    cfg = build_config(corpus, config_file, list(overrides or []), time_budget_s, max_steps, wandb_mode, wandb_project)
    d = cfg.data

    corpus_ref = fetch_corpus(d.corpus, d.cache_dir, d.http_timeout_s, d.http_retries)
    if not Path(corpus_ref["path"]).is_file():  # a cached result whose file was cleaned away
        corpus_ref = fetch_corpus.with_options(refresh_cache=True)(d.corpus, d.cache_dir, d.http_timeout_s, d.http_retries)
    tokens = tokenise(corpus_ref, d.val_fraction, d.test_fraction, d.token_dtype, d.cache_dir)
    if not (Path(tokens["dir"]) / "meta.json").is_file():
        tokens = tokenise.with_options(refresh_cache=True)(corpus_ref, d.val_fraction, d.test_fraction, d.token_dtype, d.cache_dir)

    check_trainable(tokens["num_tokens"]["train"], cfg.train.batch_size, cfg.train.seq_len, d.corpus)
    world_size = nproc_per_node * nnodes
    index = Path(runs_dir) / "index" / f"{training_key(tokens['key'], cfg, world_size)}.json"
    if skip_if_trained and (previous := _previous_result(index)):
        logger.info("skip_if_trained: %s already trained this corpus with these settings; reporting it", previous["run_dir"])
        return previous

    run_name = f"{datetime.now():%Y%m%d-%H%M%S}-{flow_run.get_name() or 'local'}"
    run_dir = Path(runs_dir) / run_name
    cfg.train.out_dir = str(run_dir)
    config_path = run_dir / "config.yaml"
    atomic_write_text(config_path, dump_config(cfg))
    launch = {
        "nproc_per_node": nproc_per_node,
        "nnodes": nnodes,
        "rdzv_endpoint": rdzv_endpoint,
        "rdzv_id": str(flow_run.get_id() or run_name),
        "max_restarts": max_restarts,
        "local_addr": local_addr,
        "socket_ifname": socket_ifname,
    }
    logger.info("run directory %s; training with %d process(es)", run_dir, world_size)
    delays = [retry_delay_s * 2**i for i in range(max(train_retries, 1))]
    summary = train.with_options(retries=train_retries, retry_delay_seconds=delays)(str(config_path), tokens["dir"], str(run_dir), launch)

    checkpoint = summary["best_checkpoint"] or summary["checkpoint"]
    scores = evaluate(checkpoint, tokens["dir"], str(run_dir), cfg.train.eval_batch_size, summary)
    samples = generate_samples(scores["checkpoint"], str(run_dir), sample_prompts or ["\n"], num_samples, sample_length, sample_temperature, cfg.train.seed)
    held_out = scores.get("test") or scores.get("val")
    promotion = promote_if_better(registry_dir, scores["checkpoint"], tokens["dir"], str(run_dir), corpus_ref, held_out, summary.get("tracking", {}).get("wandb_run_id"), cfg.train.eval_batch_size)

    run = {
        "run_name": run_name,
        "run_dir": str(run_dir.resolve()),
        "corpus": corpus_ref,
        "tokens": tokens,
        "train": summary,
        "eval": scores,
        "promotion": promotion,
        "launch": launch,
        "world_size": world_size,
        "model_summary": f"{cfg.model.num_layers}x{cfg.model.hidden_size} LSTM, embedding {cfg.model.embedding_dim}, vocab {tokens['vocab_size']}",
        "track": cfg.to_dict()["track"],
        "config_yaml": dump_config(cfg),
        "duration_s": time.time() - started,
    }
    published = publish(run, samples)
    result = {
        "run_dir": run["run_dir"],
        "checkpoint": scores["checkpoint"],
        "step": scores["step"],
        "val": scores.get("val"),
        "test": scores.get("test"),
        "samples": str(run_dir.resolve() / "samples.txt"),
        "first_sample": samples[0]["text"] if samples else "",
        "report": published["report"],
        "wandb": published["wandb_line"],
        "tracking": published["tracking"],
        "promoted": promotion["decision"]["promoted"],
        "production": str((Path(registry_dir) / "production.json").resolve()),
        "chars_per_s": summary["chars_per_s"],
        "train_seconds": summary["train_seconds"],
    }
    atomic_write_json(run_dir / RESULT_FILE, result)
    atomic_write_json(index, {"result": str(run_dir.resolve() / RESULT_FILE)})
    return result
