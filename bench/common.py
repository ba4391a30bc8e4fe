"""Shared pieces of the benchmark suite.

The report format, machine facts, peak FLOP/s, process memory.
"""

from __future__ import annotations

import json
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

from charrnn.distributed.launch import child_env
from charrnn.distributed.machine import available_cores

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

    def text(self) -> str:
        """What a single benchmark script prints.

        The figures, then each target's figure and verdict.
        """
        lines = [self.body.rstrip()]
        lines += [
            f"{t.what}: {t.figure} (required {t.target}; met: {verdict(t.met).strip('*')})"
            for t in self.targets
        ]
        return "\n".join(lines)

    def markdown(self) -> str:
        parts = [
            f"### {self.title}",
            "",
            f"Command: `{self.command}`",
            "",
            "```",
            self.body.rstrip(),
            "```",
            "",
        ]
        if self.targets:
            parts += ["| target | figure | required | met |", "| --- | --- | --- | --- |"]
            parts += [
                f"| {t.what} | {t.figure} | {t.target} | {verdict(t.met)} |" for t in self.targets
            ]
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
        f"{cpu_model()}, {available_cores()} cores, "
        f"SIMD: {', '.join(simd) or 'none of avx2/avx512/amx'}; "
        f"torch {torch.__version__} ({torch.get_num_threads()} threads, "
        f"CPU capability {torch.backends.cpu.get_cpu_capability()}); "
        f"Python {platform.python_version()}"
    )


# (m, k, n): two square products and one of the LSTM's own class
# (a window of rows times a gate matrix).
PEAK_SHAPES = ((1024, 1024, 1024), (2048, 2048, 2048), (1024, 512, 1024))


def measured_peak_flops(
    dtype: torch.dtype = torch.float32, seconds: float = 0.5
) -> tuple[float, str]:
    """The practical peak FLOP/s in ``dtype``: the best of every probe, and which probe gave it.

    Probes both GEMM libraries torch has on a CPU, BLAS (``torch.mm``: MKL, which
    on AMD CPUs may take a slower path) and oneDNN (``mkldnn_linear``, the library
    of the LSTM kernels), over :data:`PEAK_SHAPES`: a single ``torch.mm`` probe
    read below what charrnn's own oneDNN LSTM reaches.
    """
    best, which = 0.0, ""
    for m, k, n in PEAK_SHAPES:
        a, w = torch.randn(m, k).to(dtype), torch.randn(n, k).to(dtype)
        probes = {"torch.mm": lambda a=a, w=w: torch.mm(a, w.t())}
        if torch.backends.mkldnn.is_available():
            am, wm = a.to_mkldnn(), w.to_mkldnn()
            probes["oneDNN linear"] = lambda am=am, wm=wm: torch._C._nn.mkldnn_linear(am, wm)
        for name, fn in probes.items():
            rate = _best_rate(fn, 2 * m * k * n, seconds)
            if rate > best:
                best, which = rate, f"{name} {m}x{k}x{n}"
    return best, which


def _best_rate(fn, flops: int, seconds: float) -> float:
    fn()
    best, deadline = 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        start = time.perf_counter()
        for _ in range(4):
            fn()
        best = max(best, 4 * flops / (time.perf_counter() - start))
    return best


# Runs a command as the child of a small Python process and reports that child's peak memory:
# ru_maxrss (all resident pages, including mapped page-cache pages of memory-mapped files) and,
# sampled from /proc every 10 ms, the peak of RssAnon (memory the process itself owns).
# Why not wait4 on the command directly: on Linux a process's ru_maxrss starts at the RSS
# its parent had when it forked (exec records the old mm's high-water mark), so a child of
# this big benchmark process would never report less than the benchmark's own size.
_PEAK_RSS_WRAPPER = """
import json, os, sys, time
peak_file = os.environ.pop("CHARRNN_BENCH_PEAK_FILE")
pid = os.fork()
if pid == 0:
    os.execvp(sys.argv[1], sys.argv[1:])
anon = 0
while True:
    done, status, usage = os.wait4(pid, os.WNOHANG)
    if done:
        break
    try:
        with open(f"/proc/{pid}/status") as fh:
            anon = max(anon, next(int(line.split()[1]) for line in fh if line.startswith("RssAnon:")))
    except (OSError, StopIteration):
        pass
    time.sleep(0.01)
with open(peak_file, "w") as fh:
    json.dump({"rss": usage.ru_maxrss * 1024, "anon": anon * 1024}, fh)
sys.exit(os.waitstatus_to_exitcode(status))
"""  # noqa: E501 (embedded program source: a split would change the string)


@dataclass(frozen=True)
class Peak:
    rss: int  # bytes: every resident page at the peak, mapped page-cache pages included
    anon: int  # bytes: the peak of anonymous memory (heap, tensors), sampled every 10 ms


def run_measured(
    cmd: list[str], *, env: dict | None = None, cwd: str | Path | None = None
) -> tuple[subprocess.CompletedProcess, float, Peak]:
    """Run ``cmd``; return (completed process, wall seconds, its peak memory)."""
    with tempfile.TemporaryDirectory(prefix="charrnn-bench-rss-") as tmp:
        peak_file = Path(tmp) / "peak"
        start = time.perf_counter()
        wrapper_env = (os.environ if env is None else env) | {
            "CHARRNN_BENCH_PEAK_FILE": str(peak_file)
        }
        done = subprocess.run(
            [sys.executable, "-c", _PEAK_RSS_WRAPPER, *cmd],
            env=wrapper_env,
            cwd=cwd,
            capture_output=True,
            text=True,
        )
        wall = time.perf_counter() - start
        if done.returncode != 0:
            raise RuntimeError(
                f"{' '.join(cmd)} failed ({done.returncode}):\n{done.stderr[-3000:]}"
            )
        return (
            subprocess.CompletedProcess(cmd, 0, done.stdout, done.stderr),
            wall,
            Peak(**json.loads(peak_file.read_text())),
        )


def charrnn_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "charrnn", *args]


def quiet_env(**extra: str) -> dict:
    """Subprocess environment: W&B off (benchmarks measure training, not tracking)."""
    return child_env(WANDB_MODE="disabled", **extra)
