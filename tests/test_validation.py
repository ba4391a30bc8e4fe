"""Validation in training: the schedule, the fixed subsample, early stopping, best.pt and resume."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from helpers import make_text, run_env, tiny_config, tiny_overrides

from charrnn.data.prepare import prepare
from charrnn.data.tokens import load_split
from charrnn.evaluation.evaluate import evaluate_tokens
from charrnn.io.checkpoint import load_checkpoint, load_model
from charrnn.train.trainer import train
from charrnn.train.validation import (
    MIN_VAL_CHARS,
    EarlyStopping,
    EvalSchedule,
    val_chars_for,
    val_subsample,
)


def _val_records(run_dir: str | Path) -> list[dict]:
    lines = (Path(run_dir) / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if "val/loss_nats" in r]


# --------------------------------------------------------------------------- units


def test_schedule_validates_once_at_each_planned_fraction():
    schedule = EvalSchedule(interval=0, count=4)
    fractions = [i / 100 for i in range(1, 101)]
    due = [f for f in fractions if schedule.due(0, f)]
    assert due == [0.25, 0.5, 0.75, 1.0]
    # one slow step passes two fractions: one validation
    skipping = EvalSchedule(interval=0, count=4)
    assert [skipping.due(0, f) for f in (0.2, 0.55, 0.6, 0.8)] == [False, True, False, True]


def test_schedule_resumes_past_the_fractions_already_done_and_intervals_win():
    schedule = EvalSchedule(interval=0, count=10)
    schedule.resume_at(0.43)
    assert not schedule.due(0, 0.45) and schedule.due(0, 0.5)
    assert EvalSchedule(interval=0, count=0).due(0, 1.0) is False  # only the end validates
    every = EvalSchedule(interval=7, count=16)
    assert [step for step in range(1, 30) if every.due(step, 0.0)] == [7, 14, 21, 28]


def test_validations_are_numbered_across_resumed_sessions():
    schedule = EvalSchedule(interval=0, count=8)
    schedule.resume_at(0.4)  # a resumed session: three validations done
    assert schedule.due(0, 0.5) and schedule.number(0) == 4
    schedule.due(0, 1.0)  # the end, past the rest at once
    assert schedule.number(0) == 8
    every = EvalSchedule(interval=5, count=0)
    assert [every.number(step) for step in (5, 10, 15, 23)] == [1, 2, 3, 5]  # 23: the end


def test_subsample_size_follows_training_between_validations():
    # never too few to rank checkpoints by
    assert val_chars_for(1_000, configured=0) == MIN_VAL_CHARS
    assert val_chars_for(10_000_000, configured=0) > MIN_VAL_CHARS
    assert val_chars_for(10_000_000, configured=5_000) == 5_000  # train.val_chars wins


def test_subsample_is_evenly_spread_fixed_slices_or_the_whole_split():
    tokens = np.arange(10_000, dtype=np.int64)
    sample = val_subsample(tokens, 1_000, streams=10)
    assert len(sample) == 1_000
    slices = sample.reshape(10, 100)
    assert (np.diff(slices, axis=1) == 1).all()  # each slice contiguous
    assert slices[0, 0] == 0 and slices[-1, -1] == 9_999  # from the start to the end of the split
    # the same characters every time
    assert np.array_equal(val_subsample(tokens, 1_000, streams=10), sample)
    assert np.array_equal(val_subsample(tokens, 20_000, streams=10), tokens)


def test_early_stopping_counts_validations_since_the_best_and_round_trips():
    early = EarlyStopping(patience=2)
    assert early.observe(2.0, 10) and not early.observe(2.1, 20) and not early.exhausted
    assert not early.observe(2.0, 30) and early.exhausted  # equal is not better
    restored = EarlyStopping(patience=2)
    restored.load_payload(early.to_payload())
    assert restored.to_dict() == early.to_dict()
    old = EarlyStopping(patience=2)
    old.load_payload({"best_val_loss": 1.5})  # a checkpoint from before early stopping
    assert (old.best_loss, old.best_step, old.stale) == (1.5, None, 0)
    assert not EarlyStopping(patience=0, stale=99).exhausted


# --------------------------------------------------------------------------- training


@pytest.fixture
def diverging_corpus(tmp_path) -> Path:
    """Training text 'aab' repeated, validation text 'abb'.

    The better the model learns one, the worse the other.
    """
    path = tmp_path / "diverging.txt"
    path.write_text("aab" * 5_700 + "abb" * 667 + "aab" * 333)  # 85 % train, 10 % val, 5 % test
    return path


def test_early_stopping_ends_the_run_and_scores_the_best_checkpoint(diverging_corpus, tmp_path):
    cfg = tiny_config(
        diverging_corpus,
        tmp_path / "run",
        max_steps=400,
        eval_interval=5,
        patience=2,
        checkpoint_interval=1000,
    )
    _, tokens = prepare(cfg)
    result = train(cfg, tokens)
    assert result.stopped_early and "2 validations without a new best" in result.stopped_early
    assert result.step < 400 and result.best_step is not None and result.best_step < result.step
    records = _val_records(result.run_dir)
    assert [r["step"] for r in records] == list(range(5, result.step + 1, 5))
    assert min(records, key=lambda r: r["val/loss_nats"])["step"] == result.best_step
    # stopped after `patience` validations without a new best
    assert result.step == result.best_step + 2 * 5

    best = load_checkpoint(Path(result.run_dir) / "best.pt")
    assert best["step"] == result.best_step and best["stale_evals"] == 0
    model, _, _ = load_model(Path(result.run_dir) / "best.pt")
    exact = evaluate_tokens(model, load_split(tokens, "val"), num_streams=cfg.train.eval_batch_size)
    # the final scores are best.pt's
    assert result.val["loss_nats"] == pytest.approx(exact.loss_nats, abs=1e-9)
    assert result.last_val["loss_nats"] > result.val["loss_nats"]
    summary = json.loads((Path(result.run_dir) / "train_summary.json").read_text())
    assert (
        summary["stopped_early"] == result.stopped_early
        and summary["best_step"] == result.best_step
    )


def test_under_a_time_budget_validations_fall_at_the_planned_fractions(small_corpus, tmp_path):
    """Each validation comes at the first step past a planned fraction of the clock, none before.

    Read against every step's logged time: on a loaded machine one slow step can pass two
    fractions, and then validates once (by design), so the count alone would be flaky.
    """
    budget, count = 4.0, 4
    cfg = tiny_config(
        small_corpus,
        tmp_path / "run",
        max_steps=0,
        time_budget_s=budget,
        evals_per_run=count,
        eval_interval=0,
        patience=0,
        log_interval=1,
        checkpoint_interval=100_000,
    )
    result = train(cfg, prepare(cfg)[1])
    lines = (Path(result.run_dir) / "metrics.jsonl").read_text().splitlines()
    times = {r["step"]: r["time_s"] for r in map(json.loads, lines) if "train/loss_nats" in r}
    times[0] = 0.0
    marks = [k / count * budget for k in range(1, count + 1)]
    slack = 0.01  # the schedule reads the clock a moment after the step's logged time

    def passed(step: int) -> list[float]:
        return [m for m in marks if times[step - 1] < m <= times[step] + slack]

    validated = [r["step"] for r in _val_records(result.run_dir)]
    assert validated[-1] == result.step and result.validations == len(validated)
    assert all(passed(step) for step in validated), (validated, times)  # none early or extra
    assert {m for step in validated for m in passed(step)} == set(marks), (validated, times)


def test_resume_keeps_the_best_score_and_the_patience_count(diverging_corpus, tmp_path):
    """A run stopped and resumed validates as one that ran straight.

    At the same steps, with the same best and patience.
    """
    common = dict(
        eval_interval=4, patience=50, log_interval=4, checkpoint_interval=12, lr_decay_steps=24
    )
    straight = tiny_config(diverging_corpus, tmp_path / "straight", max_steps=24, **common)
    _, tokens = prepare(straight)
    a = train(straight, tokens)
    staged = tiny_config(diverging_corpus, tmp_path / "staged", max_steps=12, **common)
    first = train(staged, tokens)
    middle = load_checkpoint(Path(first.checkpoint))
    since_best = [r["step"] for r in _val_records(first.run_dir) if r["step"] > first.best_step]
    assert middle["best_step"] == first.best_step and middle["stale_evals"] == len(since_best)
    staged.train.max_steps, staged.train.resume = 24, True
    b = train(staged, tokens)
    assert b.resumed_from == 12
    assert [(r["step"], r["val/loss_nats"]) for r in _val_records(a.run_dir)] == [
        (r["step"], r["val/loss_nats"]) for r in _val_records(b.run_dir)
    ]
    end_a, end_b = load_checkpoint(Path(a.checkpoint)), load_checkpoint(Path(b.checkpoint))
    # the count went on across the resume
    assert end_a["stale_evals"] > 0 and middle["stale_evals"] < end_a["stale_evals"]
    assert (
        end_a["best_step"],
        end_a["best_val_loss"],
        end_a["stale_evals"],
        end_a["val_chars"],
    ) == (end_b["best_step"], end_b["best_val_loss"], end_b["stale_evals"], end_b["val_chars"])


def test_default_schedule_logs_a_samples_increment_per_validation(tmp_path):
    """N validations give N rows of samples per prompt and temperature, all distinct.

    Read back from a real offline W&B run.
    """
    pytest.importorskip("wandb")
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(make_text(60_000, seed=9))
    out = tmp_path / "run"
    extra = [
        "max_steps=40",
        "time_budget_s=0",
        "evals_per_run=4",
        "eval_interval=0",
        "patience=0",
        "track.sample_length=40",
        "track.sample_temperatures=[1.0]",
    ]
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "charrnn",
            "train",
            "--out-dir",
            str(out),
            f"data.corpus={corpus}",
            *tiny_overrides(),
            *extra,
        ],
        env=run_env(WANDB_MODE="offline", CHARRNN_CACHE=str(tmp_path / "cache")),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    (run,) = sorted((out / "wandb").glob("offline-run-*"))
    tables = sorted((run / "files" / "media" / "table").glob("samples_*.table.json"))
    rows = [row for path in tables for row in json.loads(path.read_text())["data"]]
    assert sorted({row[0] for row in rows}) == [10, 20, 30, 40]  # one increment per validation
    texts = [row[3] for row in rows]
    assert len(texts) == 4 * 2 and len(set(texts)) == len(texts)
    assert math.isclose(len(_val_records(out)), 4)
