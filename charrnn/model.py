"""The model: embedding -> stacked LSTM -> dropout -> linear head.

Two views of the same weights (see the seed lecture on ``nn.LSTM`` vs
``nn.LSTMCell``):

* :meth:`CharLSTM.forward` runs the fused multi-layer ``nn.LSTM`` over whole
  windows: one cuDNN/oneDNN call per window, which is what training needs.
* :meth:`CharLSTM.step` advances one character at a time, layer by layer,
  with ``torch.lstm_cell`` (the kernel behind ``nn.LSTMCell``) on the very same
  parameter tensors, which is what generation needs. A test proves the two
  give the same logits.

Precision: on CUDA under bf16 autocast the LSTM runs outside autocast in the
dtype :func:`charrnn.precision.lstm_compute_dtype` names (bf16 where cuDNN has
bf16 RNNs, else fp32), because PyTorch's CUDA autocast runs cuDNN RNNs in fp16
whatever the autocast dtype (see :mod:`charrnn.precision`). CPU autocast is
left as it is: oneDNN runs the LSTM in bf16.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from .config import ModelConfig
from .precision import explicit_lstm_dtype

State = tuple[Tensor, Tensor]  # (h, c), each [num_layers, batch, hidden]


def run_lstm(lstm: nn.LSTM, x: Tensor, state: State | None, dtype: torch.dtype) -> tuple[Tensor, State]:
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
        zeros = torch.zeros(lstm.num_layers, x.shape[0], lstm.hidden_size, device=x.device, dtype=dtype)
        state = (zeros, zeros.clone())
    if dtype == torch.float32:
        return lstm(x.float(), (state[0].float(), state[1].float()))
    weights = [getattr(lstm, name) for name in lstm._flat_weights_names]
    flat = torch.cat([w.reshape(-1) for w in weights]).to(dtype)
    cast = [piece.view_as(w) for piece, w in zip(flat.split([w.numel() for w in weights]), weights, strict=True)]
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
        return cls(vocab_size, cfg.embedding_dim, cfg.hidden_size, cfg.num_layers, cfg.dropout)


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
        self.drop = nn.Dropout(shape.dropout)
        self.head = nn.Linear(shape.hidden_size, shape.vocab_size)
        self._init_weights()

    def _init_weights(self) -> None:
        nn.init.normal_(self.embed.weight)  # unit-scale inputs: small ones stall early learning
        hidden = self.shape.hidden_size
        for name, param in self.lstm.named_parameters():
            gates = param.data.view(4, hidden, -1)  # PyTorch's gate order: input, forget, cell, output
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
        return tuple(getattr(self.lstm, f"{kind}_l{layer}") for kind in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))

    def step(self, token: Tensor, state: State) -> tuple[Tensor, State]:
        """One character per stream: ``token`` [batch] -> logits [batch, vocab], new state.

        Inter-layer dropout is a training-time op; generation runs in eval mode,
        where the fused path applies none either.
        """
        h, c = state
        x = self.embed(token)
        new_h, new_c = [], []
        for layer in range(self.shape.num_layers):
            h_l, c_l = torch.lstm_cell(x, (h[layer], c[layer]), *self.layer_weights(layer))
            new_h.append(h_l)
            new_c.append(c_l)
            x = h_l
        return self.head(x), (torch.stack(new_h), torch.stack(new_c))

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
