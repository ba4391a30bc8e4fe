"""DDP scaling on one machine: 1 process x N threads against N processes x 1 thread.

Both run the same global batch through ``charrnn launch`` (real torchrun, gloo)
on the prepared default corpus, alternating in rounds; the figure is the
median of the per-log-interval chars/s that training itself reports (first
interval dropped as warm-up).

Each precision this CPU has (fp32; bf16 where it has bf16 LSTM kernels) is
measured in the same run. A third layout, N independent ``charrnn train``
processes x 1 thread, each with its 1/N share of the batch and no DDP, is the
ceiling DDP could reach with free communication: it tells what splitting the
batch costs apart from what gradient averaging costs.

    python bench/ddp_scaling.py [--steps 400] [--rounds 2] [--precisions fp32,bf16]
                                [--compression] [key=value train overrides]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from bench.common import machine_summary
from charrnn.config import load_config
from charrnn.distributed.machine import available_cores
from charrnn.errors import ConfigError
from charrnn.model.precision import autocast_dtype


def train_args(out: Path, tokens: str, steps: int, overrides: list[str]) -> list[str]:
    """The training arguments every timed layout shares.

    A step budget, no validation, no checkpoints in between.
    """
    return [
        "--out-dir",
        str(out),
        "--tokens",
        tokens,
        f"max_steps={steps}",
        "time_budget_s=0",
        "log_interval=50",
        "eval_interval=0",
        "checkpoint_interval=100000",
        "data.val_fraction=0",
        *overrides,
    ]


def run(
    nproc: int, threads: int, steps: int, tokens: str, overrides: list[str], out: Path
) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    cmd = [
        sys.executable,
        "-m",
        "charrnn",
        "launch",
        "--nproc-per-node",
        str(nproc),
        "--",
        *train_args(out, tokens, steps, overrides),
    ]
    subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    return median_rate(out)


def run_independent(procs: int, steps: int, tokens: str, overrides: list[str], out: Path) -> float:
    """Sum of ``procs`` concurrent single-process trainers' chars/s.

    Each has 1 thread and 1/procs of the global batch.
    """
    share = load_config(None, overrides).train.batch_size // procs
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    runs = []
    for i in range(procs):
        cmd = [
            sys.executable,
            "-m",
            "charrnn",
            "train",
            "--no-summary",
            *train_args(out / str(i), tokens, steps, [*overrides, f"batch_size={share}"]),
        ]
        runs.append(
            subprocess.Popen(
                cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
            )
        )
    for proc in runs:
        _, err = proc.communicate()
        if proc.returncode:
            raise SystemExit(f"an independent trainer failed ({proc.returncode}):\n{err[-2000:]}")
    return sum(median_rate(out / str(i)) for i in range(procs))


def median_rate(run_dir: Path) -> float:
    """Median of the chars/s that training logged, the first interval (warm-up) dropped."""
    rates = [
        json.loads(line)["perf/chars_per_s"]
        for line in (run_dir / "metrics.jsonl").read_text().splitlines()
        if "perf/chars_per_s" in line
    ]
    return statistics.median(rates[1:])


def precisions() -> list[str]:
    """fp32 always; bf16 too where this CPU has bf16 LSTM kernels."""
    try:
        autocast_dtype("bf16", torch.device("cpu"))
    except ConfigError:
        return ["fp32"]
    return ["fp32", "bf16"]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--procs", type=int, default=available_cores())
    parser.add_argument(
        "--precisions",
        type=lambda v: v.split(","),
        default=None,
        help="comma-separated (default: every precision this CPU has)",
    )
    parser.add_argument(
        "--compression",
        action="store_true",
        help="also time the many-process layout with train.grad_compression=bf16",
    )
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    prepared = subprocess.run(
        [sys.executable, "-m", "charrnn", "prepare", *args.overrides],
        check=True,
        capture_output=True,
        text=True,
    )
    tokens = json.loads(prepared.stdout)["tokens"]["dir"]
    print(f"machine: {machine_summary()}")
    with tempfile.TemporaryDirectory() as tmp:
        for precision in args.precisions or precisions():
            overrides = [*args.overrides, f"precision={precision}"]
            one, many, apart = [], [], []
            for r in range(args.rounds):  # alternating, so machine drift hits every layout
                one.append(
                    run(
                        1,
                        args.procs,
                        args.steps,
                        tokens,
                        overrides,
                        Path(tmp) / f"{precision}-one-{r}",
                    )
                )
                many.append(
                    run(
                        args.procs,
                        1,
                        args.steps,
                        tokens,
                        overrides,
                        Path(tmp) / f"{precision}-many-{r}",
                    )
                )
                apart.append(
                    run_independent(
                        args.procs,
                        args.steps,
                        tokens,
                        overrides,
                        Path(tmp) / f"{precision}-apart-{r}",
                    )
                )
            a, b, c = statistics.median(one), statistics.median(many), statistics.median(apart)
            print(
                f"{precision}: 1 process x {args.procs} threads {a:10,.0f} chars/s | "
                f"{args.procs} processes x 1 thread {b:10,.0f} chars/s | "
                f"ratio {args.procs}-process / 1-process {b / a:.2f}  "
                f"(rounds: {', '.join(f'{x:,.0f}' for x in one)} / "
                f"{', '.join(f'{x:,.0f}' for x in many)})"
            )
            print(
                f"{precision}: {args.procs} independent processes x 1 thread, no DDP "
                f"{c:10,.0f} chars/s in all | vs 1 process {c / a:.2f} "
                f"(the batch split alone) | DDP keeps {b / c:.2f} of it (gradient averaging)  "
                f"(rounds: {', '.join(f'{x:,.0f}' for x in apart)})"
            )
            if args.compression:  # the same many-process layout, gradients averaged in bf16
                packed = [
                    run(
                        args.procs,
                        1,
                        args.steps,
                        tokens,
                        [*overrides, "grad_compression=bf16"],
                        Path(tmp) / f"{precision}-bf16grad-{r}",
                    )
                    for r in range(args.rounds)
                ]
                c = statistics.median(packed)
                print(
                    f"{precision}: {args.procs} processes x 1 thread, grad_compression=bf16 "
                    f"{c:10,.0f} chars/s | vs uncompressed {c / b:.2f} | vs 1 process {c / a:.2f}"
                )


if __name__ == "__main__":
    main()
