"""Prefect tasks: thin wrappers that call the ``charrnn`` library and pass typed records.

"Already done" is the library's content-addressed cache: ``tokenise`` asks it
every time (a cache hit costs a directory listing). Prefect caches only
``download``, keyed on the source's validator (HTTP ETag / Last-Modified, a
local file's size and mtime, the package version of the offline corpus), which
spares the download itself; its persisted ``CorpusRef`` may outlive the corpus
file, and ``charrnn.prepare.tokenise`` fetches it again when it needs it.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.context import TaskRunContext

from charrnn.config import EVAL_STREAMS, Config, dump_config
from charrnn.data.corpus import CorpusRef, cache_root, source_validator
from charrnn.data.tokens import TokenSet
from charrnn.distributed.launch import LaunchSpec
from charrnn.evaluation.sample import SampleSettings
from charrnn.fsutil import atomic_write_json, sha256_bytes
from charrnn.registry.lines import Promotion
from charrnn.registry.report import Sample, Scores
from charrnn.train.trainer import TrainResult

# bump to invalidate every persisted task result (v2: download returns a CorpusRef)
CACHE_VERSION = "v2"


def download_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str | None:
    """Same source and same validator -> same key.

    None (no caching) when the source has no validator.
    """
    d = parameters["cfg"].data
    validator = source_validator(d.corpus, timeout_s=d.http_timeout_s)
    if validator is None:
        return None  # hf:// and fsspec sources: the library's content-addressed cache still dedups
    parts = [CACHE_VERSION, "fetch", d.corpus, validator, str(cache_root(d.cache_dir or None))]
    return sha256_bytes(json.dumps(parts, sort_keys=True, default=str).encode())


@task(
    name="download",
    cache_key_fn=download_cache_key,
    persist_result=True,
    retries=2,
    retry_delay_seconds=[5, 20],
)
def download(cfg: Config) -> CorpusRef:
    """Download (or read) and validate ``data.corpus`` into the cache.

    A corpus too small to train on is refused before it is cached.
    """
    from charrnn.data.prepare import fetch

    corpus = fetch(cfg)
    get_run_logger().info(
        "corpus %s: %s chars, sha256 %s, cached at %s",
        corpus.uri,
        f"{corpus.num_chars:,}",
        corpus.sha256,
        corpus.path,
    )
    return corpus


@task(name="tokenise")
def tokenise(corpus: CorpusRef, cfg: Config) -> TokenSet:
    """Character vocabulary and train/val/test token files (HF ``datasets``).

    From the cache when they are there.
    """
    from charrnn.data.prepare import corpus_tokens

    tokens = corpus_tokens(corpus, cfg)
    get_run_logger().info(
        "tokens %s: vocab %d, train/val/test %s (%s)",
        tokens.dir,
        tokens.vocab_size,
        "/".join(f"{tokens.num_tokens[s]:,}" for s in ("train", "val", "test")),
        "cache hit" if tokens.cache_hit else "built",
    )
    return tokens


# charrnn's progress line: "step 120/1000 ( 12.0%) | loss ..."
PROGRESS = re.compile(r"\bstep \d+(?:/\d+)? \(\s*([\d.]+)%\)")


class TrainingProgress:
    """The run page's progress bar (a Prefect progress artifact).

    It is driven by the progress lines training prints.
    """

    def __init__(self, run_dir: str):
        from prefect.artifacts import create_progress_artifact

        self.done = 0.0
        self.artifact = create_progress_artifact(
            0.0, key="charrnn-training-progress", description=f"training {run_dir}"
        )

    def see(self, line: str) -> None:
        if (match := PROGRESS.search(line)) and (done := float(match.group(1))) > self.done:
            self.set(done)

    def set(self, done: float) -> None:
        from prefect.artifacts import update_progress_artifact

        self.done = done
        update_progress_artifact(self.artifact, done)


class TrainingFailed(RuntimeError):
    """torchrun exited with an error; the task's retries resume from the newest checkpoint."""


