"""Where a training record goes: the metrics file, W&B and the log, from one call.

Only rank 0 writes; other ranks hold a sink that drops everything, so the loop
never asks "am I rank 0?" before logging.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import torch

from charrnn.evaluation.evaluate import EvalResult
from charrnn.fsutil import atomic_write_text
from charrnn.tracking import NullTracker, Tracker

log = logging.getLogger("charrnn")


def score_record(split: str, result: EvalResult) -> dict[str, float]:
    """``{split}/loss_nats``, ``{split}/bpc`` and ``{split}/perplexity`` of one evaluation."""
    return {
        f"{split}/loss_nats": result.loss_nats,
        f"{split}/bpc": result.bpc,
        f"{split}/perplexity": result.perplexity,
    }


def memory_metrics(device) -> dict[str, float]:
    """Peak resident memory of this process, and on CUDA the peak allocated by torch, in MiB."""
    import resource  # POSIX only: imported where it is used

    metrics = {"perf/max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}
    if getattr(device, "type", "cpu") == "cuda":
        metrics["perf/cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated(device) / 2**20
    return metrics


class MetricsSink:
    """Append-only JSON lines, W&B and the log.

    The JSON lines are flushed per record, so a crash loses nothing logged.
    """

    def __init__(self, path: Path | None, tracker: Tracker | None = None):
        self.path = path
        self.tracker = tracker or NullTracker()

    @classmethod
    def disabled(cls) -> MetricsSink:
        return cls(None)

    def record(
        self,
        step: int,
        values: dict[str, Any],
        line: str,
        *,
        wandb_extra: dict[str, Any] | None = None,
    ) -> None:
        if self.path is None:
            return
        with open(self.path, "a", encoding="utf-8") as fh:
            fh.write(json.dumps({"step": step, **values}) + "\n")
        self.tracker.log(values | (wandb_extra or {}), step)
        log.info(line)

    def truncate_after(self, step: int) -> None:
        """On resume, drop records past the checkpoint (they are about to be recomputed)."""
        if self.path is None or not self.path.exists():
            return
        kept = [
            line
            for line in self.path.read_text().splitlines()
            if line.strip() and json.loads(line).get("step", 0) <= step
        ]
        atomic_write_text(self.path, "".join(line + "\n" for line in kept))
