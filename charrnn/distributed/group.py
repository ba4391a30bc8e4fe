"""Process-group plumbing for ``torchrun``: environment, backend, collectives.

A plain ``python -m charrnn ...`` run is world size 1 and never touches
``torch.distributed``; under ``torchrun`` the same code reads RANK /
WORLD_SIZE / LOCAL_RANK and joins the group (NCCL on CUDA, gloo on CPU).

NCCL failure handling is chosen here, not left to defaults (see
:data:`NCCL_ENV_DEFAULTS` and :func:`init_process_group`): a collective that a
dead peer never joins times out after ``CHARRNN_NCCL_TIMEOUT_S`` (180 s), the
watchdog dumps its flight recorder and ends the process, and torchrun sees the
failure (and restarts the group with ``--max-restarts``). On NCCL the process
is torn down by the watchdog thread, so training's friendly ``PeerLostError``
is reached only with ``TORCH_NCCL_BLOCKING_WAIT=1`` (see NOTES-for-README.md).
"""

from __future__ import annotations

import datetime
import logging
import os
from collections.abc import MutableMapping
from dataclasses import dataclass

import torch
import torch.distributed as dist

from charrnn.distributed.machine import available_cores


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @classmethod
    def from_env(cls) -> DistEnv:
        get = lambda name, default: int(os.environ.get(name, default))  # noqa: E731
        return cls(
            get("RANK", 0), get("WORLD_SIZE", 1), get("LOCAL_RANK", 0), get("LOCAL_WORLD_SIZE", 1)
        )

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def pick_device(requested: str, env: DistEnv) -> torch.device:
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    if requested == "cuda":
        if not torch.cuda.is_available():
            from charrnn.errors import ConfigError

            raise ConfigError(
                "train.device=cuda but no CUDA device is visible",
                fix="use train.device=auto or cpu",
            )
        torch.cuda.set_device(env.local_rank)  # one process per GPU
        return torch.device("cuda", env.local_rank)
    return torch.device(requested)


def configure_threads(env: DistEnv) -> int:
    """Give each local process an equal share of the cores unless the user chose."""
    if "OMP_NUM_THREADS" in os.environ:
        threads = int(os.environ["OMP_NUM_THREADS"])
    else:
        cores = available_cores()
        threads = max(1, cores // env.local_world_size)
    torch.set_num_threads(threads)
    return threads


def _attempt_store(env: DistEnv, timeout: datetime.timedelta) -> dist.Store | None:
    """The torchrun agent's store, with keys private to this restart attempt.

    After ``--max-restarts`` restarts the worker group, the agent's store still
    holds the previous attempt's gloo/NCCL addresses under the same keys, and a
    new worker can read a dead peer's address (connectFullMesh: connection
    refused). A prefix per attempt keeps each group's rendezvous keys apart.
    """
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True":
        return None
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    client = dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        env.world_size,
        is_master=False,
        timeout=timeout,
    )
    return dist.PrefixStore(f"charrnn/attempt-{attempt}", client)


log = logging.getLogger("charrnn")

NCCL_TIMEOUT_ENV = "CHARRNN_NCCL_TIMEOUT_S"
DEFAULT_NCCL_TIMEOUT_S = 180.0
"""Collective timeout once the NCCL group is up: how long survivors wait for a peer that died.

Long enough for the slowest rank-0-only work between two collectives
(writing and publishing a checkpoint, W&B samples); set ``CHARRNN_NCCL_TIMEOUT_S``
higher for slow object storage. Group start-up keeps the longer ``timeout_s``
of :func:`init_process_group` (rendezvous and NCCL communicator set-up).
"""

# (names, value, why): each is set only when the user has set none of its names.
# The names are PyTorch 2.x's (torch/csrc/distributed/c10d/ProcessGroupNCCL.hpp);
# later versions renamed the flight recorder's TORCH_NCCL_TRACE_BUFFER_SIZE to
# TORCH_FR_BUFFER_SIZE and read both, so both are set.
NCCL_ENV_DEFAULTS: tuple[tuple[tuple[str, ...], str, str], ...] = (
    (
        ("TORCH_NCCL_ASYNC_ERROR_HANDLING", "NCCL_ASYNC_ERROR_HANDLING"),
        "3",
        "SkipCleanUp (PyTorch's default, made explicit): on a failed or timed-out collective "
        "the watchdog ends the process without ncclCommAbort (which can itself hang); "
        "the flight recorder needs this mode",
    ),
    (
        ("TORCH_NCCL_DUMP_ON_TIMEOUT",),
        "1",
        "write the flight recorder to TORCH_FR_DUMP_TEMP_FILE<rank> "
        "(default /tmp/nccl_trace_rank_<rank>) on timeout or error",
    ),
    (
        ("TORCH_FR_BUFFER_SIZE", "TORCH_NCCL_TRACE_BUFFER_SIZE"),
        "2000",
        "flight recorder entries (0 disables it, and with it the dump)",
    ),
)


