"""GPU checks (skipped without CUDA; run by bench/gpu_check.sh on a GPU machine)."""

from __future__ import annotations

import pytest
import torch
from conftest import tiny_config

from charrnn.model import CharLSTM, ModelShape
from charrnn.prepare import prepare
from charrnn.train import autocast_dtype, train

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


def test_fused_and_stepwise_agree_on_gpu():
    torch.manual_seed(0)
    model = CharLSTM(ModelShape(60, 32, 128, 3, 0.0)).cuda().eval()
    tokens = torch.randint(0, 60, (8, 100), device="cuda")
    with torch.no_grad():
        fused, _ = model(tokens)
        state = model.initial_state(8, "cuda")
        steps = []
        for t in range(tokens.shape[1]):
            logits, state = model.step(tokens[:, t], state)
            steps.append(logits)
    torch.testing.assert_close(torch.stack(steps, 1), fused, atol=1e-4, rtol=1e-4)


def test_bf16_training_on_gpu(small_corpus, tmp_path):
    cfg = tiny_config(small_corpus, tmp_path / "run", max_steps=30, device="cuda", precision="auto")
    assert autocast_dtype("auto", torch.device("cuda")) == torch.bfloat16
    result = train(cfg, prepare(cfg)[1])
    assert result.step == 30 and result.val["loss_nats"] < 4.0
