"""Deployments from prefect.yaml on a real `prefect server start` with a real process worker.

Covers: an on-demand `train` run completes; a changed watched corpus makes
`corpus-watch` emit `charrnn.corpus.updated`, whose trigger starts a `train`
run of that corpus, and an unchanged corpus starts nothing; cancelling a
training run leaves no torchrun or worker process behind.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from helpers import TINY_OVERRIDES, alive, make_text, process_tree

pytestmark = [pytest.mark.prefect, pytest.mark.slow, pytest.mark.distributed]

TRAIN, WATCH = "train-pipeline/train", "corpus-watch/corpus-watch"


@pytest.fixture(scope="module")
def deployed(prefect_server, tmp_path_factory):
    """`prefect deploy` of train and corpus-watch, plus a process worker.

    train runs the tiny model, with W&B off and temp dirs.
    """
    from charrnn.distributed.launch import kill_group
    from flows.local import create_work_pool, deploy, start_worker

    root = tmp_path_factory.mktemp("deployed")
    create_work_pool(prefect_server)
    deploy(
        prefect_server,
        "train",
        params={
            "overrides": TINY_OVERRIDES,
            "max_steps": 20,
            "launch": {"nproc_per_node": 1, "retries": 0},
            "sampling": {"length": 50},
            "storage": {"runs_dir": str(root / "runs"), "registry_dir": str(root / "registry")},
            "tracking": {"wandb_mode": "disabled"},
        },
    )
    deploy(prefect_server, "corpus-watch")
    worker = start_worker(
        prefect_server,
        CHARRNN_CACHE=str(root / "cache"),
        OMP_NUM_THREADS="1",
        WANDB_MODE="disabled",
        PREFECT_WORKER_QUERY_SECONDS="1",
    )
    yield root
    kill_group(worker.pid, grace_s=15)


def _client():
    from prefect.client.orchestration import get_client

    return get_client(sync_client=True)


def wait_final(flow_run_id, timeout_s: float = 300):
    deadline = time.monotonic() + timeout_s
    with _client() as client:
        while time.monotonic() < deadline:
            run = client.read_flow_run(flow_run_id)
            if run.state and run.state.is_final():
                return run
            time.sleep(1)
    raise AssertionError(
        f"flow run {flow_run_id} did not finish in {timeout_s}s (state {run.state})"
    )


def start(name: str, **parameters):
    from prefect.deployments import run_deployment

    return run_deployment(name, parameters=parameters, timeout=0)


def train_runs_of(corpus: str) -> list:
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterName

    with _client() as client:
        runs = client.read_flow_runs(
            deployment_filter=DeploymentFilter(name=DeploymentFilterName(any_=["train"]))
        )
    return [r for r in runs if r.parameters.get("corpus") == corpus]


def test_train_deployment_completes(deployed, http_server):
    http_server.files["on-demand.txt"] = make_text(40_000, seed=3).encode()
    run = wait_final(start(TRAIN, corpus=http_server.url("on-demand.txt")).id)
    assert run.state.name == "Completed", run.state
    result = json.loads(
        next((deployed / "runs").glob(f"*-{run.name}/pipeline_result.json")).read_text()
    )
    assert result["step"] == 20 and Path(result["checkpoint"]).is_file()


def test_changed_corpus_triggers_training_and_unchanged_does_not(deployed, http_server):
    url = http_server.url("watched.txt")
    sources = {"watched": url}
    http_server.files["watched.txt"] = make_text(40_000, seed=4).encode()
    # first sight: baseline only
    assert wait_final(start(WATCH, sources=sources).id).state.name == "Completed"
    time.sleep(5)
    assert train_runs_of(url) == []

    http_server.files["watched.txt"] = make_text(40_000, seed=5).encode()
    assert wait_final(start(WATCH, sources=sources).id).state.name == "Completed"
    deadline = time.monotonic() + 90
    while not (triggered := train_runs_of(url)) and time.monotonic() < deadline:
        time.sleep(1)
    assert len(triggered) == 1, "the corpus.updated event did not start a train run"
    assert triggered[0].parameters.get("model_name") == "watched", (
        "the triggered run does not train the watched source's line"
    )
    assert wait_final(triggered[0].id).state.name == "Completed"

    assert wait_final(start(WATCH, sources=sources).id).state.name == "Completed"  # unchanged
    time.sleep(10)  # give a (wrong) trigger time to fire
    assert len(train_runs_of(url)) == 1


def test_a_watched_source_must_name_a_model_line(deployed, http_server):
    http_server.files["odd.txt"] = make_text(40_000, seed=7).encode()
    run = wait_final(start(WATCH, sources={"my corpus!": http_server.url("odd.txt")}).id)
    assert run.state.name == "Failed"
    assert "'my corpus!' cannot name the model line" in run.state.message, run.state.message


def test_cancelling_a_training_run_leaves_no_process_behind(deployed, http_server):
    from prefect.states import Cancelling

    http_server.files["long.txt"] = make_text(40_000, seed=6).encode()
    runs_dir = deployed / "cancel-runs"
    flow_run = start(
        TRAIN,
        corpus=http_server.url("long.txt"),
        max_steps=0,
        time_budget_s=600.0,
        # a run's group replaces the deployment's whole group: give every field it needs
        launch={"nproc_per_node": 2, "retries": 0},
        storage={"runs_dir": str(runs_dir), "registry_dir": str(deployed / "registry")},
    )

    deadline, pids = time.monotonic() + 180, set()
    while time.monotonic() < deadline and len(pids) < 3:  # torchrun and its two workers
        for launch in runs_dir.glob("*/launch.json"):
            torchrun = json.loads(launch.read_text())["torchrun_pid"]
            if list(launch.parent.glob("metrics.jsonl")):  # training is under way
                pids = process_tree(torchrun)
        time.sleep(0.5)
    assert len(pids) >= 3, f"training never started (pids {pids})"

    with _client() as client:
        client.set_flow_run_state(
            flow_run.id, Cancelling(message="test cancels the run"), force=True
        )
    assert wait_final(flow_run.id, 120).state.name == "Cancelled"
    deadline = time.monotonic() + 30
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not [pid for pid in pids if alive(pid)], "processes outlived the cancelled flow run"
