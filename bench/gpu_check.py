"""GPU checklist: each check prints PASS, FAIL or SKIP with its figures; any FAIL exits 1.

    # on a CUDA machine: about 5-8 minutes on one H200
    python -m bench.gpu_check
    # a dry run of the checklist itself (tiny models, loose bounds)
    python -m bench.gpu_check --device cpu --tiny

The checks, in order (bounds are in :class:`Spec`):

* ``pytest-gpu``   the tests marked ``gpu`` pass (CUDA only).
* ``lstm-dtype``   under bf16 autocast the LSTM runs in the dtype ``charrnn.precision``
  reports (bf16 with cuDNN >= 9.13 bf16 RNNs, else fp32), never fp16.
* ``resume``       train to N1 steps, then ``--resume`` to N2: train_summary.json says
  step N2, resumed from N1.
* ``fp32-vs-bf16`` a 3x1024 model for the same steps at fp32 and bf16: the throughput ratio
  and the validation gap are within bounds.
* ``large``        3x2048 with 1,024 streams x 128 characters trains without running out of
  memory at a steady rate (every log interval after the first within a band of the median).
* ``evaluate``     ``charrnn evaluate`` of the fp32 and bf16 runs agrees with the scores
  training wrote (same streams; the bf16 run's training score was bf16, evaluate's is fp32).
* ``sample``       ``charrnn sample`` on the device gives the asked-for length, the same
  text for the same seed.
* ``ddp``          with >= 2 GPUs, ``charrnn launch --nproc-per-node 2`` (NCCL) ends within a
  tolerance of one GPU at the same global batch; SKIP on one GPU.

Data: the embedded ``shakespeare`` corpus (offline); W&B off (``track.mode=disabled``).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


@dataclass(frozen=True)
class Spec:
    """Sizes and bounds of one mode of the checklist."""

    device: str
    resume_steps: tuple[int, int] = (40, 80)
    resume_model: tuple[str, ...] = (
        "num_layers=2",
        "hidden_size=256",
        "embedding_dim=64",
        "batch_size=64",
        "seq_len=64",
    )
    compare_model: tuple[str, ...] = (
        "num_layers=3",
        "hidden_size=1024",
        "embedding_dim=128",
        "batch_size=128",
        "seq_len=128",
    )
    compare_steps: int = 300
    compare_lr: float = 2e-3
    min_speedup_bf16_lstm: float = 1.2  # bf16/fp32 chars/s when the LSTM itself runs in bf16
    # when only the head is bf16 (no cuDNN bf16 RNNs): about even
    min_speedup_fp32_lstm: float = 0.9
    max_val_gap: float = 0.05  # |val bf16 - val fp32|, nats/char, after compare_steps
    large_model: tuple[str, ...] = (
        "num_layers=3",
        "hidden_size=2048",
        "embedding_dim=128",
        "batch_size=1024",
        "seq_len=128",
    )
    large_steps: int = 40
    large_log_interval: int = 5
    # every log interval after the first within +-15% of the median chars/s
    max_rate_spread: float = 0.15
    # nats/char: same kernels (TF32 cuDNN) in training's evaluation and `charrnn evaluate`
    eval_tol_fp32: float = 2e-3
    eval_tol_bf16: float = 0.02  # training scored in bf16, `charrnn evaluate` in fp32
    ddp_steps: int = 200
    ddp_tol: float = 0.02  # nats/char between 2 processes and 1 at the same global batch
    sample_length: int = 200
    timeout_s: float = 300.0  # per command
    tiny: bool = False

    @classmethod
    def tiny_cpu(cls, device: str = "cpu") -> Spec:
        """Seconds per check on a CPU: exercises every code path.

        The figures mean nothing, so the bounds are loose.
        """
        small = ("num_layers=2", "hidden_size=32", "embedding_dim=16", "batch_size=8", "seq_len=32")
        return cls(
            device=device,
            resume_steps=(4, 8),
            resume_model=small,
            compare_model=small,
            compare_steps=20,
            compare_lr=5e-3,
            min_speedup_bf16_lstm=0.0,
            min_speedup_fp32_lstm=0.0,
            max_val_gap=0.5,
            large_model=(
                "num_layers=2",
                "hidden_size=64",
                "embedding_dim=16",
                "batch_size=16",
                "seq_len=32",
            ),
            large_steps=12,
            large_log_interval=3,
            max_rate_spread=10.0,
            eval_tol_fp32=2e-3,
            eval_tol_bf16=0.05,
            ddp_steps=10,
            ddp_tol=0.05,
            sample_length=40,
            timeout_s=240.0,
            tiny=True,
        )


@dataclass
class Line:
    check: str
    status: str  # PASS | FAIL | SKIP
    detail: str

    def __str__(self) -> str:
        return f"{self.status:<4}  {self.check:<13} {self.detail}"


@dataclass
class Checklist:
    lines: list[Line] = field(default_factory=list)
    echo: Callable[[str], None] = print

    def add(self, check: str, ok: bool | None, detail: str) -> bool:
        """ok None: SKIP. Returns ok (False for a SKIP)."""
        line = Line(check, "SKIP" if ok is None else ("PASS" if ok else "FAIL"), detail)
        self.lines.append(line)
        self.echo(str(line))
        return bool(ok)

    @property
    def failed(self) -> bool:
        return any(line.status == "FAIL" for line in self.lines)

    def summary(self) -> str:
        counts = {
            status: sum(line.status == status for line in self.lines)
            for status in ("PASS", "FAIL", "SKIP")
        }
        return ", ".join(f"{n} {status}" for status, n in counts.items())


# --------------------------------------------------------------------------- running charrnn


class CommandFailed(RuntimeError):
    pass


def _env(cache: Path, device: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "WANDB_SERVICE"}
    env |= {
        "WANDB_MODE": "disabled",
        "CHARRNN_CACHE": str(cache),
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH", "")])),
    }
    if device == "cpu":
        env.setdefault("OMP_NUM_THREADS", "1")
    return env


def charrnn(
    args: list[str], *, env: dict[str, str], timeout_s: float, log_to: Path | None = None
) -> str:
    """Run ``python -m charrnn ARGS``; return stdout.

    On failure, raise CommandFailed with the output's tail.
    """
    cmd = [sys.executable, "-m", "charrnn", *args]
    try:
        done = subprocess.run(
            cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout_s
        )
    except subprocess.TimeoutExpired as exc:
        raise CommandFailed(
            f"timed out after {timeout_s:.0f} s: charrnn {' '.join(args[:3])} ..."
        ) from exc
    if log_to is not None:
        log_to.write_text(
            f"$ {' '.join(cmd)}\n--- stdout\n{done.stdout}\n--- stderr\n{done.stderr}",
            encoding="utf-8",
        )
    if done.returncode != 0:
        tail = "\n".join((done.stderr or done.stdout).strip().splitlines()[-6:])
        raise CommandFailed(f"exit {done.returncode}: {tail}")
    return done.stdout


def train_args(spec: Spec, tokens: str, out: Path, *extra: str) -> list[str]:
    return [
        "train",
        "--out-dir",
        str(out),
        "--tokens",
        tokens,
        f"device={spec.device}",
        "track.mode=disabled",
        "time_budget_s=0",
        "dropout=0",
        "warmup_steps=10",
        "eval_interval=0",
        "keep_last=2",
        *extra,
    ]


def summary(run: Path) -> dict:
    return json.loads((run / "train_summary.json").read_text())


def rates(run: Path) -> list[float]:
    """perf/chars_per_s of each log interval, in order."""
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [
        record["perf/chars_per_s"]
        for record in map(json.loads, lines)
        if "perf/chars_per_s" in record
    ]


def steady_rate(run: Path) -> float:
    """Median chars/s over the log intervals after the first (warm-up, cuDNN autotuning)."""
    values = rates(run)
    return statistics.median(values[1:] or values)


# --------------------------------------------------------------------------- checks


def check_pytest(spec: Spec, out: Checklist, env: dict[str, str]) -> None:
    if spec.device != "cuda":
        out.add("pytest-gpu", None, "tests marked gpu need CUDA: skipped in a CPU dry run")
        return
    try:
        done = subprocess.run(
            [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "tests"],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=spec.timeout_s,
        )
    except subprocess.TimeoutExpired:
        out.add("pytest-gpu", False, f"pytest -m gpu tests: timed out after {spec.timeout_s:.0f} s")
        return
    last = (done.stdout.strip().splitlines() or ["(no output)"])[-1]
    out.add("pytest-gpu", done.returncode == 0, f"pytest -m gpu tests: {last}")


def check_lstm_dtype(spec: Spec, out: Checklist) -> None:
    import torch

    from charrnn.model.lstm import CharLSTM, ModelShape
    from charrnn.model.precision import autocast_dtype, cudnn_bf16_rnn_supported, lstm_compute_dtype

    device = torch.device(spec.device)
    amp = autocast_dtype("auto", device)
    if amp is None:
        out.add("lstm-dtype", None, f"this {device.type} has no native bf16: nothing to check")
        return
    torch.manual_seed(0)
    model = CharLSTM(ModelShape(60, 32, 128, 2, 0.0)).to(device)
    tokens = torch.randint(0, 60, (4, 16), device=device)
    with torch.no_grad(), torch.autocast(device.type, dtype=amp):
        logits, (h, _) = model(tokens)
        raw, _ = model.lstm(model.embed(tokens))  # nn.LSTM straight under autocast, for the record
    expected = lstm_compute_dtype(device, amp)
    name = lambda dtype: str(dtype).removeprefix("torch.")  # noqa: E731
    extra = (
        (
            f"; cuDNN bf16 RNNs: {'yes' if cudnn_bf16_rnn_supported(device) else 'no'}, "
            f"cuDNN {torch.backends.cudnn.version()}"
        )
        if device.type == "cuda"
        else ""
    )
    out.add(
        "lstm-dtype",
        h.dtype == expected and h.dtype != torch.float16,
        f"LSTM under {name(amp)} autocast runs in {name(h.dtype)} (reported {name(expected)}); "
        f"head {name(logits.dtype)}; plain nn.LSTM under autocast: {name(raw.dtype)}{extra}",
    )


def check_resume(spec: Spec, out: Checklist, env: dict[str, str], tokens: str, work: Path) -> None:
    n1, n2 = spec.resume_steps
    run = work / "resume"
    common = [
        *spec.resume_model,
        "log_interval=10" if not spec.tiny else "log_interval=2",
        f"checkpoint_interval={n1}",
        "precision=auto",
    ]
    try:
        charrnn(
            train_args(spec, tokens, run, *common, f"max_steps={n1}"),
            env=env,
            timeout_s=spec.timeout_s,
            log_to=work / "resume-1.log",
        )
        first = summary(run)["step"]
        charrnn(
            [*train_args(spec, tokens, run, *common, f"max_steps={n2}"), "--resume"],
            env=env,
            timeout_s=spec.timeout_s,
            log_to=work / "resume-2.log",
        )
    except CommandFailed as exc:
        out.add("resume", False, f"train {n1} steps then --resume to {n2}: {exc}")
        return
    final = summary(run)
    out.add(
        "resume",
        first == n1 and final["step"] == n2 and final["resumed_from"] == n1,
        f"first run ended at step {first}; "
        f"--resume went from {final['resumed_from']} to {final['step']} (planned {n1} -> {n2})",
    )


def check_precisions(
    spec: Spec, out: Checklist, env: dict[str, str], tokens: str, work: Path
) -> dict[str, Path]:
    """fp32 vs bf16 on the 3x1024 model.

    Returns the runs that finished (for the evaluate and sample checks).
    """
    import torch

    from charrnn.model.precision import autocast_dtype, lstm_compute_dtype

    device = torch.device(spec.device)
    if autocast_dtype("auto", device) is None:
        precisions = ["fp32"]
        out.add("fp32-vs-bf16", None, f"this {device.type} has no native bf16: fp32 only")
    else:
        precisions = ["fp32", "bf16"]
    runs: dict[str, Path] = {}
    log_interval = max(1, spec.compare_steps // 12)
    for precision in precisions:
        run = work / f"compare-{precision}"
        args = [
            *spec.compare_model,
            f"lr={spec.compare_lr}",
            f"max_steps={spec.compare_steps}",
            f"log_interval={log_interval}",
            f"checkpoint_interval={spec.compare_steps}",
            f"precision={precision}",
        ]
        try:
            charrnn(
                train_args(spec, tokens, run, *args),
                env=env,
                timeout_s=spec.timeout_s,
                log_to=work / f"compare-{precision}.log",
            )
            runs[precision] = run
        except CommandFailed as exc:
            out.add("fp32-vs-bf16", False, f"{precision} run: {exc}")
    if len(runs) == 2:
        fp32, bf16 = summary(runs["fp32"]), summary(runs["bf16"])
        speedup = steady_rate(runs["bf16"]) / steady_rate(runs["fp32"])
        lstm_bf16 = lstm_compute_dtype(device, torch.bfloat16) == torch.bfloat16
        floor = spec.min_speedup_bf16_lstm if lstm_bf16 else spec.min_speedup_fp32_lstm
        gap = bf16["val"]["loss_nats"] - fp32["val"]["loss_nats"]
        out.add(
            "fp32-vs-bf16",
            speedup >= floor,
            f"bf16/fp32 throughput {speedup:.2f}x "
            f"({steady_rate(runs['bf16']):,.0f} vs {steady_rate(runs['fp32']):,.0f} chars/s; "
            f"need >= {floor}x with the LSTM in {'bf16' if lstm_bf16 else 'fp32'})",
        )
        out.add(
            "fp32-vs-bf16",
            abs(gap) <= spec.max_val_gap,
            f"val after {spec.compare_steps} steps: fp32 {fp32['val']['loss_nats']:.4f}, "
            f"bf16 {bf16['val']['loss_nats']:.4f} nats/char, "
            f"gap {gap:+.4f} (bound +-{spec.max_val_gap})",
        )
    return runs


def check_large(spec: Spec, out: Checklist, env: dict[str, str], tokens: str, work: Path) -> None:
    run = work / "large"
    args = [
        *spec.large_model,
        "lr=1e-3",
        f"max_steps={spec.large_steps}",
        f"log_interval={spec.large_log_interval}",
        f"checkpoint_interval={spec.large_steps}",
        "precision=auto",
        "eval_batch_size=256",
    ]
    start = time.perf_counter()
    try:
        charrnn(
            train_args(spec, tokens, run, *args),
            env=env,
            timeout_s=spec.timeout_s,
            log_to=work / "large.log",
        )
    except CommandFailed as exc:
        oom = "out of memory" in str(exc).lower()
        out.add(
            "large", False, f"{' '.join(spec.large_model)}: {'OUT OF MEMORY: ' if oom else ''}{exc}"
        )
        return
    values = rates(run)[1:]  # the first interval includes start-up and cuDNN autotuning
    median = statistics.median(values) if values else 0.0
    spread = max(abs(v / median - 1) for v in values) if values and median > 0 else float("inf")
    out.add(
        "large",
        summary(run)["step"] == spec.large_steps and spread <= spec.max_rate_spread,
        f"{' '.join(spec.large_model)}: {spec.large_steps} steps, no OOM, "
        f"{median:,.0f} chars/s median over {len(values)} intervals, "
        f"largest deviation {spread:.0%} (bound {spec.max_rate_spread:.0%}); "
        f"{time.perf_counter() - start:.0f} s with start-up and evaluation",
    )


def check_evaluate_and_sample(
    spec: Spec, out: Checklist, env: dict[str, str], runs: dict[str, Path], work: Path
) -> None:
    if not runs:
        out.add("evaluate", False, "no finished training run to evaluate")
        return
    for precision, run in runs.items():
        trained = summary(run)
        tol = spec.eval_tol_fp32 if precision == "fp32" else spec.eval_tol_bf16
        for split in ("val", "test"):
            try:
                got = json.loads(
                    charrnn(
                        [
                            "evaluate",
                            str(run),
                            "--split",
                            split,
                            "--streams",
                            "32",
                            "--device",
                            spec.device,
                            "--json",
                        ],
                        env=env,
                        timeout_s=spec.timeout_s,
                    )
                )
            except CommandFailed as exc:
                out.add("evaluate", False, f"{precision} run, {split}: {exc}")
                continue
            want = trained[split]["loss_nats"]
            out.add(
                "evaluate",
                got["step"] == trained["step"] and abs(got["loss_nats"] - want) <= tol,
                f"{precision} run, {split}: charrnn evaluate {got['loss_nats']:.5f} "
                f"vs training {want:.5f} nats/char at step {got['step']} (tolerance {tol})",
            )
    run = runs.get("bf16") or runs["fp32"]
    sample = [
        "sample",
        str(run),
        "--device",
        spec.device,
        "--length",
        str(spec.sample_length),
        "--num-samples",
        "4",
        "--seed",
        "7",
        "--json",
        "--prime",
        "ROMEO:\n",
    ]
    try:
        first = json.loads(charrnn(sample, env=env, timeout_s=spec.timeout_s))["samples"]
        second = json.loads(charrnn(sample, env=env, timeout_s=spec.timeout_s))["samples"]
    except CommandFailed as exc:
        out.add("sample", False, str(exc))
        return
    out.add(
        "sample",
        len(first) == 4 and all(len(s) == spec.sample_length for s in first) and first == second,
        f"4 samples x {spec.sample_length} chars on {spec.device}; "
        f"same seed, same text: {first == second}; e.g. {first[0][:40]!r}",
    )


def check_ddp(spec: Spec, out: Checklist, env: dict[str, str], tokens: str, work: Path) -> None:
    import torch

    if spec.device == "cuda" and torch.cuda.device_count() < 2:
        out.add(
            "ddp",
            None,
            f"{torch.cuda.device_count()} GPU visible: the 2-process NCCL check needs 2 (skipped)",
        )
        return
    common = [
        *spec.resume_model,
        f"max_steps={spec.ddp_steps}",
        f"checkpoint_interval={spec.ddp_steps}",
        "precision=fp32",
        f"log_interval={max(1, spec.ddp_steps // 10)}",
    ]
    one, two = work / "ddp-1", work / "ddp-2"
    try:
        charrnn(
            train_args(spec, tokens, one, *common),
            env=env,
            timeout_s=spec.timeout_s,
            log_to=work / "ddp-1.log",
        )
        charrnn(
            ["launch", "--nproc-per-node", "2", "--", *train_args(spec, tokens, two, *common)[1:]],
            env=env,
            timeout_s=spec.timeout_s,
            log_to=work / "ddp-2.log",
        )
    except CommandFailed as exc:
        out.add("ddp", False, f"1 vs 2 processes: {exc}")
        return
    a, b = summary(one), summary(two)
    backend = "NCCL" if spec.device == "cuda" else "gloo"
    gap = b["val"]["loss_nats"] - a["val"]["loss_nats"]
    out.add(
        "ddp",
        b["step"] == a["step"] == spec.ddp_steps and abs(gap) <= spec.ddp_tol,
        f"2 processes ({backend}) vs 1, fp32, {spec.ddp_steps} steps: "
        f"val {b['val']['loss_nats']:.4f} vs {a['val']['loss_nats']:.4f} nats/char, "
        f"gap {gap:+.4f} (bound +-{spec.ddp_tol}); "
        f"{steady_rate(two):,.0f} vs {steady_rate(one):,.0f} chars/s",
    )


def run(spec: Spec, work: Path, out: Checklist) -> Checklist:
    import torch

    cache = Path(os.environ.get("CHARRNN_CACHE", REPO / ".cache" / "charrnn"))
    env = _env(cache, spec.device)
    if spec.device == "cuda":
        if not torch.cuda.is_available():
            out.add(
                "device",
                False,
                "no CUDA device visible: run this on a GPU machine, "
                "or use --device cpu --tiny for a dry run",
            )
            return out
        props = torch.cuda.get_device_properties(0)
        out.echo(
            f"device: {props.name} ({props.total_memory / 2**30:.0f} GiB) "
            f"x {torch.cuda.device_count()} | torch {torch.__version__} "
            f"| CUDA {torch.version.cuda} | cuDNN {torch.backends.cudnn.version()}"
        )
    else:
        out.echo(
            f"device: cpu ({os.cpu_count()} cores) | torch {torch.__version__} "
            f"| dry run: {spec.tiny}"
        )
    out.echo(f"work directory (logs, runs): {work}")
    try:
        prepared = json.loads(
            charrnn(["prepare", "data.corpus=shakespeare"], env=env, timeout_s=spec.timeout_s)
        )
    except CommandFailed as exc:
        out.add("prepare", False, f"charrnn prepare data.corpus=shakespeare: {exc}")
        return out
    tokens = prepared["tokens"]["dir"]
    check_pytest(spec, out, env)
    check_lstm_dtype(spec, out)
    check_resume(spec, out, env, tokens, work)
    runs = check_precisions(spec, out, env, tokens, work)
    check_large(spec, out, env, tokens, work)
    check_evaluate_and_sample(spec, out, env, runs, work)
    check_ddp(spec, out, env, tokens, work)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.gpu_check", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--device", default="cuda", choices=("cuda", "cpu"))
    parser.add_argument(
        "--tiny",
        action="store_true",
        help="tiny models and loose bounds: checks the checklist itself, not the machine",
    )
    parser.add_argument(
        "--work-dir", help="where runs and logs go (default: a new temporary directory, kept)"
    )
    args = parser.parse_args(argv)
    spec = Spec.tiny_cpu(args.device) if args.tiny else Spec(device=args.device)
    work = (
        Path(args.work_dir)
        if args.work_dir
        else Path(tempfile.mkdtemp(prefix="charrnn-gpu-check-"))
    )
    work.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    out = run(spec, work, Checklist())
    print(f"{out.summary()} in {time.perf_counter() - start:.0f} s")
    return 1 if out.failed else 0


if __name__ == "__main__":
    sys.exit(main())
