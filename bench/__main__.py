"""Run the whole benchmark suite and record it in bench/RESULTS.md.

    python -m bench                 # the full suite, ~15 minutes on a 2-core CPU
    python -m bench --only generation tokenise
    # a smoke run with tiny settings (the figures mean nothing):
    python -m bench --quick --out /tmp/RESULTS.md

The suite's section of RESULTS.md (between the ``suite`` markers) is replaced;
everything else in the file is kept.
"""

from __future__ import annotations

import argparse
import datetime as dt
import sys
import time
from pathlib import Path

from bench import bf16_guard, generation, quality, throughput, tokenise
from bench.common import REPO, Report, machine_summary, verdict
from charrnn.fsutil import atomic_write_text

BEGIN, END = "<!-- suite:begin (written by python -m bench) -->", "<!-- suite:end -->"


def log(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def benchmarks(quick: bool, png: Path) -> dict:
    """name -> a zero-argument callable returning a Report.

    Quick settings only check the plumbing.
    """
    if quick:
        return {
            "throughput": lambda: throughput.run(rounds=1, round_s=0.2, log=log),
            # Many eval streams: scoring the 226k-character val split in few sequential windows.
            "quality": lambda: quality.run(
                budget_s=2, every=10, points=1, eval_streams=1024, png=png, log=log
            ),
            "tokenise": lambda: tokenise.run(
                mb=2, train_steps=2, attempts=1, eval_streams=1024, log=log
            ),
            "generation": lambda: generation.run(length=10, rounds=1, log=log),
            "bf16": lambda: bf16_guard.run(steps=3, log=log),
        }
    return {
        "throughput": lambda: throughput.run(log=log),
        "quality": lambda: quality.run(png=png, log=log),
        "tokenise": lambda: tokenise.run(log=log),
        "generation": lambda: generation.run(log=log),
        "bf16": lambda: bf16_guard.run(log=log),
    }


def render(reports: list[Report], command: str, seconds: float) -> str:
    lines = [
        BEGIN,
        f"## Benchmark suite ({dt.date.today().isoformat()})",
        "",
        f"Command: `{command}` ({seconds / 60:.1f} min). Machine: {machine_summary()}.",
        "Every ratio compares contenders measured side by side in this one run.",
        "",
        "| benchmark | target | figure | required | met |",
        "| --- | --- | --- | --- | --- |",
    ]
    lines += [
        f"| {r.title} | {t.what} | {t.figure} | {t.target} | {verdict(t.met)} |"
        for r in reports
        for t in r.targets
    ]
    lines.append("")
    lines += [r.markdown() for r in reports]
    lines.append(END)
    return "\n".join(lines) + "\n"


def write_results(path: Path, section: str) -> None:
    old = path.read_text(encoding="utf-8") if path.exists() else "# Benchmark results\n\n"
    if BEGIN in old and END in old:
        head, _, rest = old.partition(BEGIN)
        new = head + section.rstrip("\n") + rest.partition(END)[2]
    else:
        new = old.rstrip("\n") + "\n\n" + section
    atomic_write_text(path, new)


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--only",
        nargs="+",
        choices=["throughput", "quality", "tokenise", "generation", "bf16"],
        help="run only these",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="tiny settings: checks that every benchmark runs, figures are meaningless",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=REPO / "bench" / "RESULTS.md",
        help="results file to update (default: bench/RESULTS.md)",
    )
    args = parser.parse_args()
    chosen = benchmarks(args.quick, args.out.parent / "quality_curve.png")
    if args.only:
        chosen = {name: fn for name, fn in chosen.items() if name in args.only}
    start = time.perf_counter()
    reports = []
    for name, fn in chosen.items():
        log(f"== {name}")
        report = fn()
        print(report.markdown(), flush=True)
        reports.append(report)
    command = (
        "python -m bench"
        + (" --quick" if args.quick else "")
        + (f" --only {' '.join(args.only)}" if args.only else "")
    )
    write_results(args.out, render(reports, command, time.perf_counter() - start))
    log(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
