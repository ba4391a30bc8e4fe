"""Two hosts for real: Linux network namespaces joined by a veth pair, one torchrun agent in each.

Each test creates its namespaces and veth pair and removes them afterwards
(root and iproute2 needed: both are there on this machine and in CI). The
agents find each other through c10d rendezvous on host A's veth address and
train over gloo on the veth link only (``--socket-ifname``); the run directory
is shared, as a network file system would be on real machines.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import pytest
from helpers import run_env, tiny_config

from charrnn.config import dump_config
from charrnn.data.prepare import prepare

pytestmark = [
    pytest.mark.slow,
    pytest.mark.distributed,
    pytest.mark.skipif(
        os.geteuid() != 0 or shutil.which("ip") is None,
        reason="needs root and iproute2 for network namespaces",
    ),
]
RDZV_PORT = 29411


@dataclass(frozen=True)
class Host:
    netns: str
    ip: str
    ifname: str

    def pids(self) -> list[int]:
        out = subprocess.run(["ip", "netns", "pids", self.netns], capture_output=True, text=True)
        return [int(p) for p in out.stdout.split()]


def _ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True, timeout=30)


@pytest.fixture
def two_hosts():
    tag = uuid.uuid4().hex[:6]
    subnet = f"10.{random.randint(100, 250)}.{random.randint(0, 255)}"
    a = Host(f"charrnn-a-{tag}", f"{subnet}.1", f"cra{tag}")
    b = Host(f"charrnn-b-{tag}", f"{subnet}.2", f"crb{tag}")
    try:
        _ip("netns", "add", a.netns)
        _ip("netns", "add", b.netns)
        _ip("link", "add", a.ifname, "type", "veth", "peer", "name", b.ifname)
        for host in (a, b):
            _ip("link", "set", host.ifname, "netns", host.netns)
            _ip("-n", host.netns, "addr", "add", f"{host.ip}/24", "dev", host.ifname)
            _ip("-n", host.netns, "link", "set", host.ifname, "up")
            _ip("-n", host.netns, "link", "set", "lo", "up")
        yield a, b
    finally:
        for host in (a, b):
            for pid in host.pids():
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            # takes the veth pair with it
            subprocess.run(["ip", "netns", "del", host.netns], capture_output=True, timeout=30)
    assert not any(
        n in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
        for n in (a.netns, b.netns)
    )


def _job(small_corpus, tmp_path, **train) -> tuple[Path, Path, str]:
    """(config file, run dir, token dir) of a tiny two-node job."""
    run_dir = tmp_path / "run"
    cfg = tiny_config(small_corpus, run_dir, **train)
    _, tokens = prepare(cfg)  # tokenise once, before any agent starts
    config = tmp_path / "job.yaml"
    config.write_text(dump_config(cfg))
    return config, run_dir, tokens.dir


def _agent(
    host: Host, rdzv: Host, config: Path, run_dir: Path, tokens: str, log: Path
) -> subprocess.Popen:
    cmd = [
        "ip", "netns", "exec", host.netns,
        sys.executable, "-m", "charrnn", "launch",
        "--nnodes", "2", "--nproc-per-node", "1",
        "--rdzv-endpoint", f"{rdzv.ip}:{RDZV_PORT}", "--rdzv-id", "netns-job",
        "--local-addr", host.ip, "--socket-ifname", host.ifname,
        "--", "--config", str(config), "--tokens", tokens, "--out-dir", str(run_dir), "--resume",
    ]  # fmt: skip
    with open(log, "w") as out:
        return subprocess.Popen(
            cmd, stdout=out, stderr=subprocess.STDOUT, env=run_env(), start_new_session=True
        )


def test_two_hosts_train_to_completion(two_hosts, small_corpus, tmp_path):
    a, b = two_hosts
    config, run_dir, tokens = _job(small_corpus, tmp_path, max_steps=40)
    agents = [_agent(h, a, config, run_dir, tokens, tmp_path / f"{h.netns}.log") for h in (a, b)]
    codes = [p.wait(timeout=240) for p in agents]
    logs = {h.netns: (tmp_path / f"{h.netns}.log").read_text() for h in (a, b)}
    assert codes == [0, 0], logs
    combined = "\n".join(logs.values())
    assert "world size 2" in combined
    summary = json.loads((run_dir / "train_summary.json").read_text())
    assert summary["step"] == 40 and Path(summary["checkpoint"]).is_file()


def test_losing_a_host_fails_the_survivor_cleanly(two_hosts, small_corpus, tmp_path):
    a, b = two_hosts
    config, run_dir, tokens = _job(
        small_corpus, tmp_path, max_steps=100_000, checkpoint_interval=10
    )
    log_a = tmp_path / "a.log"
    survivor = _agent(a, a, config, run_dir, tokens, log_a)
    victim = _agent(b, a, config, run_dir, tokens, tmp_path / "b.log")
    deadline = time.monotonic() + 180
    while (
        not list((run_dir / "checkpoints").glob("step-*.pt.sha256")) and time.monotonic() < deadline
    ):
        assert survivor.poll() is None and victim.poll() is None, log_a.read_text()
        time.sleep(0.2)
    assert list((run_dir / "checkpoints").glob("step-*.pt.sha256")), (
        "no checkpoint before the deadline"
    )

    for pid in b.pids():  # host B dies: every process in its namespace, at once
        os.kill(pid, signal.SIGKILL)
    code = survivor.wait(timeout=120)  # bounded: the survivor must notice, not hang
    out = log_a.read_text()
    assert code != 0
    assert "lost contact with another training process" in out, out[-3000:]
    assert "--resume" in out  # and says how to continue

    from charrnn.io.checkpoint import load_latest_valid

    payload, path = load_latest_valid(run_dir)  # what it leaves behind is resumable
    assert payload["step"] >= 10 and path.exists()
