"""Faults: a full disk while checkpointing, kills that leave files behind, a killed torchrun agent, a refused corpus."""

from __future__ import annotations

import contextlib
import errno
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from charrnn.checkpoint import (
    list_checkpoints,
    load_checkpoint,
    save_checkpoint,
    verify_checkpoint,
)
from charrnn.errors import CheckpointError

# --------------------------------------------------------------------------- (A) disk full


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A real tmpfs of ``size`` mounted at ``path`` (root only; the test is skipped where mounting is refused)."""
    path.mkdir(parents=True, exist_ok=True)
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True, text=True, timeout=30)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], capture_output=True, timeout=30)


def fill(path: Path, leave_bytes: int) -> None:
    """Write ``path`` until the filesystem is full, then give back ``leave_bytes`` of it."""
    chunk = b"\0" * 65536
    with open(path, "wb") as fh:
        try:
            while True:
                fh.write(chunk)
                fh.flush()
        except OSError as exc:
            assert exc.errno == errno.ENOSPC, exc
    size = path.stat().st_size  # what reached the disk (the writer's buffer may hold more)
    if leave_bytes:
        with open(path, "rb+") as fh:
            fh.truncate(max(0, size - leave_bytes))


def _payload(seed: int) -> dict:
    return {"step_tensor": torch.randn(256 * 1024, generator=torch.Generator().manual_seed(seed))}  # 1 MiB


@pytest.mark.parametrize("leave_bytes", [0, 16384], ids=["full", "room-for-the-checksum-only"])
def test_disk_full_while_checkpointing_names_the_last_good_checkpoint(tmp_path, leave_bytes):
    with small_tmpfs(tmp_path / "disk", "3m") as disk:
        run = disk / "run"
        first = save_checkpoint(run, _payload(1), step=1, is_best=True, keep_last=3)
        fill(disk / "filler", leave_bytes)
        with pytest.raises(CheckpointError) as err:
            save_checkpoint(run, _payload(2), step=2, is_best=True, keep_last=3)
        message = str(err.value)
        assert "disk full while saving the checkpoint of step 2" in message
        assert f"last good checkpoint: {first} (step 1)" in message
        assert "free space" in message and "run again with --resume" in message
        assert err.value.where == str(run / "checkpoints" / "step-00000002.pt")
        # Nothing damaged: no temp file, no half checkpoint, the earlier checkpoint and best.pt intact.
        assert sorted(p.name for p in (run / "checkpoints").iterdir()) == ["step-00000001.pt", "step-00000001.pt.sha256"]
        assert sorted(p.name for p in run.iterdir()) == ["best.pt", "best.pt.sha256", "checkpoints"]
        assert list_checkpoints(run) == [first]
        verify_checkpoint(first)
        verify_checkpoint(run / "best.pt")
        assert torch.equal(load_checkpoint(first)["step_tensor"], _payload(1)["step_tensor"])
