"""bench/gpu_check.py: its verdict logic, and (slow) the whole checklist as a CPU dry run."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from helpers import run_env

from bench.gpu_check import Checklist, Spec, main

REPO = Path(__file__).resolve().parent.parent


def test_any_fail_fails_the_checklist_and_skips_do_not():
    printed: list[str] = []
    out = Checklist(echo=printed.append)
    out.add("a", True, "fine")
    out.add("b", None, "1 GPU: skipped")
    assert not out.failed
    out.add("c", False, "broken")
    assert out.failed and out.summary() == "1 PASS, 1 FAIL, 1 SKIP"
    assert [line.split()[0] for line in printed] == ["PASS", "SKIP", "FAIL"]


def test_the_gpu_spec_states_its_bounds():
    spec = Spec(device="cuda")
    assert spec.compare_model[:2] == ("num_layers=3", "hidden_size=1024")
    assert (
        "hidden_size=2048" in spec.large_model
        and "batch_size=1024" in spec.large_model
        and "seq_len=128" in spec.large_model
    )
    assert spec.resume_steps[0] < spec.resume_steps[1]
    assert Spec.tiny_cpu().tiny and not spec.tiny


def test_without_cuda_the_gpu_checklist_fails_at_once(tmp_path, capsys, monkeypatch):
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert main(["--work-dir", str(tmp_path)]) == 1
    assert "FAIL  device" in capsys.readouterr().out


@pytest.mark.slow
def test_cpu_dry_run_of_the_whole_checklist(tmp_path):
    env = run_env(CHARRNN_CACHE=str(tmp_path / "cache"))
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "bench.gpu_check",
            "--device",
            "cpu",
            "--tiny",
            "--work-dir",
            str(tmp_path / "work"),
        ],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert done.returncode == 0, done.stdout + done.stderr[-3000:]
    for check in ("lstm-dtype", "resume", "fp32-vs-bf16", "large", "evaluate", "sample", "ddp"):
        assert f"  {check}" in done.stdout
    assert "0 FAIL" in done.stdout