def apply_nccl_env_defaults(environ: MutableMapping[str, str] | None = None) -> dict[str, str]:
    """Set :data:`NCCL_ENV_DEFAULTS` where the user set none of a setting's names.

    Returns what was set. Must run before the NCCL process group is created:
    ProcessGroupNCCL reads these once, in its constructor.
    """
    environ = os.environ if environ is None else environ
    applied: dict[str, str] = {}
    for names, value, _why in NCCL_ENV_DEFAULTS:
        if any(name in environ for name in names):
            continue
        # Never the deprecated NCCL_* spellings.
        for name in names if names[0] == "TORCH_FR_BUFFER_SIZE" else names[:1]:
            environ[name] = value
            applied[name] = value
    return applied


def nccl_collective_timeout_s(environ: MutableMapping[str, str] | None = None) -> float:
    environ = os.environ if environ is None else environ
    raw = environ.get(NCCL_TIMEOUT_ENV, "")
    if not raw:
        return DEFAULT_NCCL_TIMEOUT_S
    try:
        value = float(raw)
    except ValueError:
        value = -1.0
    if value <= 0:
        from charrnn.errors import ConfigError

        raise ConfigError(
            f"{NCCL_TIMEOUT_ENV}={raw!r} is not a positive number of seconds",
            where="environment",
            fix=(
                f"unset it (default {DEFAULT_NCCL_TIMEOUT_S:g} s) "
                f"or set e.g. {NCCL_TIMEOUT_ENV}=300"
            ),
        )
    return value


def init_process_group(env: DistEnv, device: torch.device, timeout_s: float = 600.0) -> None:
    """Join the job's process group: gloo on CPU, NCCL on CUDA with deliberate failure settings.

    ``timeout_s`` bounds start-up (and every gloo collective). On NCCL the
    collectives after start-up get the shorter :func:`nccl_collective_timeout_s`.
    """
    if env.distributed and not dist.is_initialized():
        nccl = device.type == "cuda"
        backend = "nccl" if nccl else "gloo"
        # A bad value fails before any rendezvous.
        collective_timeout_s = nccl_collective_timeout_s() if nccl else None
        if nccl:
            applied = apply_nccl_env_defaults()
            if applied and env.is_main:
                log.info(
                    "NCCL failure settings: %s", " ".join(f"{k}={v}" for k, v in applied.items())
                )
        timeout = datetime.timedelta(seconds=timeout_s)
        store = _attempt_store(env, timeout)
        dist.init_process_group(
            backend,
            timeout=timeout,
            device_id=device if nccl else None,
            **(
                {"store": store, "rank": env.rank, "world_size": env.world_size}
                if store is not None
                else {}
            ),
        )
        if nccl and collective_timeout_s is not None and collective_timeout_s != timeout_s:
            set_timeout = getattr(dist.distributed_c10d, "_set_pg_timeout", None)  # PyTorch >= 2.3
            if set_timeout is not None:
                set_timeout(datetime.timedelta(seconds=collective_timeout_s))
            elif env.is_main:
                log.warning(
                    "this PyTorch cannot shorten the NCCL timeout after start-up: "
                    "collectives keep %.0f s",
                    timeout_s,
                )


def destroy_process_group(*, together: bool = False) -> None:
    """Leave the process group; ``together`` waits for every rank first.

    ``together`` is for a run that ended well. Without that barrier a fast rank can
    close its connections while a peer is still finishing its last collective, and
    gloo's threads in that peer may abort the process at exit. Never after a failure,
    when a peer may be gone and a barrier would hang.
    """
    if dist.is_initialized():
        if together:
            dist.barrier()
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum a tensor over ranks (in place; a no-op in one process)."""
    if dist.is_initialized():
        dist.all_reduce(values, op=dist.ReduceOp.SUM)
    return values


def broadcast_object(obj, src: int = 0):
    if not dist.is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src)
    return box[0]


def all_reduce_max(values: torch.Tensor) -> torch.Tensor:
    """Element-wise maximum over ranks (in place; a no-op in one process)."""
    if dist.is_initialized():
        dist.all_reduce(values, op=dist.ReduceOp.MAX)
    return values


# Unannotated: DDP checks annotations, and they are strings here.
def bf16_allreduce_hook(process_group, bucket):
    """A DDP communication hook: average a gradient bucket in bf16, then write it back in fp32.

    Averaging in bf16 sends half the bytes.

    PyTorch's own ``bf16_compress_hook`` refuses every backend but NCCL; gloo all-reduces
    bf16 fine, so this is the same few lines for any backend.
    """
    group = process_group if process_group is not None else dist.group.WORLD
    buffer = bucket.buffer()
    compressed = buffer.to(torch.bfloat16).div_(group.size())

    def write_back(fut: torch.futures.Future) -> torch.Tensor:
        return buffer.copy_(fut.value()[0])  # in place: no second fp32 buffer

    return dist.all_reduce(compressed, group=group, async_op=True).get_future().then(write_back)
