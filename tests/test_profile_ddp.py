"""bench/profile_ddp.py end to end on the tiny model: real torchrun, 1 and 2 processes.

A trace per layout; no timings are checked.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from helpers import make_text, run_env, tiny_overrides

from bench.profile_ddp import kind_of

REPO = Path(__file__).resolve().parent.parent


def test_op_names_fall_into_their_kinds():
    # not forward, whose name it contains
    assert kind_of("aten::mkldnn_rnn_layer_backward") == "LSTM backward (oneDNN)"
    assert kind_of("aten::mkldnn_rnn_layer") == "LSTM forward (oneDNN)"
    assert kind_of("c10d::allreduce_") == "all-reduce wait (DDP/gloo)"
    assert kind_of("aten::_fused_adamw_").startswith("optimizer")
    assert kind_of("aten::bernoulli_").startswith("other")


@pytest.mark.slow
@pytest.mark.distributed
def test_profiles_one_and_two_processes_and_finds_the_all_reduce_only_under_ddp(tmp_path):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(make_text(30_000), encoding="utf-8")
    out = tmp_path / "profiles"
    cmd = [
        sys.executable,
        str(REPO / "bench" / "profile_ddp.py"),
        "--procs",
        "2",
        "--steps",
        "3",
        "--warmup",
        "1",
        "--precision",
        "fp32",
        "--out",
        str(out),
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
    one, two = done.stdout.split("2 process(es) x 1 thread(s)")
    assert "1 process(es) x 2 thread(s), fp32" in one and "ms/step" in two
    assert "LSTM backward (oneDNN)" in one and "LSTM backward (oneDNN)" in two
    assert "all-reduce" not in one and "all-reduce wait (DDP/gloo)" in two
    assert sorted(p.name for p in out.iterdir()) == ["trace-1x2-fp32.json", "trace-2x1-fp32.json"]
