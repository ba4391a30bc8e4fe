"""Launch ``charrnn train`` under ``torchrun`` (torch.distributed.run): one machine or many.

We only build the torchrun command line and supervise it: torchrun does the
rendezvous, spawns one worker per GPU/slot, and restarts the worker group on
failure (``--max-restarts``), after which training resumes from the newest
valid checkpoint. The launcher runs torchrun in its own process group, streams
its output line by line, and kills the whole group on Ctrl-C, error or
cancellation, so no worker outlives it.

torchrun starts each worker in a session of its own, so killing the agent's
group does not reach them: the agent stops them when it gets SIGTERM. An agent
that is SIGKILLed cannot, so every worker asks the kernel for SIGTERM when its
agent dies (:func:`supervise_worker`, called first thing by ``charrnn train``
and ``charrnn evaluate``), and the launcher stops waiting for output once the
agent is gone.
"""

from __future__ import annotations

import codecs
import contextlib
import ctypes
import io
import os
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

from charrnn.distributed.machine import available_cores
from charrnn.errors import ConfigError, PeerLostError


@dataclass
class LaunchSpec:
    nproc_per_node: int = 1
    nnodes: int = 1
    rdzv_endpoint: str | None = None  # HOST:PORT of the c10d rendezvous (multi-node)
    rdzv_id: str | None = None  # shared by every node of one job
    max_restarts: int = 0
    local_addr: str | None = None
    # Network interface for gloo and NCCL traffic (multi-homed hosts).
    socket_ifname: str | None = None
    # This node hosts the rendezvous store (default: the node whose --local-addr is the endpoint).
    rdzv_is_host: bool = False
    monitor_interval_s: float = 1.0
    env: dict[str, str] = field(default_factory=dict)


def torchrun_command(
    spec: LaunchSpec, train_args: Sequence[str], command: str = "train"
) -> list[str]:
    """``python -m torch.distributed.run ... -m charrnn COMMAND ARGS``.

    COMMAND is train or evaluate.
    """
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
                fix=(
                    "pass --rdzv-endpoint HOST:PORT (a host every node can reach) "
                    "and the same --rdzv-id on every node"
                ),
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
        if spec.rdzv_is_host or (
            spec.local_addr and spec.rdzv_endpoint.rsplit(":", 1)[0] == spec.local_addr
        ):
            cmd += ["--rdzv-conf", "is_host=1"]
    cmd += [
        "--nproc-per-node", str(spec.nproc_per_node),
        "--max-restarts", str(spec.max_restarts),
        "--monitor-interval", str(spec.monitor_interval_s),
        "-m", "charrnn", command, *train_args,
    ]  # fmt: skip
    return cmd


def child_env(base: Mapping[str, str] | None = None, **extra: str) -> dict[str, str]:
    """The environment for a child process: ``base`` without ``WANDB_SERVICE``, plus ``extra``.

    ``base`` defaults to this process's environment.

    A process that used W&B itself (a Prefect flow that published an earlier run) exports its
    wandb-core service address; a child must start its own service, not attach to that one.
    """
    env = dict(os.environ if base is None else base)
    env.pop("WANDB_SERVICE", None)
    env.update(extra)
    return env


