"""The model: embedding -> stacked LSTM -> dropout -> linear head.

Two views of the same weights (see the seed lecture on ``nn.LSTM`` vs
``nn.LSTMCell``):

* :meth:`CharLSTM.forward` runs the fused multi-layer ``nn.LSTM`` over whole
  windows: one cuDNN/oneDNN call per window, which is what training needs.
* :meth:`CharLSTM.step` advances one character at a time, layer by layer,
  with the ``nn.LSTMCell`` equations on the very same parameter tensors, which
  is what generation needs. Its engine, :class:`Stepper`, regroups those
  weights once so that a step is a few large ops. Tests prove the two views
  give the same logits.

Precision: on CUDA under bf16 autocast the LSTM runs outside autocast in the
dtype :func:`charrnn.model.precision.lstm_compute_dtype` names (bf16 where cuDNN has
bf16 RNNs, else fp32), because PyTorch's CUDA autocast runs cuDNN RNNs in fp16
whatever the autocast dtype (see :mod:`charrnn.precision`). CPU autocast is
left as it is: oneDNN runs the LSTM in bf16.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from functools import partial

import torch
from torch import Tensor, nn

from charrnn.config import ModelConfig
from charrnn.model.precision import cpu_has_native_bf16, explicit_lstm_dtype

State = tuple[Tensor, Tensor]  # (h, c), each [num_layers, batch, hidden]


def run_lstm(
    lstm: nn.LSTM, x: Tensor, state: State | None, dtype: torch.dtype
) -> tuple[Tensor, State]:
    """Run a batch-first ``nn.LSTM`` in ``dtype``: inputs, states and weights cast explicitly.

    Call it outside autocast. fp32 is the module itself. Other dtypes cast the
    fp32 master weights into one flat buffer (differentiably: gradients reach
    the fp32 parameters), in the module's own order (per layer w_ih, w_hh,
    b_ih, b_hh). When that order is cuDNN's layout, cuDNN uses the buffer as it
    is; when not, it copies the weights into its layout once per call and warns
    "RNN module weights are not part of single contiguous chunk of memory":
    slower, same numbers.
    """
    if state is None:
        zeros = torch.zeros(
            lstm.num_layers, x.shape[0], lstm.hidden_size, device=x.device, dtype=dtype
        )
        state = (zeros, zeros.clone())
    if dtype == torch.float32:
        return lstm(x.float(), (state[0].float(), state[1].float()))
    weights = [getattr(lstm, name) for name in lstm._flat_weights_names]
    flat = torch.cat([w.reshape(-1) for w in weights]).to(dtype)
    cast = [
        piece.view_as(w)
        for piece, w in zip(flat.split([w.numel() for w in weights]), weights, strict=True)
    ]
    out, h, c = torch.lstm(
        x.to(dtype),
        (state[0].to(dtype), state[1].to(dtype)),
        cast,
        lstm.bias,
        lstm.num_layers,
        lstm.dropout,
        lstm.training,
        lstm.bidirectional,
        lstm.batch_first,
    )
    return out, (h, c)


@dataclass(frozen=True)
class ModelShape:
    vocab_size: int
    embedding_dim: int
    hidden_size: int
    num_layers: int
    dropout: float

    @classmethod
    def from_config(cls, cfg: ModelConfig, vocab_size: int) -> ModelShape:
        # auto: training decides the rate early in the run (charrnn/train/dropout.py);
        # until then, none
        return cls(
            vocab_size,
            cfg.embedding_dim,
            cfg.hidden_size,
            cfg.num_layers,
            0.0 if cfg.dropout == "auto" else cfg.dropout,
        )


class UniformDropout(nn.Dropout):
    """``nn.Dropout`` whose CPU mask is uniform draws compared with ``p``.

    It is the same Bernoulli(1 - p) mask and scale. ``F.dropout`` draws its CPU mask
    with ``bernoulli_(1 - p)``, which costs about three times ``uniform_``: on a
    64 x 16 x 256 batch (the default model's head input), forward and backward took
    2.6-3.2 ms against 0.95 ms this way, ~7 % of a bf16 training step at dropout 0.3
    (2-core EPYC, bench/RESULTS.md, dropout's head mask). Other devices keep
    ``F.dropout``'s fused kernel.
    """

    def forward(self, x: Tensor) -> Tensor:
        if not self.training or not 0.0 < self.p < 1.0 or x.device.type != "cpu" or self.inplace:
            return super().forward(x)
        # 0 or 1 / (1 - p)
        scale = torch.rand(x.shape).ge_(self.p).mul_(1.0 / (1.0 - self.p)).to(x.dtype)
        return x * scale


class CharLSTM(nn.Module):
    def __init__(self, shape: ModelShape):
        super().__init__()
        self.shape = shape
        self.embed = nn.Embedding(shape.vocab_size, shape.embedding_dim)
        self.lstm = nn.LSTM(
            shape.embedding_dim,
            shape.hidden_size,
            num_layers=shape.num_layers,
            dropout=shape.dropout if shape.num_layers > 1 else 0.0,
            batch_first=True,
        )
        # the LSTM's own (between layers) stays ATen's: it is inside the fused call
        self.drop = UniformDropout(shape.dropout)
        self.head = nn.Linear(shape.hidden_size, shape.vocab_size)
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.normal_(self.embed.weight)  # unit-scale inputs: small ones stall early learning
        hidden = self.shape.hidden_size
        for name, param in self.lstm.named_parameters():
            # PyTorch's gate order: input, forget, cell, output
            gates = param.data.view(4, hidden, -1)
            if name.startswith("weight_hh"):
                # Orthogonal recurrence per gate preserves the state's norm early on; on the
                # 120 s CPU budget it is worth ~0.02 nats/char of validation loss.
                for gate in gates:
                    nn.init.orthogonal_(gate)
            elif name.startswith("weight_ih"):
                for gate in gates:
                    nn.init.xavier_uniform_(gate)
            else:  # biases: forget gate at 1 (Jozefowicz et al., 2015): remember by default
                nn.init.zeros_(param)
                gates[1].fill_(0.5)  # b_ih + b_hh = 1
        nn.init.normal_(self.head.weight, std=self.shape.hidden_size**-0.5)
        nn.init.zeros_(self.head.bias)

    def set_dropout(self, rate: float) -> None:
        """Change the dropout rate in place (both dropout sites).

        For instance once ``model.dropout=auto`` is decided.
        """
        self.shape = replace(self.shape, dropout=rate)
        # nn.LSTM reads it on every call
        self.lstm.dropout = rate if self.shape.num_layers > 1 else 0.0
        self.drop.p = rate

    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> State:
        s = self.shape
        zeros = torch.zeros(s.num_layers, batch_size, s.hidden_size, device=device)
        return zeros, zeros.clone()

    def forward(self, tokens: Tensor, state: State | None = None) -> tuple[Tensor, State]:
        """``tokens`` [batch, time] -> logits [batch, time, vocab] and the final state."""
        x = self.embed(tokens)
        dtype = explicit_lstm_dtype(x.device)
        if dtype is None:
            out, state = self.lstm(x, state)
        else:
            with torch.autocast(x.device.type, enabled=False):
                out, state = run_lstm(self.lstm, x, state, dtype)
        return self.head(self.drop(out)), state

    def layer_weights(self, layer: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """(w_ih, w_hh, b_ih, b_hh) of one layer: the tensors both views share."""
        return tuple(
            getattr(self.lstm, f"{kind}_l{layer}")
            for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
        )

    def step(self, token: Tensor, state: State) -> tuple[Tensor, State]:
        """One character per stream: ``token`` [batch] -> logits [batch, vocab], new state.

        Inter-layer dropout is a training-time op; generation runs in eval mode,
        where the fused path applies none either. Inference only: no gradients
        flow through it. A loop should keep one :class:`Stepper` instead: this
        call regroups the weights every time.
        """
        with torch.no_grad():  # the stepper writes into its own buffers, which autograd refuses
            stepper = Stepper(self, state)
            return stepper.advance(token), stepper.state()

    def num_parameters(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_char(self) -> int:
        """Multiply-adds x 2 for one forward step (embedding lookup excluded)."""
        s = self.shape
        macs = 0
        for layer in range(s.num_layers):
            inp = s.embedding_dim if layer == 0 else s.hidden_size
            macs += 4 * s.hidden_size * (inp + s.hidden_size)
        macs += s.hidden_size * s.vocab_size
        return 2 * macs


def _gate_rows(t: Tensor) -> Tensor:
    """``t`` with its gate blocks along dim 0 reordered, the cell gate last and doubled.

    From PyTorch's (input, forget, cell, output) to (input, forget, output,
    2 x cell). Then the three sigmoid gates come first, and a sigmoid of the doubled
    cell gate's pre-activation is what ``tanh(x) = 2 sigmoid(2x) - 1`` needs: one
    sigmoid covers all four gates. Doubling is exact in binary floating point (bf16
    too), so the products are exactly twice the undoubled ones. Slices and one
    ``cat``: indexing with a row list was ~0.7 ms per :class:`Stepper`, more than
    ten one-stream steps.
    """
    hidden = t.shape[0] // 4
    input_forget, cell, output = t.split([2 * hidden, hidden, hidden])
    return torch.cat([input_forget, output, 2 * cell])


def _operand(weight: Tensor, dtype: torch.dtype) -> Tensor:
    """``weight`` [out, in] as the contiguous [in, out] right operand of ``x @ W.T`` in ``dtype``.

    A transposed view works too, but at 64 streams oneDNN's bf16 product reads the
    contiguous one up to ~15 % faster (bench/RESULTS.md, generation).
    """
    return weight.t().to(dtype, memory_format=torch.contiguous_format, copy=True)


def _tanh(x: Tensor, out: Tensor, two: Tensor, minus_one: Tensor) -> Tensor:
    """tanh(x) into ``out`` (may be ``x``) as 2 * sigmoid(2x) - 1.

    ``two`` and ``minus_one`` are 0-dim tensors. PyTorch's CPU tanh costs about six
    times its sigmoid: at 64 streams the four tanh of a 2-layer step were ~8 % of
    it, this way a quarter of that. The constants are tensors because a Python
    number is wrapped into a new tensor at every call, which made this slower than
    tanh for one stream. The identity holds to ~1e-7.
    """
    return torch.add(minus_one, torch.mul(x, two, out=out).sigmoid_(), alpha=2, out=out)


def uses_packed_weights(device: torch.device, dtype: torch.dtype, batch: int) -> bool:
    """Whether :class:`Stepper` runs its LSTM products as oneDNN linears on weights packed once.

    ``torch.addmm`` repacks the weight operand at every call (MKL for fp32,
    oneDNN for bf16). Packing once for the batch is what ``torch.compile``
    does on CPU (inductor's ``freezing``, the same two ``torch.ops.mkldnn``
    ops). On a 2-core EPYC, products 256 and 512 -> 1024: 1.4-3.3x faster in
    fp32 from 2 to 16 rows, 1.2-1.5x at 64, and 1.1-1.7x in bf16 at every
    batch; with oneDNN held to AVX2 (``ONEDNN_MAX_CPU_ISA``) fp32 gains
    1.15-2.7x. Whole fp32 generation with 16 or 64 streams: 1.1-1.5x. One
    fp32 row is slower (0.7x at 256 -> 1024: the call's fixed cost), so it
    keeps addmm (bench/RESULTS.md, generation). bf16 is packed where the CPU
    has native bf16 (:func:`charrnn.precision.cpu_has_native_bf16`, training's
    rule). Not where oneDNN is missing or switched off
    (``torch.backends.mkldnn.flags``) when the :class:`Stepper` is built.
    """
    onednn = (
        torch.backends.mkldnn.is_available()
        and torch.backends.mkldnn.enabled
        and hasattr(torch.ops.mkldnn, "_linear_pointwise")
    )
    if device.type != "cpu" or not onednn:
        return False
    if dtype == torch.bfloat16:
        return cpu_has_native_bf16()
    return dtype == torch.float32 and batch >= 2


def _bind_preactivations(
    x: Tensor, weight: Tensor, bias: Tensor, dtype: torch.dtype, out: Tensor | None
) -> Callable[[], Tensor]:
    """A call without arguments that returns ``x @ weight.T + bias`` in ``dtype``.

    ``bias`` is [out] or [batch, out] (layer 0's looked-up gates). With ``out``:
    ``addmm`` into it. Without: a oneDNN linear on ``weight`` packed once, which
    returns a new tensor (the op has no ``out=``).
    """
    if out is not None:
        return partial(torch.addmm, bias, x, _operand(weight, dtype), out=out)
    packed = torch.ops.mkldnn._reorder_linear_weight(weight.to(dtype), x.shape[0])
    if bias.dim() == 2:
        return partial(torch.ops.mkldnn._linear_pointwise.binary, x, bias, packed, None, "add")
    return partial(torch.ops.mkldnn._linear_pointwise, x, packed, bias, "none", [], "")


@dataclass(frozen=True)
class _Layer:
    """One layer's operands in a :class:`Stepper`; ``c`` and ``h`` are views of its buffers."""

    # the gates' inputs: [h below, own h] (own h for layer 0) times the weights, plus biases
    preactivations: Callable[[], Tensor]
    c: Tensor  # [batch, hidden], advanced in place
    h: Tensor  # [batch, hidden]: where the new h goes


class Stepper:
    """The step-wise LSTM for many steps: :meth:`CharLSTM.step`'s engine, with its own state.

    The ``nn.LSTMCell`` equations on the model's weights, regrouped once so that
    a character costs few ops (with many streams a step is its matrix products
    plus a fixed cost per op; with one stream, mostly the per-op cost):

    * layer 0's input projection of every vocabulary entry, biases included,
      is one table (``embed @ w_ih.T + b_ih + b_hh``): a row lookup per character
      instead of an embedding lookup and a matrix product;
    * every layer above multiplies ``[h_below, h_own]`` by ``[w_ih | w_hh]`` in one
      product, read in place from one ``[batch, layers * hidden]`` buffer of all
      layers' h, which each layer then overwrites with its new h;
    * gate rows are reordered and the cell gate's rows doubled (exact in binary
      floating point), so one sigmoid covers all four gates and
      ``tanh(x) = 2 sigmoid(2x) - 1`` is one more op;
    * on CPUs the LSTM weights are packed once into oneDNN's layout for the
      batch (see :func:`uses_packed_weights`), else stored as the contiguous
      ``[in, 4 * hidden]`` operand ``addmm`` reads fastest;
    * all other ops write into buffers made once, whose views are made once too
      (a packed linear returns a new tensor: oneDNN's op has no ``out=``).

    ``matmul_dtype`` bf16 runs the matrix products (and so the weights, h and
    the logits) in bf16, as bf16 training's autocast does; each layer's bf16
    products are widened to fp32 once, and the gate activations, the cell
    state and its update all run in fp32: c sums over every step of a sample,
    and an 8-bit mantissa there would drift. On a CPU with native bf16 that is
    what makes many streams cheap (bench/generation.py).

    Only rounding differs from the fused path (tests bound the drift).
    Inference only: build and advance it under ``torch.no_grad()`` or
    ``torch.inference_mode()``.
    """

    def __init__(self, model: CharLSTM, state: State, matmul_dtype: torch.dtype = torch.float32):
        h, c = state
        layers, batch, hidden = h.shape
        weights = [model.layer_weights(layer) for layer in range(layers)]
        dtype, mm, rows = weights[0][0].dtype, matmul_dtype, _gate_rows
        w_ih, w_hh, b_ih, b_hh = weights[0]
        self.input_gates = torch.addmm(rows(b_ih + b_hh), model.embed.weight, rows(w_ih).t()).to(mm)
        self.looked_up = torch.empty(batch, 4 * hidden, device=h.device, dtype=mm)
        self.h = torch.empty(batch, layers * hidden, device=h.device, dtype=mm)
        self.h.view(batch, layers, hidden).copy_(h.transpose(0, 1))
        self.c = c.to(dtype, copy=True)  # advanced in place: never the caller's tensor
        self.gates = torch.empty(batch, 4 * hidden, device=h.device, dtype=dtype)
        self.scratch = torch.empty(batch, hidden, device=h.device, dtype=dtype)
        self.two, self.minus_one = (
            torch.tensor(v, device=h.device, dtype=dtype) for v in (2.0, -1.0)
        )
        own_h = [self.h[:, i * hidden : (i + 1) * hidden] for i in range(layers)]
        self.packed = uses_packed_weights(h.device, mm, batch)
        # addmm's output: the gates themselves in fp32, a bf16 buffer widened into them in
        # bf16; packed linears return their own
        out = (
            None
            if self.packed
            else self.gates
            if mm == dtype
            else torch.empty(batch, 4 * hidden, device=h.device, dtype=mm)
        )
        self.layers = [
            _Layer(
                _bind_preactivations(own_h[0], rows(w_hh), self.looked_up, mm, out),
                self.c[0],
                own_h[0],
            )
        ]
        for i, (w_ih, w_hh, b_ih, b_hh) in enumerate(weights[1:], start=1):
            # [h below (already new), own h (still old)]
            x = self.h[:, (i - 1) * hidden : (i + 1) * hidden]
            preactivations = _bind_preactivations(
                x, rows(torch.cat([w_ih, w_hh], 1)), rows(b_ih + b_hh).to(mm), mm, out
            )
            self.layers.append(_Layer(preactivations, self.c[i], own_h[i]))
        self.head_weight, self.head_bias = _operand(model.head.weight, mm), model.head.bias.to(mm)
        self.cell_gate = self.gates[:, 3 * hidden :]
        self.input_gate, self.forget_gate, self.output_gate = self.gates[:, : 3 * hidden].chunk(
            3, 1
        )

    def advance(self, token: Tensor) -> Tensor:
        """Feed ``token`` [batch]; return the next logits [batch, vocab] (a new tensor)."""
        torch.index_select(self.input_gates, 0, token, out=self.looked_up)
        for layer in self.layers:
            self._cell(layer, layer.preactivations())
        return torch.addmm(self.head_bias, self.layers[-1].h, self.head_weight)

    def _cell(self, layer: _Layer, preactivations: Tensor) -> None:
        """The LSTM cell update from the gates' pre-activations, in place.

        c = f*c + i*g, h = o*tanh(c).
        """
        # bf16 products widened once, so the activations run in fp32
        if preactivations.dtype != self.gates.dtype:
            preactivations = self.gates.copy_(preactivations)
        # i, f, o, and sigmoid(2x) for the cell gate (its rows are doubled)
        torch.sigmoid(preactivations, out=self.gates)
        # g = tanh(x) = 2 sigmoid(2x) - 1
        torch.add(self.minus_one, self.cell_gate, alpha=2, out=self.cell_gate)
        layer.c.mul_(self.forget_gate).addcmul_(self.input_gate, self.cell_gate)
        # rounded to h's dtype
        torch.mul(
            self.output_gate, _tanh(layer.c, self.scratch, self.two, self.minus_one), out=layer.h
        )

    def state(self) -> State:
        """(h, c) as ``nn.LSTM`` takes them, each [num_layers, batch, hidden]; copies."""
        batch, layers = self.h.shape[0], len(self.layers)
        return self.h.view(batch, layers, -1).transpose(0, 1).to(
            self.c.dtype, memory_format=torch.contiguous_format, copy=True
        ), self.c.clone()
