"""GPU checks (skipped without CUDA; run by bench/gpu_check.sh on a GPU machine)."""

from __future__ import annotations

import contextlib
import warnings

import pytest
import torch
from helpers import tiny_config

from charrnn.data.prepare import prepare
from charrnn.model.lstm import CharLSTM, ModelShape
from charrnn.model.precision import autocast_dtype, cudnn_bf16_rnn_supported, lstm_compute_dtype
from charrnn.train.trainer import train

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
]


@contextlib.contextmanager
def cudnn_rnn_tf32(enabled: bool):
    """Turn TF32 in cuDNN RNNs on or off, restoring the setting after.

    cuDNN's fp32 RNN uses TF32 tensor cores on Ampere and later (H100/H200
    included) while ``torch.backends.cudnn.allow_tf32`` is on, PyTorch's
    default; the step-wise view's matmuls (``Stepper``, cuBLAS) do not, as
    ``torch.backends.cuda.matmul.allow_tf32`` is off by default. TF32 keeps 10
    mantissa bits, so the fused path then differs from the step-wise one by
    ~1e-3, not ~1e-6. PyTorch >= 2.9 has a per-op setting
    (``torch.backends.cudnn.rnn.fp32_precision``); older ones only the global flag.
    """
    rnn = getattr(torch.backends.cudnn, "rnn", None)
    if rnn is not None and hasattr(rnn, "fp32_precision"):
        before = rnn.fp32_precision
        rnn.fp32_precision = "tf32" if enabled else "ieee"
        try:
            yield
        finally:
            rnn.fp32_precision = before
    else:
        before = torch.backends.cudnn.allow_tf32
        torch.backends.cudnn.allow_tf32 = enabled
        try:
            yield
        finally:
            torch.backends.cudnn.allow_tf32 = before


def _fused_and_stepwise_logits():
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
    return fused, torch.stack(steps, 1)


def test_fused_and_stepwise_agree_on_gpu():
    """The same model both ways, in true fp32: TF32 off in cuDNN for this test.

    See cudnn_rnn_tf32.
    """
    with cudnn_rnn_tf32(False):
        fused, stepwise = _fused_and_stepwise_logits()
    torch.testing.assert_close(stepwise, fused, atol=1e-4, rtol=1e-4)


def test_fused_and_stepwise_agree_on_gpu_with_default_tf32():
    """With PyTorch's defaults: within TF32's ~1e-3, bounded at 2e-2.

    The defaults use TF32 in the cuDNN LSTM, as training runs.
    """
    with cudnn_rnn_tf32(True):
        fused, stepwise = _fused_and_stepwise_logits()
    torch.testing.assert_close(stepwise, fused, atol=2e-2, rtol=0)


def test_bf16_training_on_gpu(small_corpus, tmp_path):
    cfg = tiny_config(small_corpus, tmp_path / "run", max_steps=30, device="cuda", precision="auto")
    assert autocast_dtype("auto", torch.device("cuda")) == torch.bfloat16
    result = train(cfg, prepare(cfg)[1])
    assert result.step == 30 and result.val["loss_nats"] < 4.0


def test_pytorch_autocast_runs_the_cudnn_lstm_in_fp16_even_when_asked_for_bf16():
    """Why CharLSTM takes the LSTM out of autocast: AutocastRNN.cpp casts cuDNN RNNs to kHalf.

    If this fails, PyTorch's autocast kernel now honours the autocast dtype and
    the explicit path in CharLSTM.forward could go; until then it is needed.
    """
    lstm = torch.nn.LSTM(32, 64, num_layers=2, batch_first=True).cuda()
    with torch.no_grad(), torch.autocast("cuda", dtype=torch.bfloat16):
        out, _ = lstm(torch.randn(4, 10, 32, device="cuda"))
    assert out.dtype == torch.float16


def test_lstm_under_bf16_autocast_runs_in_the_reported_dtype():
    torch.manual_seed(0)
    model = CharLSTM(ModelShape(60, 32, 128, 3, 0.0)).cuda()
    tokens = torch.randint(0, 60, (8, 50), device="cuda")
    expected = lstm_compute_dtype(torch.device("cuda"), torch.bfloat16)
    assert expected == (torch.bfloat16 if cudnn_bf16_rnn_supported("cuda") else torch.float32)
    with torch.autocast("cuda", dtype=torch.bfloat16):
        logits, (h, c) = model(tokens)
    assert h.dtype == c.dtype == expected  # never fp16
    assert logits.dtype == torch.bfloat16  # the head still runs under autocast
    logits.float().logsumexp(-1).mean().backward()
    for name, param in model.lstm.named_parameters():
        assert (
            param.dtype == torch.float32
            and param.grad is not None
            and param.grad.dtype == torch.float32
        ), name
    with torch.no_grad():  # and it is the same model as fp32, to bf16 accuracy
        ref, _ = model(tokens)
    torch.testing.assert_close(logits.float(), ref, atol=0.1, rtol=0)


@pytest.mark.skipif(
    not torch.cuda.is_available() or not cudnn_bf16_rnn_supported("cuda"),
    reason="needs cuDNN >= 9.13 bf16 RNNs",
)
def test_bf16_lstm_weight_buffer_is_used_as_is():
    """The flat bf16 buffer run_lstm builds matches cuDNN's layout.

    cuDNN therefore does not re-copy it each call.
    """
    model = CharLSTM(ModelShape(60, 32, 128, 3, 0.0)).cuda()
    tokens = torch.randint(0, 60, (8, 50), device="cuda")
    with (
        warnings.catch_warnings(record=True) as caught,
        torch.autocast("cuda", dtype=torch.bfloat16),
    ):
        warnings.simplefilter("always")
        model(tokens)
    assert not [w for w in caught if "contiguous chunk of memory" in str(w.message)]
