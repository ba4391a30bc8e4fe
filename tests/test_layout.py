"""``--nproc-per-node auto``: one process per GPU, else the CPU layout measured fastest.

The measurements are in bench/RESULTS.md.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

import pytest
import torch
from helpers import CPU_BF16, run_env

import charrnn.distributed.machine as machine
import charrnn.model.precision as precision
from charrnn.cli import nproc_arg


def test_one_process_per_gpu(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 4)
    assert machine.auto_nproc("auto") == (4, "one process per GPU (4 visible)")


@pytest.mark.parametrize(
    ("bf16", "isa", "cores", "expected"),
    [
        (True, "AVX512", 2, 1),
        (True, "AVX512", 16, 1),
        (False, "AVX512", 2, 1),
        (False, "AVX2", 2, 2),
        (False, "AVX2", 16, 2),
        (False, "AVX2", 1, 1),
        (False, "DEFAULT", 4, 2),
    ],
)
def test_cpu_rule(monkeypatch, bf16, isa, cores, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(torch.backends.cpu, "get_cpu_capability", lambda: isa)
    monkeypatch.setattr(machine, "available_cores", lambda: cores)
    monkeypatch.setattr(precision, "autocast_dtype", lambda p, d: torch.bfloat16 if bf16 else None)
    nproc, why = machine.auto_nproc("auto")
    assert nproc == expected
    assert ("bf16" in why) == bf16 and f"{cores} cores" in why


def test_this_machine_follows_its_precision_and_isa():
    """No fakes: what this CPU has decides."""
    wide = CPU_BF16 or torch.backends.cpu.get_cpu_capability() == "AVX512"
    assert machine.auto_nproc("auto")[0] == (1 if wide else min(2, machine.available_cores()))
    assert machine.auto_nproc("fp32")[0] == (
        1
        if torch.backends.cpu.get_cpu_capability() == "AVX512"
        else min(2, machine.available_cores())
    )


def test_an_explicit_number_wins_and_nonsense_is_refused():
    assert nproc_arg("3") == 3 and nproc_arg("auto") == "auto"
    with pytest.raises(argparse.ArgumentTypeError, match="neither auto nor a number"):
        nproc_arg("many")


def test_launch_says_which_layout_auto_chose():
    out = subprocess.run(
        [sys.executable, "-m", "charrnn", "launch", "--print-command", "--", "--out-dir", "runs/x"],
        env=run_env(),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    command = json.loads(out.stdout)
    nproc = int(command[command.index("--nproc-per-node") + 1])
    assert nproc == machine.auto_nproc("auto")[0]
    assert f"--nproc-per-node auto -> {nproc}:" in out.stderr
