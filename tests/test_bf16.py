"""bf16 autocast paths, run wherever the CPU has native bf16 LSTM kernels (AVX512-BF16 or AMX).

The rest of the suite pins ``precision=fp32`` so its exactness checks hold on
every machine; these tests cover what ``precision=auto`` does on a bf16 CPU,
with tolerances measured on such a machine (2-core AMD EPYC, avx512_bf16).
On CUDA the same paths are checked by tests/test_gpu.py and bench/gpu_check.sh.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from helpers import requires_cpu_bf16, tiny_config

from charrnn.data.prepare import prepare
from charrnn.data.tokens import load_split
from charrnn.evaluation.evaluate import evaluate_tokens
from charrnn.io.checkpoint import load_model
from charrnn.model.precision import autocast_dtype
from charrnn.train.trainer import train

pytestmark = requires_cpu_bf16


def _losses(run_dir: Path) -> dict[int, float]:
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["train/loss_nats"] for r in records if "train/loss_nats" in r}


def test_auto_precision_picks_bf16_here():
    assert autocast_dtype("auto", torch.device("cpu")) == torch.bfloat16


def test_bf16_training_converges(small_corpus, tmp_path):
    cfg = tiny_config(
        small_corpus,
        tmp_path / "run",
        max_steps=80,
        precision="auto",
        eval_interval=0,
        checkpoint_interval=80,
        lr=1e-2,
    )
    tokens = prepare(cfg)[1]
    result = train(cfg, tokens)
    losses = _losses(Path(result.run_dir))
    assert result.step == 80
    # Uniform guessing over the vocabulary scores ln(V); 80 steps of bf16 training must beat
    # it clearly.
    assert losses[80] < math.log(tokens.vocab.size) - 0.8, losses
    assert result.val["loss_nats"] < math.log(tokens.vocab.size) - 0.8


def test_bf16_resume_continues_like_a_straight_run(small_corpus, tmp_path):
    common = dict(
        precision="auto", log_interval=1, eval_interval=0, checkpoint_interval=10, lr_decay_steps=20
    )
    straight = tiny_config(small_corpus, tmp_path / "straight", max_steps=20, **common)
    tokens = prepare(straight)[1]
    a = train(straight, tokens)
    staged = tiny_config(small_corpus, tmp_path / "staged", max_steps=10, **common)
    train(staged, tokens)
    staged.train.max_steps, staged.train.resume = 20, True
    b = train(staged, tokens)
    assert b.resumed_from == 10 and b.step == 20
    la, lb = _losses(Path(a.run_dir)), _losses(Path(b.run_dir))
    # oneDNN's bf16 LSTM is deterministic on one machine; 1e-4 leaves room for kernels that are not.
    for step in range(11, 21):
        assert lb[step] == pytest.approx(la[step], abs=1e-4), step


def test_bf16_evaluation_matches_fp32(small_corpus, tmp_path):
    cfg = tiny_config(
        small_corpus,
        tmp_path / "run",
        max_steps=60,
        precision="fp32",
        eval_interval=0,
        checkpoint_interval=60,
    )
    tokens = prepare(cfg)[1]
    train(cfg, tokens)
    model, _, _ = load_model(tmp_path / "run")
    val = load_split(tokens, "val")
    fp32 = evaluate_tokens(model, val, num_streams=16)
    bf16 = evaluate_tokens(model, val, num_streams=16, autocast_dtype=torch.bfloat16)
    # bf16 keeps 8 bits of mantissa: measured |gap| 3e-4 nats/char on this tiny model
    # (2-core EPYC, avx512_bf16); 0.02 is the same bound bench.bf16_guard holds training to.
    assert abs(bf16.loss_nats - fp32.loss_nats) < 0.02, (bf16, fp32)
    assert bf16.chars == fp32.chars
