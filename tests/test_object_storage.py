"""Run directories on object storage: a real S3-compatible server on 127.0.0.1.

The server is moto in server mode. Train into ``s3://bucket/...``, SIGKILL the
training mid-run, throw away the local staging copy (as if the job moved to
another machine), and resume from the object store: the run ends at the same
step count it was asked for.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from helpers import run_env, tiny_config

from charrnn.config import dump_config
from charrnn.data.prepare import prepare
from charrnn.io.storage import staging_dir

pytestmark = [pytest.mark.slow]


@pytest.fixture
def s3(monkeypatch, tmp_path):
    """A moto S3 server on a free loopback port, with a bucket; the AWS settings point at it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    settings = {
        "AWS_ENDPOINT_URL": f"http://127.0.0.1:{port}",
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    for key, value in settings.items():
        monkeypatch.setenv(key, value)
    with open(tmp_path / "moto.log", "w") as log:
        server = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                assert time.monotonic() < deadline and server.poll() is None, (
                    "moto server did not start"
                )
                time.sleep(0.2)
        import s3fs

        fs = s3fs.S3FileSystem(
            client_kwargs={"endpoint_url": settings["AWS_ENDPOINT_URL"]}, skip_instance_cache=True
        )
        fs.mkdir("charrnn-runs")
        yield fs
    finally:
        server.terminate()
        server.wait(timeout=30)


def _train(config: Path, tokens: str, url: str, *extra: str) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "charrnn",
            "train",
            "--config",
            str(config),
            "--tokens",
            tokens,
            "--out-dir",
            url,
            *extra,
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=run_env(),
    )


def test_train_kill_and_resume_from_object_storage(s3, small_corpus, tmp_path):
    url = "s3://charrnn-runs/jobs/tiny"
    cfg = tiny_config(
        small_corpus,
        tmp_path / "unused",
        max_steps=1500,
        time_budget_s=0,  # steps alone: on a loaded machine the default 120 s clock ended it early
        checkpoint_interval=20,
        eval_interval=0,
        keep_last=2,
    )
    _, tokens = prepare(cfg)
    config = tmp_path / "job.yaml"
    config.write_text(dump_config(cfg))

    first = _train(config, tokens.dir, url)
    deadline = time.monotonic() + 120
    while (
        not s3.glob("charrnn-runs/jobs/tiny/checkpoints/step-*.pt.sha256")
        and time.monotonic() < deadline
    ):
        assert first.poll() is None, first.communicate()[1][-3000:]
        time.sleep(0.1)
        s3.invalidate_cache()
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    s3.invalidate_cache()
    published = sorted(s3.glob("charrnn-runs/jobs/tiny/checkpoints/step-*.pt.sha256"))
    assert published, "no checkpoint reached the object store before the kill"

    # A new machine: no staging copy. Plus an upload that never completed (no sidecar) and a
    # corrupt one.
    shutil.rmtree(staging_dir(url))
    s3.pipe("charrnn-runs/jobs/tiny/checkpoints/step-09999998.pt", b"half an upload")
    s3.pipe("charrnn-runs/jobs/tiny/checkpoints/step-09999999.pt", b"corrupt")
    s3.pipe(
        "charrnn-runs/jobs/tiny/checkpoints/step-09999999.pt.sha256",
        b"0" * 64 + b"  step-09999999.pt\n",
    )

    second = _train(config, tokens.dir, url, "--resume")
    out, err = second.communicate(timeout=300)
    assert second.returncode == 0, err[-3000:]
    summary = json.loads(out)
    assert (
        summary["step"] == 1500 and summary["resumed_from"] >= 20 and summary["remote_dir"] == url
    )
    assert "is corrupt" in err and "pulled s3://charrnn-runs/jobs/tiny/checkpoints/step-" in err

    # The object store holds the finished run: its files, and checkpoints whose checksums verify.
    s3.invalidate_cache()
    remote = {p.rsplit("/", 1)[-1] for p in s3.ls("charrnn-runs/jobs/tiny")}
    assert {
        "config.yaml",
        "metrics.jsonl",
        "train_summary.json",
        "vocab.json",
        "best.pt",
        "best.pt.sha256",
        "checkpoints",
    } <= remote
    assert json.loads(s3.cat("charrnn-runs/jobs/tiny/train_summary.json"))["step"] == 1500
    import hashlib

    steps = [
        p for p in s3.glob("charrnn-runs/jobs/tiny/checkpoints/step-*.pt") if "0999999" not in p
    ]
    assert steps and len(steps) <= 2  # keep_last applies remotely too
    for path in steps:
        assert (
            hashlib.sha256(s3.cat(path)).hexdigest() == s3.cat(path + ".sha256").split()[0].decode()
        )
