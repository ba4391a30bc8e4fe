"""Training: exact resume, checkpoint integrity, stopping rules, divergence, graceful stop."""

from __future__ import annotations

import json
import math
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from helpers import CPU_BF16, run_env, tiny_config, tiny_overrides

from charrnn.data.batches import StreamBatcher
from charrnn.data.prepare import prepare
from charrnn.data.tokens import load_split
from charrnn.errors import CheckpointError, ConfigError, DivergenceError
from charrnn.io.checkpoint import (
    list_checkpoints,
    load_checkpoint,
    load_latest_valid,
    verify_checkpoint,
)
from charrnn.train.schedule import lr_factor
from charrnn.train.trainer import train


def _losses(run_dir: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["train/loss_nats"] for r in records if "train/loss_nats" in r}


def _params(path: Path) -> dict[str, torch.Tensor]:
    return load_checkpoint(path)["model"]


def test_exact_resume_matches_straight_run(small_corpus, tmp_path):
    n = 12
    common = dict(log_interval=1, eval_interval=5, checkpoint_interval=n, lr_decay_steps=2 * n)
    straight = tiny_config(small_corpus, tmp_path / "straight", max_steps=2 * n, **common)
    _, tokens = prepare(straight)
    a = train(straight, tokens)

    staged = tiny_config(small_corpus, tmp_path / "staged", max_steps=n, **common)
    first = train(staged, tokens)
    assert first.step == n
    staged.train.max_steps, staged.train.resume = 2 * n, True
    b = train(staged, tokens)
    assert b.resumed_from == n and b.step == 2 * n

    assert _losses(Path(a.run_dir)) == _losses(Path(b.run_dir))  # every step's loss, bit for bit
    pa, pb = _params(Path(a.checkpoint)), _params(Path(b.checkpoint))
    for name in pa:
        assert torch.equal(pa[name], pb[name]), name


def test_keeps_last_k_plus_best_and_every_file_loads(small_corpus, tmp_path):
    cfg = tiny_config(
        small_corpus,
        tmp_path / "run",
        max_steps=40,
        eval_interval=10,
        checkpoint_interval=10,
        keep_last=2,
    )
    result = train(cfg, prepare(cfg)[1])
    names = [p.name for p in list_checkpoints(result.run_dir)]
    assert names == ["step-00000030.pt", "step-00000040.pt"]
    best = load_checkpoint(Path(result.run_dir) / "best.pt")
    assert best["val"]["loss_nats"] == pytest.approx(result.best_val_loss)
    for path in list_checkpoints(result.run_dir):
        load_checkpoint(path)


def test_flipped_byte_is_detected_and_resume_falls_back(small_corpus, tmp_path, caplog):
    cfg = tiny_config(small_corpus, tmp_path / "run", max_steps=20)
    train(cfg, prepare(cfg)[1])
    newest = list_checkpoints(cfg.train.out_dir)[-1]
    data = bytearray(newest.read_bytes())
    data[len(data) // 2] ^= 0x01
    newest.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="checksum mismatch"):
        verify_checkpoint(newest)
    payload, path = load_latest_valid(cfg.train.out_dir)
    assert path.name == "step-00000010.pt" and payload["step"] == 10
    assert "skipping checkpoint" in caplog.text and newest.name in caplog.text

    cfg.train.resume, cfg.train.max_steps = True, 30
    result = train(cfg, prepare(cfg)[1])
    assert result.resumed_from == 10 and result.step == 30


def test_refuses_to_overwrite_a_run_without_resume(small_corpus, tmp_path):
    cfg = tiny_config(small_corpus, tmp_path / "run", max_steps=10)
    train(cfg, prepare(cfg)[1])
    with pytest.raises(ConfigError, match="--resume"):
        train(cfg, prepare(cfg)[1])


