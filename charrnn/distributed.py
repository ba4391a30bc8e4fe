"""Process-group plumbing for ``torchrun``: environment, backend, collectives.

A plain ``python -m charrnn ...`` run is world size 1 and never touches
``torch.distributed``; under ``torchrun`` the same code reads RANK /
WORLD_SIZE / LOCAL_RANK and joins the group (NCCL on CUDA, gloo on CPU).
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistEnv:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1

    @classmethod
    def from_env(cls) -> DistEnv:
        get = lambda name, default: int(os.environ.get(name, default))  # noqa: E731
        return cls(get("RANK", 0), get("WORLD_SIZE", 1), get("LOCAL_RANK", 0), get("LOCAL_WORLD_SIZE", 1))

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
            from .errors import ConfigError

            raise ConfigError("train.device=cuda but no CUDA device is visible", fix="use train.device=auto or cpu")
        torch.cuda.set_device(env.local_rank)  # one process per GPU
        return torch.device("cuda", env.local_rank)
    return torch.device(requested)


def configure_threads(env: DistEnv) -> int:
    """Give each local process an equal share of the cores unless the user chose."""
    if "OMP_NUM_THREADS" in os.environ:
        threads = int(os.environ["OMP_NUM_THREADS"])
    else:
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
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
        os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), env.world_size, is_master=False, timeout=timeout
    )
    return dist.PrefixStore(f"charrnn/attempt-{attempt}", client)


def init_process_group(env: DistEnv, device: torch.device, timeout_s: float = 600.0) -> None:
    if env.distributed and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        timeout = datetime.timedelta(seconds=timeout_s)
        store = _attempt_store(env, timeout)
        dist.init_process_group(
            backend,
            timeout=timeout,
            device_id=device if device.type == "cuda" else None,
            **({"store": store, "rank": env.rank, "world_size": env.world_size} if store is not None else {}),
        )


def destroy_process_group() -> None:
    if dist.is_initialized():
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