# Retries are launch.retries and launch.retry_delay_s (train_pipeline sets them per run).
@task(name="train_model", tags=["charrnn-train"])
def train_model(cfg: Config, tokens: TokenSet, launch: LaunchSpec) -> TrainResult:
    """``torchrun ... -m charrnn train --resume``: DDP training in its own process group.

    It trains into ``cfg.train.out_dir``. Worker output streams into the run log
    line by line. Any exit of this task (failure, cancellation, a crash of the flow
    process) kills the whole torchrun process group. Every attempt passes
    ``--resume``, so a retry continues from the newest valid checkpoint instead of
    starting over.
    """
    from charrnn.distributed.launch import run_torchrun
    from charrnn.registry.runs import load_train_summary

    logger = get_run_logger()
    run_dir = cfg.train.out_dir
    context = TaskRunContext.get()
    attempt = context.task_run.run_count if context else 1
    if attempt > 1:
        logger.warning("attempt %d: resuming %s from its newest valid checkpoint", attempt, run_dir)
    recent: list[str] = []
    progress = TrainingProgress(run_dir)

    def on_line(line: str) -> None:
        logger.info(line)
        progress.see(line)
        recent.append(line)
        del recent[:-20]

    def on_start(proc) -> None:  # where the group is, for operators (and the tests that kill it)
        atomic_write_json(
            Path(run_dir) / "launch.json",
            {
                "torchrun_pid": proc.pid,
                "process_group": os.getpgid(proc.pid),
                "attempt": attempt,
                "command": proc.args,
            },
        )

    # the workers read it; training writes the run's config.yaml
    with tempfile.TemporaryDirectory(prefix="charrnn-config-") as scratch:
        config = Path(scratch) / "config.yaml"
        config.write_text(dump_config(cfg))
        # --no-summary: the task reads train_summary.json; its JSON would be ~30 lines of
        # the run log
        args = [
            "--config",
            str(config),
            "--tokens",
            tokens.dir,
            "--out-dir",
            run_dir,
            "--resume",
            "--no-summary",
        ]
        code = run_torchrun(launch, args, on_line=on_line, on_start=on_start)
    if code != 0:
        tail = "\n".join(recent[-8:])
        raise TrainingFailed(
            f"torchrun exited with code {code} (attempt {attempt}); last output:\n{tail}"
        )
    summary = load_train_summary(run_dir)
    # finished, whatever the last progress line said (a run resumed at its end prints none)
    if not summary.interrupted:
        progress.set(100.0)
    logger.info(
        "trained to step %d in %.0fs of training (%s chars/s)",
        summary.step,
        summary.train_seconds,
        f"{summary.chars_per_s:,.0f}",
    )
    return summary


@task(name="score_model")
def score_model(trained: TrainResult, tokens: TokenSet, num_streams: int = EVAL_STREAMS) -> Scores:
    """Exact bits/char of the best checkpoint on the whole val and test splits.

    Training's own scores when it is the final model.
    """
    from charrnn.evaluation.evaluate import format_score
    from charrnn.registry.runs import score_checkpoint

    logger = get_run_logger()
    scores, reused = score_checkpoint(
        trained.best_checkpoint or trained.checkpoint,
        tokens,
        trained.run_dir,
        num_streams=num_streams,
        trained=trained,
    )
    for split, score in scores.splits.items():
        logger.info(
            "%s: %s (%s chars%s)",
            split,
            format_score(score),
            f"{score['chars']:,}",
            ", scored by training" if split in reused else "",
        )
    return scores


@task(name="write_samples")
def write_samples(
    scores: Scores, run_dir: str, prompts: list[str], settings: SampleSettings
) -> list[Sample]:
    """``settings.num_samples`` samples per prompt, batched, seeded.

    Written to samples.json and samples.txt.
    """
    from charrnn.registry.runs import save_samples

    rows = save_samples(scores.checkpoint, run_dir, prompts, settings)
    get_run_logger().info("%d samples in %s", len(rows), Path(run_dir) / "samples.txt")
    return rows


@task(name="promote_model")
def promote_model(
    registry_dir: str,
    scores: Scores,
    tokens: TokenSet,
    corpus: CorpusRef,
    trained: TrainResult,
    model_name: str,
    num_streams: int = EVAL_STREAMS,
) -> Promotion:
    """Champion/challenger within the line ``model_name`` on the same held-out text.

    Promote the challenger only if it wins (its score from ``score_model``).
    """
    from charrnn.registry.lines import challenge_and_promote, validate_model_name

    return challenge_and_promote(
        registry_dir,
        scores.checkpoint,
        tokens,
        run_dir=trained.run_dir,
        corpus=corpus,
        challenger_bpc=scores.held_out["bpc"],
        model_name=validate_model_name(model_name),
        wandb_run_id=trained.tracking.get("wandb_run_id"),
        num_streams=num_streams,
    )


@task(name="tell_study")
def tell_study(cfg: Config, trained: TrainResult, scores: Scores) -> None:
    """A sweep's trial: its outcome to the study (complete with its val score, or pruned)."""
    from charrnn.sweep.study import TrialOutcome, record_outcome
    from charrnn.train.pruning import study_storage

    t = cfg.train
    outcome = TrialOutcome(
        run_dir=str(Path(trained.run_dir).resolve()),
        checkpoint=scores.checkpoint,
        steps=trained.step,
        val_nats=(scores.val or {}).get("loss_nats"),
        held_out_bpc=(scores.held_out or {}).get("bpc"),
        stopped=trained.stopped_early or "",
        pruned=trained.pruned_at is not None,
        wandb_run_id=trained.tracking.get("wandb_run_id"),
    )
    record_outcome(study_storage(t.trial_study), t.trial_study, t.trial_number, outcome)
    if outcome.pruned:
        verdict = outcome.stopped
    elif outcome.val_nats is None:
        verdict = "failed: no val split to score it on"
    else:
        verdict = f"val {outcome.val_nats:.4f} nats/char"
    get_run_logger().info("trial %d of study %s: %s", t.trial_number, t.trial_study, verdict)
