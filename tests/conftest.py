"""Shared fixtures: an isolated cache, small corpora, an HTTP server, a Prefect server.

The HTTP server is a real one, on 127.0.0.1. Plain helpers (the tiny model,
make_text, run_env ...) are in helpers.py: ``from helpers import ...``.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

# TINY_OVERRIDES, alive, process_tree, task_states: re-exported only until tests/test_pipeline.py
# and tests/test_deployments.py import them from helpers (at the merge).
from helpers import CPU_BF16, PG_BIN, make_text


def pytest_report_header(config) -> str:
    """Say where the suite ran: which precision paths it could exercise on this machine."""
    cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    bf16 = "yes: bf16 tests run (test_bf16.py)" if CPU_BF16 else "no: bf16 tests skipped, fp32 only"
    return f"charrnn: CPU native bf16 LSTM kernels: {bf16}; CUDA: {cuda}"


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch) -> Path:
    """Every test gets its own content-addressed cache."""
    path = tmp_path / "cache"
    monkeypatch.setenv("CHARRNN_CACHE", str(path))
    return path


@pytest.fixture
def small_corpus(tmp_path) -> Path:
    path = tmp_path / "small.txt"
    path.write_text(make_text(60_000), encoding="utf-8")
    return path


# --------------------------------------------------------------------------- HTTP


class CorpusServer:
    """Routes: /<name>, /status/<code>, /slow/<seconds> and /flaky (500 once).

    /<name> serves the bytes in ``files``, with an ETag; HEAD works too.
    """

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.hits: Counter[str] = Counter()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep pytest output clean
                pass

            def do_HEAD(self) -> None:
                self.do_GET(head_only=True)

            def do_GET(self, head_only: bool = False) -> None:
                server.hits[f"HEAD {self.path}" if head_only else self.path] += 1
                parts = self.path.strip("/").split("/")
                if parts[0] == "status":
                    self.send_error(int(parts[1]))
                    return
                if parts[0] == "slow":
                    time.sleep(float(parts[1]))
                if parts[0] == "flaky" and server.hits[self.path] == 1:
                    self.send_error(503)
                    return
                body = server.files.get(parts[-1])
                if body is None:
                    self.send_error(404)
                    return
                self.send_response(200)
                self.send_header("Content-Length", str(len(body)))
                # as real servers (and GitHub raw) do
                self.send_header("ETag", f'"{hashlib.sha256(body).hexdigest()[:16]}"')
                self.end_headers()
                if not head_only:
                    self.wfile.write(body)

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}/{path.lstrip('/')}"

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def http_server():
    server = CorpusServer()
    yield server
    server.close()


@pytest.fixture
def refused_port() -> int:
    """A loopback port with nothing listening on it."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --------------------------------------------------------------------------- Prefect


@pytest.fixture(scope="session")
def prefect_server(tmp_path_factory):
    """A real `prefect server start` on 127.0.0.1 (SQLite in a temp dir) for the whole session.

    This process (its in-process flow runs) and every subprocess (the prefect
    CLI, workers, their flow runs) talk to it; persisted task results go to
    the same temp dir, never to ~/.prefect.
    """
    from prefect.settings import (
        PREFECT_API_URL,
        PREFECT_HOME,
        PREFECT_LOCAL_STORAGE_PATH,
        PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW,
        temporary_settings,
    )

    from flows.local import free_port, prefect_env, start_server, stop

    state = tmp_path_factory.mktemp("prefect")
    local = start_server(state, free_port())
    env = prefect_env(state, local.api_url)
    keys = (
        "PREFECT_API_URL",
        "PREFECT_HOME",
        "PREFECT_SERVER_ANALYTICS_ENABLED",
        "PREFECT_LOGGING_EXTRA_LOGGERS",
        "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW",
    )
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update({k: env[k] for k in keys})
    try:
        home = Path(env["PREFECT_HOME"])
        with temporary_settings(
            updates={
                PREFECT_API_URL: local.api_url,
                PREFECT_HOME: home,
                PREFECT_LOCAL_STORAGE_PATH: home / "storage",
                PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW: "ignore",
            }
        ):
            yield local
            from prefect.logging.handlers import APILogWorker

            # send the last run logs while the server is still up
            APILogWorker.drain_all(timeout=10)
    finally:
        stop(state)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


# --------------------------------------------------------------------------- PostgreSQL


def _as_postgres(*cmd: str, **kwargs) -> subprocess.CompletedProcess:
    """initdb and postgres refuse to run as root: run them as the `postgres` system user."""
    prefix = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
    return subprocess.run(
        [*prefix, *cmd], check=True, capture_output=True, text=True, timeout=120, **kwargs
    )


@pytest.fixture
def postgres():
    if not PG_BIN:
        pytest.fail(
            "PostgreSQL is not installed: `make test` installs Debian's postgresql package "
            "(apt-get install postgresql)"
        )
    from flows.local import free_port

    bin_dir, port = PG_BIN[-1], free_port()
    root = Path(tempfile.mkdtemp(prefix="charrnn-pg-"))
    root.chmod(0o755)
    data = root / "data"
    data.mkdir()
    if os.geteuid() == 0:
        shutil.chown(data, "postgres", "postgres")
    try:
        _as_postgres(
            f"{bin_dir}/initdb", "-D", str(data), "-A", "trust", "-U", "charrnn", "--no-sync"
        )
        _as_postgres(
            f"{bin_dir}/pg_ctl",
            "-D",
            str(data),
            "-l",
            str(data / "server.log"),
            "-w",
            "-t",
            "60",
            "-o",
            f"-p {port} -k {data} -c listen_addresses=127.0.0.1",
            "start",
        )
        _as_postgres(
            f"{bin_dir}/createdb", "-h", "127.0.0.1", "-p", str(port), "-U", "charrnn", "prefect"
        )
        yield f"postgresql+asyncpg://charrnn@127.0.0.1:{port}/prefect"
    finally:
        subprocess.run(
            [
                "runuser",
                "-u",
                "postgres",
                "--",
                f"{bin_dir}/pg_ctl",
                "-D",
                str(data),
                "-m",
                "fast",
                "-w",
                "stop",
            ]
            if os.geteuid() == 0
            else [f"{bin_dir}/pg_ctl", "-D", str(data), "-m", "fast", "-w", "stop"],
            capture_output=True,
            timeout=60,
        )
        shutil.rmtree(root, ignore_errors=True)
