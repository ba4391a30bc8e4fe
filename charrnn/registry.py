"""Champion/challenger: promote a new model only if it beats production on the same held-out text.

The registry is a directory::

    REGISTRY/production.json     the pointer: which model is in production, its score, where it came from
    REGISTRY/models/<sha256>.pt  a content-addressed copy of every promoted checkpoint (+ .sha256)

The copy means deleting a run directory never breaks production. Both models
are scored on the challenger's held-out text (its test split, else its val
split) as *text*: each model encodes it with its own vocabulary (characters it
has never seen count as ``<unk>``), so two models trained on different corpora
are still compared on exactly the same characters.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .checkpoint import load_model, resolve_checkpoint, verify_checkpoint, write_with_checksum
from .corpus import CorpusRef
from .distributed import DistEnv, pick_device
from .errors import CheckpointError
from .evaluate import EvalResult, evaluate_tokens
from .fsutil import atomic_write_json, file_lock, sha256_file
from .tokens import TokenSet, load_split

log = logging.getLogger("charrnn")
POINTER = "production.json"


@dataclass(frozen=True)
class ProductionModel:
    checkpoint: str  # the registry's own copy
    checkpoint_sha256: str
    source_checkpoint: str  # where it was trained
    run_dir: str
    test_bpc: float  # on its own held-out text, when it was promoted
    corpus_uri: str
    corpus_sha256: str
    promoted_at: str
    wandb_run_id: str | None = None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Decision:
    promoted: bool
    challenger_bpc: float
    champion_bpc: float | None  # None: there was no production model
    held_out: str  # what both were scored on
    held_out_chars: int
    reason: str

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class Promotion:
    """The champion/challenger outcome of one run: the decision, and the new production record when it won."""

    decision: Decision
    production: ProductionModel | None = None

    @property
    def promoted(self) -> bool:
        return self.decision.promoted

    def to_dict(self) -> dict:
        return asdict(self)


def read_production(registry_dir: str | os.PathLike[str]) -> ProductionModel | None:
    path = Path(registry_dir) / POINTER
    if not path.is_file():
        return None
    return ProductionModel(**json.loads(path.read_text()))


def held_out_text(tokens: TokenSet) -> tuple[str, str]:
    """(text, description): the test split, or the val split when there is no test split."""
    for split in ("test", "val"):
        if tokens.num_tokens[split] > 1:
            return tokens.vocab.decode(np.asarray(load_split(tokens, split))), f"{split} split of {tokens.key}"
    raise CheckpointError("the corpus has no held-out text", where=tokens.dir, fix="set data.test_fraction or data.val_fraction above 0")


def score_on_text(checkpoint: str | os.PathLike[str], text: str, *, num_streams: int = 32) -> EvalResult:
    """Bits/char of a checkpoint on raw text, encoded with the checkpoint's own vocabulary (on the GPU if there is one)."""
    device = pick_device("auto", DistEnv())
    model, vocab, _ = load_model(checkpoint, device)
    return evaluate_tokens(model, vocab.encode(text, dtype=np.int64), num_streams=num_streams, device=device)


def challenge(
    registry_dir: str | os.PathLike[str],
    challenger: str | os.PathLike[str],
    tokens: TokenSet,
    *,
    num_streams: int = 32,
    challenger_bpc: float | None = None,
) -> Decision:
    """Score the challenger and the current production model on the challenger's held-out text.

    ``challenger_bpc``: the challenger's score on that split when it is already known
    (the pipeline's evaluation), so it is not computed twice.
    """
    text, described = held_out_text(tokens)
    if challenger_bpc is None:
        challenger_bpc = score_on_text(challenger, text, num_streams=num_streams).bpc
    champion = read_production(registry_dir)
    if champion is None:
        return Decision(True, challenger_bpc, None, described, len(text) - 1, "no production model yet")
    try:
        verify_checkpoint(champion.checkpoint)
    except CheckpointError as exc:
        log.warning("production model is unusable (%s); the challenger replaces it", exc)
        return Decision(True, challenger_bpc, None, described, len(text) - 1, f"production model unusable: {exc}")
    champion_bpc = score_on_text(champion.checkpoint, text, num_streams=num_streams).bpc
    won = challenger_bpc < champion_bpc
    reason = f"challenger {challenger_bpc:.4f} {'<' if won else '>='} production {champion_bpc:.4f} bits/char"
    return Decision(won, challenger_bpc, champion_bpc, described, len(text) - 1, reason)


def promote(
    registry_dir: str | os.PathLike[str],
    checkpoint: str | os.PathLike[str],
    *,
    run_dir: str,
    test_bpc: float,
    corpus_uri: str,
    corpus_sha256: str,
    wandb_run_id: str | None = None,
) -> ProductionModel:
    """Copy the checkpoint into the registry and point ``production.json`` at it (atomically)."""
    root = Path(registry_dir)
    source = resolve_checkpoint(checkpoint)
    verify_checkpoint(source)
    digest = sha256_file(source)
    target = root / "models" / f"{digest}.pt"
    with file_lock(root / ".lock"):
        if not target.exists():
            with write_with_checksum(target, digest) as tmp:
                shutil.copyfile(source, tmp)
        record = ProductionModel(
            checkpoint=str(target.resolve()),
            checkpoint_sha256=digest,
            source_checkpoint=str(source.resolve()),
            run_dir=str(Path(run_dir).resolve()),
            test_bpc=test_bpc,
            corpus_uri=corpus_uri,
            corpus_sha256=corpus_sha256,
            promoted_at=time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            wandb_run_id=wandb_run_id,
        )
        atomic_write_json(root / POINTER, record.to_dict())
    log.info("promoted %s to production (%s)", source, root / POINTER)
    return record


def challenge_and_promote(registry_dir: str | os.PathLike[str], checkpoint: str, tokens: TokenSet, *, run_dir: str, corpus: CorpusRef, challenger_bpc: float, wandb_run_id: str | None = None, num_streams: int = 32) -> Promotion:
    """:func:`challenge` (``challenger_bpc``: the checkpoint's known held-out score), then :func:`promote` it if it won."""
    decision = challenge(registry_dir, checkpoint, tokens, num_streams=num_streams, challenger_bpc=challenger_bpc)
    log.info("champion/challenger: %s -> %s", decision.reason, "PROMOTED" if decision.promoted else "not promoted")
    if not decision.promoted:
        return Promotion(decision)
    record = promote(registry_dir, checkpoint, run_dir=run_dir, test_bpc=challenger_bpc, corpus_uri=corpus.uri, corpus_sha256=corpus.sha256, wandb_run_id=wandb_run_id)
    return Promotion(decision, record)
