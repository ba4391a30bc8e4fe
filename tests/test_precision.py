"""Precision plumbing that runs on a CPU.

Covered: autocast_dtype, which dtype the LSTM computes in, the explicit-dtype
LSTM path.

The CUDA side (cuDNN bf16 RNNs, the fp16 autocast kernel it replaces) is in
tests/test_gpu.py, skipped without a GPU.
"""

from __future__ import annotations

import contextlib
import platform
import re
from pathlib import Path

import pytest
import torch

import charrnn.model.lstm as model_module
import charrnn.model.precision as precision
from charrnn.errors import ConfigError
from charrnn.model.lstm import CharLSTM, ModelShape, run_lstm
from charrnn.model.precision import (
    autocast_dtype,
    cpu_has_native_bf16,
    cudnn_bf16_rnn_supported,
    explicit_lstm_dtype,
    lstm_compute_dtype,
    native_bf16,
)


def _model() -> CharLSTM:
    torch.manual_seed(0)
    return CharLSTM(
        ModelShape(vocab_size=40, embedding_dim=16, hidden_size=32, num_layers=3, dropout=0.0)
    ).eval()


def test_lstm_compute_dtype_on_cpu_follows_autocast():
    assert lstm_compute_dtype("cpu", None) == torch.float32
    # oneDNN's bf16 LSTM under CPU autocast
    assert lstm_compute_dtype("cpu", torch.bfloat16) == torch.bfloat16


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the answer without a GPU")
def test_without_cuda_a_cuda_bf16_lstm_is_reported_as_fp32():
    assert not cudnn_bf16_rnn_supported("cuda")
    assert lstm_compute_dtype("cuda", torch.bfloat16) == torch.float32
    assert lstm_compute_dtype("cuda", None) == torch.float32


def test_cpu_autocast_is_not_taken_over():
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert explicit_lstm_dtype(torch.device("cpu")) is None
    assert explicit_lstm_dtype(torch.device("cpu")) is None


def _onednn_has_bf16() -> bool:
    try:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False


# oneDNN runs a bf16 LSTM on AVX-512 (natively with AVX512-BF16 or AMX, else emulated);
# on an AVX2-only CPU it has no bf16 LSTM primitive at all, so autocast cannot reach it.
@pytest.mark.skipif(not _onednn_has_bf16(), reason="oneDNN has no bf16 LSTM on this CPU")
def test_cpu_forward_under_autocast_is_exactly_nn_lstm_under_autocast():
    """The CPU numerics are unchanged.

    Forward is embed -> nn.LSTM -> head under CPU autocast, as before.
    """
    model = _model()
    tokens = torch.randint(0, 40, (4, 50))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits, (h, c) = model(tokens)
        out, (h_ref, c_ref) = model.lstm(model.embed(tokens))
        expected = model.head(model.drop(out))
    assert out.dtype == torch.bfloat16  # what a bf16 CPU run means
    assert torch.equal(logits, expected) and torch.equal(h, h_ref) and torch.equal(c, c_ref)


def test_run_lstm_in_fp32_is_the_module():
    model = _model()
    x = torch.randn(3, 20, 16)
    state = model.initial_state(3)
    with torch.no_grad():
        out, (h, c) = run_lstm(model.lstm, x, state, torch.float32)
        ref, (h_ref, c_ref) = model.lstm(x, state)
        out0, _ = run_lstm(model.lstm, x, None, torch.float32)  # no state: zeros, as nn.LSTM
    assert torch.equal(out, ref) and torch.equal(h, h_ref) and torch.equal(c, c_ref)
    assert torch.equal(out0, ref)


def test_run_lstm_in_bf16_computes_in_bf16_and_trains_the_fp32_weights():
    model = _model().train()
    x = torch.randn(3, 20, 16)
    out, (h, c) = run_lstm(model.lstm, x, None, torch.bfloat16)
    assert out.dtype == h.dtype == c.dtype == torch.bfloat16
    with torch.no_grad():
        ref, _ = model.lstm(x)
    torch.testing.assert_close(out.float(), ref, atol=3e-2, rtol=0)  # bf16 has 8 bits of mantissa
    out.float().square().mean().backward()
    for name, param in model.lstm.named_parameters():
        assert (
            param.dtype == torch.float32
            and param.grad is not None
            and param.grad.dtype == torch.float32
        ), name
        assert param.grad.abs().sum() > 0, name


