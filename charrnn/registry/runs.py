"""The steps of a run after training, each on files of its run directory; the finished runs' index.

``runs/index/<training key>.json`` points at the ``pipeline_result.json`` of the last
completed run of that training key. The content-addressed cache covers corpora and
tokens; a trained model is not content-addressed (training is not deterministic
across machines and layouts, and each run has its own directory), so this index is
how ``skip_if_trained`` finds "this model, trained on these tokens with these
settings". An entry counts only while its checkpoint still verifies.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from charrnn.config import EVAL_STREAMS, Config
from charrnn.data.tokens import TokenSet
from charrnn.distributed.group import DistEnv, pick_device
from charrnn.errors import CheckpointError
from charrnn.evaluation.evaluate import final_scores
from charrnn.evaluation.sample import SampleSettings, generate
from charrnn.fsutil import atomic_write_json, atomic_write_text, sha256_bytes
from charrnn.io.checkpoint import load_model, resolve_checkpoint, verify_checkpoint
from charrnn.registry.report import RunResult, Sample, Scores
from charrnn.train.trainer import TrainResult

RESULT_FILE = "pipeline_result.json"
INDEX_DIR = "index"


def load_train_summary(run_dir: str | os.PathLike[str]) -> TrainResult:
    """The ``TrainResult`` that ``charrnn train`` wrote as ``train_summary.json``."""
    return TrainResult(**json.loads((Path(run_dir) / "train_summary.json").read_text()))


def score_checkpoint(
    checkpoint: str,
    tokens: TokenSet,
    run_dir: str | os.PathLike[str],
    *,
    num_streams: int = EVAL_STREAMS,
    trained: TrainResult | None = None,
) -> tuple[Scores, set[str]]:
    """Exact val/test scores of the checkpoint, written to ``eval.json``.

    Returns (scores, the splits training had scored).
    """
    # The device is the GPU training used, if any.
    path, device = resolve_checkpoint(checkpoint), pick_device("auto", DistEnv())
    model, _, payload = load_model(path, device)
    splits, reused = final_scores(
        model,
        tokens,
        num_streams=num_streams,
        known=trained.scores_at(payload["step"]) if trained else None,
        device=device,
    )
    scores = Scores(checkpoint=str(path.resolve()), step=payload["step"], **splits)
    atomic_write_json(Path(run_dir) / "eval.json", scores.to_dict())
    return scores, reused


def save_samples(
    checkpoint: str, run_dir: str | os.PathLike[str], prompts: list[str], settings: SampleSettings
) -> list[Sample]:
    """``settings.num_samples`` samples per prompt, batched and seeded.

    Written to samples.json and samples.txt.
    """
    device = pick_device("auto", DistEnv())
    model, vocab, _ = load_model(checkpoint, device)
    rows = [
        Sample(prompt, i + 1, settings.temperature, prompt + text)
        for prompt in prompts
        for i, text in enumerate(generate(model, vocab, prompt, settings, device=device))
    ]
    out = Path(run_dir)
    atomic_write_json(out / "samples.json", [r.to_dict() for r in rows])
    atomic_write_text(
        out / "samples.txt",
        "".join(
            f"----- {r.prompt!r} #{r.sample} (temperature {r.temperature}) -----\n{r.text}\n\n"
            for r in rows
        ),
    )
    return rows


def training_key(tokens: TokenSet, cfg: Config, world_size: int, model_name: str = "") -> str:
    """Identifies "this model trained on these tokens with these settings, for this model line".

    The line is part of the key: two lines with the same corpus and settings each keep
    their own index entry, instead of overwriting each other's and retraining every time.
    """
    raw = cfg.to_dict()
    train = {k: v for k, v in raw["train"].items() if k not in ("out_dir", "resume")}
    return sha256_bytes(
        json.dumps(
            [tokens.key, raw["model"], train, world_size, model_name], sort_keys=True
        ).encode()
    )


def find_trained(runs_dir: str | os.PathLike[str], key: str) -> RunResult | None:
    """The result of an earlier completed run with this training key.

    Only if its checkpoint still verifies.
    """
    index = Path(runs_dir) / INDEX_DIR / f"{key}.json"
    if not index.is_file():
        return None
    result_path = Path(json.loads(index.read_text())["result"])
    if not result_path.is_file():
        return None
    result = RunResult.load(result_path)
    try:
        verify_checkpoint(result.checkpoint)
    except CheckpointError:
        return None
    return result


def record_result(runs_dir: str | os.PathLike[str], key: str, result: RunResult) -> None:
    """Write ``pipeline_result.json`` into the run directory.

    Then point the index entry of ``key`` at it.
    """
    path = Path(result.run_dir) / RESULT_FILE
    atomic_write_json(path, result.to_dict())
    atomic_write_json(Path(runs_dir) / INDEX_DIR / f"{key}.json", {"result": str(path)})
