"""Faults: a full disk while checkpointing, kills that leave files behind, and more.

Also a killed torchrun agent and a refused corpus.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from helpers import alive, cache_listing, make_text, process_tree, run_env, tiny_config

from charrnn.data.prepare import prepare
from charrnn.errors import CheckpointError, CorpusError
from charrnn.io.checkpoint import (
    list_checkpoints,
    load_checkpoint,
    load_latest_valid,
    remove_stale_files,
    save_checkpoint,
    verify_checkpoint,
)

# -------------------------------------------------- (A) disk full


@contextlib.contextmanager
def small_tmpfs(path: Path, size: str) -> Iterator[Path]:
    """A real tmpfs of ``size`` mounted at ``path``.

    Root only: the test is skipped where mounting is refused.
    """
    path.mkdir(parents=True, exist_ok=True)
    if shutil.which("mount") is None:
        pytest.skip("no mount command")
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
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
    # 1 MiB
    return {"step_tensor": torch.randn(256 * 1024, generator=torch.Generator().manual_seed(seed))}


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
        # Nothing damaged: no temp file, no half checkpoint, the earlier checkpoint and best.pt
        # intact.
        assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
            "step-00000001.pt",
            "step-00000001.pt.sha256",
        ]
        assert sorted(p.name for p in run.iterdir()) == ["best.pt", "best.pt.sha256", "checkpoints"]
        assert list_checkpoints(run) == [first]
        verify_checkpoint(first)
        verify_checkpoint(run / "best.pt")
        assert torch.equal(load_checkpoint(first)["step_tensor"], _payload(1)["step_tensor"])


# -------------------------------------------------- (B) leftovers of killed saves


def _leftovers(run: Path) -> dict[str, int]:
    """Temp files and checksums without their checkpoint, name -> size."""
    found = {}
    for folder in (run / "checkpoints", run):
        for path in folder.iterdir() if folder.is_dir() else ():
            orphan_sums = (
                path.name.endswith(".sha256")
                and not path.with_name(path.name.removesuffix(".sha256")).exists()
            )
            if path.name.endswith(".tmp") or orphan_sums:
                found[str(path.relative_to(run))] = path.stat().st_size
    return found


def _writing(folder: Path, before: set[str]) -> bool:
    """A new checkpoint payload temp file is being filled.

    Its checksum's temp file comes first and is tiny.
    """
    with contextlib.suppress(FileNotFoundError):
        for entry in os.scandir(folder):
            if (
                entry.name.endswith(".tmp")
                and ".sha256." not in entry.name
                and f"checkpoints/{entry.name}" not in before
            ):
                with contextlib.suppress(FileNotFoundError):
                    if entry.stat().st_size > 0:
                        return True
    return False


def _kill_mid_save(args: list[str], run: Path, log: Path, timeout_s: float = 90) -> bool:
    """Start training and SIGKILL it while it writes a checkpoint.

    True if that left new files behind.
    """
    before = set(_leftovers(run))
    with open(log, "ab") as out:
        proc = subprocess.Popen(args, env=run_env(), stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                pytest.fail(
                    f"training exited ({proc.returncode}) before it could be killed:\n"
                    f"{log.read_text()[-3000:]}"
                )
            if _writing(run / "checkpoints", before):
                proc.kill()
                break
            time.sleep(0.002)
        else:
            pytest.fail("no checkpoint save started in time")
    finally:
        proc.kill()
        proc.wait(timeout=30)
    return bool(set(_leftovers(run)) - before)


@pytest.mark.slow
def test_repeated_sigkills_during_checkpointing_leave_nothing_after_remove_stale_files(
    small_corpus, tmp_path
):
    run = tmp_path / "run"
    cfg = tiny_config(small_corpus, run)
    prepare(cfg)  # tokenise once, here: every start below is a cache hit
    # A wide model makes each save (~40 MB with the optimiser state) last far longer than a step,
    # so a kill timed by the temp file's appearance lands inside the write.
    args = [
        sys.executable,
        "-m",
        "charrnn",
        "train",
        "--resume",
        "--out-dir",
        str(run),
        f"data.corpus={small_corpus}",
        "hidden_size=512",
        "embedding_dim=16",
        "batch_size=4",
        "seq_len=8",
        "checkpoint_interval=1",
        "keep_last=2",
        "eval_interval=0",
        "log_interval=1",
        "time_budget_s=0",
        "data.val_fraction=0.1",
        "data.test_fraction=0.05",
        "device=cpu",
    ]
    caught = sum(
        _kill_mid_save([*args, "max_steps=100000"], run, tmp_path / "train.log") for _ in range(4)
    )
    assert caught >= 2, f"only {caught} of 4 kills left files behind:\n{_leftovers(run)}"
    leaked = _leftovers(run)
    # full-size temps
    assert any(name.endswith(".tmp") and size > 1 << 20 for name, size in leaked.items()), leaked

    # A clean run on top: its checkpoints are newer than every leftover, so all of them are stale.
    newest = load_checkpoint(list_checkpoints(run)[-1])["step"] if list_checkpoints(run) else 0
    done = subprocess.run(
        [*args, f"max_steps={newest + 2}"],
        env=run_env(),
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    # training itself does not clean up (the loop calls remove_stale_files)
    assert set(leaked) <= set(_leftovers(run))

    removed = remove_stale_files(run)
    assert {str(p.relative_to(run)) for p in removed} == set(leaked)
    assert _leftovers(run) == {}
    payload, path = load_latest_valid(run)
    assert payload["step"] == newest + 2 and path == list_checkpoints(run)[-1]
    assert remove_stale_files(run) == []


def _touch(path: Path, mtime: float, size: int = 16) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"x" * size)
    os.utime(path, (mtime, mtime))
    return path


def test_remove_stale_files_keeps_checkpoints_and_anything_newer_than_the_newest_valid_one(
    tmp_path, caplog
):
    run = tmp_path / "run"
    for step in (10, 20):
        save_checkpoint(run, {"w": torch.zeros(4)}, step=step, is_best=step == 10, keep_last=5)
    ck = run / "checkpoints"
    newest = (ck / "step-00000020.pt").stat().st_mtime
    stale = [
        # a lower step: dead even if written later
        _touch(ck / ".step-00000015.pt.ab12cd.tmp", newest + 60),
        # the newest step, but older than its checkpoint
        _touch(ck / ".step-00000020.pt.ab12cd.tmp", newest - 60),
        _touch(ck / ".step-00000030.pt.sha256.ef34gh.tmp", newest - 60),
        # its checkpoint was pruned
        _touch(ck / "step-00000005.pt.sha256", newest - 60),
        _touch(run / ".best.pt.xy56zz.tmp", newest - 60),
        _touch(run / ".best.pt.sha256.xy56zz.tmp", newest - 60),
    ]
    kept = [
        # a save that may be in progress elsewhere
        _touch(ck / ".step-00000030.pt.ij78kl.tmp", newest + 60),
        _touch(ck / ".step-00000020.pt.mn90op.tmp", newest + 60),
        # newer than the newest valid checkpoint: kept
        _touch(ck / "step-00000030.pt.sha256", newest + 60),
        # a checkpoint without checksum: loading skips it, we never delete one
        _touch(ck / "step-00000007.pt", newest - 60),
        # not ours
        _touch(run / "notes.tmp", newest - 60),
    ]
    # a corrupt checkpoint stays too
    (ck / "step-00000010.pt.sha256").write_text("0" * 64 + "  step-00000010.pt\n")
    with caplog.at_level(logging.INFO, logger="charrnn"):
        removed = remove_stale_files(run)
    assert sorted(removed) == sorted(stale)
    assert all(not p.exists() for p in stale) and all(p.exists() for p in kept)
    assert (ck / "step-00000010.pt").exists() and (run / "best.pt.sha256").exists()
    assert (
        "removed 6 stale file(s)" in caplog.text and ".step-00000015.pt.ab12cd.tmp" in caplog.text
    )
    verify_checkpoint(ck / "step-00000020.pt")


def test_remove_stale_files_without_a_valid_checkpoint_removes_nothing(tmp_path):
    run = tmp_path / "run"
    leftovers = [
        _touch(run / "checkpoints" / ".step-00000001.pt.ab12cd.tmp", time.time() - 3600),
        _touch(run / "best.pt.sha256", time.time() - 3600),
    ]
    assert remove_stale_files(run) == [] and remove_stale_files(tmp_path / "missing") == []
    assert all(p.exists() for p in leftovers)


# -------------------------------------------------- (D) a refused corpus is not cached


@pytest.mark.slow
def test_a_refused_corpus_leaves_the_cache_as_it_was(tmp_path, cache_dir):
    good = tmp_path / "good.txt"
    good.write_text(make_text(20_000, seed=5), encoding="utf-8")
    corpus, tokens = prepare(tiny_config(good, tmp_path / "run"))  # a good corpus caches...
    before = cache_listing(cache_dir)
    assert f"corpora/{corpus.sha256}.txt" in before and f"tokens/{tokens.key}/meta.json" in before

    fifty = tmp_path / "fifty-bytes.txt"
    fifty.write_text(("To be, or not to be, that is the question:\n" * 2)[:50], encoding="utf-8")
    assert len(fifty.read_bytes()) == 50
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "charrnn",
            "prepare",
            f"data.corpus={fifty}",
            "data.val_fraction=0.05",
            "data.test_fraction=0.05",
        ],
        env=run_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert "training split has 46 characters" in done.stderr and str(fifty) in done.stderr
    assert cache_listing(cache_dir) == before

    # Refused in-process too: a split too short (12 characters, val_fraction 0.1), and a batch
    # too wide.
    twelve = tmp_path / "twelve.txt"
    twelve.write_text("ROMEO:\nWhat?", encoding="utf-8")
    with pytest.raises(CorpusError, match="too short for a val split"):
        prepare(tiny_config(twelve, tmp_path / "run2", batch_size=1, seq_len=4))
    with pytest.raises(CorpusError, match="training split has"):
        prepare(tiny_config(good, tmp_path / "run3", batch_size=1024))
    assert cache_listing(cache_dir) == before


# -------------------------------------------------- (C) a killed torchrun agent leaves no orphans


def _cmdline(pid: int) -> list[str]:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace").split("\0")
    except OSError:
        return []


def _launch_tree(launcher: int, out_dir: Path) -> tuple[int | None, list[int]]:
    """(torchrun agent pid, worker pids) under ``launcher``.

    Workers run in sessions of their own but are the agent's children.
    """
    agent = next(
        (pid for pid in process_tree(launcher) if "torch.distributed.run" in _cmdline(pid)), None
    )
    if agent is None:
        return None, []
    return agent, sorted(
        pid
        for pid in process_tree(agent)
        if pid != agent and str(out_dir) in _cmdline(pid) and alive(pid)
    )


@pytest.mark.slow
@pytest.mark.distributed
def test_killing_the_torchrun_agent_stops_its_workers_and_the_launcher(small_corpus, tmp_path):
    run = tmp_path / "run"
    _, tokens = prepare(tiny_config(small_corpus, run))
    args = [
        sys.executable,
        "-m",
        "charrnn",
        "launch",
        "--nproc-per-node",
        "2",
        "--",
        "--out-dir",
        str(run),
        "--tokens",
        tokens.dir,
        "hidden_size=32",
        "embedding_dim=16",
        "batch_size=8",
        "seq_len=16",
        "max_steps=1000000",
        "time_budget_s=600",
        "checkpoint_interval=1000000",
        "eval_interval=0",
        "log_interval=10",
        "device=cpu",
    ]
    log = tmp_path / "launch.log"
    with open(log, "wb") as out:
        launcher = subprocess.Popen(
            args, env=run_env(), stdout=out, stderr=subprocess.STDOUT, start_new_session=True
        )
    workers: list[int] = []
    try:
        deadline = time.monotonic() + 120
        while True:  # both workers up and training (a progress line has been written)
            agent, workers = _launch_tree(launcher.pid, run)
            if (
                len(workers) == 2
                and (run / "metrics.jsonl").exists()
                and (run / "metrics.jsonl").stat().st_size > 0
            ):
                break
            assert launcher.poll() is None and time.monotonic() < deadline, (
                f"workers did not start:\n{log.read_text()[-3000:]}"
            )
            time.sleep(0.2)
        os.kill(agent, signal.SIGKILL)
        deadline = time.monotonic() + 10
        while any(alive(pid) for pid in workers) and time.monotonic() < deadline:
            time.sleep(0.1)
        survivors = [pid for pid in workers if alive(pid)]
        assert not survivors, f"workers {survivors} outlived their torchrun agent by 10 s"
        code = launcher.wait(timeout=60)
        assert code != 0
        assert "was killed by SIGKILL" in log.read_text()
    finally:
        for pid in workers:  # never leave a test's worker running
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(launcher.pid, signal.SIGKILL)
        launcher.wait(timeout=30)


def test_launcher_stops_waiting_when_an_exited_agent_left_its_output_open():
    from charrnn.distributed.launch import _stream_output

    # `sh` prints, leaves a child that holds the pipe open, and exits 3: as a killed agent with
    # a stuck worker.
    proc = subprocess.Popen(
        ["sh", "-c", "echo before; sleep 120 & exit 3"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    lines: list[str] = []
    try:
        started = time.monotonic()
        _stream_output(proc, lines.append, wait_s=1)
        assert time.monotonic() - started < 20
        assert proc.wait(timeout=10) == 3
        assert lines[0] == "before" and "still holds its output open" in lines[-1]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)  # the sleep, still in sh's process group
        proc.wait(timeout=10)