def test_forward_runs_the_lstm_outside_autocast_when_told_to(monkeypatch):
    """The branch CUDA bf16 autocast takes, exercised on a CPU.

    The LSTM runs in the explicit dtype, the head still under autocast.
    """
    seen = []

    def pretend_cuda_bf16(device):
        on = torch.is_autocast_enabled("cpu")
        seen.append(on)
        return torch.bfloat16 if on else None

    monkeypatch.setattr(model_module, "explicit_lstm_dtype", pretend_cuda_bf16)
    real_run = model_module.run_lstm

    def spy(lstm, x, state, dtype):
        seen.append(torch.is_autocast_enabled("cpu"))
        return real_run(lstm, x, state, dtype)

    monkeypatch.setattr(model_module, "run_lstm", spy)
    model = _model()
    tokens = torch.randint(0, 40, (2, 30))
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        logits, (h, c) = model(tokens)
    assert seen == [True, False]  # asked under autocast, ran with autocast off
    assert h.dtype == c.dtype == torch.bfloat16 and logits.dtype == torch.bfloat16
    with torch.no_grad():
        ref, _ = _model()(tokens)  # no autocast: the fp32 path
    torch.testing.assert_close(logits.float(), ref, atol=0.1, rtol=0)


# --------------------------------------------------------------------------- autocast_dtype


def _fake_cuda(monkeypatch, *, native: bool) -> None:
    """A CUDA device whose bf16 is native (sm >= 8.0) or emulated.

    Emulated as on V100 and T4: bf16 tensors work, no bf16 tensor cores.
    """
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device", lambda device: contextlib.nullcontext())
    monkeypatch.setattr(
        torch.cuda,
        "is_bf16_supported",
        lambda including_emulation=True: native or including_emulation,
    )


def test_autocast_dtype_refuses_an_unknown_precision():
    with pytest.raises(ConfigError, match="unknown precision 'fp16'") as info:
        autocast_dtype("fp16", torch.device("cpu"))
    assert info.value.where == "train.precision" and "auto, fp32 or bf16" in info.value.fix


def test_fp32_is_never_autocast():
    assert autocast_dtype("fp32", torch.device("cpu")) is None
    assert autocast_dtype("fp32", torch.device("cuda")) is None


@pytest.mark.parametrize("has_bf16", [True, False])
def test_cpu_bf16_follows_onednn(monkeypatch, has_bf16):
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: has_bf16)
    assert autocast_dtype("auto", torch.device("cpu")) == (torch.bfloat16 if has_bf16 else None)
    if has_bf16:
        assert autocast_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    else:
        with pytest.raises(ConfigError, match="has no native bf16 LSTM kernels"):
            autocast_dtype("bf16", torch.device("cpu"))


def test_emulated_cpu_bf16_does_not_count():
    """oneDNN also runs bf16 on AVX-512 CPUs without bf16 instructions.

    It is emulated there, at about half fp32's training speed: that is fp32 for auto.
    """
    skylake = {"avx512_f": True, "avx512_vnni": True, "avx512_bf16": False, "amx_bf16": False}
    assert not native_bf16(True, "x86_64", skylake)
    assert native_bf16(True, "x86_64", skylake | {"avx512_bf16": True})  # Zen 4, Cooper Lake
    # Sapphire Rapids (Windows spells the machine AMD64)
    assert native_bf16(True, "AMD64", skylake | {"amx_bf16": True})
    # no oneDNN bf16 kernels at all
    assert not native_bf16(False, "x86_64", skylake | {"avx512_bf16": True})
    # Arm: oneDNN's check is the instruction check
    assert native_bf16(True, "aarch64", {}) and not native_bf16(False, "aarch64", {})


@pytest.mark.skipif(
    platform.machine() != "x86_64" or not Path("/proc/cpuinfo").exists(),
    reason="reads x86 Linux CPU flags",
)
def test_native_cpu_bf16_matches_this_machines_cpu_flags():
    flags = set(
        re.search(r"^flags\s*:(.*)$", Path("/proc/cpuinfo").read_text(), re.M).group(1).split()
    )
    expected = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported()) and bool(
        flags & {"avx512_bf16", "amx_bf16"}
    )
    assert cpu_has_native_bf16() == expected, sorted(
        flags & {"avx512f", "avx512_bf16", "amx_bf16", "amx_tile"}
    )


def test_emulated_cuda_bf16_does_not_count(monkeypatch):
    _fake_cuda(monkeypatch, native=False)
    assert autocast_dtype("auto", torch.device("cuda", 0)) is None  # fp32, not emulated bf16
    with pytest.raises(ConfigError, match="this CUDA has no native bf16 LSTM kernels") as info:
        autocast_dtype("bf16", torch.device("cuda", 0))
    assert info.value.where == "train.precision=bf16" and "compute capability >= 8.0" in str(
        info.value
    )


def test_native_cuda_bf16_counts(monkeypatch):
    _fake_cuda(monkeypatch, native=True)
    assert autocast_dtype("auto", torch.device("cuda", 0)) == torch.bfloat16
    assert autocast_dtype("bf16", torch.device("cuda", 0)) == torch.bfloat16


def test_no_cuda_at_all_is_fp32_for_auto(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert autocast_dtype("auto", torch.device("cuda")) is None
