"""Launch ``charrnn train`` under ``torchrun`` (torch.distributed.run): one machine or many.

We only build the torchrun command line and supervise it: torchrun does the
rendezvous, spawns one worker per GPU/slot, and restarts the worker group on
failure (``--max-restarts``), after which training resumes from the newest
valid checkpoint. The launcher runs torchrun in its own process group, streams
its output line by line, and kills the whole group on Ctrl-C, error or
cancellation, so no worker outlives it.
"""

from __future__ import annotations

import ctypes
import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from .errors import ConfigError


@dataclass
class LaunchSpec:
    nproc_per_node: int = 1
    nnodes: int = 1
    rdzv_endpoint: str | None = None  # HOST:PORT of the c10d rendezvous (multi-node)
    rdzv_id: str | None = None  # shared by every node of one job
    max_restarts: int = 0
    local_addr: str | None = None
    socket_ifname: str | None = None  # network interface for gloo and NCCL traffic (multi-homed hosts)
    rdzv_is_host: bool = False  # this node hosts the rendezvous store (default: the node whose --local-addr is the endpoint)
    monitor_interval_s: float = 1.0
    env: dict[str, str] = field(default_factory=dict)


def torchrun_command(spec: LaunchSpec, train_args: Sequence[str], command: str = "train") -> list[str]:
    """``python -m torch.distributed.run ... -m charrnn COMMAND ARGS`` (COMMAND: train or evaluate)."""
    if spec.nproc_per_node < 1 or spec.nnodes < 1:
        raise ConfigError("nproc_per_node and nnodes must be at least 1", where="launch")
    cmd = [sys.executable, "-m", "torch.distributed.run"]
    if spec.nnodes == 1 and spec.rdzv_endpoint is None:
        cmd.append("--standalone")  # local c10d rendezvous on a free port
    else:
        if not spec.rdzv_endpoint:
            raise ConfigError(
                f"--nnodes {spec.nnodes} needs a rendezvous endpoint",
                where="launch",
                fix="pass --rdzv-endpoint HOST:PORT (a host every node can reach) and the same --rdzv-id on every node",
            )
        cmd += [
            "--nnodes", str(spec.nnodes),
            "--rdzv-backend", "c10d",
            "--rdzv-endpoint", spec.rdzv_endpoint,
            "--rdzv-id", spec.rdzv_id or "charrnn",
        ]  # fmt: skip
        if spec.local_addr:
            cmd += ["--local-addr", spec.local_addr]
        # torch decides who hosts the rendezvous store by matching the endpoint against the
        # machine's hostname addresses, which misses a second interface (a veth, a pod's DNS
        # name): the node whose own address is the endpoint, or that says so, hosts it.
        if spec.rdzv_is_host or (spec.local_addr and spec.rdzv_endpoint.rsplit(":", 1)[0] == spec.local_addr):
            cmd += ["--rdzv-conf", "is_host=1"]
    cmd += [
        "--nproc-per-node", str(spec.nproc_per_node),
        "--max-restarts", str(spec.max_restarts),
        "--monitor-interval", str(spec.monitor_interval_s),
        "-m", "charrnn", command, *train_args,
    ]  # fmt: skip
    return cmd


def launch_env(spec: LaunchSpec) -> dict[str, str]:
    env = {**os.environ, **spec.env}
    # A process that used W&B itself (a Prefect flow that published an earlier run) exports its
    # wandb-core service address; workers must start their own service, not attach to that one.
    env.pop("WANDB_SERVICE", None)
    if spec.socket_ifname:  # both backends: gloo on CPU, NCCL's bootstrap and sockets on GPU
        env["GLOO_SOCKET_IFNAME"] = env["NCCL_SOCKET_IFNAME"] = spec.socket_ifname
    if "OMP_NUM_THREADS" not in env:  # torchrun would default every worker to 1 thread
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        env["OMP_NUM_THREADS"] = str(max(1, cores // spec.nproc_per_node))
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


def kill_group(proc: subprocess.Popen, grace_s: float = 10.0) -> None:
    """SIGTERM the whole process group, then SIGKILL whatever is left after ``grace_s``."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    except ProcessLookupError:
        pass


# Resolved here, in the parent: between fork and exec the child must not dlopen or
# take locks another thread of the parent (a Prefect flow has several) might hold.
_PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    """In the child before exec: SIGTERM it when the process that started it dies.

    A last line of defence for a supervisor that is SIGKILLed (a cancelled or
    crashed Prefect flow run): torchrun then gets SIGTERM and stops its workers,
    so nothing outlives the flow. Linux only; elsewhere a no-op.
    """
    if _PRCTL is not None:
        _PRCTL(PR_SET_PDEATHSIG, signal.SIGTERM)


def run_torchrun(
    spec: LaunchSpec,
    train_args: Sequence[str],
    on_line: Callable[[str], None] | None = None,
    on_start: Callable[[subprocess.Popen], None] | None = None,
    command: str = "train",
) -> int:
    """Run torchrun to completion, streaming its merged output; return its exit code.

    torchrun gets its own process group (so the whole group can be killed at
    once) and is SIGTERMed if this process dies without cleaning up.
    """
    on_line = on_line or (lambda line: print(line, flush=True))
    proc = subprocess.Popen(
        torchrun_command(spec, train_args, command),
        env=launch_env(spec),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        bufsize=1,
        errors="replace",
        start_new_session=True,  # its own process group: we can kill every worker at once
        preexec_fn=_die_with_parent,
    )
    if on_start:
        on_start(proc)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            on_line(line.rstrip("\n"))
        return proc.wait()
    finally:  # Ctrl-C, an exception in on_line, or cancellation of the caller
        kill_group(proc)


def new_rdzv_id() -> str:
    return uuid.uuid4().hex[:12]
