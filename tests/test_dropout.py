"""model.dropout=auto: the rule, the decision on a clock, and a real run that records and keeps it.

The decision on a clock is the same on every rank.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from helpers import tiny_config

from charrnn.config import load_config
from charrnn.data.prepare import prepare
from charrnn.errors import ConfigError
from charrnn.io.checkpoint import list_checkpoints, load_checkpoint
from charrnn.train.dropout import (
    FULL_RATE,
    PACE_FROM_STEP,
    PACE_STEPS,
    RAMP_EPOCHS,
    DropoutPlan,
    auto_rate,
)
from charrnn.train.schedule import AgreedClock, Budget
from charrnn.train.trainer import train


def test_auto_rate_ramps_from_none_to_the_full_rate():
    low, high = RAMP_EPOCHS
    assert auto_rate(0.5) == auto_rate(low) == 0.0
    assert auto_rate((low + high) / 2) == pytest.approx(FULL_RATE / 2)
    assert auto_rate(high) == auto_rate(10 * high) == FULL_RATE
    rates = [auto_rate(e / 4) for e in range(80)]
    assert rates == sorted(rates)  # never less dropout for more epochs


def test_config_accepts_auto_or_a_rate_and_says_so_otherwise():
    assert load_config(None, []).model.dropout == "auto"
    assert load_config(None, ["dropout=0.25"]).model.dropout == 0.25
    for bad in ("dropout=1", "dropout=-0.1", "dropout=often", "dropout=true"):
        with pytest.raises(ConfigError, match=r"model\.dropout=.* auto, or a number in \[0, 1\)"):
            load_config(None, [bad])


def test_a_fixed_rate_is_never_revised():
    plan = DropoutPlan.from_config(0.1)
    assert plan.decided and plan.rate == 0.1
    assert not plan.decide_up_front(Budget(horizon=100_000, time_budget_s=0), windows_per_epoch=10)
    clock = AgreedClock(0, 0.0)
    for step in range(1, 200):
        clock.agree(step, step * 0.01)
        assert not plan.observe(step, clock, Budget(None, 600.0), windows_per_epoch=10)
    assert plan.rate == 0.1


def test_a_run_limited_in_steps_decides_before_its_first_step():
    plan = DropoutPlan.from_config("auto")
    assert plan.decide_up_front(Budget(horizon=900, time_budget_s=0), windows_per_epoch=100)
    assert plan.planned_epochs == 9.0 and plan.rate == auto_rate(9.0)
    on_a_clock = DropoutPlan.from_config("auto")
    assert not on_a_clock.decide_up_front(
        Budget(horizon=900, time_budget_s=60.0), windows_per_epoch=100
    )
    assert not on_a_clock.decided


# 2 s of each budget go to start-up
@pytest.mark.parametrize(
    ("seconds_per_step", "budget_s", "expected_epochs"),
    [(0.01, 60.0, 58.0), (0.1, 60.0, 5.8), (0.01, 5.0, 3.0)],
)
def test_a_run_on_a_clock_decides_from_its_pace_after_the_first_steps(
    seconds_per_step, budget_s, expected_epochs
):
    """Slow first steps (start-up) do not count; the pace after them projects the run's epochs."""
    plan, clock, budget = (
        DropoutPlan.from_config("auto"),
        AgreedClock(0, 0.0),
        Budget(None, budget_s),
    )
    decided_at = None
    for step in range(1, 100):
        seconds = 2.0 + step * seconds_per_step  # 2 s of start-up before the first step
        clock.agree(step, seconds)
        if plan.observe(step, clock, budget, windows_per_epoch=100):
            decided_at = step
    assert decided_at == PACE_FROM_STEP + PACE_STEPS
    remaining = budget_s - (2.0 + decided_at * seconds_per_step)
    assert plan.planned_epochs == pytest.approx((decided_at + remaining / seconds_per_step) / 100)
    assert plan.planned_epochs == pytest.approx(expected_epochs, rel=0.1)
    assert plan.rate == auto_rate(plan.planned_epochs)


def test_a_step_horizon_caps_the_projection():
    plan, clock = DropoutPlan.from_config("auto"), AgreedClock(0, 0.0)
    for step in range(1, 60):
        clock.agree(step, step * 0.001)
        plan.observe(step, clock, Budget(horizon=200, time_budget_s=600.0), windows_per_epoch=100)
    assert plan.planned_epochs == 2.0 and plan.rate == 0.0


def test_resume_keeps_the_decision_of_the_checkpoint():
    decided = DropoutPlan.from_config("auto")
    decided.decide_up_front(Budget(horizon=1_000, time_budget_s=0), windows_per_epoch=100)
    resumed = DropoutPlan.from_config("auto")
    resumed.load_payload(decided.to_payload(), shape_rate=0.0)
    assert (resumed.rate, resumed.planned_epochs) == (decided.rate, 10.0)
    undecided = DropoutPlan.from_config("auto")
    undecided.load_payload(DropoutPlan.from_config("auto").to_payload(), shape_rate=0.0)
    # a checkpoint from before the decision: decide later in this session
    assert not undecided.decided
    older = DropoutPlan.from_config("auto")
    # a checkpoint written before model.dropout=auto existed
    older.load_payload(None, shape_rate=0.3)
    assert older.rate == 0.3


def test_a_timed_run_records_its_decision_in_the_log_and_every_checkpoint_and_keeps_it_on_resume(
    small_corpus, tmp_path, caplog
):
    cfg = tiny_config(
        small_corpus,
        tmp_path / "run",
        max_steps=0,
        # long enough to pass step 50 (the decision) with the CPU shared: `make test` runs
        # two tests at once, and a 3 s budget once gave 39 steps there
        time_budget_s=8.0,
        checkpoint_interval=25,
        eval_interval=0,
        keep_last=1000,
    )
    cfg.model.dropout = "auto"
    _, tokens = prepare(cfg)
    with caplog.at_level("INFO", logger="charrnn"):
        first = train(cfg, tokens)
    assert first.step > PACE_FROM_STEP + PACE_STEPS
    final = load_checkpoint(Path(first.checkpoint))
    record = final["dropout"]
    assert record["auto"] and record["rate"] == auto_rate(record["planned_epochs"])
    assert final["model_shape"]["dropout"] == record["rate"]
    # how close the projection comes depends on the machine's pace staying put, which it does
    # not with two tests at once: the projection is checked against a set clock above
    assert record["planned_epochs"] > 0
    assert (
        f"dropout {record['rate']:g} (auto: ~{record['planned_epochs']:.1f} epochs planned"
        in caplog.text
    )
    # step 25: before the decision
    early = load_checkpoint(list_checkpoints(Path(first.run_dir))[0])
    assert (
        early["step"] == 25
        and early["dropout"]["rate"] is None
        and early["model_shape"]["dropout"] == 0.0
    )

    # a longer budget would plan more epochs: the decision stands
    cfg.train.resume, cfg.train.time_budget_s = True, 11.0
    second = train(cfg, tokens)
    assert second.resumed_from == first.step and second.step > first.step
    assert load_checkpoint(Path(second.checkpoint))["dropout"] == record
