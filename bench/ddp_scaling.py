"""DDP scaling on one machine: 1 process x N threads against N processes x 1 thread.

Both run the same global batch through ``charrnn launch`` (real torchrun, gloo)
on the prepared default corpus, alternating in rounds; the figure is the
median of the per-log-interval chars/s that training itself reports (first
interval dropped as warm-up).

    python bench/ddp_scaling.py [--steps 400] [--rounds 2] [key=value train overrides]
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


def run(nproc: int, threads: int, steps: int, tokens: str, overrides: list[str], out: Path) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "charrnn", "launch", "--nproc-per-node", str(nproc), "--",
           "--out-dir", str(out), "--tokens", tokens, f"max_steps={steps}", "time_budget_s=0",
           "log_interval=50", "eval_interval=0", "checkpoint_interval=100000", "data.val_fraction=0", *overrides]  # fmt: skip
    subprocess.run(cmd, env=env, check=True, capture_output=True, text=True)
    rates = [json.loads(line)["perf/chars_per_s"] for line in (out / "metrics.jsonl").read_text().splitlines() if "perf/chars_per_s" in line]
    return statistics.median(rates[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--procs", type=int, default=len(os.sched_getaffinity(0)))
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    prepared = subprocess.run([sys.executable, "-m", "charrnn", "prepare", *args.overrides], check=True, capture_output=True, text=True)
    tokens = json.loads(prepared.stdout)["tokens"]["dir"]
    results: dict[str, list[float]] = {"1 proc": [], f"{args.procs} procs": []}
    with tempfile.TemporaryDirectory() as tmp:
        for r in range(args.rounds):
            results["1 proc"].append(run(1, args.procs, args.steps, tokens, args.overrides, Path(tmp) / f"one-{r}"))
            results[f"{args.procs} procs"].append(run(args.procs, 1, args.steps, tokens, args.overrides, Path(tmp) / f"many-{r}"))
    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"1 process x {args.procs} threads : {med['1 proc']:10,.0f} chars/s  (rounds: {', '.join(f'{x:,.0f}' for x in results['1 proc'])})")
    many = f"{args.procs} procs"
    print(f"{args.procs} processes x 1 thread: {med[many]:10,.0f} chars/s  (rounds: {', '.join(f'{x:,.0f}' for x in results[many])})")
    print(f"ratio {args.procs}-process / 1-process: {med[many] / med['1 proc']:.2f}")


if __name__ == "__main__":
    main()
