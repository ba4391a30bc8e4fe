"""Shared fixtures: an isolated cache, small corpora, and a real HTTP server on 127.0.0.1."""

from __future__ import annotations

import os
import random
import socket
import threading
import time
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from charrnn.config import Config


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
    cfg.track.mode = "disabled"  # W&B has its own tests (test_tracking.py)
    for key, value in train.items():
        setattr(cfg.train, key, value)
    return cfg


# --------------------------------------------------------------------------- HTTP


class CorpusServer:
    """Routes: /<name> -> bytes in ``files``; /status/<code>; /slow/<seconds>; /flaky (500 once)."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.hits: Counter[str] = Counter()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:  # keep pytest output clean
                pass

            def do_GET(self) -> None:
                server.hits[self.path] += 1
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
                self.end_headers()
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
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("WANDB_MODE", "disabled")  # W&B has its own tests
    env.update(extra)
    return env
