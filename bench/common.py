"""Shared pieces of the benchmark suite: the report format, machine facts, peak FLOP/s, process memory."""

from __future__ import annotations

import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parent.parent


@dataclass
class Target:
    what: str
    figure: str
    target: str
    met: bool | None  # None: informational, no target


@dataclass
class Report:
    title: str
    command: str
    body: str  # preformatted figures
    targets: list[Target] = field(default_factory=list)
    notes: str = ""  # markdown after the figures
    files: list[str] = field(default_factory=list)

    def markdown(self) -> str:
        parts = [f"### {self.title}", "", f"Command: `{self.command}`", "", "```", self.body.rstrip(), "```", ""]
        if self.targets:
            parts += ["| target | figure | required | met |", "| --- | --- | --- | --- |"]
            parts += [f"| {t.what} | {t.figure} | {t.target} | {verdict(t.met)} |" for t in self.targets]
            parts.append("")
        if self.notes:
            parts += [self.notes.strip(), ""]
        return "\n".join(parts)


def verdict(met: bool | None) -> str:
    return "-" if met is None else ("**yes**" if met else "**no**")


def cpu_model() -> str:
    with open("/proc/cpuinfo", encoding="utf-8") as fh:
        match = re.search(r"^model name\s*:\s*(.+)$", fh.read(), re.M)
    return match.group(1).strip() if match else platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    with open("/proc/cpuinfo", encoding="utf-8") as fh:
        match = re.search(r"^flags\s*:\s*(.+)$", fh.read(), re.M)
    return set(match.group(1).split()) if match else set()


def machine_summary() -> str:
    flags = cpu_flags()
    simd = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in flags]
    return (
        f"{cpu_model()}, {len(os.sched_getaffinity(0))} cores, SIMD: {', '.join(simd) or 'none of avx2/avx512/amx'}; "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads, CPU capability {torch.backends.cpu.get_cpu_capability()}); "
        f"Python {platform.python_version()}"
    )


def measured_peak_flops(seconds: float = 2.0, size: int = 1024) -> float:
    """Best fp32 FLOP/s of a large square matmul: the practical peak training is compared against."""
    a, b = torch.randn(size, size), torch.randn(size, size)
    torch.mm(a, b)
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        for _ in range(4):
            torch.mm(a, b)
        best = max(best, 4 * 2 * size**3 / (time.perf_counter() - start))
    return best


def run_measured(cmd: list[str], *, env: dict | None = None, cwd: str | Path | None = None) -> tuple[subprocess.CompletedProcess, float, int]:
    """Run ``cmd``; return (completed process, wall seconds, peak RSS in bytes of it and the children it waited for).

    ``os.wait4`` gives this child's own peak; ``getrusage(RUSAGE_CHILDREN)`` would be
    the maximum over every child so far.
    """
    start = time.perf_counter()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, env=env, cwd=cwd)
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        wall = time.perf_counter() - start
        out.seek(0)
        err.seek(0)
        done = subprocess.CompletedProcess(cmd, proc.returncode, out.read(), err.read())
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done, wall, usage.ru_maxrss * 1024


def charrnn_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "charrnn", *args]


def quiet_env(**extra: str) -> dict:
    """Subprocess environment: W&B off (benchmarks measure training, not tracking)."""
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
    return env | {"WANDB_MODE": "disabled"} | extra
