"""Prefect tasks: thin wrappers that call the ``charrnn`` library and pass only paths and small values.

Caching is by content. ``fetch_corpus`` is keyed on the source's validator
(HTTP ETag / Last-Modified, a local file's size and mtime, the package version
of the offline corpus) and ``tokenise`` on the corpus sha256 plus the split
settings, so an unchanged corpus is a cache hit and a changed one a miss.
Results are persisted, so the cache survives across processes and runs.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from prefect import get_run_logger, task
from prefect.context import TaskRunContext

from charrnn.corpus import cache_root, source_validator
from charrnn.fsutil import atomic_write_json, atomic_write_text, sha256_bytes

CACHE_VERSION = "v1"  # bump to invalidate every persisted task result


def _key(*parts: Any) -> str:
    return sha256_bytes(json.dumps([CACHE_VERSION, *parts], sort_keys=True, default=str).encode())


def fetch_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str | None:
    """Same source and same validator -> same key; None (no caching) when the source has no validator."""
    validator = source_validator(parameters["uri"], timeout_s=parameters.get("timeout_s", 30.0))
    if validator is None:
        return None  # hf:// and fsspec sources: the library's content-addressed cache still dedups
    return _key("fetch", parameters["uri"], validator, str(cache_root(parameters.get("cache_dir") or None)))


def tokenise_cache_key(context: TaskRunContext, parameters: dict[str, Any]) -> str:
    from charrnn.tokens import tokens_key

    key = tokens_key(parameters["corpus"]["sha256"], parameters["val_fraction"], parameters["test_fraction"], parameters["token_dtype"])
    return _key("tokenise", key, str(cache_root(parameters.get("cache_dir") or None)))


@task(name="fetch_corpus", cache_key_fn=fetch_cache_key, persist_result=True, retries=2, retry_delay_seconds=[5, 20])
def fetch_corpus(uri: str, cache_dir: str = "", timeout_s: float = 30.0, retries: int = 3) -> dict:
    """Download (or read) and validate the corpus into the content-addressed cache."""
    from charrnn.corpus import fetch_corpus as fetch

    corpus = fetch(uri, cache_dir or None, timeout_s=timeout_s, retries=retries)
    get_run_logger().info("corpus %s: %s chars, sha256 %s, cached at %s", uri, f"{corpus.num_chars:,}", corpus.sha256, corpus.path)
    return corpus.to_dict()


@task(name="tokenise", cache_key_fn=tokenise_cache_key, persist_result=True)
def tokenise(corpus: dict, val_fraction: float, test_fraction: float, token_dtype: str = "auto", cache_dir: str = "") -> dict:
    """Character vocabulary and train/val/test token files (HF ``datasets``), cached by content."""
    from charrnn.corpus import CorpusRef
    from charrnn.tokens import prepare_tokens

    tokens = prepare_tokens(CorpusRef(**corpus), val_fraction=val_fraction, test_fraction=test_fraction, token_dtype=token_dtype, cache_dir=cache_dir or None)
    get_run_logger().info(
        "tokens %s: vocab %d, train/val/test %s (%s)",
        tokens.dir,
        tokens.vocab_size,
        "/".join(f"{tokens.num_tokens[s]:,}" for s in ("train", "val", "test")),
        "cache hit" if tokens.cache_hit else "built",
    )
    return tokens.to_dict()


class TrainingFailed(RuntimeError):
    """torchrun exited with an error; the task's retries resume from the newest checkpoint."""


