"""Deployments from prefect.yaml on a real `prefect server start` with a real process worker.

Covers: an on-demand `train` run completes; a deployed sweep runs its trials as
`train` runs on the training queue, as many at once as the queue's limit; a
changed watched corpus makes `corpus-watch` emit `charrnn.corpus.updated`, whose
trigger starts a `train` run of that corpus, and an unchanged corpus starts
nothing; cancelling a training run leaves no torchrun or worker process behind.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
from helpers import TINY_OVERRIDES, alive, make_text, process_tree

pytestmark = [pytest.mark.prefect, pytest.mark.slow, pytest.mark.distributed]

TRAIN, WATCH = "train-pipeline/train", "corpus-watch/corpus-watch"
SWEEP = "sweep/sweep"


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
    deploy(prefect_server, "sweep")
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


def test_a_deployed_sweep_runs_its_trials_on_the_training_queue_up_to_its_limit(
    deployed, http_server, prefect_server
):
    """Two trials with the queue's limit at 2: both run at once, as children of the sweep."""
    import optuna

    from flows.local import TRAINING_QUEUE, WORK_POOL, run_cli

    http_server.files["swept.txt"] = make_text(40_000, seed=8).encode()
    space = deployed / "space.yaml"
    space.write_text("train.lr: {choices: [0.01, 0.005]}\n")
    url = f"sqlite:///{deployed / 'studies.db'}"
    limit = ["work-queue", "set-concurrency-limit", TRAINING_QUEUE]
    run_cli(prefect_server, *limit, "2", "--pool", WORK_POOL)
    try:
        sweep_run = start(
            SWEEP,
            corpus=http_server.url("swept.txt"),
            trials=2,
            budget_s=600,
            space_file=str(space),
            study="deployed",
            study_storage=url,
            overrides=TINY_OVERRIDES,
            launch={"nproc_per_node": 1, "retries": 0},
            storage={"runs_dir": str(deployed / "runs"), "registry_dir": str(deployed / "reg")},
            tracking={"wandb_mode": "disabled"},
        )
        final = wait_final(sweep_run.id, 400)
    finally:
        run_cli(prefect_server, *limit, "1", "--pool", WORK_POOL)
    assert final.state.name == "Completed", final.state
    with _client() as client:
        trials = [r for r in client.read_flow_runs() if r.name.startswith("deployed-trial-")]
        parents = {client.read_task_run(r.parent_task_run_id).flow_run_id for r in trials}
    assert len(trials) == 2 and all(r.state.name == "Completed" for r in trials)
    assert parents == {sweep_run.id}, "the trials are not the sweep's children"
    assert {r.deployment_id for r in trials} == {train_runs_id()}
    first_end = min(r.end_time for r in trials)
    assert max(r.start_time for r in trials) < first_end, "the two trials did not run at once"
    study = optuna.load_study(study_name="deployed", storage=url)
    assert [t.state.name for t in study.trials] == ["COMPLETE", "COMPLETE"]
    assert all(Path(t.user_attrs["checkpoint"]).is_file() for t in study.trials)


def train_runs_id():
    with _client() as client:
        return client.read_deployment_by_name(TRAIN).id
