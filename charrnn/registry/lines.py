"""Champion/challenger per model line.

A new model is promoted only if it beats its line's production model on the same
held-out text.

A *model line* (``model_name``, by default the corpus's name: :func:`default_model_name`)
is one product: "the shakespeare model", "the lyrics model". Each line has its own
production model; a challenger is compared only with the production model of its own
line and can never displace another line's. The registry is a directory::

    REGISTRY/lines/<model_name>/production.json
        the line's pointer: its production model, score, origin
    REGISTRY/models/<sha256>.pt
        a content-addressed copy of every promoted checkpoint (+ .sha256)

The copy means deleting a run directory never breaks production. Both models
are scored on the challenger's held-out text (its test split, else its val
split) as *text*: each model encodes it with its own vocabulary (characters it
has never seen count as ``<unk>``), so a line whose corpus changed is still
compared on exactly the same characters.

A registry from before model lines has one top-level ``REGISTRY/production.json``.
It is read (never written) as the production model of its corpus's default line
(``default_model_name(corpus_uri)``) until that line promotes a model: from then on
``lines/<name>/production.json`` wins. Other lines never see it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time
import urllib.parse
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from charrnn.config import EVAL_STREAMS
from charrnn.data.corpus import NAMED_CORPORA, CorpusRef
from charrnn.data.tokens import TokenSet, load_split
from charrnn.distributed.group import DistEnv, pick_device
from charrnn.errors import CheckpointError, ConfigError
from charrnn.evaluation.evaluate import EvalResult, evaluate_tokens
from charrnn.fsutil import atomic_write_json, file_lock, sha256_file
from charrnn.io.checkpoint import (
    load_model,
    resolve_checkpoint,
    verify_checkpoint,
    write_with_checksum,
)

log = logging.getLogger("charrnn")
POINTER = "production.json"
LINES = "lines"
# A path component and a W&B artefact name: no separators, no "." or "..",
# W&B's 128-character limit.
MODEL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}")


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
    model_name: str = ""  # the line; "" only in records written before model lines

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
    """The champion/challenger outcome of one run.

    The decision, and the new production record when it won.
    """

    decision: Decision
    production: ProductionModel | None = None
    model_name: str = ""  # the line the challenger ran in

    @property
    def promoted(self) -> bool:
        return self.decision.promoted

    def to_dict(self) -> dict:
        return asdict(self)


def default_model_name(corpus_uri: str) -> str:
    """The line a corpus trains by default.

    A named corpus's name, else the stem of its path or URL ("corpus.txt" -> "corpus").
    """
    if corpus_uri in NAMED_CORPORA:
        return corpus_uri
    parsed = urllib.parse.urlparse(corpus_uri)
    # One letter: a Windows drive, a plain path.
    path = parsed.path if len(parsed.scheme) > 1 else corpus_uri
    stem = Path(path.rstrip("/")).stem or parsed.netloc
    name = re.sub(r"[^A-Za-z0-9_.-]+", "-", stem).strip("-_.")[:128]
    return name or "corpus"


def validate_model_name(name: str) -> str:
    """``name`` when it can name a line (a directory and a W&B artefact).

    Otherwise a ConfigError that says how.
    """
    if not MODEL_NAME.fullmatch(name or ""):
        raise ConfigError(
            f"model_name {name!r} cannot name a model line",
            where="model_name",
            fix=(
                "use 1-128 letters, digits, '-', '_' or '.', starting with a letter or digit "
                "(e.g. shakespeare-small), or leave it unset for the corpus's name"
            ),
        )
    return name


def model_line(model_name: str | None, corpus_uri: str) -> str:
    """The validated line of a run: ``model_name`` if given, else the corpus's default line."""
    return validate_model_name(default_model_name(corpus_uri) if model_name is None else model_name)


def pointer_path(registry_dir: str | os.PathLike[str], model_name: str) -> Path:
    """``REGISTRY/lines/<model_name>/production.json``."""
    return Path(registry_dir) / LINES / validate_model_name(model_name) / POINTER


def _load_pointer(path: Path) -> ProductionModel:
    data = json.loads(path.read_text())
    # A record from before model lines.
    data.setdefault("model_name", default_model_name(data["corpus_uri"]))
    return ProductionModel(**data)


def read_production(
    registry_dir: str | os.PathLike[str], model_name: str
) -> ProductionModel | None:
    """The production model of one line.

    Or the pre-lines top-level pointer when it belongs to this line (module docstring).
    """
    path = pointer_path(registry_dir, model_name)
    if path.is_file():
        return _load_pointer(path)
    legacy = Path(registry_dir) / POINTER
    if legacy.is_file() and (record := _load_pointer(legacy)).model_name == model_name:
        return record
    return None


