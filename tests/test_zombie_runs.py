"""No zombie flow runs (flows/zombies.py).

The tests run on a real `prefect server start` with a real process worker.

A worker and its flow run die together (SIGKILL of the whole process tree, as
when the machine or its container goes): nobody reports the run, so only the
heartbeat automation can mark it Crashed, and only then may the next run take
the `training` queue's single slot.
"""

from __future__ import annotations

import contextlib
import os
import signal
import time
from pathlib import Path
from uuid import uuid4

import pytest
import yaml
from helpers import alive, process_tree
from prefect import flow

pytestmark = [pytest.mark.prefect, pytest.mark.slow]

TESTS = Path(__file__).resolve().parent
POOL = "charrnn-zombie-test"
HEARTBEAT_S = 30  # Prefect's minimum heartbeat period
WINDOW_S = 40  # silence after which the test's automation calls a run crashed


@flow(name="zombie-sleeper")
def sleeper(seconds: float = 600.0) -> float:
    time.sleep(seconds)
    return seconds


def _client():
    from prefect.client.orchestration import get_client

    return get_client(sync_client=True)


def _state(flow_run_id) -> str:
    with _client() as client:
        run = client.read_flow_run(flow_run_id)
    return run.state.name if run.state else "?"


def _wait_state(flow_run_id, names: set[str], timeout_s: float) -> str:
    deadline = time.monotonic() + timeout_s
    while (state := _state(flow_run_id)) not in names and time.monotonic() < deadline:
        time.sleep(0.5)
    return state


def _first_state_at(flow_run_id, types: set[str]):
    """When the run first entered a state of one of these types (from its state history)."""
    with _client() as client:
        states = client.read_flow_run_states(flow_run_id)
    times = [state.timestamp for state in states if state.type.value in types]
    assert times, f"flow run {flow_run_id} never entered {sorted(types)}"
    return min(times)


def _flow_run_pid(flow_run_id, worker_pid: int) -> int | None:
    """The worker's descendant that runs this flow run (its environment names the run)."""
    for pid in process_tree(worker_pid) - {worker_pid}:
        try:
            environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"PREFECT__FLOW_RUN_ID={flow_run_id}".encode() in environ:
            return pid
    return None


def _heartbeats(flow_run_id) -> int:
    with _client() as client:
        response = client.request(
            "POST",
            "/events/filter",
            json={
                "filter": {
                    "event": {"name": ["prefect.flow-run.heartbeat"]},
                    "resource": {"id": [f"prefect.flow-run.{flow_run_id}"]},
                },
                "limit": 50,
            },
        )
    response.raise_for_status()
    return len(response.json()["events"])


@pytest.fixture
def zombie_guard(prefect_server):
    """The zombie automation with a test-sized window, scoped to a tag of this test only.

    That way no other test's runs are touched.
    """
    from flows.zombies import ensure_zombie_automation

    tag = f"zombie-test-{uuid4().hex[:8]}"
    name = f"charrnn test: crash {tag} runs without heartbeats"
    automation_id, done = ensure_zombie_automation(WINDOW_S, HEARTBEAT_S, tag=tag, name=name)
    assert done == "created"
    assert ensure_zombie_automation(WINDOW_S, HEARTBEAT_S, tag=tag, name=name) == (
        automation_id,
        "unchanged",
    )
    assert ensure_zombie_automation(WINDOW_S + 5, HEARTBEAT_S, tag=tag, name=name) == (
        automation_id,
        "updated",
    )
    assert ensure_zombie_automation(WINDOW_S, HEARTBEAT_S, tag=tag, name=name) == (
        automation_id,
        "updated",
    )
    with _client() as client:
        assert len(client.read_automations_by_name(name)) == 1
    yield tag
    with _client() as client:
        client.delete_automation(automation_id)