def test_stopping_rules(small_corpus, tmp_path):
    cfg = tiny_config(
        small_corpus,
        tmp_path / "epochs",
        max_steps=0,
        epochs=0.5,
        eval_interval=0,
        checkpoint_interval=1000,
    )
    tokens = prepare(cfg)[1]
    windows = StreamBatcher(
        load_split(tokens, "train"),
        cfg.train.batch_size,
        cfg.train.seq_len,
        segment_windows=cfg.train.segment_windows,
    ).windows_per_epoch
    assert train(cfg, tokens).step == -(-windows // 2)

    cfg = tiny_config(
        small_corpus,
        tmp_path / "budget",
        max_steps=0,
        time_budget_s=2.0,
        eval_interval=0,
        checkpoint_interval=10_000,
    )
    result = train(cfg, tokens)
    assert result.step > 0 and 2.0 <= result.train_seconds < 10

    cfg = tiny_config(small_corpus, tmp_path / "none", max_steps=0, time_budget_s=0.0)
    with pytest.raises(ConfigError, match="no stopping rule"):
        train(cfg, tokens)


def test_divergence_stops_with_a_clear_message(small_corpus, tmp_path):
    cfg = tiny_config(
        small_corpus,
        tmp_path / "run",
        max_steps=30,
        lr=1e30,
        grad_clip=0.0,
        warmup_steps=0,
        eval_interval=0,
    )
    with pytest.raises(DivergenceError, match="lower train.lr"):
        train(cfg, prepare(cfg)[1])


@pytest.mark.skipif(CPU_BF16, reason="this CPU has native bf16 LSTM kernels")
def test_bf16_on_a_cpu_without_bf16_kernels_is_refused_clearly(small_corpus, tmp_path):
    cfg = tiny_config(small_corpus, tmp_path / "run", max_steps=5, precision="bf16")
    with pytest.raises(ConfigError, match="no native bf16 LSTM kernels") as err:
        train(cfg, prepare(cfg)[1])
    assert "precision=auto" in str(err.value)
    cfg.train.precision = "auto"  # picks fp32 here and trains
    assert train(cfg, prepare(cfg)[1]).step == 5


@pytest.mark.parametrize("schedule", ["linear", "cosine"])
def test_lr_schedule_shape(schedule):
    assert lr_factor(0, 0.0, 10, 0.1, schedule) == pytest.approx(0.1)
    assert lr_factor(9, 0.0, 10, 0.1, schedule) == pytest.approx(1.0)
    # both pass the midpoint halfway
    assert lr_factor(50, 0.5, 10, 0.1, schedule) == pytest.approx(0.55)
    assert lr_factor(99, 1.0, 10, 0.1, schedule) == pytest.approx(0.1)
    # past the horizon: held at the floor
    assert lr_factor(120, 1.3, 10, 0.1, schedule) == pytest.approx(0.1)
    quarter = {"linear": 0.1 + 0.9 * 0.75, "cosine": 0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi / 4))}
    assert lr_factor(30, 0.25, 10, 0.1, schedule) == pytest.approx(quarter[schedule])


def test_unknown_lr_schedule_is_refused(small_corpus, tmp_path):
    with pytest.raises(ConfigError, match="train.lr_schedule='step' is not allowed") as err:
        # refused as it is set
        tiny_config(small_corpus, tmp_path / "run", max_steps=5, lr_schedule="step")
    assert "linear, cosine" in str(err.value)
    assert not (tmp_path / "run").exists()  # refused before anything was written


