"""Checkpoints: one self-contained file per save, atomic and checksummed.

Layout inside a run directory::

    checkpoints/step-00001000.pt          torch.save payload
    checkpoints/step-00001000.pt.sha256   "<hex>  step-00001000.pt" (sha256sum -c compatible)
    best.pt (+ .sha256)                   hard link to the best-by-validation checkpoint

The payload is written to a temp file, fsynced and renamed; the checksum file
is renamed into place after it, so a checkpoint without a matching checksum is
treated as incomplete or corrupt, reported, and skipped in favour of the
previous one. (The checksum's temp file is written first, so a full disk fails
the save before any final name changes.) Loading always uses
``torch.load(..., weights_only=True)``. A process killed in the middle of a
save leaves temp files (``.step-00001000.pt.<random>.tmp``) or a checksum
without its checkpoint; :func:`remove_stale_files` clears them.
"""

from __future__ import annotations

import contextlib
import errno
import io
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch

from charrnn.errors import CheckpointError
from charrnn.fsutil import atomic_path, sha256_bytes, sha256_file

log = logging.getLogger("charrnn")
STEP_FILE = re.compile(r"^step-(\d{8})\.pt$")
# What an interrupted save leaves: atomic_path's temp files, and checksums whose checkpoint is gone.
TEMP_FILE = re.compile(r"^\.(step-(\d{8})\.pt|best\.pt)(\.sha256)?\..+\.tmp$")
SUMS_FILE = re.compile(r"^(step-(\d{8})\.pt|best\.pt)\.sha256$")
CHECKPOINT_FORMAT = 1


def checkpoint_dir(run_dir: str | os.PathLike[str]) -> Path:
    return Path(run_dir) / "checkpoints"


def checksum_path(path: str | os.PathLike[str]) -> Path:
    """The ``.sha256`` sidecar of ``path`` ("<hex>  <name>", sha256sum -c compatible)."""
    path = Path(path)
    return path.with_name(path.name + ".sha256")


@contextlib.contextmanager
def write_with_checksum(path: Path, digest: str) -> Iterator[Path]:
    """Yield a temp path for ``path``; on success rename it, then its checksum file, into place.

    The checksum's temp file is written first, so a disk that fills up fails
    before anything under a final name changes, and the rename order (payload,
    then checksum) keeps the rule that a checkpoint without its checksum is
    incomplete.
    """
    with atomic_path(checksum_path(path)) as sums_tmp:
        sums_tmp.write_text(f"{digest}  {path.name}\n")
        with atomic_path(path) as tmp:
            yield tmp


def save_checkpoint(
    run_dir: str | os.PathLike[str],
    payload: dict[str, Any],
    *,
    step: int,
    is_best: bool,
    keep_last: int,
) -> Path:
    """Write ``payload`` as the checkpoint of ``step``; keep the last ``keep_last`` plus the best.

    A failed write (a full disk above all) raises CheckpointError naming the
    last good checkpoint, and leaves the earlier checkpoints and no temp files.
    """
    payload = {"format": CHECKPOINT_FORMAT, **payload}
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    data = buffer.getvalue()
    digest = sha256_bytes(data)
    path = target = checkpoint_dir(run_dir) / f"step-{step:08d}.pt"
    try:
        with write_with_checksum(path, digest) as tmp:
            tmp.write_bytes(data)
        if is_best:
            target = Path(run_dir) / "best.pt"
            # A hard link: no second copy of the bytes.
            with write_with_checksum(target, digest) as tmp:
                tmp.unlink()
                os.link(path, tmp)
    except OSError as exc:
        raise _save_failed(run_dir, target, step, len(data), exc) from None
    _prune(run_dir, keep_last)
    return path


def _save_failed(
    run_dir: str | os.PathLike[str], path: Path, step: int, size: int, exc: OSError
) -> CheckpointError:
    """The error for a checkpoint that could not be written.

    It says what failed, what is left and what to do.
    """
    full = exc.errno in (errno.ENOSPC, errno.EDQUOT)
    what = "disk full" if full else f"cannot write ({exc.strerror or exc})"
    last = newest_valid_checkpoint(run_dir)
    if last is None:
        left = "no earlier checkpoint remains: a new run starts from scratch"
    else:
        left = f"last good checkpoint: {last[0]} (step {last[1]})"
    todo = (
        f"free space on the disk holding {Path(run_dir).resolve()} "
        f"(this checkpoint needs {size / 2**20:.1f} MiB)"
        if full
        else "make the run directory writable"
    )
    return CheckpointError(
        f"{what} while saving the checkpoint of step {step} ({path.name}); {left}",
        where=str(path),
        fix=f"{todo} and run again with --resume",
    )


def newest_valid_checkpoint(run_dir: str | os.PathLike[str]) -> tuple[Path, int] | None:
    """(path, step) of the newest step checkpoint that passes its checksum, or None."""
    for path in reversed(list_checkpoints(run_dir)):
        try:
            verify_checkpoint(path)
        except CheckpointError:
            continue
        return path, int(STEP_FILE.match(path.name).group(1))
    return None