@task(name="train", tags=["charrnn-train"], retries=2, retry_delay_seconds=[10, 30])
def train(config_path: str, tokens_dir: str, run_dir: str, launch: dict) -> dict:
    """``torchrun ... -m charrnn train --resume``: DDP training in its own process group.

    Worker output streams into the run log line by line. Any exit of this task
    (failure, cancellation, a crash of the flow process) kills the whole
    torchrun process group. Every attempt passes ``--resume``, so a retry
    continues from the newest valid checkpoint instead of starting over.
    """
    from charrnn.launch import LaunchSpec, run_torchrun

    logger = get_run_logger()
    context = TaskRunContext.get()
    attempt = context.task_run.run_count if context else 1
    if attempt > 1:
        logger.warning("attempt %d: resuming %s from its newest valid checkpoint", attempt, run_dir)
    recent: list[str] = []

    def on_line(line: str) -> None:
        logger.info(line)
        recent.append(line)
        del recent[:-20]

    def on_start(proc) -> None:  # where the group is, for operators (and the tests that kill it)
        atomic_write_json(Path(run_dir) / "launch.json", {"torchrun_pid": proc.pid, "process_group": os.getpgid(proc.pid), "attempt": attempt, "command": proc.args})

    args = ["--config", config_path, "--tokens", tokens_dir, "--out-dir", run_dir, "--resume"]
    code = run_torchrun(LaunchSpec(**launch), args, on_line=on_line, on_start=on_start)
    if code != 0:
        tail = "\n".join(recent[-8:])
        raise TrainingFailed(f"torchrun exited with code {code} (attempt {attempt}); last output:\n{tail}")
    summary = json.loads((Path(run_dir) / "train_summary.json").read_text())
    logger.info("trained to step %d in %.0fs of training (%s chars/s)", summary["step"], summary["train_seconds"], f"{summary['chars_per_s']:,.0f}")
    return summary


@task(name="evaluate")
def evaluate(checkpoint: str, tokens_dir: str, out_dir: str, num_streams: int = 32, train_summary: dict | None = None) -> dict:
    """Exact bits/char of the checkpoint on the whole val and test splits (training's own scores when it is the final model)."""
    from charrnn.checkpoint import load_model, resolve_checkpoint
    from charrnn.evaluate import final_scores, format_score
    from charrnn.tokens import open_token_set

    logger = get_run_logger()
    path = resolve_checkpoint(checkpoint)
    model, _, payload = load_model(path)
    scores, reused = final_scores(model, open_token_set(tokens_dir), step=payload["step"], num_streams=num_streams, trained=train_summary)
    for split, score in scores.items():
        logger.info("%s: %s (%s chars%s)", split, format_score(score), f"{score['chars']:,}", ", scored by training" if split in reused else "")
    result = {"checkpoint": str(path.resolve()), "step": payload["step"], **scores}
    atomic_write_json(Path(out_dir) / "eval.json", result)
    return result


@task(name="generate_samples")
def generate_samples(checkpoint: str, out_dir: str, prompts: list[str], num_samples: int, length: int, temperature: float, seed: int) -> list[dict]:
    """``num_samples`` samples per prompt, batched, seeded; written to samples.json and samples.txt."""
    from charrnn.checkpoint import load_model
    from charrnn.sample import SampleSettings, generate

    model, vocab, _ = load_model(checkpoint)
    rows = []
    for prompt in prompts:
        settings = SampleSettings(length=length, temperature=temperature, num_samples=num_samples, seed=seed)
        for i, text in enumerate(generate(model, vocab, prompt, settings)):
            rows.append({"prompt": prompt, "sample": i + 1, "temperature": temperature, "text": prompt + text})
    out = Path(out_dir)
    atomic_write_json(out / "samples.json", rows)
    atomic_write_text(out / "samples.txt", "".join(f"----- {r['prompt']!r} #{r['sample']} (temperature {temperature}) -----\n{r['text']}\n\n" for r in rows))
    get_run_logger().info("%d samples in %s", len(rows), out / "samples.txt")
    return rows


@task(name="promote")
def promote_if_better(registry_dir: str, checkpoint: str, tokens_dir: str, run_dir: str, corpus: dict, held_out_score: dict, wandb_run_id: str | None, num_streams: int = 32) -> dict:
    """Champion/challenger on the same held-out text; promote the challenger only if it wins.

    ``held_out_score`` is the challenger's exact score on that text (from ``evaluate``).
    """
    from charrnn.registry import challenge, promote
    from charrnn.tokens import open_token_set

    logger = get_run_logger()
    decision = challenge(registry_dir, checkpoint, open_token_set(tokens_dir), num_streams=num_streams, challenger_bpc=held_out_score["bpc"])
    logger.info("champion/challenger: %s -> %s", decision.reason, "PROMOTED" if decision.promoted else "not promoted")
    result = {"decision": decision.to_dict(), "production": None}
    if decision.promoted:
        record = promote(registry_dir, checkpoint, run_dir=run_dir, test_bpc=held_out_score["bpc"], corpus_uri=corpus["uri"], corpus_sha256=corpus["sha256"], wandb_run_id=wandb_run_id)
        result["production"] = record.to_dict()
    return result
