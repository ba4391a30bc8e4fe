"""train_pipeline against a real Prefect server.

Covered: content caching, retries that resume, artifacts, champion/challenger.

The flows run in this process; training runs under real torchrun processes;
the corpus comes from a real HTTP server on 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from helpers import (
    TINY_OVERRIDES,
    cache_listing,
    history_rows,
    make_text,
    process_tree,
    task_states,
    wandb_records,
)

from flows.params import LaunchParams, SamplingParams, StorageParams, TrackingParams

pytestmark = [pytest.mark.prefect, pytest.mark.slow, pytest.mark.distributed]


@pytest.fixture
def served(http_server):
    http_server.files["corpus.txt"] = make_text(40_000, seed=1).encode()
    return http_server


def run_pipeline(tmp_path: Path, corpus: str, **params):
    """Run the flow in-process; return (result, flow run id)."""
    from flows.pipeline import train_pipeline

    defaults = dict(
        overrides=TINY_OVERRIDES,
        max_steps=20,
        launch=LaunchParams(nproc_per_node=1, retries=0),
        sampling=SamplingParams(length=50),
        storage=StorageParams(
            runs_dir=str(tmp_path / "runs"), registry_dir=str(tmp_path / "registry")
        ),
        tracking=TrackingParams(wandb_mode="disabled"),
    )
    state = train_pipeline(corpus=corpus, **{**defaults, **params}, return_state=True)
    assert state.is_completed(), state
    return state.result().to_dict(), state.state_details.flow_run_id


def token_entries() -> dict[str, int]:
    """The library's token cache: entry -> mtime of its meta.json.

    A rebuilt or new entry changes it.
    """
    from charrnn.data.corpus import cache_root

    return {str(p): p.stat().st_mtime_ns for p in (cache_root(None) / "tokens").glob("*/meta.json")}


def test_fetch_and_tokenise_are_cached_by_content(prefect_server, served, tmp_path):
    url = served.url("corpus.txt")
    first, first_id = run_pipeline(tmp_path, url)
    assert task_states(first_id)["download"] == ["Completed"]
    assert task_states(first_id)["tokenise"] == ["Completed"]
    built = token_entries()
    assert Path(first["checkpoint"]).is_file() and first["step"] == 20

    # Same corpus: both cache hits (Prefect's for the download, the library's for the tokens), and
    # skip_if_trained reports the first model instead of training.
    second, second_id = run_pipeline(tmp_path, url, skip_if_trained=True)
    states = task_states(second_id)
    assert states["download"] == ["Cached"] and token_entries() == built, states
    assert "train_model" not in states and second["run_dir"] == first["run_dir"]

    # New content behind the same URL (new ETag): both miss, and a new model is trained.
    served.files["corpus.txt"] = make_text(40_000, seed=2).encode()
    third, third_id = run_pipeline(tmp_path, url, skip_if_trained=True)
    states = task_states(third_id)
    assert (
        states["download"] == ["Completed"]
        and states["tokenise"] == ["Completed"]
        and len(token_entries()) == len(built) + 1
    ), states
    assert states["train_model"] == ["Completed"] and third["run_dir"] != first["run_dir"]


def test_train_task_retries_and_resumes_after_a_killed_worker(prefect_server, served, tmp_path):
    runs = tmp_path / "runs"
    killed: list[int] = []

    def kill_a_worker_after_first_checkpoint() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not killed:
            for launch in runs.glob("*/launch.json"):
                if not list(launch.parent.glob("checkpoints/step-*.pt.sha256")):
                    continue
                torchrun = json.loads(launch.read_text())["torchrun_pid"]
                workers = sorted(process_tree(torchrun) - {torchrun})
                if workers:
                    os.kill(workers[-1], signal.SIGKILL)
                    killed.append(workers[-1])
                    return
            time.sleep(0.05)

    killer = threading.Thread(target=kill_a_worker_after_first_checkpoint, daemon=True)
    killer.start()
    result, flow_run_id = run_pipeline(
        tmp_path,
        served.url("corpus.txt"),
        max_steps=3000,
        time_budget_s=0,  # steps alone, not also the default 120 s clock a loaded machine can hit
        launch=LaunchParams(nproc_per_node=2, retries=1, retry_delay_s=1),
    )
    killer.join(timeout=5)
    assert killed, "the test never found a worker to kill"

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        (train_run,) = [
            r
            for r in client.read_task_runs(
                flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
            )
            if r.name.startswith("train_model-")
        ]
    assert train_run.run_count == 2 and train_run.state.name == "Completed"
    summary = json.loads((Path(result["run_dir"]) / "train_summary.json").read_text())
    # continued from a checkpoint, not from scratch
    assert summary["resumed_from"] >= 20 and summary["step"] == 3000
    assert json.loads((Path(result["run_dir"]) / "launch.json").read_text())["attempt"] == 2


def test_report_run_creates_report_samples_and_wandb_artifacts(
    prefect_server, served, tmp_path, monkeypatch
):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    # validations at steps 5, 10, 15, 20
    overrides = [*TINY_OVERRIDES, "train.evals_per_run=4", "train.patience=0"]
    result, flow_run_id = run_pipeline(
        tmp_path,
        served.url("corpus.txt"),
        overrides=overrides,
        tracking=TrackingParams(wandb_mode="offline"),
        sampling=SamplingParams(length=50, num_samples=2, prompts=["ROMEO:\n", "JULIET:\n"]),
    )

    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    with get_client(sync_client=True) as client:
        artifacts = {
            a.key: a
            for a in client.read_artifacts(
                artifact_filter=ArtifactFilter(
                    flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])
                )
            )
        }
    assert set(artifacts) == {
        "charrnn-report",
        "charrnn-samples",
        "charrnn-wandb",
        "charrnn-training-progress",
    }
    assert (
        artifacts["charrnn-training-progress"].type == "progress"
        and artifacts["charrnn-training-progress"].data == 100.0
    )

    report = artifacts["charrnn-report"].data
    assert report == Path(result["report"]).read_text()
    corpus_sha = json.loads((Path(result["run_dir"]) / "pipeline_result.json").read_text())
    assert (
        result["checkpoint"] in report
        and f"{result['test']['bpc']:.4f}" in report
        and f"{result['val']['bpc']:.4f}" in report
    )
    assert (
        "promoted to production" in report
        and "chars/s" in report
        and corpus_sha["run_dir"] in report
    )

    table = json.loads(artifacts["charrnn-samples"].data)
    samples = json.loads((Path(result["run_dir"]) / "samples.json").read_text())
    assert len(table) == 4 and [row["text"] for row in table] == [row["text"] for row in samples]
    assert {row["prompt"] for row in table} == {"ROMEO:\n", "JULIET:\n"} and all(
        row["text"].startswith(row["prompt"]) for row in table
    )

    link = artifacts["charrnn-wandb"]
    offline = sorted((Path(result["run_dir"]) / "wandb").glob("offline-run-*"))
    # training's process and publish's: one W&B run id, merged by `wandb sync`
    assert len(offline) == 2
    # a path, not a dead link
    assert (
        link.type == "markdown"
        and str(offline[-1].resolve()) in link.data
        and "file://" not in link.data
    )
    assert "wandb sync" in link.data and result["tracking"]["wandb_run_id"] in offline[0].name
    _check_one_wandb_history(offline)


def _check_one_wandb_history(offline: list[Path]) -> None:
    """Training's and publishing's offline directories of one run.

    The records `wandb sync` merges into one run.
    """
    records = [wandb_records(run) for run in offline]
    rows = [row for run in records for row in history_rows(run)]
    # one step axis: publishing adds no rows
    assert [row["_step"] for row in rows] == list(range(len(rows)))
    steps = [row["trainer/step"] for row in rows]
    assert steps == sorted(steps)
    # val points during training
    assert sorted({row["trainer/step"] for row in rows if "val/bpc" in row}) == [5, 10, 15, 20]
    tables = sorted((offline[0] / "files" / "media" / "table").glob("samples_*.table.json"))
    samples = [row for path in tables for row in json.loads(path.read_text())["data"]]
    # one samples increment per validation
    assert sorted({row[0] for row in samples}) == [5, 10, 15, 20]
    for step in (5, 10, 15, 20):
        texts = [row[3] for row in samples if row[0] == step]
        assert len(texts) == len(set(texts)) == 6  # 2 prompts x 3 temperatures, each its own text
    models = [
        r["artifact"]
        for run in records
        for r in run
        if r["type"] == "artifact" and r["artifact"]["type"] == "model"
    ]
    # each checkpoint here follows a validation
    assert models and all("val_bpc" in json.loads(m["metadata"]) for m in models)


def test_champion_challenger_promotes_only_a_better_model(prefect_server, served, tmp_path):
    url = served.url("corpus.txt")
    # corpus.txt: the line "corpus"
    registry = tmp_path / "registry" / "lines" / "corpus" / "production.json"
    champion, _ = run_pipeline(tmp_path, url, max_steps=150)
    assert (
        champion["promoted"] and json.loads(registry.read_text())["run_dir"] == champion["run_dir"]
    )
    assert champion["production"] == str(registry.resolve()) and champion["model_name"] == "corpus"

    worse, _ = run_pipeline(tmp_path, url, max_steps=3)
    assert (
        not worse["promoted"] and json.loads(registry.read_text())["run_dir"] == champion["run_dir"]
    )
    assert "not promoted" in Path(worse["report"]).read_text()

    better, _ = run_pipeline(tmp_path, url, max_steps=600)
    assert better["promoted"] and json.loads(registry.read_text())["run_dir"] == better["run_dir"]
    production = json.loads(registry.read_text())
    assert Path(production["checkpoint"]).is_file() and production["test_bpc"] == pytest.approx(
        better["test"]["bpc"]
    )


def test_two_model_lines_promote_independently(prefect_server, served, tmp_path):
    served.files["other.txt"] = make_text(40_000, seed=7).encode()
    lines = tmp_path / "registry" / "lines"
    first, _ = run_pipeline(tmp_path, served.url("corpus.txt"), max_steps=10, model_name="alpha")
    # default line: the file stem, "other"
    second, _ = run_pipeline(tmp_path, served.url("other.txt"), max_steps=10)
    # each the first champion of its own line, not a challenger of the other's
    assert first["promoted"] and second["promoted"]
    assert (first["model_name"], second["model_name"]) == ("alpha", "other")
    assert (
        json.loads((lines / "alpha" / "production.json").read_text())["run_dir"] == first["run_dir"]
    )
    assert (
        json.loads((lines / "other" / "production.json").read_text())["run_dir"]
        == second["run_dir"]
    )
    assert "| model line | `alpha` |" in Path(first["report"]).read_text()
    assert "no production model in line other yet" in Path(second["report"]).read_text()


def test_a_bad_model_name_fails_before_any_work(prefect_server, tmp_path):
    from flows.pipeline import train_pipeline

    state = train_pipeline(
        corpus="shakespeare",
        model_name="../escape",
        storage=StorageParams(
            runs_dir=str(tmp_path / "runs"), registry_dir=str(tmp_path / "registry")
        ),
        tracking=TrackingParams(wandb_mode="disabled"),
        return_state=True,
    )
    assert state.is_failed() and "cannot name a model line" in str(state.message or "") + repr(
        state.result(raise_on_failure=False)
    )
    assert not (tmp_path / "runs").exists()


def test_a_refused_corpus_leaves_the_cache_as_it_was(
    prefect_server, http_server, tmp_path, cache_dir
):
    from flows.pipeline import train_pipeline

    http_server.files["tiny.txt"] = make_text(
        300, seed=3
    ).encode()  # far too small for batch_size x seq_len
    before = cache_listing(cache_dir)
    state = train_pipeline(
        corpus=http_server.url("tiny.txt"),
        overrides=TINY_OVERRIDES,
        max_steps=5,
        launch=LaunchParams(nproc_per_node=1),
        storage=StorageParams(
            runs_dir=str(tmp_path / "runs"), registry_dir=str(tmp_path / "registry")
        ),
        tracking=TrackingParams(wandb_mode="disabled"),
        return_state=True,
    )
    assert state.is_failed()
    assert task_states(state.state_details.flow_run_id)["download"] == ["Failed"]
    assert cache_listing(cache_dir) == before
