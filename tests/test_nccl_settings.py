"""NCCL failure settings chosen in charrnn.distributed: for NCCL only, never over the user's own.

No NCCL here: torch.distributed's init is replaced by a recorder, which is
enough to see what reaches it (env, timeouts). What a real NCCL job does when
a peer dies is described in NOTES-for-README.md and was not run here.
"""

from __future__ import annotations

import datetime
import os

import pytest
import torch

from charrnn.distributed import group as distributed
from charrnn.distributed.group import (
    DEFAULT_NCCL_TIMEOUT_S,
    NCCL_ENV_DEFAULTS,
    DistEnv,
    apply_nccl_env_defaults,
    init_process_group,
    nccl_collective_timeout_s,
)
from charrnn.errors import ConfigError

ALL_NAMES = [name for names, _, _ in NCCL_ENV_DEFAULTS for name in names] + [
    "TORCH_NCCL_BLOCKING_WAIT",
    distributed.NCCL_TIMEOUT_ENV,
]


@pytest.fixture
def clean_env(monkeypatch):
    for name in (
        ALL_NAMES
    ):  # set, then delete: monkeypatch then restores each as it was, undoing what the code sets
        monkeypatch.setenv(name, "placeholder")
        monkeypatch.delenv(name)
    monkeypatch.delenv("TORCHELASTIC_USE_AGENT_STORE", raising=False)
    return monkeypatch


@pytest.fixture
def fake_dist(clean_env):
    """Record init_process_group / _set_pg_timeout calls and the NCCL env at init time."""
    calls: list[tuple] = []

    def init(backend, **kwargs):
        calls.append(
            ("init", backend, kwargs["timeout"], {k: os.environ.get(k) for k in ALL_NAMES})
        )

    clean_env.setattr(distributed.dist, "is_initialized", lambda: False)
    clean_env.setattr(distributed.dist, "init_process_group", init)
    clean_env.setattr(
        distributed.dist.distributed_c10d,
        "_set_pg_timeout",
        lambda timeout, group=None: calls.append(("set_timeout", timeout)),
    )
    return calls


def test_defaults_fill_an_empty_environment():
    environ: dict[str, str] = {}
    applied = apply_nccl_env_defaults(environ)
    assert (
        environ
        == applied
        == {
            "TORCH_NCCL_ASYNC_ERROR_HANDLING": "3",
            "TORCH_NCCL_DUMP_ON_TIMEOUT": "1",
            "TORCH_FR_BUFFER_SIZE": "2000",
            "TORCH_NCCL_TRACE_BUFFER_SIZE": "2000",  # the pre-rename name, for older PyTorch
        }
    )


def test_user_values_win_under_any_of_their_names():
    environ = {
        "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1",
        "TORCH_NCCL_TRACE_BUFFER_SIZE": "0",
        "TORCH_NCCL_DUMP_ON_TIMEOUT": "0",
    }
    assert apply_nccl_env_defaults(environ) == {}
    assert environ == {
        "TORCH_NCCL_ASYNC_ERROR_HANDLING": "1",
        "TORCH_NCCL_TRACE_BUFFER_SIZE": "0",
        "TORCH_NCCL_DUMP_ON_TIMEOUT": "0",
    }

    # the deprecated spelling still counts as the user's choice
    environ = {"NCCL_ASYNC_ERROR_HANDLING": "2"}
    apply_nccl_env_defaults(environ)
    assert (
        "TORCH_NCCL_ASYNC_ERROR_HANDLING" not in environ
        and environ["NCCL_ASYNC_ERROR_HANDLING"] == "2"
    )


def test_collective_timeout_from_the_environment():
    assert nccl_collective_timeout_s({}) == DEFAULT_NCCL_TIMEOUT_S == 180.0
    assert nccl_collective_timeout_s({"CHARRNN_NCCL_TIMEOUT_S": "420"}) == 420.0
    for bad in ("0", "-5", "ten"):
        with pytest.raises(ConfigError, match="CHARRNN_NCCL_TIMEOUT_S"):
            nccl_collective_timeout_s({"CHARRNN_NCCL_TIMEOUT_S": bad})


def test_nccl_gets_the_settings_before_init_and_the_short_timeout_after(fake_dist):
    init_process_group(DistEnv(rank=0, world_size=2), torch.device("cuda", 0))
    (kind, backend, timeout, env_at_init), (kind2, collective) = fake_dist
    assert (kind, backend, kind2) == ("init", "nccl", "set_timeout")
    assert timeout == datetime.timedelta(seconds=600)  # start-up keeps the long timeout
    assert collective == datetime.timedelta(seconds=180)
    assert (
        env_at_init["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "3"
        and env_at_init["TORCH_NCCL_DUMP_ON_TIMEOUT"] == "1"
    )
    assert env_at_init["TORCH_FR_BUFFER_SIZE"] == "2000"
    # a user choice (see NOTES-for-README.md), not ours
    assert env_at_init["TORCH_NCCL_BLOCKING_WAIT"] is None


def test_nccl_keeps_what_the_user_set(fake_dist, clean_env):
    clean_env.setenv("TORCH_NCCL_ASYNC_ERROR_HANDLING", "1")
    clean_env.setenv("TORCH_NCCL_BLOCKING_WAIT", "1")
    clean_env.setenv("CHARRNN_NCCL_TIMEOUT_S", "900")
    init_process_group(DistEnv(rank=1, world_size=2), torch.device("cuda", 1))
    (_, _, _, env_at_init), (_, collective) = fake_dist
    assert (
        env_at_init["TORCH_NCCL_ASYNC_ERROR_HANDLING"] == "1"
        and env_at_init["TORCH_NCCL_BLOCKING_WAIT"] == "1"
    )
    assert collective == datetime.timedelta(seconds=900)


def test_gloo_is_unaffected(fake_dist):
    init_process_group(DistEnv(rank=0, world_size=2), torch.device("cpu"))
    assert len(fake_dist) == 1  # no timeout change after init
    _, backend, timeout, env_at_init = fake_dist[0]
    assert backend == "gloo" and timeout == datetime.timedelta(seconds=600)
    assert all(value is None for value in env_at_init.values())


def test_one_process_touches_nothing(fake_dist):
    init_process_group(DistEnv(), torch.device("cuda", 0))
    assert fake_dist == [] and "TORCH_NCCL_ASYNC_ERROR_HANDLING" not in os.environ


def test_the_environment_is_restored_after_these_tests():
    assert not [name for name in ALL_NAMES if os.environ.get(name) in ("3", "1", "2000")]
