"""A sweep's sampler on synthetic landscapes: what a few trials gain over the base settings.

A real sweep of six 60 s trials takes ~8 minutes, and its outcome moves with
the machine's speed by as much as the gains it looks for (bench/RESULTS.md,
"Sweeps against the defaults"). This measures the sampler alone, on two
landscapes over the default search space, many seeds each, in seconds:

* ``near``: fitted to what 60 s on 2 AVX2 cores rewards (``bench.headroom``):
  one layer, a few more units and twice the defaults' step beat the defaults
  by ~0.066 nats/char, two layers at best by ~0.04; three layers, long
  sequences and big batches lose.
* ``far``: a long budget's landscape, whose optimum is far from the base:
  the largest, deepest model at a smaller step, dropout 0.2.

Every study starts from the base settings, as a sweep's does, and each value
carries noise (sd 0.003 nats/char, the defaults' back-to-back spread). Printed
per landscape, trial count and sampler: the mean gain of the best trial over
the base, and in how many studies it cleared 0.03 nats/char.

    python -m bench.sampler [--trials 6 15] [--seeds 10]
"""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable

import numpy as np
import optuna

from bench.common import Report
from charrnn.config import load_config
from charrnn.sweep.sampler import TrustRegionGPSampler, sampler, startup_trials
from charrnn.sweep.space import load_space

NOISE = 0.003
BAR = 0.03
# A sweep's first trial: the default settings (the landscapes are fitted around them).
BASE = load_space(None).base_point(load_config(None, []))


def _unit(params: dict) -> tuple[float, float, float]:
    """lr, hidden size and weight decay on [0, 1] of the default space's ranges."""
    lr = math.log10(params["train.lr"] / 0.002)
    hidden = (params["model.hidden_size"] - 128) / 384
    decay = math.log10(params["train.weight_decay"] / 0.01) / math.log10(30)
    return lr, hidden, decay


def near(params: dict) -> float:
    """Short budget: the optimum near the base (1x320 units, lr ~0.015).

    Fitted by hand to ``bench.headroom`` at 60 s on shakespeare (AVX2): against
    the defaults it gives 1x256 at lr 0.01 +0.039 (measured: +0.037), 1x320
    at lr 0.015 +0.066 (+0.066), 2x192 at lr 0.01 +0.036 (+0.036) and lr
    0.012 alone +0.020 (+0.017). The best width shrinks with depth (a step costs
    layers x width^2); three layers, long sequences and big batches lose.
    """
    lr, hidden, decay = _unit(params)
    layers = params["model.num_layers"]
    width = {1: 0.5, 2: 0.167, 3: 0.0}[layers]  # 320, 192, 128 units
    value = 1.55 + 0.2 * (lr - 0.87) ** 2 + 0.76 * (hidden - width) ** 2 + 0.03 * (decay - 0.6) ** 2
    value += {1: 0.0, 2: 0.024, 3: 0.2}[layers]
    value += {16: 0.0, 32: 0.03, 64: 0.2}[params["train.seq_len"]]
    value += {32: 0.01, 64: 0.0, 128: 0.03}[params["train.batch_size"]]
    return (
        value + {"auto": 0.0, 0.0: 0.005, 0.1: 0.0, 0.2: 0.01, 0.3: 0.03}[params["model.dropout"]]
    )


def far(params: dict) -> float:
    """Long budget: the optimum far from the base (3x~500 units, lr ~0.004)."""
    lr, hidden, _ = _unit(params)
    value = 1.40 + 0.4 * (lr - 0.35) ** 2 + 0.5 * (hidden - 0.95) ** 2
    value += {1: 0.06, 2: 0.02, 3: 0.0}[params["model.num_layers"]]
    value += {16: 0.03, 32: 0.0, 64: 0.01}[params["train.seq_len"]]
    return value + {"auto": 0.0, 0.0: 0.03, 0.1: 0.02, 0.2: 0.0, 0.3: 0.01}[params["model.dropout"]]


LANDSCAPES: dict[str, Callable[[dict], float]] = {"near": near, "far": far}

Factory = Callable[[int, int], optuna.samplers.BaseSampler]  # (trials, seed) -> sampler


def _gp(region: float | None) -> Factory:
    return lambda trials, seed: TrustRegionGPSampler(
        n_startup_trials=startup_trials(trials), seed=seed, region=region
    )


SAMPLERS: dict[str, Factory] = {
    "random": lambda trials, seed: optuna.samplers.RandomSampler(seed=seed),
    "TPE (Optuna's default)": lambda trials, seed: optuna.samplers.TPESampler(seed=seed),
    "GP, no region": _gp(None),
    "GP, region 0.15": _gp(0.15),
    "the sweep's (region 0.25)": sampler,
    "GP, region 0.35": _gp(0.35),
}


def gain(landscape: Callable[[dict], float], chosen, trials: int, seed: int) -> float:
    """One study of ``trials`` trials, the base first: the best trial's gain over the base."""
    rng = np.random.default_rng(seed)
    study = optuna.create_study(sampler=chosen)
    study.enqueue_trial(BASE)
    space = load_space(None).distributions()
    for _ in range(trials):
        trial = study.ask(space)
        study.tell(trial, landscape(trial.params) + rng.normal(0.0, NOISE))
    values = [t.value for t in study.trials]
    return values[0] - min(values)


def run(trials: tuple[int, ...] = (6, 15), seeds: int = 10, samplers=SAMPLERS) -> Report:
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    lines = [f"{'landscape':9s} {'trials':>6s}  {'sampler':26s} {'mean gain':>9s}  >= {BAR}"]
    for name, landscape in LANDSCAPES.items():
        for n in trials:
            for label, factory in samplers.items():
                gains = [gain(landscape, factory(n, seed), n, seed) for seed in range(seeds)]
                cleared = sum(g >= BAR for g in gains)
                lines.append(
                    f"{name:9s} {n:6d}  {label:26s} {np.mean(gains):9.4f}  {cleared}/{seeds}"
                )
    command = f"python -m bench.sampler --trials {' '.join(map(str, trials))} --seeds {seeds}"
    return Report("A sweep's sampler on synthetic landscapes", command, "\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--trials", type=int, nargs="+", default=[6, 15])
    parser.add_argument("--seeds", type=int, default=10)
    args = parser.parse_args()
    print(run(tuple(args.trials), args.seeds).text())


if __name__ == "__main__":
    main()