def held_out_text(tokens: TokenSet) -> tuple[str, str]:
    """(text, description): the test split, or the val split when there is no test split."""
    for split in ("test", "val"):
        if tokens.num_tokens[split] > 1:
            return tokens.vocab.decode(
                np.asarray(load_split(tokens, split))
            ), f"{split} split of {tokens.key}"
    raise CheckpointError(
        "the corpus has no held-out text",
        where=tokens.dir,
        fix="set data.test_fraction or data.val_fraction above 0",
    )


def score_on_text(
    checkpoint: str | os.PathLike[str], text: str, *, num_streams: int = EVAL_STREAMS
) -> EvalResult:
    """Bits/char of a checkpoint on raw text, encoded with the checkpoint's own vocabulary.

    Runs on the GPU if there is one.
    """
    device = pick_device("auto", DistEnv())
    model, vocab, _ = load_model(checkpoint, device)
    return evaluate_tokens(
        model, vocab.encode(text, dtype=np.int64), num_streams=num_streams, device=device
    )


def challenge(
    registry_dir: str | os.PathLike[str],
    challenger: str | os.PathLike[str],
    tokens: TokenSet,
    *,
    model_name: str,
    num_streams: int = EVAL_STREAMS,
    challenger_bpc: float | None = None,
) -> Decision:
    """Score the challenger and the production model of its line ``model_name``.

    Both are scored on the challenger's held-out text.

    ``challenger_bpc``: the challenger's score on that split when it is already known
    (the pipeline's evaluation), so it is not computed twice.
    """
    text, described = held_out_text(tokens)
    if challenger_bpc is None:
        challenger_bpc = score_on_text(challenger, text, num_streams=num_streams).bpc
    champion = read_production(registry_dir, model_name)
    if champion is None:
        return Decision(
            True,
            challenger_bpc,
            None,
            described,
            len(text) - 1,
            f"no production model in line {model_name} yet",
        )
    try:
        verify_checkpoint(champion.checkpoint)
    except CheckpointError as exc:
        log.warning("production model is unusable (%s); the challenger replaces it", exc)
        return Decision(
            True,
            challenger_bpc,
            None,
            described,
            len(text) - 1,
            f"production model unusable: {exc}",
        )
    champion_bpc = score_on_text(champion.checkpoint, text, num_streams=num_streams).bpc
    won = challenger_bpc < champion_bpc
    reason = (
        f"challenger {challenger_bpc:.4f} {'<' if won else '>='} production {champion_bpc:.4f} "
        f"bits/char (line {model_name})"
    )
    return Decision(won, challenger_bpc, champion_bpc, described, len(text) - 1, reason)


def promote(
    registry_dir: str | os.PathLike[str],
    checkpoint: str | os.PathLike[str],
    *,
    run_dir: str,
    test_bpc: float,
    corpus_uri: str,
    corpus_sha256: str,
    model_name: str,
    wandb_run_id: str | None = None,
) -> ProductionModel:
    """Copy the checkpoint into the registry and point the line's ``production.json`` at it.

    The pointer is written atomically; other lines are untouched.
    """
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
            model_name=model_name,
        )
        pointer = pointer_path(root, model_name)
        atomic_write_json(pointer, record.to_dict())
    log.info("promoted %s to production of line %s (%s)", source, model_name, pointer)
    return record


def challenge_and_promote(
    registry_dir: str | os.PathLike[str],
    checkpoint: str,
    tokens: TokenSet,
    *,
    run_dir: str,
    corpus: CorpusRef,
    challenger_bpc: float,
    model_name: str,
    wandb_run_id: str | None = None,
    num_streams: int = EVAL_STREAMS,
) -> Promotion:
    """:func:`challenge` within the line ``model_name``, then :func:`promote` it if it won.

    ``challenger_bpc`` is the checkpoint's known held-out score.
    """
    decision = challenge(
        registry_dir,
        checkpoint,
        tokens,
        model_name=model_name,
        num_streams=num_streams,
        challenger_bpc=challenger_bpc,
    )
    log.info(
        "champion/challenger (line %s): %s -> %s",
        model_name,
        decision.reason,
        "PROMOTED" if decision.promoted else "not promoted",
    )
    if not decision.promoted:
        return Promotion(decision, model_name=model_name)
    record = promote(
        registry_dir,
        checkpoint,
        run_dir=run_dir,
        test_bpc=challenger_bpc,
        corpus_uri=corpus.uri,
        corpus_sha256=corpus.sha256,
        model_name=model_name,
        wandb_run_id=wandb_run_id,
    )
    return Promotion(decision, record, model_name=model_name)
