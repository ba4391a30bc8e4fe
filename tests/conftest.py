"""Shared fixtures: an isolated cache, small corpora, and a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import hashlib
import os
import random
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch

from charrnn.config import Config

# oneDNN builds its bf16 LSTM only on CPUs with native bf16 (AVX512-BF16 or AMX): there
# precision=auto trains in bf16. Tests that compare numbers pin fp32 so they hold on every
# machine; the bf16 paths have tests of their own (test_bf16.py), which run only here.
CPU_BF16 = torch.ops.mkldnn._is_mkldnn_bf16_supported()
requires_cpu_bf16 = pytest.mark.skipif(not CPU_BF16, reason="this CPU has no bf16 LSTM kernels (needs AVX512-BF16 or AMX)")


def pytest_report_header(config) -> str:
    """Say where the suite ran: which precision paths it could exercise on this machine."""
    cuda = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    bf16 = "yes: bf16 tests run (test_bf16.py)" if CPU_BF16 else "no: bf16 tests skipped, fp32 only"
    return f"charrnn: CPU bf16 LSTM kernels: {bf16}; CUDA: {cuda}"


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch) -> Path:
    """Every test gets its own content-addressed cache."""
    path = tmp_path / "cache"
    monkeypatch.setenv("CHARRNN_CACHE", str(path))
    return path


def make_text(num_chars: int, seed: int = 0) -> str:
    """A small, learnable play-like corpus (speaker lines and verse) with non-ASCII characters."""
    rng = random.Random(seed)
    names = ["ROMEO", "JULIET", "NURSE", "FRIAR", "MERCUTIO"]
    words = ["the", "of", "and", "to", "my", "thou", "thy", "love", "night", "day", "sweet", "fair", "death", "light", "heart", "is", "not", "but", "with", "be"]
    words += ["café", "naïve", "—"]
    parts: list[str] = []
    size = 0
    while size < num_chars:
        lines = [" ".join(rng.choice(words) for _ in range(rng.randint(4, 9))).capitalize() for _ in range(rng.randint(1, 4))]
        speech = f"{rng.choice(names)}:\n" + "\n".join(lines) + "\n\n"
        parts.append(speech)
        size += len(speech)
    return "".join(parts)[:num_chars]


@pytest.fixture
def small_corpus(tmp_path) -> Path:
    path = tmp_path / "small.txt"
    path.write_text(make_text(60_000), encoding="utf-8")
    return path


def tiny_config(corpus: Path | str, out_dir: Path, **train) -> Config:
    """A config that trains in seconds on one CPU core."""
    cfg = Config()
    cfg.data.corpus = str(corpus)
    cfg.data.val_fraction, cfg.data.test_fraction = 0.1, 0.05
    cfg.model.embedding_dim, cfg.model.hidden_size, cfg.model.num_layers = 16, 32, 2
    cfg.model.dropout = 0.1
    cfg.train.out_dir = str(out_dir)
    cfg.train.batch_size, cfg.train.seq_len = 8, 32
    cfg.train.warmup_steps, cfg.train.log_interval = 5, 5
    cfg.train.eval_interval, cfg.train.checkpoint_interval = 10, 10
    cfg.train.eval_batch_size = 16
    cfg.train.max_steps = 20
    cfg.train.device = "cpu"
    cfg.train.precision = "fp32"  # exact comparisons hold on every CPU; bf16 has its own tests
    cfg.track.mode = "disabled"  # W&B has its own tests (test_tracking.py)
    for key, value in train.items():
        setattr(cfg.train, key, value)
    return cfg


# --------------------------------------------------------------------------- HTTP


class CorpusServer:
    """Routes: /<name> -> bytes in ``files`` (with an ETag; HEAD too); /status/<code>; /slow/<seconds>; /flaky (500 once)."""

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
                self.send_header("ETag", f'"{hashlib.sha256(body).hexdigest()[:16]}"')  # as real servers (and GitHub raw) do
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


def cache_listing(root: Path) -> list[str]:
    """Every file under the cache (locks excluded), to show a failure left it untouched."""
    if not root.exists():
        return []
    return sorted(str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and "locks" not in p.parts and not p.name.endswith(".lock"))


def run_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("WANDB_SERVICE", None)  # set by in-process W&B use (the pipeline tests): children start their own
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("WANDB_MODE", "disabled")  # W&B has its own tests
    env.update(extra)
    return env


# --------------------------------------------------------------------------- Prefect

# A model small enough that a whole pipeline run takes seconds.
TINY_OVERRIDES = [
    "embedding_dim=16", "hidden_size=32", "batch_size=8", "seq_len=32", "warmup_steps=5",
    "log_interval=10", "checkpoint_interval=20", "eval_batch_size=8",
    "data.val_fraction=0.1", "data.test_fraction=0.05",
]  # fmt: skip


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
    keys = ("PREFECT_API_URL", "PREFECT_HOME", "PREFECT_SERVER_ANALYTICS_ENABLED", "PREFECT_LOGGING_EXTRA_LOGGERS", "PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW")
    saved = {k: os.environ.get(k) for k in keys}
    os.environ.update({k: env[k] for k in keys})
    try:
        home = Path(env["PREFECT_HOME"])
        with temporary_settings(updates={PREFECT_API_URL: local.api_url, PREFECT_HOME: home, PREFECT_LOCAL_STORAGE_PATH: home / "storage", PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW: "ignore"}):
            yield local
            from prefect.logging.handlers import APILogWorker

            APILogWorker.drain_all(timeout=10)  # send the last run logs while the server is still up
    finally:
        stop(state)
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def task_states(flow_run_id) -> dict[str, list[str]]:
    """Task name -> the state names of its runs in one flow run (e.g. {"tokenise": ["Cached"]})."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
    states: dict[str, list[str]] = {}
    for run in runs:
        states.setdefault(run.name.rsplit("-", 1)[0], []).append(run.state.name if run.state else "?")
    return states


def process_tree(root_pid: int) -> set[int]:
    """``root_pid`` and every live descendant, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [root_pid]
    while todo:
        pid = todo.pop()
        if Path(f"/proc/{pid}").exists():
            found.add(pid)
        todo.extend(children.get(pid, []))
    return found


def alive(pid: int) -> bool:
    """True for a running process (a zombie has finished)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"
