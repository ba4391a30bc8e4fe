"""Training throughput of two git revisions side by side: `bench/throughput.py` of each, in turn.

Each revision runs from its own temporary worktree (``git worktree add --detach``),
in rounds A B A B ..., so machine drift hits both alike. Within each run the plain
``nn.LSTM`` loop (baseline b) is measured too: the ratio charrnn / plain cancels
what drift is left, and is the figure to compare.

    python -m bench.revisions BASE [HEAD] [--rounds 2] [--throughput-rounds 3]
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
LINE = re.compile(r"^\s*(charrnn|plain \(b\)):\s+([\d,]+) chars/s", re.M)


def throughput(worktree: Path, rounds: int) -> dict[str, float]:
    """chars/s of the default charrnn step and of the plain loop, from one run of the benchmark."""
    env = {**os.environ, "PYTHONPATH": str(worktree)}
    cmd = [sys.executable, "bench/throughput.py", "--rounds", str(rounds)]
    out = subprocess.run(
        cmd, cwd=worktree, env=env, capture_output=True, text=True, check=True, timeout=900
    ).stdout
    found = {name: float(value.replace(",", "")) for name, value in LINE.findall(out)}
    if set(found) != {"charrnn", "plain (b)"}:
        raise SystemExit(f"bench/throughput.py at {worktree} printed no chars/s lines:\n{out}")
    return found


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("base", help="the earlier revision (a commit, tag or branch)")
    parser.add_argument("head", nargs="?", default="HEAD", help="the later revision (HEAD)")
    parser.add_argument("--rounds", type=int, default=2, help="A B rounds")
    parser.add_argument("--throughput-rounds", type=int, default=3, help="rounds inside each run")
    args = parser.parse_args()
    revs = [args.base, args.head]
    with tempfile.TemporaryDirectory(prefix="charrnn-revisions-") as scratch:
        trees = {rev: Path(scratch) / f"r{i}" for i, rev in enumerate(revs)}
        for rev, tree in trees.items():
            git = ["git", "-C", str(REPO), "worktree", "add", "-q", "--detach", str(tree), rev]
            subprocess.run(git, check=True)
        try:
            runs: dict[str, list[dict[str, float]]] = {rev: [] for rev in revs}
            for i in range(args.rounds):
                for rev in revs:
                    runs[rev].append(throughput(trees[rev], args.throughput_rounds))
                    result = runs[rev][-1]
                    ratio = result["charrnn"] / result["plain (b)"]
                    chars = result["charrnn"]
                    line = (
                        f"round {i + 1} {rev}: charrnn {chars:,.0f} chars/s, x{ratio:.2f} vs plain"
                    )
                    print(line, flush=True)
        finally:
            for tree in trees.values():
                subprocess.run(["git", "-C", str(REPO), "worktree", "remove", "--force", str(tree)])
    report(runs, revs)
    return 0


def report(runs: dict[str, list[dict[str, float]]], revs: list[str]) -> None:
    def median(rev: str, key) -> float:
        return statistics.median(key(r) for r in runs[rev])

    base, head = revs
    for rev in revs:
        chars = median(rev, lambda r: r["charrnn"])
        vs_plain = median(rev, lambda r: r["charrnn"] / r["plain (b)"])
        print(f"{rev}: charrnn {chars:,.0f} chars/s (median), x{vs_plain:.2f} vs plain nn.LSTM")
    raw = median(head, lambda r: r["charrnn"]) / median(base, lambda r: r["charrnn"])
    normalised = median(head, lambda r: r["charrnn"] / r["plain (b)"]) / median(
        base, lambda r: r["charrnn"] / r["plain (b)"]
    )
    print(f"{head} vs {base}: x{raw:.2f} chars/s, x{normalised:.2f} relative to plain nn.LSTM")


if __name__ == "__main__":
    sys.exit(main())
