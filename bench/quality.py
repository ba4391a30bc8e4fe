"""Quality per second on ``shakespeare``.

120 s of ``charrnn train`` with its defaults against baseline (b).

* charrnn: the real ``charrnn train`` (defaults, W&B off) with a checkpoint every
  ``--every`` steps; each checkpoint is then scored on the full validation split,
  which gives the curve without evaluation eating into the training budget. The
  headline figure is the run's own end-of-training full-validation score.
* baseline (b): a plain fp32 ``nn.LSTM`` of the same size on random windows
  (batch 64 x 64 characters from a zero state, Adam lr 2e-3: a typical
  char-rnn set-up), trained in this process for the same training time; its
  clock stops while it is scored on the same full validation split.

Both scores come from ``charrnn.evaluate.evaluate_tokens``, so they are the same
metric. Writes the curve as a PNG next to RESULTS.md.

    python -m bench.quality [--budget-s 120] [--png bench/quality_curve.png]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from bench.baselines import PlainTrainer
from bench.common import REPO, Report, Target, charrnn_cmd, quiet_env, run_measured
from charrnn.config import Config
from charrnn.data.tokens import load_split, open_token_set
from charrnn.evaluation.evaluate import evaluate_tokens
from charrnn.io.checkpoint import list_checkpoints, load_model

TARGET_2, TARGET_7 = 1.60, 1.55


def charrnn_curve(
    tokens_dir: str, budget_s: float, every: int, out_dir: Path, eval_streams: int
) -> tuple[dict, list[tuple[float, float]]]:
    cmd = charrnn_cmd(
        "train",
        "--out-dir",
        str(out_dir),
        "--tokens",
        tokens_dir,
        "track.mode=disabled",
        f"time_budget_s={budget_s:g}",
        f"checkpoint_interval={every}",
        "keep_last=1000",
        f"eval_batch_size={eval_streams}",
    )
    done, _, _ = run_measured(cmd, env=quiet_env(), cwd=REPO)
    result = json.loads(done.stdout)
    val = load_split(open_token_set(tokens_dir), "val")
    curve = []
    for path in list_checkpoints(out_dir):
        model, _, payload = load_model(path)
        seconds = payload["train_seconds"]
        if payload["step"] == result["step"]:
            score = result["val"]["loss_nats"]  # training's own end-of-run score
        else:
            score = evaluate_tokens(model, val, num_streams=eval_streams).loss_nats
        curve.append((seconds, score))
    return result, sorted(curve)


def plain_curve(
    tokens_dir: str, budget_s: float, points: int, eval_streams: int, cfg: Config
) -> tuple[int, list[tuple[float, float]]]:
    tokens = open_token_set(tokens_dir)
    torch.manual_seed(cfg.train.seed)
    m = cfg.model
    trainer = PlainTrainer(
        load_split(tokens, "train"),
        tokens.vocab_size,
        emb=m.embedding_dim,
        hidden=m.hidden_size,
        layers=m.num_layers,
        batch_size=64,
        seq_len=64,
        lr=2e-3,
    )
    val = load_split(tokens, "val")
    curve, trained, steps = [], 0.0, 0
    for k in range(1, points + 1):
        start = time.perf_counter()
        while trained + time.perf_counter() - start < budget_s * k / points:
            trainer.step()
            steps += 1
        trained += time.perf_counter() - start
        # scored with the training clock stopped
        curve.append(
            (trained, evaluate_tokens(trainer.model, val, num_streams=eval_streams).loss_nats)
        )
    return steps, curve


def plot(curves: dict[str, list[tuple[float, float]]], path: Path, budget_s: float) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    for name, curve in curves.items():
        ax.plot([t for t, _ in curve], [v for _, v in curve], marker="o", markersize=3, label=name)
    for y, label in ((TARGET_2, "issue 2 target"), (TARGET_7, "issue 7 target")):
        ax.axhline(y, color="grey", linestyle=":", linewidth=1)
        ax.text(budget_s, y, f" {label} {y}", va="bottom", ha="right", fontsize=8, color="grey")
    ax.set_xlabel("training wall time (s)")
    ax.set_ylabel("full validation loss (nats/char)")
    ax.set_title("shakespeare, 2x256 LSTM, 2-core CPU")
    lows = [v for c in curves.values() for _, v in c]
    ax.set_ylim(min(lows + [TARGET_7]) - 0.05, min(max(lows), 3.2) + 0.05)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)


def run(
    *,
    budget_s: float = 120.0,
    every: int = 150,
    points: int = 10,
    eval_streams: int | None = None,
    png: Path = REPO / "bench" / "quality_curve.png",
    log: Callable[[str], None] = print,
) -> Report:
    """Run the quality benchmark.

    ``eval_streams``: parallel streams for scoring (default: charrnn's
    ``eval_batch_size``; more is faster, for smoke runs).
    """
    cfg = Config()
    prepared, _, _ = run_measured(charrnn_cmd("prepare"), env=quiet_env(), cwd=REPO)
    tokens_dir = json.loads(prepared.stdout)["tokens"]["dir"]
    streams = eval_streams or cfg.train.eval_batch_size
    with tempfile.TemporaryDirectory(prefix="charrnn-bench-quality-") as tmp:
        log(f"quality: charrnn train, {budget_s:g} s")
        result, ours = charrnn_curve(tokens_dir, budget_s, every, Path(tmp) / "charrnn", streams)
    log(f"quality: baseline (b), {budget_s:g} s")
    plain_steps, theirs = plain_curve(tokens_dir, budget_s, points, streams, cfg)
    plot({"charrnn (defaults)": ours, "plain nn.LSTM (b)": theirs}, png, budget_s)

    final, base = result["val"]["loss_nats"], theirs[-1][1]
    lines = [
        f"charrnn train (defaults): {result['step']} steps, {result['chars_per_s']:,.0f} chars/s, "
        f"full val {final:.4f} nats/char ({result['val']['bpc']:.4f} bits/char)",
        f"plain nn.LSTM (b):        {plain_steps} steps of 64x64, full val {base:.4f} nats/char",
        f"difference: {base - final:+.4f} nats/char in charrnn's favour",
        "",
        "curve (training seconds -> full val nats/char):",
        "  charrnn:  " + ", ".join(f"{t:.0f}s {v:.3f}" for t, v in ours),
        "  plain (b): " + ", ".join(f"{t:.0f}s {v:.3f}" for t, v in theirs),
    ]
    targets = [
        Target(
            f"charrnn defaults, {budget_s:g} s, full val (issue 2)",
            f"{final:.4f}",
            f"<= {TARGET_2}",
            final <= TARGET_2,
        ),
        Target(
            f"charrnn defaults, {budget_s:g} s, full val (issue 7)",
            f"{final:.4f}",
            f"<= {TARGET_7}",
            final <= TARGET_7,
        ),
        Target("baseline (b), same training time", f"{base:.4f}", "-", None),
    ]
    cmd = "python -m bench.quality" + (f" --budget-s {budget_s:g}" if budget_s != 120 else "")
    return Report(
        f"Quality per second: {budget_s:g} s on shakespeare",
        cmd,
        "\n".join(lines),
        targets,
        notes=f"![val loss against training time]({png.name})",
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--budget-s", type=float, default=120.0)
    parser.add_argument(
        "--every",
        type=int,
        default=150,
        help="charrnn checkpoint (curve point) every this many steps",
    )
    parser.add_argument("--png", type=Path, default=REPO / "bench" / "quality_curve.png")
    args = parser.parse_args()
    report = run(budget_s=args.budget_s, every=args.every, png=args.png)
    print(report.text())


if __name__ == "__main__":
    main()
