"""Tokenisation speed and memory.

``charrnn prepare`` on a 100 MB corpus, and training memory against corpus size.

* The corpus is the default ``shakespeare`` text repeated to ``--mb`` MB (a local
  file, so the fetch is a copy into the cache and a checksum).
* ``charrnn prepare`` runs as a real subprocess; the tokenise stage's own time
  (``meta.json: seconds``: HF ``datasets`` read, vocabulary, encode, fsync) gives
  MB/s; its peak resident memory is measured too (``bench.common.run_measured``).
* Baseline: the per-character Python a user writes first
  (``np.array([stoi[c] for c in text])``), timed in this process on a slice.
* Training memory: the peak memory of the same short ``charrnn train`` on the
  default corpus and on the big one (same val split size). The process's own
  (anonymous) memory must stay flat: the token files are memory-mapped. Its
  resident size also counts the page-cache pages it maps, which the kernel
  maps in large read-ahead chunks; those are shared and reclaimable.

    python -m bench.tokenise [--mb 100]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from bench.common import REPO, Peak, Report, Target, charrnn_cmd, quiet_env, run_measured
from charrnn.data.corpus import fetch_corpus

MB = 1_000_000


def naive_tokenise_mb_per_s(text: str) -> float:
    start = time.perf_counter()
    stoi = {ch: i for i, ch in enumerate(sorted(set(text)))}
    np.array([stoi[ch] for ch in text], dtype=np.uint8)
    return len(text.encode("utf-8")) / MB / (time.perf_counter() - start)


def train_peak(tokens_dir: str, out_dir: Path, steps: int, eval_streams: int) -> Peak:
    cmd = charrnn_cmd(
        "train",
        "--out-dir",
        str(out_dir),
        "--tokens",
        tokens_dir,
        "track.mode=disabled",
        f"max_steps={steps}",
        "time_budget_s=0",
        "eval_interval=0",
        "checkpoint_interval=100000",
        f"eval_batch_size={eval_streams}",
    )
    return run_measured(cmd, env=quiet_env(), cwd=REPO)[2]


def run(
    *,
    mb: int = 100,
    train_steps: int = 30,
    attempts: int = 2,
    eval_streams: int = 32,
    log: Callable[[str], None] = print,
) -> Report:
    """``attempts``: runs of each measurement (the best counts).

    ``eval_streams``: the training runs' eval_batch_size.
    """
    seed_text = Path(fetch_corpus("shakespeare").path).read_bytes()
    with tempfile.TemporaryDirectory(prefix="charrnn-bench-tok-") as tmp:
        corpus = Path(tmp) / f"shakespeare-x{mb}MB.txt"
        with open(corpus, "wb") as fh:
            remaining = mb * MB
            while remaining > 0:
                piece = seed_text[:remaining]
                # never end inside a character
                cut = len(piece.decode("utf-8", errors="ignore").encode("utf-8"))
                fh.write(piece[:cut])
                remaining -= max(cut, 1)
        size = corpus.stat().st_size
        # flush the generated file now, so its write-back does not land in the timed tokenise stage
        os.sync()
        log(
            f"tokenise: charrnn prepare on {size / MB:.0f} MB, {attempts}x (fresh caches), "
            "the fastest counts"
        )
        # val/test fractions that give the big corpus about the default corpus's held-out size,
        # so the training-memory comparison below does the same evaluation work on both.
        held_out = round(0.05 * len(seed_text) / size, 6)
        splits = [f"data.val_fraction={held_out}", f"data.test_fraction={held_out}"]
        prepares = []
        for attempt in range(attempts):
            env = quiet_env(CHARRNN_CACHE=str(Path(tmp) / f"cache-{attempt}"))
            done, wall, peak = run_measured(
                charrnn_cmd("prepare", f"data.corpus={corpus}", *splits), env=env, cwd=REPO
            )
            info = json.loads(done.stdout)
            meta = json.loads((Path(info["tokens"]["dir"]) / "meta.json").read_text())
            prepares.append((meta["seconds"], wall, peak.rss, info, meta))
            os.sync()
        stage_s, wall, _, info, meta = min(prepares, key=lambda a: a[0])
        peak = max(a[2] for a in prepares)  # memory: the worst run
        naive = naive_tokenise_mb_per_s(seed_text.decode("utf-8"))

        log("tokenise: training memory on the default and the big corpus")
        small = json.loads(
            run_measured(charrnn_cmd("prepare"), env=quiet_env(), cwd=REPO)[0].stdout
        )["tokens"]["dir"]
        runs: dict[str, list[Peak]] = {"small": [], "big": []}
        # alternating, and the lowest counts: peaks vary by ~10 MiB run to run
        for attempt in range(attempts):
            runs["small"].append(
                train_peak(small, Path(tmp) / f"train-small-{attempt}", train_steps, eval_streams)
            )
            runs["big"].append(
                train_peak(
                    info["tokens"]["dir"],
                    Path(tmp) / f"train-big-{attempt}",
                    train_steps,
                    eval_streams,
                )
            )
        anon_small, anon_big = (min(p.anon for p in runs[k]) for k in ("small", "big"))
        rss_small, rss_big = (min(p.rss for p in runs[k]) for k in ("small", "big"))

    rate = size / MB / stage_s
    lines = [
        (
            f"corpus: {size / MB:.0f} MB (shakespeare repeated), "
            f"{sum(meta['num_tokens'].values()):,} tokens, "
            f"vocab {meta['vocab_size']}, {meta['dtype']}"
        ),
        (
            "charrnn prepare, tokenise stage (datasets import + read, vocab, encode, fsync; "
            f"fastest of {attempts}): {stage_s:.2f} s = {rate:.1f} MB/s "
            f"(all: {', '.join(f'{a[0]:.2f} s' for a in prepares)})"
        ),
        (
            "charrnn prepare, whole command (interpreter start, fetch + sha256, tokenise): "
            f"{wall:.2f} s = {size / MB / wall:.1f} MB/s"
        ),
        f"peak RSS of charrnn prepare (largest of {attempts}): {peak / 2**20:,.0f} MiB",
        (
            f"naive per-character Python (on the {len(seed_text) / MB:.1f} MB default corpus): "
            f"{naive:.1f} MB/s -> charrnn x{rate / naive:.1f}"
        ),
        (
            f"training peak memory ({train_steps} steps, same model, lowest of {attempts} runs), "
            f"default corpus -> {size / MB:.0f} MB corpus:"
        ),
        (
            f"  own (anonymous) memory: {anon_small / 2**20:,.0f} -> {anon_big / 2**20:,.0f} MiB "
            f"(x{anon_big / anon_small:.2f})"
        ),
        (
            "  resident incl. mapped page cache of the token files: "
            f"{rss_small / 2**20:,.0f} -> {rss_big / 2**20:,.0f} MiB (x{rss_big / rss_small:.2f})"
        ),
    ]
    targets = [
        Target(
            f"tokenise {size / MB:.0f} MB after the fetch",
            f"{rate:.1f} MB/s",
            ">= 50 MB/s",
            rate >= 50,
        ),
        Target(
            "peak memory of charrnn prepare", f"{peak / 2**30:.2f} GiB", "< 1.5 GB", peak < 1.5e9
        ),
        Target(
            f"training's own memory, {size / MB:.0f} MB vs default corpus",
            f"x{anon_big / anon_small:.2f}",
            "flat",
            anon_big / anon_small < 1.1,
        ),
    ]
    cmd = "python -m bench.tokenise" + (f" --mb {mb}" if mb != 100 else "")
    return Report(f"Tokenisation: {mb} MB corpus", cmd, "\n".join(lines), targets)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mb", type=int, default=100)
    parser.add_argument("--train-steps", type=int, default=30)
    args = parser.parse_args()
    print(run(mb=args.mb, train_steps=args.train_steps).text())


if __name__ == "__main__":
    main()
