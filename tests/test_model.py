"""The fused nn.LSTM path and the step-wise LSTMCell path are the same model."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn

import charrnn.model.lstm
from charrnn.model.lstm import CharLSTM, ModelShape, Stepper, UniformDropout, uses_packed_weights
from charrnn.model.precision import cpu_has_native_bf16


def _model(num_layers=3) -> CharLSTM:
    torch.manual_seed(0)
    model = CharLSTM(
        ModelShape(
            vocab_size=50, embedding_dim=24, hidden_size=40, num_layers=num_layers, dropout=0.3
        )
    )
    return model.eval()


def test_fused_matches_an_explicit_lstmcell_stack_over_200_steps():
    model = _model()
    cells = nn.ModuleList()
    for layer in range(model.shape.num_layers):
        w_ih, w_hh, b_ih, b_hh = model.layer_weights(layer)
        cell = nn.LSTMCell(w_ih.shape[1], model.shape.hidden_size)
        cell.load_state_dict(
            {"weight_ih": w_ih, "weight_hh": w_hh, "bias_ih": b_ih, "bias_hh": b_hh}
        )
        cells.append(cell)
    tokens = torch.randint(0, 50, (4, 200))
    with torch.no_grad():
        fused, (h_n, c_n) = model(tokens)
        h = [torch.zeros(4, 40) for _ in cells]
        c = [torch.zeros(4, 40) for _ in cells]
        stepwise = []
        for t in range(tokens.shape[1]):
            x = model.embed(tokens[:, t])
            for i, cell in enumerate(cells):
                h[i], c[i] = cell(x, (h[i], c[i]))
                x = h[i]
            stepwise.append(model.head(x))
    torch.testing.assert_close(torch.stack(stepwise, 1), fused, atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.stack(h), h_n, atol=1e-5, rtol=0)
    torch.testing.assert_close(torch.stack(c), c_n, atol=1e-5, rtol=0)


def test_model_step_matches_forward_from_a_carried_state():
    model = _model()
    tokens = torch.randint(0, 50, (3, 120))
    with torch.no_grad():
        _, state = model(tokens[:, :60])  # a state carried in from an earlier window
        fused, _ = model(tokens[:, 60:], state)
        outs = []
        for t in range(60, 120):
            logits, state = model.step(tokens[:, t], state)
            outs.append(logits)
    torch.testing.assert_close(torch.stack(outs, 1), fused, atol=1e-5, rtol=0)


def test_stepper_carries_its_own_state_like_forward():
    """Generation's engine over many steps: the same logits and final state as the fused path.

    For 1 and 3 layers.
    """
    for num_layers in (1, 3):
        model = _model(num_layers)
        tokens = torch.randint(0, 50, (5, 150))
        with torch.no_grad():
            _, state = model(tokens[:, :30])
            fused, (h_n, c_n) = model(tokens[:, 30:], state)
            given = tuple(s.clone() for s in state)
            stepper = Stepper(model, state)
            stepwise = torch.stack([stepper.advance(tokens[:, t]) for t in range(30, 150)], 1)
        torch.testing.assert_close(stepwise, fused, atol=1e-5, rtol=0)
        torch.testing.assert_close(stepper.state(), (h_n, c_n), atol=1e-5, rtol=0)
        # the caller's state is left as it was
        assert all(torch.equal(a, b) for a, b in zip(state, given, strict=True))


def test_stepper_packs_weights_on_cpu_from_two_fp32_streams_or_where_bf16_is_native():
    cpu = torch.device("cpu")
    if not torch.backends.mkldnn.is_available():
        pytest.skip("this torch build has no oneDNN")
    # one fp32 row: addmm's call is cheaper
    assert uses_packed_weights(cpu, torch.float32, 2) and not uses_packed_weights(
        cpu, torch.float32, 1
    )
    assert uses_packed_weights(cpu, torch.bfloat16, 1) == cpu_has_native_bf16()
    # CUDA and other devices: addmm
    assert not uses_packed_weights(torch.device("meta"), torch.float32, 64)
    with warnings.catch_warnings():
        # flags() restores a TF32 setting this build lacks
        warnings.filterwarnings("ignore", "TF32 acceleration on top of oneDNN")
        with torch.backends.mkldnn.flags(enabled=False):
            # oneDNN switched off by the user
            assert not uses_packed_weights(cpu, torch.float32, 64)


@pytest.mark.parametrize(
    ("dtype", "num_layers", "streams"),
    [(torch.float32, 2, 8), (torch.float32, 3, 5), (torch.bfloat16, 2, 8), (torch.bfloat16, 3, 1)],
)
def test_packed_stepper_is_the_addmm_stepper(monkeypatch, dtype, num_layers, streams):
    """oneDNN linears on packed weights and addmm give the same logits over 200 steps.

    Measured on a 2-core EPYC (avx512_bf16): fp32 differs by at most 3e-7 on
    these tiny models, bf16 not at all (the same oneDNN kernels); the bounds
    are the fused-vs-step-wise tests' 1e-5 in fp32 and a few ulps of bf16's
    logits, for other CPUs' kernels.
    """
    if not torch.backends.mkldnn.is_available() or (
        dtype == torch.bfloat16 and not cpu_has_native_bf16()
    ):
        pytest.skip("no oneDNN kernels to pack for")
    model = _model(num_layers)
    tokens = torch.randint(0, 50, (streams, 200))
    logits = []
    for packs in (True, False):
        if not packs:
            monkeypatch.setattr(charrnn.model.lstm, "uses_packed_weights", lambda *_: False)
        with torch.no_grad():
            stepper = Stepper(model, model.initial_state(streams), matmul_dtype=dtype)
            assert stepper.packed == packs
            logits.append(
                torch.stack([stepper.advance(tokens[:, t]).float() for t in range(200)], 1)
            )
    torch.testing.assert_close(
        logits[0], logits[1], atol=1e-5 if dtype == torch.float32 else 1e-2, rtol=0
    )


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_uniform_dropout_is_nn_dropouts_distribution(dtype):
    """The head's dropout: each value kept with probability 1 - p and scaled by 1 / (1 - p).

    Each value independently; the gradient is the same mask.
    """
    torch.manual_seed(0)
    p, n = 0.3, 1_000_000
    drop = UniformDropout(p)
    x = torch.ones(n, dtype=dtype, requires_grad=True)
    y = drop(x)
    kept = y != 0
    # 5 standard errors
    assert abs(kept.float().mean().item() - (1 - p)) < 5 * (p * (1 - p) / n) ** 0.5
    # the scale, rounded to dtype
    assert torch.equal(y[kept], torch.full_like(y[kept], 1 / (1 - p)))
    # as F.dropout rounds it
    assert y.max() == torch.nn.functional.dropout(torch.ones(1000, dtype=dtype), p, True).max()
    pairs = torch.stack(
        [kept[:-1], kept[1:]]
    ).float()  # neighbours independent: P(both kept) = (1 - p)^2
    assert abs(pairs.prod(0).mean().item() - (1 - p) ** 2) < 0.003
    y.backward(torch.ones_like(y))
    assert torch.equal(x.grad, y.detach())
    drop.eval()
    assert drop(x) is x  # identity outside training, like nn.Dropout


def test_shapes_and_dropout_only_in_training():
    model = _model(num_layers=2)
    tokens = torch.randint(0, 50, (2, 7))
    logits, (h, c) = model(tokens)
    assert logits.shape == (2, 7, 50) and h.shape == c.shape == (2, 2, 40)
    model.train()
    a, _ = model(tokens)
    b, _ = model(tokens)
    assert not torch.equal(a, b)  # dropout active
