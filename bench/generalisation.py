"""Generalisation benchmark (issue 13, item 4).

charrnn's defaults against two baselines on real texts.

One cell = one corpus x one wall-clock training budget. Three contenders train
for the same budget on the same train split (charrnn's own prepared tokens,
``charrnn prepare``: 90 % train, 5 % val) and are scored on the same
validation split by the same evaluator, :func:`windowed_val_loss`:

* ``charrnn``: the real ``charrnn train`` CLI with its defaults (only --tokens,
  --out-dir, track.mode=disabled, train.time_budget_s); its run directory's
  best checkpoint is scored (``resolve_checkpoint``).
* ``plain``: baseline (b) of issue 13, a plain fp32 nn.LSTM 2x256, embedding 64,
  batch 32 x 128-character random windows from a zero state, Adam 2e-3, clip 1.
* ``transformer``: a nanoGPT-style char transformer (4 layers, 4 heads, width
  128, block 64, batch 12, AdamW 1e-3, warm-up then cosine over the budget,
  tied head), ~0.8 M parameters like charrnn's default model.

The evaluator cuts the split into windows of 64 (the transformer's block) at a
stride of 32; the first window scores all its characters, later ones only their
last 32 (each with >= 32 characters of context), LSTMs from a zero state per
window. Every validation character is scored exactly once. For the two LSTMs
charrnn's own stateful ``evaluate_tokens`` score is reported too, for reference.
All contenders use every core; the baselines' clocks stop while they are scored.

Corpora (``--list``; cached in $CHARRNN_BENCH_CACHE or ~/.cache/charrnn-bench):
shakespeare, poems, code, and jargon -- the UNTUNED corpus, in a table of its own.

Examples:

    python -m bench.generalisation --list
    python -m bench.generalisation --corpus poems --budget 120
    python -m bench.generalisation --corpus jargon --budget 600 --contender transformer
    # a local text, no network:
    python -m bench.generalisation --corpus-file my.txt --budget 30
    # markdown from bench/generalisation.jsonl:
    python -m bench.generalisation --table

Each cell prints its line and appends one JSON record per contender to
bench/generalisation.jsonl (or --jsonl PATH); --table takes the newest record
per corpus x budget x contender.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import shlex
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from bench.baselines import TransformerTrainer, issue13_plain_trainer
from bench.common import REPO, charrnn_cmd, cpu_flags, cpu_model, quiet_env, run_measured
from bench.corpora import BUILDERS, Corpus, file_corpus, get_corpus
from charrnn.config import Config
from charrnn.data.tokens import TokenSet, load_split, open_token_set
from charrnn.distributed.machine import available_cores
from charrnn.errors import CharRNNError
from charrnn.evaluation.evaluate import evaluate_tokens
from charrnn.io.checkpoint import load_model, resolve_checkpoint

JSONL = REPO / "bench" / "generalisation.jsonl"
CONTENDERS = ("charrnn", "plain", "transformer")
MARGIN = 0.03  # nats/char baseline (b) must trail charrnn by (issue 13)
WINDOW, STRIDE = 64, 32  # the transformer's block, and half of it

# ---------------------------------------------------------------- the shared evaluator

# inputs [batch, time] int64 -> logits [batch, time, vocab]
ForwardFn = Callable[[torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class WindowScore:
    nats: float  # mean nats per scored character
    chars: int  # characters scored: len(split) - 1


def window_plan(n_tokens: int, window: int, stride: int) -> list[tuple[int, int]]:
    """(start, first scored offset) per window.

    The window at ``start`` predicts targets start+1 .. start+window.
    """
    if not 0 < stride <= window:
        raise ValueError(f"stride must be in 1..window, got window {window}, stride {stride}")
    n_targets = n_tokens - 1
    if n_targets < 1:
        return []
    if n_targets <= window:
        return [(0, 0)]
    plan, start = [(0, 0)], stride
    while start + window <= n_targets:
        plan.append((start, window - stride))
        start += stride
    scored_to = plan[-1][0] + window  # the last target scored so far
    # a window flush with the end scores the rest (fewer than stride, so more context)
    if scored_to < n_targets:
        last = n_targets - window
        plan.append((last, scored_to - last))
    return plan


@torch.no_grad()
def windowed_val_loss(
    forward_fn: ForwardFn,
    tokens: np.ndarray,
    *,
    window: int = WINDOW,
    stride: int = STRIDE,
    batch: int = 256,
) -> WindowScore:
    """Mean nats/char of ``forward_fn`` over every next-character target of ``tokens``, each once.

    The same context rule for every model (see the module docstring): a stateful
    score would favour the LSTMs with unbounded context a block-64 transformer cannot have.
    """
    data = torch.from_numpy(np.asarray(tokens).astype(np.int64))
    plan = window_plan(len(data), window, stride)
    width = min(window, len(data) - 1)
    total, count = torch.zeros((), dtype=torch.float64), 0
    for i in range(0, len(plan), batch):
        chunk = plan[i : i + batch]
        # [b, width + 1]
        rows = data[torch.tensor([s for s, _ in chunk])[:, None] + torch.arange(width + 1)]
        logits = forward_fn(rows[:, :-1]).float()
        loss = F.cross_entropy(logits.flatten(0, 1), rows[:, 1:].flatten(), reduction="none").view(
            len(chunk), width
        )
        keep = torch.arange(width)[None, :] >= torch.tensor([f for _, f in chunk])[:, None]
        total += loss[keep].double().sum()
        count += int(keep.sum())
    return WindowScore(total.item() / count if count else math.nan, count)


def lstm_forward(model: torch.nn.Module) -> ForwardFn:
    """An LSTM (charrnn's CharLSTM or the plain one) from a zero state over each window."""
    return lambda x: model(x)[0]


# ---------------------------------------------------------------- contenders


@dataclass
class Outcome:
    steps: int
    train_seconds: float
    chars_per_s: float
    train_loss_end: float | None  # mean of the last training losses, where known
    params: int
    val: WindowScore
    val_stateful: float | None = None  # charrnn.evaluate.evaluate_tokens (LSTMs only)
    scored: str = "the final model"  # which weights were scored
    # charrnn's dropout record (model.dropout=auto decides it during the run)
    dropout: dict | None = None


def prepare(corpus: Corpus) -> TokenSet:
    """charrnn's own split of the corpus (``charrnn prepare``), shared by all three contenders."""
    done, _, _ = run_measured(
        charrnn_cmd("prepare", f"data.corpus={corpus.path}"), env=quiet_env(), cwd=REPO
    )
    return open_token_set(json.loads(done.stdout)["tokens"]["dir"])


def stateful(model: torch.nn.Module, val: np.ndarray) -> float:
    return evaluate_tokens(model, val, num_streams=Config().train.eval_batch_size).loss_nats


def run_charrnn(
    tokens: TokenSet, budget: float, *, overrides: tuple[str, ...] = (), **_
) -> Outcome:
    with tempfile.TemporaryDirectory(prefix="charrnn-bench-gen-") as tmp:
        run_dir = Path(tmp) / "run"
        cmd = charrnn_cmd(
            "train",
            "--tokens",
            tokens.dir,
            "--out-dir",
            str(run_dir),
            "track.mode=disabled",
            f"train.time_budget_s={budget:g}",
            *overrides,
        )
        done, _, _ = run_measured(cmd, env=quiet_env(), cwd=REPO)
        summary = json.loads(done.stdout)
        checkpoint = resolve_checkpoint(run_dir)
        model, _, payload = load_model(checkpoint)
        train_loss = last_train_loss(run_dir / "metrics.jsonl")
    val = load_split(tokens, "val")
    return Outcome(
        summary["step"],
        summary["train_seconds"],
        summary["chars_per_s"],
        train_loss,
        model.num_parameters(),
        windowed_val_loss(lstm_forward(model), val),
        stateful(model, val),
        f"{checkpoint.name} (step {payload['step']})",
        payload.get("dropout"),
    )


def last_train_loss(metrics: Path) -> float | None:
    """The last ``train/loss_nats`` charrnn logged (a mean over its last log interval)."""
    if not metrics.is_file():
        return None
    losses = [
        r["train/loss_nats"]
        for r in map(json.loads, metrics.read_text().splitlines())
        if "train/loss_nats" in r
    ]
    return losses[-1] if losses else None


def train_for(trainer, budget: float, *, timed_lr: bool = False) -> tuple[int, float, float]:
    """Steps of ``trainer`` until ``budget`` seconds have passed.

    Returns (steps, seconds, mean of the last 50 losses).
    """
    losses, start = [], time.perf_counter()
    while (elapsed := time.perf_counter() - start) < budget:
        losses.append(trainer.step(elapsed / budget) if timed_lr else trainer.step())
    return (
        len(losses),
        time.perf_counter() - start,
        float(np.mean(losses[-50:])) if losses else math.nan,
    )


def run_plain(tokens: TokenSet, budget: float, *, seed: int) -> Outcome:
    torch.manual_seed(seed)
    trainer = issue13_plain_trainer(load_split(tokens, "train"), tokens.vocab_size)
    steps, seconds, loss = train_for(trainer, budget)
    model, val = trainer.model.eval(), load_split(tokens, "val")
    params = sum(p.numel() for p in model.parameters())
    return Outcome(
        steps,
        seconds,
        steps * trainer.chars_per_step / seconds,
        loss,
        params,
        windowed_val_loss(lstm_forward(model), val),
        stateful(model, val),
    )


def run_transformer(tokens: TokenSet, budget: float, *, seed: int) -> Outcome:
    torch.manual_seed(seed)
    trainer = TransformerTrainer(load_split(tokens, "train"), tokens.vocab_size, block=WINDOW)
    steps, seconds, loss = train_for(trainer, budget, timed_lr=True)
    model = trainer.model.eval()
    params = sum(p.numel() for p in model.parameters())  # the tied head counted once
    return Outcome(
        steps,
        seconds,
        steps * trainer.chars_per_step / seconds,
        loss,
        params,
        windowed_val_loss(model, load_split(tokens, "val")),
    )


RUNNERS = {"charrnn": run_charrnn, "plain": run_plain, "transformer": run_transformer}
MODELS = {
    "charrnn": "charrnn train defaults (CharLSTM 2x256, embedding 64; precision auto)",
    "plain": (
        "baseline (b): fp32 nn.LSTM 2x256, embedding 64, batch 32 x 128 random windows, "
        "zero state, Adam 2e-3, clip 1"
    ),
    "transformer": (
        f"nanoGPT-style: 4 layers, 4 heads, width 128, block {WINDOW}, tied head, no biases, "
        "batch 12, AdamW 1e-3 warm-up + cosine over the budget"
    ),
}

# ---------------------------------------------------------------- records and the table


def machine() -> dict:
    flags = cpu_flags()
    return {
        "cpu": cpu_model(),
        "cores": available_cores(),
        "bf16_flags": sorted(f for f in flags if "bf16" in f or f.startswith("amx")),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }


def record(
    corpus: Corpus, tokens: TokenSet, budget: float, contender: str, out: Outcome, command: str
) -> dict:
    return {
        "corpus": corpus.name,
        "tuned": corpus.tuned,
        "sha256": corpus.sha256,
        "chars": corpus.num_chars,
        "source": corpus.source,
        "tokens": {
            "key": tokens.key,
            "corpus_sha256": tokens.corpus_sha256,
            "vocab": tokens.vocab_size,
        },
        "split_chars": tokens.num_tokens,
        "budget_s": budget,
        "contender": contender,
        "model": MODELS[contender],
        "scored": out.scored,
        "steps": out.steps,
        "train_seconds": round(out.train_seconds, 2),
        "chars_per_s": round(out.chars_per_s),
        "params": out.params,
        "val_nats": out.val.nats,
        "val_chars": out.val.chars,
        "window": WINDOW,
        "stride": STRIDE,
        "val_nats_stateful": out.val_stateful,
        "train_loss_end": out.train_loss_end,
        **({"dropout": out.dropout} if out.dropout else {}),
        "machine": machine(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "command": command,
    }


def read_records(path: Path) -> list[dict]:
    if not path.is_file():
        return []
    return [
        json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()
    ]


def _fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.4f}"


def table_rows(records: list[dict]) -> dict[tuple[str, float], dict[str, dict]]:
    """(corpus, budget) -> contender -> its newest record."""
    rows: dict[tuple[str, float], dict[str, dict]] = {}
    for r in records:  # file order is time order: later records replace earlier ones
        if r.get("overrides"):  # a tuning run, not the defaults
            continue
        rows.setdefault((r["corpus"], r["budget_s"]), {})[r["contender"]] = r
    return rows


def table_line(corpus: str, budget: float, cell: dict[str, dict]) -> str:
    """One row of the table.

    The two LSTMs compared as LSTMs are used (stateful, whole split); all three
    on the windowed evaluator.
    """
    ours_s, base_s = (
        cell[c]["val_nats_stateful"] if c in cell else None for c in ("charrnn", "plain")
    )
    ours, base, tf = (cell[c]["val_nats"] if c in cell else None for c in CONTENDERS)
    margin = None if ours_s is None or base_s is None else base_s - ours_s
    met = (
        "-"
        if margin is None or tf is None
        else ("**yes**" if margin >= MARGIN and ours < tf else "**no**")
    )
    where = sorted(
        {
            f"{r['machine']['cpu']} ({r['machine']['cores']} cores, "
            f"{'/'.join(r['machine']['bf16_flags']) or 'no bf16'}), {r['date'][:10]}"
            for r in cell.values()
        }
    )
    margin_text = "-" if margin is None else f"{margin:+.4f}"
    return (
        f"| {corpus} | {budget:g} s | {_fmt(ours_s)} | {_fmt(base_s)} | {margin_text} "
        f"| {_fmt(ours)} | {_fmt(base)} | {_fmt(tf)} | {met} | {'; '.join(where)} |"
    )


def _row_order(corpus: str, budget: float) -> tuple:
    """Named corpora in their listed order, then local files by name; budgets ascending."""
    order = list(BUILDERS)
    return (order.index(corpus) if corpus in order else len(order), corpus, budget)


def table(records: list[dict]) -> str:
    """Markdown: the tuned corpora, the untuned one, then local files, rows corpus x budget."""
    header = [
        (
            "| corpus | budget | charrnn stateful | plain (b) stateful | margin (b - charrnn) "
            "| charrnn windowed | plain (b) windowed | transformer windowed | met | machine, date |"
        ),
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    groups = {"Tuned corpora": [], "Untuned corpus (jargon)": [], "Local files (--corpus-file)": []}
    for (corpus, budget), cell in sorted(
        table_rows(records).items(), key=lambda kv: _row_order(*kv[0])
    ):
        name = corpus if corpus in BUILDERS else None
        group = (
            "Local files (--corpus-file)"
            if name is None
            else ("Tuned corpora" if BUILDERS[name][1] else "Untuned corpus (jargon)")
        )
        groups[group].append(table_line(corpus, budget, cell))
    parts = [
        "Validation nats/char, every character scored once. *stateful*: charrnn's own evaluator "
        "(`evaluate_tokens`, state carried through the split), used for the two LSTMs; "
        f"*windowed*: all three in windows of {WINDOW} (the transformer's block) "
        f"at stride {STRIDE}, LSTMs from a zero state per window. "
        f"met: margin (stateful) >= {MARGIN} and charrnn < transformer (windowed)."
    ]
    for title, lines in groups.items():
        if lines:
            parts += ["", f"#### {title}", "", *header, *lines]
    return "\n".join(parts) + "\n"


# ---------------------------------------------------------------- one cell, and the command line


def run_cell(
    corpus: Corpus,
    budget: float,
    contenders: list[str],
    jsonl: Path,
    command: str,
    seed: int,
    overrides: tuple[str, ...] = (),
) -> list[dict]:
    """Train and score each contender.

    ``overrides`` (key=value) change charrnn's defaults, for tuning: such records
    stay out of the table.
    """
    # every contender gets all cores (charrnn's CLI sets its own)
    torch.set_num_threads(available_cores())
    tokens = prepare(corpus)
    records = []
    for name in contenders:
        print(
            f"[generalisation] {corpus.name}, {budget:g} s: training {name}",
            file=sys.stderr,
            flush=True,
        )
        outcome = (
            run_charrnn(tokens, budget, overrides=overrides)
            if name == "charrnn"
            else RUNNERS[name](tokens, budget, seed=seed)
        )
        rec = record(corpus, tokens, budget, name, outcome, command)
        rec["overrides"] = list(overrides) if name == "charrnn" else []
        jsonl.parent.mkdir(parents=True, exist_ok=True)
        # one record at a time: a later crash keeps the earlier ones
        with open(jsonl, "a", encoding="utf-8") as fh:
            fh.write(json.dumps(rec) + "\n")
        records.append(rec)
    return records


def cell_line(records: list[dict]) -> str:
    parts = [
        f"{records[0]['corpus']} ({records[0]['chars']:,} chars), {records[0]['budget_s']:g} s:"
    ]
    for r in records:
        ref = (
            f" (stateful {r['val_nats_stateful']:.4f})"
            if r["val_nats_stateful"] is not None
            else ""
        )
        label = r["contender"] + (f"[{' '.join(r['overrides'])}]" if r.get("overrides") else "")
        parts.append(
            f"{label} {r['val_nats']:.4f}{ref} [{r['steps']} steps, "
            f"{r['chars_per_s']:,} chars/s, {r['params']:,} params]"
        )
    by = {r["contender"]: r["val_nats"] for r in records}
    if {"charrnn", "plain"} <= by.keys():
        parts.append(f"margin (b - charrnn) {by['plain'] - by['charrnn']:+.4f}")
    return " | ".join(parts)


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="python -m bench.generalisation",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument("--corpus", choices=list(BUILDERS), help="a named corpus (see --list)")
    what.add_argument(
        "--corpus-file",
        type=Path,
        metavar="PATH",
        help="a local UTF-8 text file instead (no network)",
    )
    what.add_argument(
        "--table", action="store_true", help="print the markdown tables from the records"
    )
    what.add_argument("--list", action="store_true", help="list the named corpora")
    p.add_argument(
        "--budget",
        type=float,
        default=120.0,
        help="training seconds per contender: 120 or 600 (default 120)",
    )
    p.add_argument(
        "--contender",
        choices=CONTENDERS,
        action="append",
        help="run only this one (repeatable); default all three",
    )
    p.add_argument(
        "--jsonl",
        type=Path,
        default=JSONL,
        help=f"records file (default {JSONL.relative_to(REPO)})",
    )
    p.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help=(
            "change one of charrnn's defaults (repeatable), for tuning; "
            "such records are kept out of --table"
        ),
    )
    p.add_argument(
        "--seed",
        type=int,
        default=Config().train.seed,
        help="torch seed for the baselines (default charrnn's)",
    )
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.list:
        for name, (_, tuned, about) in BUILDERS.items():
            print(f"{name:12} {'tuned  ' if tuned else 'UNTUNED'} {about}")
        return 0
    if args.table:
        print(table(read_records(args.jsonl)), end="")
        return 0
    command = "python -m bench.generalisation " + shlex.join(sys.argv[1:] if argv is None else argv)
    try:
        corpus = file_corpus(args.corpus_file) if args.corpus_file else get_corpus(args.corpus)
        records = run_cell(
            corpus,
            args.budget,
            args.contender or list(CONTENDERS),
            args.jsonl,
            command,
            args.seed,
            tuple(args.overrides),
        )
    except CharRNNError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    print(cell_line(records))
    return 0


if __name__ == "__main__":
    sys.exit(main())
