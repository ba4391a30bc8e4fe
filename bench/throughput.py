"""Training throughput: charrnn's training step against the two baselines, in one process.

Contenders run in alternating rounds of ``--round-s`` seconds each, so machine
drift hits all of them equally; each figure is the median chars/s over rounds.

* ``charrnn``: the default training step (``charrnn.train.Trainer.step``: carried
  streams, fused AdamW, fp32 loss, no per-step host sync) at the default precision;
* ``charrnn bf16`` / ``charrnn compiled``: the same step under bf16 autocast and
  under ``torch.compile``, to show whether either helps on this machine;
* ``plain`` (baseline b): a plain fp32 ``nn.LSTM`` loop of the same size and batch shape;
* ``seed cell`` (baseline a): the seed lecture's ``nn.LSTMCell`` loop.

    python bench/throughput.py [--rounds 5] [--round-s 2] [key=value model/train overrides]
"""

from __future__ import annotations

import argparse
import copy
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make `bench` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np
import torch

from bench.baselines import PlainTrainer, SeedCellTrainer
from bench.common import PEAK_SHAPES, Report, Target, machine_summary, measured_peak_flops
from charrnn.config import Config, load_config
from charrnn.data.prepare import prepare
from charrnn.data.tokens import TokenSet
from charrnn.distributed.group import DistEnv
from charrnn.errors import ConfigError
from charrnn.io.storage import RunDir
from charrnn.tracking import NullTracker
from charrnn.train.trainer import Trainer, train_step

VOCAB = 74  # the shakespeare corpus


class CharrnnStepper:
    """``charrnn train``'s own step (``Trainer.step``).

    Carried streams, fused AdamW, fp32 loss, no per-step host sync.
    """

    def __init__(
        self,
        cfg: Config,
        tokens: TokenSet,
        work: Path,
        *,
        precision: str,
        compile_model: bool = False,
    ):
        cfg = copy.deepcopy(cfg)
        cfg.train.precision, cfg.train.compile, cfg.train.device = precision, compile_model, "cpu"
        # a step horizon: the lr does not depend on the clock
        cfg.train.time_budget_s, cfg.train.max_steps = 0, 10**9
        torch.manual_seed(0)
        self.trainer = Trainer(
            cfg,
            tokens,
            DistEnv(),
            torch.device("cpu"),
            NullTracker(),
            RunDir(str(work / f"{precision}-{compile_model}")),
        )
        self.trainer.wrap_model()
        self.model, self.amp = self.trainer.state.model, self.trainer.amp_dtype
        self.chars_per_step = self.trainer.batcher.chars_per_step

    def step(self) -> None:
        self.trainer.step()


class BareStep(CharrnnStepper):
    """The loop body before the ``Trainer`` existed: what its bookkeeping costs.

    Batch, state reset, ``train_step``.
    """

    def step(self) -> None:
        trainer, s = self.trainer, self.trainer.state
        batch = trainer.batcher.batch(s.step)
        if batch.window == 0:
            s.hidden = s.model.initial_state(trainer.batcher.local_batch_size)
        _, _, s.hidden = train_step(
            trainer.train_model,
            s.optimizer,
            batch.inputs,
            batch.targets,
            s.hidden,
            amp_dtype=self.amp,
            grad_clip=trainer.t.grad_clip,
        )
        s.step += 1


def random_corpus(work: Path, cfg: Config, size: int = 4_000_000) -> tuple[np.ndarray, TokenSet]:
    """``size`` uniformly random characters from a ``VOCAB``-letter alphabet.

    Tokenised as ``charrnn prepare`` does.
    """
    codes = np.random.default_rng(0).integers(0, VOCAB, size=size, dtype=np.uint8)
    # printable ASCII from "0"
    alphabet = np.frombuffer(bytes(range(48, 48 + VOCAB)), dtype=np.uint8)
    (work / "corpus.txt").write_bytes(alphabet[codes].tobytes())
    cfg = copy.deepcopy(cfg)
    cfg.data.corpus, cfg.data.cache_dir = str(work / "corpus.txt"), str(work / "cache")
    return codes, prepare(cfg)[1]


def roofline(flops: float, precision: str, peaks: dict[str, tuple[float, str]]) -> str:
    """``123.4 GFLOP/s = 56% of the bf16 peak``.

    Never more than 100%: past it, the probe missed the peak.
    """
    peak = peaks[precision][0]
    share = (
        f"{flops / peak:4.0%} of the {precision} peak"
        if flops <= peak
        else (
            f"above the {precision} probe ({peak / 1e9:.0f}): the probe missed this machine's peak"
        )
    )
    return f"{flops / 1e9:5.1f} GFLOP/s = {share}"


def measure(contenders: dict[str, object], rounds: int, round_s: float) -> dict[str, float]:
    """Median chars/s per contender.

    Over ``rounds`` alternating rounds of about ``round_s`` seconds.
    """
    rates: dict[str, list[float]] = {name: [] for name in contenders}
    for runner in contenders.values():
        for _ in range(3):  # warm-up: allocator, oneDNN primitive caches, compilation
            runner.step()
    for _ in range(rounds):
        for name, runner in contenders.items():
            steps, start = 0, time.perf_counter()
            while (elapsed := time.perf_counter() - start) < round_s or steps == 0:
                runner.step()
                steps += 1
            rates[name].append(steps * runner.chars_per_step / elapsed)
    return {name: statistics.median(values) for name, values in rates.items()}