def launch_env(spec: LaunchSpec) -> dict[str, str]:
    env = child_env(**spec.env)
    if spec.socket_ifname:  # both backends: gloo on CPU, NCCL's bootstrap and sockets on GPU
        env["GLOO_SOCKET_IFNAME"] = env["NCCL_SOCKET_IFNAME"] = spec.socket_ifname
    if "OMP_NUM_THREADS" not in env:  # torchrun would default every worker to 1 thread
        cores = available_cores()
        env["OMP_NUM_THREADS"] = str(max(1, cores // spec.nproc_per_node))
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


# torchrun forwards SIGTERM to its workers and waits 30 s before SIGKILL; give it a little more.
KILL_GRACE_S = 35.0


def kill_group(target: subprocess.Popen | int | None, grace_s: float = KILL_GRACE_S) -> None:
    """SIGTERM the process group led by ``target``, then SIGKILL what is left after ``grace_s``.

    ``target`` is a Popen, or the pid of a group leader. A Popen that has exited already
    is left alone (its pid may be reused). Returns once the leader is gone (reaped, when
    it is this process's child) and nothing of its group answers.
    """
    proc = target if isinstance(target, subprocess.Popen) else None
    pid = proc.pid if proc is not None else target
    if not pid or (proc is not None and proc.poll() is not None):
        return
    try:
        os.killpg(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    deadline = time.monotonic() + grace_s
    while time.monotonic() < deadline:
        if proc is not None:
            proc.poll()  # reap the leader, so it does not linger as a zombie member of its group
        else:
            with contextlib.suppress(ChildProcessError):  # reap it if it is our own child
                os.waitpid(pid, os.WNOHANG)
        try:
            os.killpg(pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pid, signal.SIGKILL)
    if proc is not None:
        proc.wait()


# Resolved here, in the parent: between fork and exec the child must not dlopen or
# take locks another thread of the parent (a Prefect flow has several) might hold.
_PRCTL = ctypes.CDLL(None, use_errno=True).prctl if sys.platform.startswith("linux") else None
PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """Ask the kernel to SIGTERM this process when the process that started it dies.

    A last line of defence for a supervisor that is SIGKILLed: run in torchrun
    before exec (a cancelled or crashed Prefect flow run: torchrun gets SIGTERM
    and stops its workers), and in each worker (a killed torchrun: the workers
    stop instead of training on unsupervised). Linux only; elsewhere a no-op.
    """
    if _PRCTL is not None:
        _PRCTL(PR_SET_PDEATHSIG, signal.SIGTERM)


def supervise_worker() -> None:
    """Under torchrun: make this worker die with its agent.

    Raises PeerLostError if the agent is already gone.

    The death signal is SIGTERM, which training turns into "checkpoint after
    this step and stop". The agent may die before the signal is armed, so the
    parent is read before and after arming it: a parent that changed, or that
    is init (pid 1), means the worker was orphaned already. Outside torchrun
    (no TORCHELASTIC_RUN_ID / LOCAL_RANK) this does nothing.
    """
    if "TORCHELASTIC_RUN_ID" not in os.environ or "LOCAL_RANK" not in os.environ:
        return
    agent = os.getppid()
    die_with_parent()
    if agent == 1 or os.getppid() != agent:
        raise PeerLostError(
            "the torchrun agent that started this worker is gone; not training unsupervised",
            where=f"worker pid {os.getpid()} (local rank {os.environ['LOCAL_RANK']})",
            fix="run the job again with --resume: it continues from the newest valid checkpoint",
        )


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
        start_new_session=True,  # its own process group: we can kill every worker at once
        preexec_fn=die_with_parent,
    )
    if on_start:
        on_start(proc)
    try:
        _stream_output(proc, on_line)
        code = proc.wait()
        if code < 0:  # killed by a signal: say so, and exit as a shell would (128 + signal)
            on_line(
                f"charrnn launch: torchrun (pid {proc.pid}) was killed by "
                f"{signal.Signals(-code).name}"
            )
            return 128 - code
        return code
    finally:  # Ctrl-C, an exception in on_line, or cancellation of the caller
        kill_group(proc)


# After torchrun exits: time for its workers to checkpoint, stop and close the pipe.
ORPHAN_OUTPUT_WAIT_S = 30.0


def _stream_output(
    proc: subprocess.Popen, on_line: Callable[[str], None], wait_s: float = ORPHAN_OUTPUT_WAIT_S
) -> None:
    """Pass torchrun's output to ``on_line`` until the pipe closes.

    At most until ``wait_s`` after torchrun exits. The pipe stays open while
    anything that inherited it lives: workers of a killed agent stop on their own
    (supervise_worker), but one that does not must not keep the launcher waiting
    for ever.
    """
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    text = io.IncrementalNewlineDecoder(
        codecs.getincrementaldecoder("utf-8")(errors="replace"), translate=True
    )
    pending, exited_at = "", None
    while True:
        if select.select([fd], [], [], 0.5)[0]:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                break
            *lines, pending = (pending + text.decode(chunk)).split("\n")
            for line in lines:
                on_line(line)
        if exited_at is None and proc.poll() is not None:
            exited_at = time.monotonic()
        if exited_at is not None and time.monotonic() - exited_at > wait_s:
            on_line(
                f"charrnn launch: torchrun exited {wait_s:.0f}s ago but something still "
                "holds its output open; not waiting any longer"
            )
            break
    if rest := pending + text.decode(b"", final=True):
        on_line(rest)