def test_a_run_killed_with_its_worker_is_marked_crashed_and_frees_the_training_slot(
    prefect_server, zombie_guard, monkeypatch
):
    from prefect.deployments import run_deployment

    from charrnn.distributed.launch import kill_group
    from flows.local import TRAINING_QUEUE, create_work_pool, start_worker
    from flows.zombies import HEARTBEAT_ENV, heartbeat_s

    monkeypatch.delenv(HEARTBEAT_ENV, raising=False)
    # what start_worker gives its flow runs, as under `make serve`
    assert heartbeat_s() == HEARTBEAT_S

    # as `make serve` does: its `training` queue runs one flow at a time
    create_work_pool(prefect_server, POOL)
    deployment_id = sleeper.from_source(str(TESTS), "test_zombie_runs.py:sleeper").deploy(
        "sleeper",
        work_pool_name=POOL,
        work_queue_name=TRAINING_QUEUE,
        tags=[zombie_guard],
        build=False,
        push=False,
        print_next_steps=False,
        ignore_warnings=True,
    )
    env = {"PREFECT_WORKER_QUERY_SECONDS": "1"}
    worker = start_worker(prefect_server, POOL, **env)
    second_worker = None
    try:
        first = run_deployment(deployment_id, parameters={"seconds": 600.0}, timeout=0)
        assert _wait_state(first.id, {"Running"}, 120) == "Running"
        deadline = time.monotonic() + 30
        while (pid := _flow_run_pid(first.id, worker.pid)) is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert pid is not None, "no process of the worker runs the flow"
        deadline = time.monotonic() + 20
        while not _heartbeats(first.id) and time.monotonic() < deadline:
            time.sleep(0.5)
        assert _heartbeats(first.id) >= 1, "the flow run sent no heartbeat"

        second = run_deployment(deployment_id, parameters={"seconds": 0.0}, timeout=0)
        # The machine dies: the worker and its flow run at once, so nobody can report the run.
        doomed = process_tree(worker.pid)
        os.killpg(worker.pid, signal.SIGKILL)
        for other in doomed:
            with contextlib.suppress(ProcessLookupError):
                os.kill(other, signal.SIGKILL)
        worker.wait(10)
        killed_at = time.monotonic()
        deadline = killed_at + 10
        while any(alive(p) for p in doomed) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert pid in doomed and not [p for p in doomed if alive(p)]

        # the machine is back (or another worker serves the pool)
        second_worker = start_worker(prefect_server, POOL, **env)
        assert _wait_state(first.id, {"Crashed"}, WINDOW_S + 30) == "Crashed", (
            "the dead run was never marked crashed"
        )
        crashed_after = time.monotonic() - killed_at
        with _client() as client:
            assert "No heartbeat" in client.read_flow_run(first.id).state.message
        assert _wait_state(second.id, {"Completed"}, 60) == "Completed", (
            "the freed slot was not used"
        )
        # The worker may take the freed slot the moment the crash lands, so compare
        # timestamps rather than polling the second run's state after the fact.
        crashed_at = _first_state_at(first.id, {"CRASHED"})
        submitted_at = _first_state_at(second.id, {"PENDING", "RUNNING"})
        assert submitted_at >= crashed_at, (
            f"the second run left Scheduled at {submitted_at}, while the first held the slot "
            f"(crashed {crashed_at})"
        )
        print(f"marked crashed {crashed_after:.0f}s after the kill (window {WINDOW_S}s)")
    finally:
        kill_group(worker.pid, grace_s=5)
        if second_worker is not None:
            kill_group(second_worker.pid, grace_s=5)


def test_every_deployment_sends_heartbeats_the_automation_watches():
    """prefect.yaml's deployments carry the automation's tag and the heartbeat its window allows."""
    from flows.zombies import AUTOMATION_NAME, DEFAULT_AFTER_S, TAG, check_window, zombie_automation

    deployments = yaml.safe_load((TESTS.parent / "prefect.yaml").read_text())["deployments"]
    for deployment in deployments:
        assert TAG in deployment["tags"], deployment["name"]
        heartbeat = int(
            deployment["work_pool"]["job_variables"]["env"]["PREFECT_FLOWS_HEARTBEAT_FREQUENCY"]
        )
        check_window(DEFAULT_AFTER_S, heartbeat)
        assert 3 * heartbeat <= DEFAULT_AFTER_S  # a live run must miss several heartbeats in a row
    automation = zombie_automation(DEFAULT_AFTER_S, 30)
    assert (
        automation.name == AUTOMATION_NAME
        and automation.trigger.within.total_seconds() == DEFAULT_AFTER_S
    )
    with pytest.raises(ValueError, match="must exceed the heartbeat"):
        zombie_automation(30, 30)
    with pytest.raises(ValueError, match="minimum"):
        zombie_automation(120, 10)