def run(
    *,
    rounds: int = 5,
    round_s: float = 2.0,
    overrides: list[str] | None = None,
    log: Callable[[str], None] = print,
) -> Report:
    cfg = load_config(None, overrides or [])
    m, t = cfg.model, cfg.train
    work = Path(tempfile.mkdtemp(prefix="charrnn-throughput-"))
    data, tokens = random_corpus(work, cfg)
    default = CharrnnStepper(cfg, tokens, work, precision=t.precision)
    contenders: dict[str, object] = {"charrnn": default}
    other = "fp32" if default.amp else "bf16"
    try:
        contenders[f"charrnn {other}"] = CharrnnStepper(cfg, tokens, work, precision=other)
    except ConfigError as exc:  # no bf16 kernels on this CPU
        log(f"throughput: charrnn {other} skipped: {exc}")
    contenders["bare train_step"] = BareStep(cfg, tokens, work, precision=t.precision)
    contenders["charrnn compiled"] = CharrnnStepper(
        cfg, tokens, work, precision=t.precision, compile_model=True
    )
    contenders["plain (b)"] = PlainTrainer(
        data,
        VOCAB,
        emb=m.embedding_dim,
        hidden=m.hidden_size,
        layers=m.num_layers,
        batch_size=t.batch_size,
        seq_len=t.seq_len,
        lr=t.lr,
    )
    contenders["seed cell (a)"] = SeedCellTrainer(torch.from_numpy(data.astype(np.int64)), VOCAB)
    log(f"throughput: {len(contenders)} contenders x {rounds} rounds x {round_s:g} s")
    rates = measure(contenders, rounds, round_s)
    shutil.rmtree(work, ignore_errors=True)
    default_precision = "bf16" if default.amp else "fp32"
    measured = {"fp32", default_precision} | ({other} if f"charrnn {other}" in rates else set())
    peaks = {
        p: measured_peak_flops(torch.bfloat16 if p == "bf16" else torch.float32)
        for p in sorted(measured, reverse=True)
    }
    flops_per_char = 3 * default.model.flops_per_char()  # forward + backward ~ 3x forward
    precision_of = {
        "charrnn": default_precision,
        "bare train_step": default_precision,
        "charrnn compiled": default_precision,
        f"charrnn {other}": other,
        "plain (b)": "fp32",
    }

    lines = [
        f"machine: {machine_summary()}",
        f"model: {m.num_layers}x{m.hidden_size} (emb {m.embedding_dim}), "
        f"batch {t.batch_size} x seq {t.seq_len}; "
        f"charrnn default precision: {default_precision}",
        *(
            f"measured {p} matmul peak: {peak / 1e9:.1f} GFLOP/s "
            f"({probe}, best of torch.mm and oneDNN over {len(PEAK_SHAPES)} shapes)"
            for p, (peak, probe) in peaks.items()
        ),
    ]
    base = rates["plain (b)"]
    for name, rate in rates.items():
        flops = (
            ""
            if name == "seed cell (a)"
            else "; " + roofline(flops_per_char * rate, precision_of[name], peaks)
        )
        lines.append(
            f"{name:>17}: {rate:10,.0f} chars/s  x{rate / base:5.2f} vs (b)  "
            f"x{rate / rates['seed cell (a)']:6.1f} vs (a){flops}"
        )
    ratio = rates["charrnn"] / base
    targets = [
        Target(
            "charrnn vs plain nn.LSTM (b), chars/s (issue 2)",
            f"{ratio:.2f}x",
            ">= 1.0x",
            ratio >= 1.0,
        ),
        Target(
            "charrnn vs plain nn.LSTM (b), chars/s (issue 7)",
            f"{ratio:.2f}x",
            ">= 2.0x",
            ratio >= 2.0,
        ),
        Target(
            "charrnn vs seed LSTMCell loop (a)",
            f"{rates['charrnn'] / rates['seed cell (a)']:.1f}x",
            "-",
            None,
        ),
        Target(
            "Trainer.step vs the bare train_step it wraps",
            f"{rates['charrnn'] / rates['bare train_step']:.2f}x",
            "report (~1.0x)",
            None,
        ),
        Target(
            "torch.compile vs eager",
            f"{rates['charrnn compiled'] / rates['charrnn']:.2f}x",
            "report",
            None,
        ),
    ]
    if f"charrnn {other}" in rates:
        targets.append(
            Target(
                f"{other} vs default precision",
                f"{rates[f'charrnn {other}'] / rates['charrnn']:.2f}x",
                "report",
                None,
            )
        )
    else:
        lines.append(
            f"charrnn {other}: not run, this CPU has no native bf16 LSTM kernels "
            "(AVX512-BF16 or AMX)"
        )
    cmd = "python bench/throughput.py" + (
        f" --rounds {rounds} --round-s {round_s:g}" if (rounds, round_s) != (5, 2.0) else ""
    )
    return Report("Training throughput", cmd, "\n".join(lines), targets)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument(
        "--round-s", type=float, default=2.0, help="seconds per round and contender"
    )
    parser.add_argument("overrides", nargs="*", help="config overrides (model.*, train.*)")
    args = parser.parse_args()
    report = run(rounds=args.rounds, round_s=args.round_s, overrides=args.overrides)
    print(report.text())


if __name__ == "__main__":
    main()
