"""A sweep against the defaults: the best model it finds for a corpus and a per-trial budget.

Side by side in one run, on one corpus:

* defaults: ``charrnn launch`` (the process layout every trial gets) with the
  default settings for ``--budget-s`` seconds of training;
* the sweep: ``python -m flows sweep --trials N --budget-s B`` (real Prefect,
  a SQLite study, W&B offline), whose best trial challenges production;
* with ``--equal-total``, the defaults again for the sum of the trials' budgets:
  what the same machine time buys without a sweep.

Every kept model is scored on the same full val split by
``charrnn.evaluation.evaluate.evaluate_tokens``, so the figures are one metric.

    python -m bench.sweep [--corpus shakespeare] [--trials 6] [--budget-s 60] [--equal-total]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from bench.common import REPO, Report, Target, charrnn_cmd, quiet_env, run_measured
from charrnn.config import EVAL_STREAMS
from charrnn.data.tokens import load_split, open_token_set
from charrnn.distributed.launch import child_env
from charrnn.evaluation.evaluate import LN2, evaluate_tokens
from charrnn.io.checkpoint import load_model
from charrnn.sweep.summary import best_row, trial_rows

# The bar: the promoted model beats the defaults by this much, nats/char.
MARGIN_NATS = 0.03


def steps(run_dir: Path) -> int:
    """The steps a run took, from its summary."""
    return json.loads((run_dir / "train_summary.json").read_text(encoding="utf-8"))["step"]


def score(checkpoint: str | Path, val) -> float:
    """Full val nats/char of a checkpoint (file or run directory)."""
    model, _, _ = load_model(checkpoint)
    return evaluate_tokens(model, val, num_streams=EVAL_STREAMS).loss_nats


def prepared_tokens(corpus: str) -> str:
    """The corpus tokenised as a trial reads it (``charrnn prepare``); its directory."""
    prepared, _, _ = run_measured(
        charrnn_cmd("prepare", f"data.corpus={corpus}"), env=quiet_env(), cwd=REPO
    )
    return json.loads(prepared.stdout)["tokens"]["dir"]


def train_for(
    tokens_dir: str, budget_s: float, out_dir: Path, overrides: Sequence[str] = ()
) -> Path:
    """The defaults, changed by ``overrides``, for ``budget_s`` s in the layout a trial gets."""
    cmd = charrnn_cmd(
        *("launch", "--nproc-per-node", "auto", "--"),
        *("--out-dir", str(out_dir), "--tokens", tokens_dir),
        f"time_budget_s={budget_s:g}",
        "track.mode=disabled",
        *overrides,
    )
    run_measured(cmd, env=quiet_env(), cwd=REPO)
    return out_dir


def run_sweep(corpus: str, trials: int, budget_s: float, root: Path) -> tuple[str, float]:
    """The sweep as a user runs it; (its printout, wall seconds)."""
    cmd = [
        *(sys.executable, "-m", "flows", "--state-dir", str(root / "prefect"), "sweep"),
        *("--corpus", corpus, "--trials", str(trials), "--budget-s", f"{budget_s:g}"),
        *("--study", "bench", "--runs-dir", str(root / "runs"), "--wandb-mode", "offline"),
    ]
    start = time.perf_counter()
    done, _, _ = run_measured(cmd, env=child_env(WANDB_MODE="offline"), cwd=REPO)
    return done.stdout, time.perf_counter() - start


def read_study(root: Path):
    import optuna

    url = f"sqlite:///{root / 'runs' / 'sweeps' / 'studies.db'}"
    return optuna.load_study(study_name="bench", storage=url)


def trial_lines(study, val) -> tuple[list[str], dict[int, float], float]:
    """One line per trial, each kept model's full val score, and the trials' total seconds."""
    lines, scores, total = [], {}, 0.0
    for t in study.trials:
        seconds = (t.datetime_complete - t.datetime_start).total_seconds()
        total += seconds
        settings = " ".join(f"{k.split('.')[1]}={_short(v)}" for k, v in t.params.items())
        nats = scores[t.number] = score(t.user_attrs["checkpoint"], val)
        stopped = t.user_attrs.get("stopped") or "ran to the end"
        lines.append(
            f"  trial {t.number}: {t.state.name:8s} {nats:.4f} nats/char, "
            f"{t.user_attrs.get('steps')} steps, {seconds:.0f} s, {stopped}; {settings}"
        )
    return lines, scores, total


def _short(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def run(
    *,
    corpus: str = "shakespeare",
    trials: int = 6,
    budget_s: float = 60.0,
    equal_total: bool = False,
    keep: Path | None = None,
) -> Report:
    """The benchmark; ``keep``: a directory that keeps the runs and the study (else a temp one)."""
    tokens_dir = prepared_tokens(corpus)
    val = load_split(open_token_set(tokens_dir), "val")
    with contextlib.ExitStack() as stack:
        if keep is None:
            root = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="charrnn-sweep-")))
        else:
            root = keep.resolve()
            root.mkdir(parents=True, exist_ok=True)
        # -- the defaults for one trial's budget, outside the pipeline (W&B off)
        alone_dir = train_for(tokens_dir, budget_s, root / "defaults")
        alone = (score(alone_dir, val), steps(alone_dir))
        # -- the sweep; its first trial is the defaults again, inside the pipeline
        printout, wall = run_sweep(corpus, trials, budget_s, root)
        study = read_study(root)
        lines, scores, total = trial_lines(study, val)
        longer = None
        if equal_total:
            seconds = budget_s * len(study.trials)
            longer_dir = train_for(tokens_dir, seconds, root / "longer")
            longer = (score(longer_dir, val), steps(longer_dir))
    figures = Figures(
        study, scores, alone, longer, wall, total, "promoted to production" in printout
    )
    cmd = f"python -m bench.sweep --corpus {corpus} --trials {trials} --budget-s {budget_s:g}"
    return Report(
        f"Sweep against the defaults: {corpus}",
        cmd + (" --equal-total" if equal_total else ""),
        "\n".join([f"corpus {corpus}, {trials} trials of {budget_s:g} s, concurrency 1"])
        + "\n"
        + figures.text(budget_s)
        + "\n\n"
        + "\n".join(lines),
        figures.targets(),
    )


@dataclass
class Figures:
    """The sweep's outcome against the defaults, each model scored on the same full val split."""

    study: object
    scores: dict[int, float]  # trial number -> full val nats/char
    alone: tuple[float, int]  # the defaults outside the pipeline: nats/char, steps
    longer: tuple[float, int] | None  # the defaults for the trials' total budget
    wall: float
    total: float  # the trials' own seconds, added up
    promoted: bool

    def __post_init__(self):
        self.best = best_row(trial_rows(self.study)).number
        base = [t.number for t in self.study.trials if t.user_attrs.get("base")]
        self.base = self.scores[base[0]] if base else None
        self.pruned = sum(t.state.name == "PRUNED" for t in self.study.trials)

    def text(self, budget_s: float) -> str:
        best = self.scores[self.best]
        lines = [
            f"best trial ({self.best}):                 {best:.4f} nats/char "
            f"({best / LN2:.4f} bits/char), {'promoted' if self.promoted else 'not promoted'}",
            f"defaults, trial 0 (same pipeline):  {_nats(self.base)}, "
            f"gain {_gain(self.base, best)}",
            f"defaults, charrnn launch, W&B off:  {_nats(self.alone[0])}, "
            f"{self.alone[1]} steps, gain {_gain(self.alone[0], best)}",
        ]
        if self.longer is not None:
            lines.append(
                f"defaults for the trials' {budget_s * len(self.scores):g} s: "
                f"{_nats(self.longer[0])}, {self.longer[1]} steps, "
                f"gain {_gain(self.longer[0], best)}"
            )
        lines += [
            f"pruned trials: {self.pruned}",
            f"sweep wall {self.wall:.0f} s; trials {self.total:.0f} s in all "
            f"({self.wall / self.total:.2f}x)",
        ]
        return "\n".join(lines)

    def targets(self) -> list[Target]:
        best = self.scores[self.best]
        same = None if self.base is None else self.base - best
        return [
            Target(
                "gain over the defaults, same pipeline",
                _gain(self.base, best),
                f">= {MARGIN_NATS}",
                None if same is None else same >= MARGIN_NATS,
            ),
            Target("gain over the defaults, W&B off", _gain(self.alone[0], best), "-", None),
            Target("pruned trials", str(self.pruned), ">= 1", self.pruned >= 1),
            Target("best trial promoted", str(self.promoted), "True", self.promoted),
            Target("sweep wall / trials' time", f"{self.wall / self.total:.2f}", "-", None),
        ]


def _nats(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f} nats/char"


def _gain(than: float | None, best: float) -> str:
    return "n/a" if than is None else f"{than - best:+.4f} nats/char"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--corpus", default="shakespeare")
    parser.add_argument("--trials", type=int, default=6)
    parser.add_argument("--budget-s", type=float, default=60.0)
    parser.add_argument(
        "--equal-total",
        action="store_true",
        help="also train the defaults for the sum of the trials' budgets",
    )
    parser.add_argument("--keep", type=Path, help="keep the runs and the study in this directory")
    args = parser.parse_args()
    report = run(
        corpus=args.corpus,
        trials=args.trials,
        budget_s=args.budget_s,
        equal_total=args.equal_total,
        keep=args.keep,
    )
    print(report.text())


if __name__ == "__main__":
    main()