def remove_stale_files(run_dir: str | os.PathLike[str]) -> list[Path]:
    """Delete what killed saves left behind; return the paths removed (each is logged).

    Call it when training starts and when it resumes, on the one process that
    writes checkpoints (rank 0). It removes, in ``checkpoints/`` and beside
    ``best.pt``: temp files of interrupted saves (``.step-*.pt.*.tmp``,
    ``.best.pt.*.tmp`` and their ``.sha256`` temps, full size each) and
    checksum files whose checkpoint is gone (``step-*.pt.sha256``,
    ``best.pt.sha256``). Checkpoints themselves, even corrupt ones, are left
    alone: loading reports and skips those.

    A file counts as stale only when it is older than the newest valid
    checkpoint: its step is lower, or it was last written before that
    checkpoint was. Anything newer may belong to a save in progress elsewhere
    (another process on shared storage) and is kept; so with no valid
    checkpoint at all nothing is removed.
    """
    newest = newest_valid_checkpoint(run_dir)
    if newest is None:
        return []
    newest_path, newest_step = newest
    newest_mtime = newest_path.stat().st_mtime_ns
    removed = []
    for folder in (checkpoint_dir(run_dir), Path(run_dir)):
        for path in sorted(folder.iterdir()):
            if _is_leftover(path) and _older_than(path, newest_step, newest_mtime):
                path.unlink(missing_ok=True)
                removed.append(path)
    if removed:
        log.info(
            "removed %d stale file(s) of interrupted checkpoint saves: %s",
            len(removed),
            ", ".join(str(p) for p in removed),
        )
    return removed


def _is_leftover(path: Path) -> bool:
    if TEMP_FILE.match(path.name):
        return True
    match = SUMS_FILE.match(path.name)
    # Or a checksum without its checkpoint.
    return bool(match) and not path.with_name(match.group(1)).exists()


def _older_than(path: Path, step: int, mtime_ns: int) -> bool:
    match = TEMP_FILE.match(path.name) or SUMS_FILE.match(path.name)
    own_step = match.group(2) if match else None
    try:
        older = path.stat().st_mtime_ns < mtime_ns
    except FileNotFoundError:  # its writer finished (renamed or removed it) meanwhile
        return False
    return older or (own_step is not None and int(own_step) < step)


def _prune(run_dir: str | os.PathLike[str], keep_last: int) -> None:
    steps = list_checkpoints(run_dir)
    for old in steps[: max(0, len(steps) - max(1, keep_last))]:
        old.unlink(missing_ok=True)  # best.pt is a separate link and survives
        checksum_path(old).unlink(missing_ok=True)


def list_checkpoints(run_dir: str | os.PathLike[str]) -> list[Path]:
    """Step checkpoints of a run, oldest first."""
    folder = checkpoint_dir(run_dir)
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if STEP_FILE.match(p.name))


def verify_checkpoint(path: str | os.PathLike[str]) -> None:
    """Raise CheckpointError unless ``path`` matches its recorded sha256."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(
            "checkpoint not found",
            where=str(path),
            fix="check the path (a run directory works too)",
        )
    sums = checksum_path(path)
    if not sums.is_file():
        raise CheckpointError(
            "no checksum file beside the checkpoint (the save did not finish)",
            where=str(path),
            fix="use an earlier checkpoint",
        )
    expected = sums.read_text().split()[0]
    actual = sha256_file(path)
    if actual != expected:
        raise CheckpointError(
            "checksum mismatch: file is corrupt "
            f"(sha256 {actual[:12]}..., expected {expected[:12]}...)",
            where=str(path),
            fix=(
                "use an earlier checkpoint; "
                "`charrnn train --resume` skips corrupt ones automatically"
            ),
        )


def load_checkpoint(
    path: str | os.PathLike[str], map_location: str | torch.device = "cpu"
) -> dict[str, Any]:
    verify_checkpoint(path)
    try:
        payload = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as exc:  # a valid checksum over an unreadable file: written by something else
        raise CheckpointError(f"cannot load: {exc}", where=str(path)) from None
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError("not a charrnn checkpoint (unknown format)", where=str(path))
    return payload


def load_latest_valid(
    run_dir: str | os.PathLike[str], map_location: str | torch.device = "cpu"
) -> tuple[dict[str, Any], Path] | None:
    """The newest checkpoint that passes its checksum; corrupt ones are reported and skipped."""
    for path in reversed(list_checkpoints(run_dir)):
        try:
            return load_checkpoint(path, map_location), path
        except CheckpointError as exc:
            log.warning("skipping checkpoint: %s", exc)
    return None


def resolve_checkpoint(target: str | os.PathLike[str]) -> Path:
    """A checkpoint file, or a run directory (its best.pt, else its newest valid checkpoint)."""
    path = Path(target)
    if path.is_dir():
        if (path / "best.pt").is_file():
            return path / "best.pt"
        for candidate in reversed(list_checkpoints(path)):
            try:
                verify_checkpoint(candidate)
                return candidate
            except CheckpointError as exc:
                log.warning("skipping checkpoint: %s", exc)
        raise CheckpointError(
            "no valid checkpoint in this directory",
            where=str(path),
            fix="train first, or pass a .pt file",
        )
    return path


def load_model(target: str | os.PathLike[str], device: str | torch.device = "cpu"):
    """(model in eval mode, vocab, payload) from a checkpoint file or run directory."""
    from charrnn.data.vocab import Vocab
    from charrnn.model.lstm import CharLSTM, ModelShape

    path = resolve_checkpoint(target)
    payload = load_checkpoint(path, map_location=device)
    model = CharLSTM(ModelShape(**payload["model_shape"])).to(device)
    model.load_state_dict(payload["model"])
    model.lstm.flatten_parameters()
    model.eval()
    return model, Vocab(tuple(payload["vocab"])), payload
