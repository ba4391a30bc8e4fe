"""bench/ddp_scaling.py end to end on the tiny model: real torchrun, real independent trainers.

No timings are checked.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from helpers import make_text, run_env, tiny_overrides

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.slow
@pytest.mark.distributed
def test_times_one_process_ddp_and_independent_processes_side_by_side(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(make_text(30_000), encoding="utf-8")
    cmd = [
        sys.executable,
        str(REPO / "bench" / "ddp_scaling.py"),
        "--steps",
        "100",
        "--rounds",
        "1",
        "--procs",
        "2",
        "--precisions",
        "fp32",
        f"corpus={corpus}",
        *tiny_overrides(),
    ]
    done = subprocess.run(
        cmd,
        cwd=tmp_path,
        env=run_env(CHARRNN_CACHE=str(tmp_path / "cache")),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    lines = done.stdout.splitlines()
    assert any(
        line.startswith("fp32: 1 process x 2 threads")
        and "2 processes x 1 thread" in line
        and "ratio 2-process / 1-process" in line
        for line in lines
    ), done.stdout
    assert any(
        line.startswith("fp32: 2 independent processes x 1 thread, no DDP") and "DDP keeps" in line
        for line in lines
    ), done.stdout
    assert not any(line.startswith("bf16") for line in lines)  # only the precisions asked for
