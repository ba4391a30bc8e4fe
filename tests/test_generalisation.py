"""The generalisation benchmark: its shared evaluator, its corpora, one cell.

Its shared evaluator is exact, its corpora are cached once, a cell runs end to
end. No timings or figures are checked; no network or apt is used
(``--corpus-file``).
"""

from __future__ import annotations

import json
import math
import random
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from helpers import run_env

from bench import corpora
from bench.generalisation import window_plan, windowed_val_loss
from charrnn.errors import CorpusError

REPO = Path(__file__).resolve().parent.parent


@pytest.mark.parametrize("n", [2, 3, 40, 64, 65, 66, 96, 97, 128, 129, 1000, 1001])
@pytest.mark.parametrize(("window", "stride"), [(64, 32), (16, 16), (16, 5), (8, 1)])
def test_window_plan_scores_every_target_once_with_enough_context(n, window, stride):
    scored = []
    for i, (start, first) in enumerate(window_plan(n, window, stride)):
        span = min(window, n - 1)
        assert start >= 0 and start + span <= n - 1
        if i > 0:
            # each later score sees at least window - stride characters
            assert first >= window - stride
        scored += range(start + first + 1, start + span + 1)  # target indices
    assert scored == list(range(1, n))


def test_uniform_logits_score_ln_vocab_on_every_character():
    vocab, tokens = 37, np.random.default_rng(0).integers(0, 37, 5003).astype(np.uint8)
    score = windowed_val_loss(
        lambda x: torch.zeros(*x.shape, vocab), tokens, window=64, stride=32, batch=7
    )
    assert score.chars == len(tokens) - 1
    assert score.nats == pytest.approx(math.log(vocab), rel=1e-6)  # fp32 logits


def test_a_context_free_model_scores_the_exact_mean():
    # A bigram model's loss at each position ignores the context, so the windowed score
    # must equal the plain mean over the whole split: any target counted twice or missed shows.
    vocab, rng = 11, torch.Generator().manual_seed(1)
    table = torch.randn(vocab, vocab, generator=rng, dtype=torch.float64)
    tokens = np.random.default_rng(2).integers(0, vocab, 3001)
    exact = F.cross_entropy(
        table[torch.from_numpy(tokens[:-1])], torch.from_numpy(tokens[1:])
    ).item()
    score = windowed_val_loss(lambda x: table[x], tokens, window=64, stride=32, batch=5)
    # fp32 per character (the evaluator casts logits to float32): a target counted twice or
    # missed would move the mean by ~3e-4 relative, far outside this tolerance.
    assert score.chars == 3000 and score.nats == pytest.approx(exact, rel=1e-6)


def test_a_corpus_is_built_once_and_checked_against_its_sha256(tmp_path, monkeypatch):
    monkeypatch.setenv("CHARRNN_BENCH_CACHE", str(tmp_path))
    calls = []
    monkeypatch.setitem(
        corpora.BUILDERS,
        "toy",
        (lambda: calls.append(1) or ("some real text\n", "a test"), True, "toy"),
    )
    first = corpora.get_corpus("toy")
    assert corpora.get_corpus("toy") == first and calls == [1]  # the second call reads the cache
    assert Path(first.path).read_text() == "some real text\n" and first.num_chars == 15
    Path(first.path).write_text("tampered\n")
    with pytest.raises(CorpusError, match="delete"):
        corpora.get_corpus("toy")


def test_a_missing_apt_gives_a_clear_error(monkeypatch):
    monkeypatch.setattr(corpora.shutil, "which", lambda tool: None)
    with pytest.raises(CorpusError, match="apt-get is not installed") as err:
        corpora._debian_file("fortunes", "usr/share/games/fortunes/songs-poems")
    assert "--corpus-file" in str(err.value)
    with pytest.raises(CorpusError, match="unknown corpus"):
        corpora.get_corpus("nope")


def _tiny_text(chars: int) -> str:
    # charrnn's defaults (64 streams x 32 windows x 16 chars) need >= 32,768 training characters.
    rng = random.Random(0)
    words = [
        "the",
        "of",
        "and",
        "to",
        "a",
        "in",
        "that",
        "is",
        "was",
        "he",
        "for",
        "it",
        "with",
        "as",
        "his",
        "on",
        "be",
        "at",
        "by",
        "had",
        "not",
        "are",
        "but",
        "from",
    ]
    lines = []
    while sum(map(len, lines)) < chars:
        lines.append(
            " ".join(rng.choice(words) for _ in range(rng.randint(3, 12))).capitalize() + ".\n"
        )
    return "".join(lines)[:chars]


def _gen(*args: str, tmp_path: Path) -> subprocess.CompletedProcess:
    env = run_env(
        OMP_NUM_THREADS="2",
        CHARRNN_CACHE=str(tmp_path / "cache"),
        CHARRNN_BENCH_CACHE=str(tmp_path / "bench-cache"),
    )
    done = subprocess.run(
        [sys.executable, "-m", "bench.generalisation", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.mark.slow
def test_a_cell_runs_end_to_end_and_tabulates(tmp_path):
    text = tmp_path / "tiny.txt"
    text.write_text(_tiny_text(40_000), encoding="utf-8")
    jsonl = tmp_path / "gen.jsonl"
    done = _gen(
        "--corpus-file", str(text), "--budget", "3", "--jsonl", str(jsonl), tmp_path=tmp_path
    )
    assert "file:tiny.txt" in done.stdout and "margin (b - charrnn)" in done.stdout
    records = [json.loads(line) for line in jsonl.read_text().splitlines()]
    assert [r["contender"] for r in records] == ["charrnn", "plain", "transformer"]
    for r in records:
        assert r["corpus"] == "file:tiny.txt" and r["chars"] == 40_000 and r["budget_s"] == 3
        assert (
            r["steps"] >= 1
            and r["val_chars"] == r["split_chars"]["val"] - 1
            and math.isfinite(r["val_nats"])
        )
        assert r["machine"]["cpu"] and r["machine"]["torch"] and "--corpus-file" in r["command"]
    assert records[0]["val_nats_stateful"] is not None and records[2]["val_nats_stateful"] is None

    table = _gen("--table", "--jsonl", str(jsonl), tmp_path=tmp_path).stdout
    assert "#### Local files (--corpus-file)" in table
    row = next(line for line in table.splitlines() if line.startswith("| file:tiny.txt"))
    assert row.count("|") == 11 and " 3 s " in row and ("**yes**" in row or "**no**" in row)