def _training_in_progress(
    run: Path, corpus: Path, *extra: str
) -> tuple[subprocess.Popen, list[str]]:
    """A real ``charrnn train`` of the tiny model in a subprocess.

    Returned once it has logged three steps.
    """
    args = [
        sys.executable,
        "-m",
        "charrnn",
        "train",
        "--out-dir",
        str(run),
        f"data.corpus={corpus}",
        "hidden_size=32",
        "embedding_dim=16",
        "batch_size=8",
        "seq_len=32",
        *extra,
    ]
    proc = subprocess.Popen(
        args, env=run_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 60
    while (
        not (run / "metrics.jsonl").exists()
        or len((run / "metrics.jsonl").read_text().splitlines()) < 3
    ):
        assert time.monotonic() < deadline and proc.poll() is None, (
            proc.stderr.read() if proc.poll() is not None else "no progress"
        )
        time.sleep(0.1)
    return proc, args


@pytest.mark.slow
def test_sigint_checkpoints_then_resume_finishes(small_corpus, tmp_path):
    run = tmp_path / "run"
    proc, args = _training_in_progress(
        run,
        small_corpus,
        "max_steps=100000",
        "log_interval=1",
        "eval_interval=0",
        "checkpoint_interval=100000",
        "data.val_fraction=0.1",
    )
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "stopping after this step" in err
    stopped = load_checkpoint(list_checkpoints(run)[-1])
    assert stopped["step"] >= 3

    target = stopped["step"] + 5
    done = subprocess.run(
        [
            *args[:-4],
            f"max_steps={target}",
            "log_interval=1",
            "eval_interval=0",
            "data.val_fraction=0.1",
            "--resume",
        ],
        env=run_env(),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert f"resumed from {run / 'checkpoints'}" in done.stderr
    assert json.loads(done.stdout)["step"] == target


@pytest.mark.slow
def test_sigterm_checkpoints_first_without_evaluating_and_exits_143(small_corpus, tmp_path):
    """Docker gives 10 s and Kubernetes 30 s between SIGTERM and SIGKILL.

    The checkpoint must land first.
    """
    run = tmp_path / "run"
    proc, _ = _training_in_progress(
        run,
        small_corpus,
        "precision=fp32",
        "max_steps=100000",
        "log_interval=1",
        "eval_interval=0",
        "checkpoint_interval=100000",
        "data.val_fraction=0.4",
    )
    sent = time.monotonic()
    proc.send_signal(signal.SIGTERM)
    while not list_checkpoints(run):
        assert time.monotonic() - sent < 10, "no checkpoint within 10 s of SIGTERM"
        time.sleep(0.02)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err  # 128 + SIGTERM, as a shell reports it
    assert "received SIGTERM" in err
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert not any("val/loss_nats" in r for r in records), "evaluated before saving the checkpoint"
    assert load_checkpoint(list_checkpoints(run)[-1])["step"] == records[-1]["step"]


def test_a_run_resumed_at_its_end_reports_the_runs_own_throughput(small_corpus, tmp_path):
    cfg = tiny_config(small_corpus, tmp_path / "run", max_steps=10)
    tokens = prepare(cfg)[1]
    first = train(cfg, tokens)
    cfg.train.resume = True
    again = train(cfg, tokens)  # nothing left to do: no steps this session
    assert again.step == again.resumed_from == 10
    assert again.chars_per_s > 0 and again.train_seconds == pytest.approx(first.train_seconds)


def test_logged_loss_does_not_depend_on_evaluation_or_checkpoint_cadence(small_corpus, tmp_path):
    """Evaluations and checkpoints between log lines are left out of the throughput window.

    They are not left out of the loss.
    """
    tokens = None
    logged = {}
    for name, cadence in (("rare", 1000), ("often", 3)):
        cfg = tiny_config(
            small_corpus,
            tmp_path / name,
            max_steps=20,
            log_interval=10,
            eval_interval=cadence,
            checkpoint_interval=cadence,
        )
        tokens = tokens or prepare(cfg)[1]
        logged[name] = _losses(Path(train(cfg, tokens).run_dir))
    assert logged["often"] == logged["rare"]  # fp32, same data, same steps: bit for bit


def test_no_summary_keeps_stdout_empty_for_the_flow_log(small_corpus, tmp_path):
    """The Prefect task streams worker output into the run log.

    The summary JSON stays in train_summary.json.
    """
    args = [
        sys.executable,
        "-m",
        "charrnn",
        "train",
        "--out-dir",
        str(tmp_path / "run"),
        f"data.corpus={small_corpus}",
        *tiny_overrides(max_steps=3),
    ]
    quiet = subprocess.run(
        [*args, "--no-summary"], env=run_env(), capture_output=True, text=True, timeout=120
    )
    assert quiet.returncode == 0, quiet.stderr
    assert (
        quiet.stdout == ""
        and json.loads((tmp_path / "run" / "train_summary.json").read_text())["step"] == 3
    )
