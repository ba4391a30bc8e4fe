"""Headroom over the defaults: hand-picked settings against the defaults, for one budget.

A sweep can only beat the defaults by what the space holds. This trains the
defaults and each candidate (a set of config overrides) for the same
``--budget-s`` seconds in the layout a sweep's trial gets (``charrnn launch``,
W&B off), alternating, for ``--rounds`` rounds, and scores every model on the
same full val split. The defaults run in every round, so the spread of their
scores is the noise a gain has to clear.

    python -m bench.headroom --corpus shakespeare --budget-s 60 --rounds 2 \\
        --candidate "model.num_layers=1 model.hidden_size=256 train.lr=0.01"
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

from bench.common import Report
from bench.sweep import prepared_tokens, score, steps, train_for
from charrnn.data.tokens import load_split, open_token_set

DEFAULTS = "defaults"
# Near the defaults (2x256, lr 0.007): one layer, smaller or larger, a larger step.
CANDIDATES = (
    "model.num_layers=1 model.hidden_size=256 train.lr=0.01",
    "model.num_layers=1 model.hidden_size=320 train.lr=0.015",
    "model.hidden_size=192 train.lr=0.01",
    "train.lr=0.012",
)


def run(corpus: str, budget_s: float, rounds: int, candidates: tuple[str, ...]) -> Report:
    tokens_dir = prepared_tokens(corpus)
    val = load_split(open_token_set(tokens_dir), "val")
    settings = ("", *candidates)
    results: dict[str, list[tuple[float, int]]] = {s: [] for s in settings}
    with tempfile.TemporaryDirectory(prefix="charrnn-headroom-") as tmp:
        for r in range(rounds):
            for i, overrides in enumerate(settings):
                out_dir = Path(tmp) / f"r{r}-s{i}"
                run_dir = train_for(tokens_dir, budget_s, out_dir, overrides.split())
                results[overrides].append((score(run_dir, val), steps(run_dir)))
    return Report(
        f"Headroom over the defaults: {corpus}, {budget_s:g} s",
        f"python -m bench.headroom --corpus {corpus} --budget-s {budget_s:g} --rounds {rounds}",
        table(results, rounds),
    )


def table(results: dict[str, list[tuple[float, int]]], rounds: int) -> str:
    """One line per setting: each round's nats/char and steps, the mean, the gain over defaults."""
    base = statistics.mean(nats for nats, _ in results[""])
    lines = [f"{'setting':58s} " + " ".join(f"{f'round {r + 1}':17s}" for r in range(rounds))]
    for overrides, runs in results.items():
        mean = statistics.mean(nats for nats, _ in runs)
        cells = " ".join(f"{nats:.4f} ({n:5d} st)" for nats, n in runs)
        gain = "" if not overrides else f"  gain {base - mean:+.4f}"
        lines.append(f"{overrides or DEFAULTS:58s} {cells}  mean {mean:.4f}{gain}")
    own = [nats for nats, _ in results[""]]
    spread = max(own) - min(own)
    lines.append(f"the defaults' own spread over {rounds} rounds: {spread:.4f} nats/char")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--corpus", default="shakespeare")
    parser.add_argument("--budget-s", type=float, default=60.0)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--candidate",
        action="append",
        help="config overrides, space-separated (repeatable); default: a few near the defaults",
    )
    args = parser.parse_args()
    candidates = tuple(args.candidate) if args.candidate else CANDIDATES
    print(run(args.corpus, args.budget_s, args.rounds, candidates).text())


if __name__ == "__main__":
    main()
