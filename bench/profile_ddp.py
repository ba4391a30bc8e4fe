"""Where a training step's time goes, 1 process against N DDP processes.

It runs ``torch.profiler`` over ``Trainer.step``. Each layout runs under real
``torchrun`` (gloo) with the same global batch: 1 process x N threads, then
N processes x 1 thread. Every rank builds charrnn's own
:class:`~charrnn.train.Trainer` (DDP-wrapped when N > 1), takes warm-up steps,
then profiles ``--steps`` steps. Rank 0 prints the step time and the time per
kind of work (self CPU time of the profiled ops, grouped by name), and writes
a Chrome trace per layout under ``--out`` (default ``bench/profiles/``,
git-ignored: each is ~8 MB) (``chrome://tracing`` or https://ui.perfetto.dev
open it).

Self CPU time shows what each op computes, not how long a rank waits: time
spent waiting for the gradient all-reduce lands in the ops around it (the
LSTM backward looked 1.4x slower under DDP). ``bench/ddp_scaling.py``'s
independent-process layout measures what the average costs as a whole.

    python bench/profile_ddp.py [--procs 2] [--steps 40] [--precision bf16]
                                [--out bench/profiles] [key=value ...]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch

from charrnn.distributed.machine import available_cores

# Kinds of work, by the profiler's op names; the first pattern that matches an op wins.
KINDS = {
    # before forward: its name contains forward's
    "LSTM backward (oneDNN)": ("mkldnn_rnn_layer_backward", "MkldnnRnnLayerBackward"),
    "LSTM forward (oneDNN)": ("mkldnn_rnn_layer",),
    "all-reduce wait (DDP/gloo)": ("allreduce", "all_reduce", "gloo", "c10d", "Reducer", "wait"),
    "optimizer (fused AdamW)": ("adam", "Optimizer.step"),
    "head, loss and their backward": (
        "addmm",
        "mm",
        "linear",
        "cross_entropy",
        "log_softmax",
        "nll_loss",
        "MmBackward",
        "AddmmBackward",
    ),
    "grad clip": ("norm", "clip", "foreach"),
}


def kind_of(name: str) -> str:
    lowered = name.lower()
    for kind, patterns in KINDS.items():
        if any(p.lower() in lowered for p in patterns):
            return kind
    return "other (casts, embedding, data, bookkeeping)"


def worker(args: argparse.Namespace) -> None:
    """One rank: build the Trainer, warm up, profile ``args.steps`` steps; rank 0 reports."""
    from torch.profiler import ProfilerActivity, profile

    from charrnn.config import load_config
    from charrnn.data.tokens import open_token_set
    from charrnn.distributed.group import DistEnv
    from charrnn.io.storage import RunDir
    from charrnn.tracking import NullTracker
    from charrnn.train.trainer import Trainer

    env = DistEnv.from_env()
    overrides = [
        *args.overrides,
        f"precision={args.precision}",
        "device=cpu",
        "time_budget_s=0",
        "max_steps=1000000",
        "evals_per_run=0",
    ]
    cfg = load_config(None, overrides)
    trainer = Trainer(
        cfg,
        open_token_set(args.tokens),
        env,
        torch.device("cpu"),
        NullTracker(),
        RunDir(str(Path(args.work) / f"rank{env.rank}")),
    )
    trainer.wrap_model()
    for _ in range(args.warmup):
        trainer.step()
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        start = time.perf_counter()
        for _ in range(args.steps):
            trainer.step()
        elapsed = time.perf_counter() - start
    if env.is_main:
        kinds: dict[str, float] = {}
        for event in prof.key_averages():
            kind = kind_of(event.key)
            kinds[kind] = kinds.get(kind, 0.0) + event.self_cpu_time_total / 1e6
        prof.export_chrome_trace(args.trace)
        Path(args.report).write_text(
            json.dumps(
                {
                    "step_s": elapsed / args.steps,
                    "chars_per_s": args.steps * trainer.batcher.chars_per_step / elapsed,
                    "kinds": kinds,
                    "top": prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=12),
                }
            )
        )


def launch(
    nproc: int, threads: int, args: argparse.Namespace, tokens: str, work: Path, out: Path
) -> dict:
    label = f"{nproc}x{threads}-{args.precision}"
    report = work / f"{label}.json"
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        str(nproc),
        str(Path(__file__).resolve()),
        "--worker",
        "--tokens",
        tokens,
        "--work",
        str(work / label),
        "--steps",
        str(args.steps),
        "--warmup",
        str(args.warmup),
        "--precision",
        args.precision,
        "--trace",
        str(out / f"trace-{label}.json"),
        "--report",
        str(report),
        *args.overrides,
    ]
    subprocess.run(
        cmd,
        env={**os.environ, "OMP_NUM_THREADS": str(threads)},
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(report.read_text())


def show(label: str, result: dict) -> None:
    kinds = result["kinds"]
    total = sum(kinds.values())
    print(
        f"\n{label}: {result['step_s'] * 1e3:.1f} ms/step, {result['chars_per_s']:,.0f} chars/s; "
        "rank 0's profiled CPU time by kind:"
    )
    for kind, seconds in sorted(kinds.items(), key=lambda kv: -kv[1]):
        print(f"  {kind:<44} {seconds:7.2f} s  {100 * seconds / total:5.1f} %")
    print(result["top"])


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--procs", type=int, default=available_cores())
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="bf16")
    parser.add_argument(
        "--out", type=Path, default=Path("bench/profiles"), help="where the Chrome traces go"
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    for name in ("--tokens", "--work", "--trace", "--report"):
        parser.add_argument(name, help=argparse.SUPPRESS)
    parser.add_argument("overrides", nargs="*", help="train/model overrides, as for charrnn train")
    args = parser.parse_args()
    if args.worker:
        worker(args)
        return
    prepared = subprocess.run(
        [sys.executable, "-m", "charrnn", "prepare", *args.overrides],
        check=True,
        capture_output=True,
        text=True,
    )
    tokens = json.loads(prepared.stdout)["tokens"]["dir"]
    args.out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for nproc, threads in ((1, args.procs), (args.procs, 1)):
            show(
                f"{nproc} process(es) x {threads} thread(s), {args.precision}",
                launch(nproc, threads, args, tokens, Path(tmp), args.out),
            )
    print(f"\nChrome traces: {args.out}/trace-*.json")


if __name__ == "__main__":
    main()
