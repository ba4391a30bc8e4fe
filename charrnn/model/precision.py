"""Which dtype each part of the model computes in, per device and precision.

The LSTM is the part that needs care on CUDA. ``torch.autocast("cuda",
dtype=torch.bfloat16)`` does not run a cuDNN LSTM in bf16: PyTorch's autocast
kernel for ``_cudnn_rnn`` (``aten/src/ATen/cudnn/AutocastRNN.cpp``,
``_cudnn_rnn_cast_reflatten``) casts the input, the states and the flattened
weights to ``at::kHalf`` whatever the autocast dtype is. A "bf16" run would
train its LSTM in fp16 without loss scaling. So :class:`charrnn.model.lstm.CharLSTM`
runs its LSTM outside CUDA autocast, in the dtype :func:`lstm_compute_dtype`
names: bf16 where cuDNN has bf16 RNN kernels, else fp32 (TF32 tensor cores
when ``torch.backends.cudnn.allow_tf32``, PyTorch's default).

cuDNN takes bf16 RNN inputs only from cuDNN 9.13 (PyTorch PR #164411):
``aten/src/ATen/native/RNN.cpp`` ``use_cudnn`` accepts ``kBFloat16`` when
``CUDAHooks::supportsBFloat16RNNWithCuDNN()`` holds, which is
``CUDNN_VERSION >= 91300`` at build time and compute capability >= 8.0.
Python has no binding for that hook, so :func:`cudnn_bf16_rnn_supported`
checks the same conditions. Anywhere else a bf16 LSTM on CUDA would fall to
the native cell-by-cell kernels (or fail: ``_thnn_fused_lstm_cell_cuda`` has
had no bf16 kernel), which is why the fallback is fp32, not bf16.

On a CPU nothing changes: CPU autocast runs ``mkldnn_rnn_layer`` (oneDNN) in
bf16, which is what a bf16 CPU run means.
"""

from __future__ import annotations

import platform

import torch

from charrnn.errors import ConfigError

# cuDNN 9.13.0, as cuDNN encodes it (major * 10000 + minor * 100 + patch)
CUDNN_BF16_RNN_MIN_VERSION = 91300


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """bf16 autocast where the hardware has native bf16; else None (fp32).

    Native bf16 means CUDA sm >= 8.0, or CPUs with AVX512-BF16/AMX. On CUDA,
    emulated bf16 does not count: ``torch.cuda.is_bf16_supported()`` says yes on
    a V100 or T4 because bf16 tensors can be made there, but those GPUs have no
    bf16 tensor cores, so ``including_emulation=False``.
    """
    if precision not in ("auto", "fp32", "bf16"):
        raise ConfigError(
            f"unknown precision {precision!r}",
            where="train.precision",
            fix="use auto, fp32 or bf16",
        )
    if precision == "fp32":
        return None
    supported = _cuda_has_native_bf16(device) if device.type == "cuda" else cpu_has_native_bf16()
    if precision == "bf16" and not supported:
        raise ConfigError(
            f"this {device.type.upper()} has no native bf16 LSTM kernels "
            "(a CPU needs AVX512-BF16 or AMX, elsewhere oneDNN emulates bf16 "
            "at about half fp32's speed; CUDA needs compute capability >= 8.0)",
            where="train.precision=bf16",
            fix="use train.precision=auto (bf16 where the hardware has it, else fp32) or fp32",
        )
    return torch.bfloat16 if supported else None


def _cuda_has_native_bf16(device: torch.device) -> bool:
    if not torch.cuda.is_available():
        return False
    with torch.cuda.device(device):  # the question is about this device, not whichever is current
        return torch.cuda.is_bf16_supported(including_emulation=False)


def cpu_has_native_bf16() -> bool:
    """Whether this CPU runs oneDNN's bf16 kernels on bf16 instructions: AVX512-BF16 or AMX on x86.

    oneDNN's own check (``torch.ops.mkldnn._is_mkldnn_bf16_supported``) also says
    yes on AVX-512 CPUs without them (Skylake to Ice Lake servers), where it
    emulates bf16: with oneDNN held to ``AVX512_CORE_VNNI`` on a 2-core EPYC,
    bf16 training ran at 0.55x of fp32 (bench/RESULTS.md, precision=auto). On Arm,
    oneDNN's check is the BF16 instruction check.
    """
    try:
        onednn = bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    except (AttributeError, RuntimeError):
        return False
    return native_bf16(onednn, platform.machine(), torch.cpu.get_capabilities() if onednn else {})


def native_bf16(onednn_bf16: bool, machine: str, capabilities: dict[str, object]) -> bool:
    """:func:`cpu_has_native_bf16` from the values it reads.

    Those are oneDNN's answer, ``platform.machine()`` and
    ``torch.cpu.get_capabilities()``.
    """
    if not onednn_bf16 or machine.lower() not in ("x86_64", "amd64"):
        return onednn_bf16
    return bool(capabilities.get("avx512_bf16") or capabilities.get("amx_bf16"))


def _cudnn_version_int(version: tuple[int, int, int]) -> int:
    major, minor, patch = version
    return major * 10000 + minor * 100 + patch


def cudnn_bf16_rnn_supported(device: torch.device | str) -> bool:
    """True where PyTorch sends a bf16 LSTM on ``device`` to cuDNN (see the module docstring)."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available() or torch.version.hip:
        return False
    if not (torch.backends.cudnn.is_available() and torch.backends.cudnn.enabled):
        return False
    runtime = torch.backends.cudnn.version() or 0
    try:  # the hook tests the version PyTorch was built against, not only the one loaded
        compiled = _cudnn_version_int(torch._C._cudnn.getCompileVersion())
    except (AttributeError, RuntimeError, TypeError, ValueError):
        compiled = 0
    index = device.index if device.index is not None else torch.cuda.current_device()
    capable = torch.cuda.get_device_properties(index).major >= 8
    return capable and min(runtime, compiled) >= CUDNN_BF16_RNN_MIN_VERSION


def lstm_compute_dtype(device: torch.device | str, amp_dtype: torch.dtype | None) -> torch.dtype:
    """The dtype :class:`charrnn.model.lstm.CharLSTM`'s LSTM runs in under autocast.

    The autocast is to ``amp_dtype`` (None: no autocast). fp32 on CUDA means
    cuDNN's fp32 RNN, which uses TF32 tensor cores when
    ``torch.backends.cudnn.allow_tf32`` is on (PyTorch's default).
    """
    device = torch.device(device)
    if amp_dtype is None:
        return torch.float32
    if device.type == "cuda" and amp_dtype == torch.bfloat16:
        return torch.bfloat16 if cudnn_bf16_rnn_supported(device) else torch.float32
    # CPU autocast (oneDNN), or CUDA fp16 autocast (the autocast kernel's own kHalf)
    return amp_dtype


def explicit_lstm_dtype(device: torch.device) -> torch.dtype | None:
    """Inside ``forward``: the dtype to run the LSTM in outside autocast.

    None leaves ``nn.LSTM`` as it is. Only CUDA bf16 autocast is taken over; CPU
    autocast, fp16 autocast and no autocast keep PyTorch's own behaviour.
    """
    if device.type != "cuda" or not torch.is_autocast_enabled("cuda"):
        return None
    if torch.get_autocast_dtype("cuda") != torch.bfloat16:
        return None
    return lstm_compute_dtype(device, torch.bfloat16)
