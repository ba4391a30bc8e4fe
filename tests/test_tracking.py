"""W&B tracking with real offline runs.

They are read back with the SDK's own reader (`wandb leet inspect`).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import history_rows, make_text, offline_runs, run_env, wandb_records

pytest.importorskip("wandb")
pytestmark = pytest.mark.slow

SECRET = "charrnn0test0secret0" + "a1b2c3d4e5f60718293a"  # 40 characters, shaped like a W&B key
TINY = [
    "hidden_size=32",
    "embedding_dim=16",
    "seq_len=16",
    "batch_size=8",
    "time_budget_s=0",
    "log_interval=10",
    "eval_interval=10",
    "checkpoint_interval=10",
    "track.sample_length=30",
    "track.sample_temperatures=[0.5, 1.0]",
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("wandb") / "corpus.txt"
    path.write_text(make_text(60_000, seed=5))
    return path


def _train(
    out: Path, corpus: Path, *extra: str, env: dict | None = None, timeout: float = 300
) -> subprocess.CompletedProcess:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "charrnn",
            "train",
            "--out-dir",
            str(out),
            f"data.corpus={corpus}",
            *TINY,
            *extra,
        ],
        env=env or run_env(WANDB_MODE="offline", CHARRNN_CACHE=str(out.parent / "cache")),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_offline_run_holds_metrics_config_samples_and_artefacts(corpus, tmp_path):
    out = tmp_path / "run"
    done = _train(out, corpus, "max_steps=30")
    assert done.returncode == 0, done.stderr
    summary = json.loads(done.stdout)
    runs = offline_runs(out)
    assert (
        len(runs) == 1
        and summary["tracking"]["wandb_sync"]
        == f"wandb sync {runs[0].parent}/offline-run-*-{summary['tracking']['wandb_run_id']}"
    )
    records = wandb_records(runs[0])

    history = [r["history"]["item"] for r in records if r["type"] == "history"]
    steps_with = lambda key: sorted({row["trainer/step"] for row in history if key in row})  # noqa: E731
    assert steps_with("train/loss_nats") == [10, 20, 30]
    assert steps_with("val/bpc") == [10, 20, 30]

    config = next(r for r in records if r["type"] == "run")["run"]["config"]["update"]
    for r in records:
        if r["type"] == "config":
            config.update(r["config"]["update"])
    tokens = json.loads(
        subprocess.run(
            [sys.executable, "-m", "charrnn", "prepare", f"data.corpus={corpus}", *TINY],
            env=run_env(CHARRNN_CACHE=str(tmp_path / "cache")),
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    assert config["corpus_sha256"] == tokens["corpus"]["sha256"]
    assert (
        config["train"]["max_steps"] == 30
        and config["vocab_size"] == tokens["tokens"]["vocab_size"]
    )

    tables = sorted((runs[0] / "files" / "media" / "table").glob("samples_*.table.json"))
    rows = [row for path in tables for row in json.loads(path.read_text())["data"]]
    assert {row[0] for row in rows} == {10, 20, 30}  # the table grows at every evaluation
    assert {row[1] for row in rows} == {0.5, 1.0} and all(
        row[3].startswith(row[2].replace("⏎", "\n")) for row in rows
    )
    # the default prompts end in a newline: shown, not a blank
    assert all("⏎" in row[2] for row in rows)
    for step in (
        10,
        20,
        30,
    ):  # every row its own seed: no two prompts' samples share a continuation
        continuations = [row[3][len(row[2]) :] for row in rows if row[0] == step and row[1] == 1.0]
        assert len(continuations) == 2 and continuations[0] != continuations[1]

    artefacts = [r["artifact"] for r in records if r["type"] == "artifact"]
    dataset = [a for a in artefacts if a["type"] == "dataset"]
    models = [a for a in artefacts if a["type"] == "model"]
    assert len(dataset) == 1 and {e["path"] for e in dataset[0]["manifest"]["contents"]} >= {
        "vocab.json",
        "meta.json",
        "train.bin",
    }
    assert json.loads(dataset[0]["metadata"])["corpus_sha256"] == tokens["corpus"]["sha256"]
    assert any("best" in m.get("aliases", []) for m in models) and all(
        "latest" in m.get("aliases", []) for m in models
    )
    assert all(
        "val_bpc" in json.loads(m["metadata"])
        or json.loads(m["metadata"])["val"] == "not measured at this step"
        for m in models
    )
    meta = json.loads(models[-1]["metadata"])
    assert (
        meta["step"] == 30
        and meta["lineage"]["dataset"] == f"{dataset[0]['name']}:latest"
        and meta["val_bpc"] > 0
    )


def test_two_process_training_makes_exactly_one_wandb_run(corpus, tmp_path):
    out = tmp_path / "run"
    cmd = [
        sys.executable,
        "-m",
        "charrnn",
        "launch",
        "--nproc-per-node",
        "2",
        "--",
        "--out-dir",
        str(out),
        f"data.corpus={corpus}",
        *TINY,
        "max_steps=20",
    ]
    done = subprocess.run(
        cmd,
        env=run_env(WANDB_MODE="offline", CHARRNN_CACHE=str(tmp_path / "cache")),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    assert len(offline_runs(out)) == 1
    assert not list(Path.cwd().glob("wandb/offline-run-*charrnn*"))  # nothing stray from rank 1


def test_killed_run_resumes_the_same_wandb_run(corpus, tmp_path):
    out = tmp_path / "run"
    env = run_env(WANDB_MODE="offline", CHARRNN_CACHE=str(tmp_path / "cache"))
    cmd = [
        sys.executable,
        "-m",
        "charrnn",
        "train",
        "--out-dir",
        str(out),
        f"data.corpus={corpus}",
        *TINY,
        "max_steps=100000",
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 120
        while not list((out / "checkpoints").glob("step-*.pt.sha256")):
            assert time.monotonic() < deadline and proc.poll() is None, "no checkpoint"
            time.sleep(0.1)
    finally:
        proc.kill()  # SIGKILL: no chance to finish the W&B run cleanly
        proc.wait()
    resumed = _train(out, corpus, "max_steps=30", "--resume")
    assert resumed.returncode == 0, resumed.stderr
    runs = offline_runs(out)
    # W&B writes one offline directory per process; `wandb sync` merges them by id
    assert len(runs) == 2
    run_id = json.loads(resumed.stdout)["tracking"]["wandb_run_id"]
    # W&B names each offline directory after the run id; the SIGKILLed process may not have
    # flushed its records, so the resumed run's own log is where the id is read back.
    assert all(p.name.endswith(f"-{run_id}") for p in runs)
    records = wandb_records(runs[-1])
    assert next(r["run"]["run_id"] for r in records if r["type"] == "run") == run_id


def test_wandb_that_cannot_start_does_not_stop_training(corpus, tmp_path, refused_port):
    out = tmp_path / "run"
    env = run_env(
        WANDB_MODE="online",
        WANDB_API_KEY=SECRET,
        WANDB_BASE_URL=f"http://127.0.0.1:{refused_port}",
        CHARRNN_CACHE=str(tmp_path / "cache"),
    )
    started = time.monotonic()
    done = _train(
        out,
        corpus,
        "max_steps=20",
        "track.init_timeout_s=5",
        "track.mode=online",
        env=env,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr
    assert "W&B could not start" in done.stderr and "training continues without W&B" in done.stderr
    assert json.loads(done.stdout)["step"] == 20 and time.monotonic() - started < 200
    assert SECRET not in done.stderr + done.stdout


def test_api_key_is_never_written(corpus, tmp_path):
    out = tmp_path / "run"
    done = _train(
        out,
        corpus,
        "max_steps=20",
        env=run_env(
            WANDB_MODE="offline", WANDB_API_KEY=SECRET, CHARRNN_CACHE=str(tmp_path / "cache")
        ),
    )
    assert done.returncode == 0, done.stderr
    assert offline_runs(out)  # a W&B run really was written
    leaked = [p for p in out.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    assert leaked == [] and SECRET not in done.stdout + done.stderr
    shutil.rmtree(out)


def test_publishing_continues_training_history_without_rewriting_it(corpus, tmp_path, monkeypatch):
    """Training's directory and publish's share one step axis and one samples table.

    Every model artefact is scored.
    """
    from charrnn.config import load_config
    from charrnn.tracking import publish_to_wandb

    out = tmp_path / "run"
    done = _train(out, corpus, "max_steps=30")
    assert done.returncode == 0, done.stderr
    trained = json.loads(done.stdout)
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    scores = {"val": trained["val"], "test": trained["test"]}
    published = publish_to_wandb(
        load_config(None, ["track.mode=offline"]).track,
        out,
        step=trained["step"],
        scores=scores,
        samples=[(0.8, "A\n", "A\nbc")],
        checkpoint=Path(trained["best_checkpoint"]),
        promoted=True,
        model_name="line-a",
        metadata={"corpus_uri": str(corpus)},
        dataset_ref=None,
    )
    runs = offline_runs(out)  # timestamped names: training's directory, then publish's
    assert (
        len(runs) == 2
        and published["wandb_dir"] == str(runs[1])
        and all(p.name.endswith(trained["tracking"]["wandb_run_id"]) for p in runs)
    )
    training, publishing = (wandb_records(p) for p in runs)

    # summary and an artefact only: nothing to restart _step or reuse an increment
    assert history_rows(publishing) == []
    rows = history_rows(training) + history_rows(publishing)
    assert [row["_step"] for row in rows] == list(range(len(rows)))
    steps = [row["trainer/step"] for row in rows]
    assert steps == sorted(steps) and steps[-1] == trained["step"]
    increments = [row["samples.increment_num"] for row in rows if "samples.increment_num" in row]
    assert len(increments) == 3 and len(set(increments)) == 3

    models = [
        r["artifact"]
        for r in training + publishing
        if r["type"] == "artifact" and r["artifact"]["type"] == "model"
    ]
    assert all(
        "val_bpc" in json.loads(m["metadata"])
        or json.loads(m["metadata"])["val"] == "not measured at this step"
        for m in models
    )
    (line,) = [m for m in models if m["name"] == "line-a"]
    assert {"production", f"run-{trained['tracking']['wandb_run_id']}"} <= set(
        line["aliases"]
    ) and "final" not in line["aliases"]
    assert {e["path"] for e in line["manifest"]["contents"]} == {"model.pt", "samples.table.json"}
    assert (
        json.loads(line["metadata"])["test_bpc"] == trained["test"]["bpc"]
        and json.loads(line["metadata"])["step"] == trained["step"]
    )
    summary = {
        k: v
        for r in publishing
        if r["type"] == "summary"
        for k, v in r["summary"]["update"].items()
    }
    assert (
        summary["final/step"] == trained["step"]
        and summary["model_name"] == "line-a"
        and summary["production"] is True
    )
