"""Accuracy guard: bf16 autocast training against fp32 at the same number of steps.

Both are real ``charrnn train`` runs with the default model and data, the same
seed and ``max_steps``; the figure is the difference of their full-validation
losses (target: within 0.02 nats/char). Runs only where the hardware has bf16
kernels (CUDA, or a CPU with AVX512-BF16/AMX); elsewhere it reports why not.

    python -m bench.bf16_guard [--steps 600]
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch

from bench.common import REPO, Report, Target, charrnn_cmd, quiet_env, run_measured
from charrnn.distributed.group import DistEnv, pick_device
from charrnn.errors import ConfigError
from charrnn.model.precision import autocast_dtype


def run(*, steps: int = 600, log: Callable[[str], None] = print) -> Report:
    cmd = "python -m bench.bf16_guard" + (f" --steps {steps}" if steps != 600 else "")
    device = pick_device("auto", DistEnv())
    try:
        autocast_dtype("bf16", device)
    except ConfigError as exc:
        reason = str(exc).splitlines()[0]
        return Report(
            "bf16 accuracy guard",
            cmd,
            f"not run on this machine: {reason}",
            [Target("bf16 vs fp32 val loss at equal steps", "not run", "<= 0.02 nats/char", None)],
        )
    scores = {}
    with tempfile.TemporaryDirectory(prefix="charrnn-bench-bf16-") as tmp:
        for precision in ("fp32", "bf16"):
            log(f"bf16 guard: {steps} steps at {precision} on {device}")
            train = charrnn_cmd(
                "train",
                "--out-dir",
                str(Path(tmp) / precision),
                "track.mode=disabled",
                f"max_steps={steps}",
                "time_budget_s=0",
                "eval_interval=0",
                "checkpoint_interval=100000",
                f"precision={precision}",
            )
            done, wall, _ = run_measured(train, env=quiet_env(), cwd=REPO)
            result = json.loads(done.stdout)
            scores[precision] = (result["val"]["loss_nats"], result["chars_per_s"], wall)
    gap = scores["bf16"][0] - scores["fp32"][0]
    lines = [
        f"device: {device} ({torch.cuda.get_device_name(0) if device.type == 'cuda' else 'CPU'}), "
        f"{steps} steps, default model and data"
    ]
    lines += [
        f"{p:>5}: full val {v:.4f} nats/char, {r:,.0f} chars/s" for p, (v, r, _) in scores.items()
    ]
    lines.append(
        f"bf16 - fp32: {gap:+.4f} nats/char; "
        f"bf16 speed x{scores['bf16'][1] / scores['fp32'][1]:.2f}"
    )
    return Report(
        "bf16 accuracy guard",
        cmd,
        "\n".join(lines),
        [
            Target(
                "bf16 vs fp32 val loss at equal steps",
                f"{gap:+.4f}",
                "<= 0.02 nats/char",
                abs(gap) <= 0.02,
            )
        ],
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--steps", type=int, default=600)
    print(run(steps=parser.parse_args().steps).text())


if __name__ == "__main__":
    main()
