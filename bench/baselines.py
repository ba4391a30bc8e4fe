"""The two baselines every benchmark compares against, written the way a user would.

(a) :class:`SeedCellLSTM`: the seed lecture's approach, a Python loop over one
    ``nn.LSTMCell`` a character at a time (embedding 100, hidden 128, batch 1,
    200-character windows).
(b) :class:`PlainLSTM`: a plain fp32 ``nn.LSTM`` of charrnn's default size,
    trained on random windows from a zero state each batch, ``torch.optim.Adam``,
    ``loss.item()`` every step; :func:`issue13_plain_trainer` configures it as issue 13 does.
(c) :class:`CharTransformer`: a small nanoGPT-style character transformer (~0.8 M
    parameters, like charrnn's default model), trained by :class:`TransformerTrainer`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class SeedCellLSTM(nn.Module):
    def __init__(self, vocab: int, emb: int = 100, hidden: int = 128):
        super().__init__()
        self.hidden = hidden
        self.embed = nn.Embedding(vocab, emb)
        self.cell = nn.LSTMCell(emb, hidden)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, char: torch.Tensor, state: tuple[torch.Tensor, torch.Tensor]):
        h, c = self.cell(self.embed(char), state)
        return self.head(h), (h, c)


class SeedCellTrainer:
    """Baseline (a): one 200-character window per step, one ``LSTMCell`` call per character."""

    def __init__(self, corpus: torch.Tensor, vocab: int, window: int = 200, lr: float = 5e-3):
        self.corpus, self.window = corpus, window
        self.model = SeedCellLSTM(vocab)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=lr)
        self.chars_per_step = window

    def step(self) -> float:
        start = int(torch.randint(0, len(self.corpus) - self.window - 1, ()))
        text = self.corpus[start : start + self.window + 1]
        state = (torch.zeros(1, self.model.hidden), torch.zeros(1, self.model.hidden))
        loss = 0.0
        for i in range(self.window):
            logits, state = self.model(text[i : i + 1], state)
            loss = loss + F.cross_entropy(logits, text[i + 1 : i + 2])
        loss = loss / self.window
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        return loss.item()


class PlainLSTM(nn.Module):
    def __init__(self, vocab: int, emb: int, hidden: int, layers: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, emb)
        self.lstm = nn.LSTM(emb, hidden, layers, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, x: torch.Tensor, state=None):
        out, state = self.lstm(self.embed(x), state)
        return self.head(out), state


class PlainTrainer:
    """Baseline (b): random windows, zero state per batch, Adam, clip, ``loss.item()`` each step."""

    def __init__(
        self,
        corpus: np.ndarray,
        vocab: int,
        *,
        emb: int,
        hidden: int,
        layers: int,
        batch_size: int,
        seq_len: int,
        lr: float,
    ):
        self.corpus = torch.from_numpy(np.asarray(corpus).astype(np.int64))
        self.vocab, self.batch_size, self.seq_len = vocab, batch_size, seq_len
        self.model = PlainLSTM(vocab, emb, hidden, layers)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=lr)
        self.chars_per_step = batch_size * seq_len

    def step(self) -> float:
        starts = torch.randint(0, len(self.corpus) - self.seq_len - 1, (self.batch_size,))
        x = torch.stack([self.corpus[s : s + self.seq_len] for s in starts])
        y = torch.stack([self.corpus[s + 1 : s + self.seq_len + 1] for s in starts])
        logits, _ = self.model(x)
        loss = F.cross_entropy(logits.reshape(-1, self.vocab), y.reshape(-1))
        self.optimizer.zero_grad()
        loss.backward()
        nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        return loss.item()


def issue13_plain_trainer(corpus: np.ndarray, vocab: int) -> PlainTrainer:
    """Baseline (b) exactly as issue 13 defines it: a plain fp32 ``nn.LSTM`` 2x256, embedding 64,
    batch 32 of 128-character random windows from a zero state, Adam 2e-3, grad clip 1."""
    return PlainTrainer(
        corpus, vocab, emb=64, hidden=256, layers=2, batch_size=32, seq_len=128, lr=2e-3
    )


class CausalSelfAttention(nn.Module):
    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(width, 3 * width, bias=False)
        self.proj = nn.Linear(width, width, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, c = x.shape
        q, k, v = (
            z.view(b, t, self.heads, c // self.heads).transpose(1, 2)
            for z in self.qkv(x).split(c, dim=2)
        )
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(y.transpose(1, 2).reshape(b, t, c))


class Block(nn.Module):
    """Pre-LN transformer block: x + attn(ln(x)), then x + mlp(ln(x)) with a 4x GELU MLP."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.ln1, self.ln2 = nn.LayerNorm(width, bias=False), nn.LayerNorm(width, bias=False)
        self.attn = CausalSelfAttention(width, heads)
        self.mlp = nn.Sequential(
            nn.Linear(width, 4 * width, bias=False),
            nn.GELU(),
            nn.Linear(4 * width, width, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.ln1(x))
        return x + self.mlp(self.ln2(x))


class CharTransformer(nn.Module):
    """A nanoGPT-style character transformer: learned positions, pre-LN blocks, a final
    LayerNorm and a head TIED to the token embedding (as nanoGPT), no biases (nanoGPT's
    ``bias=False``), dropout 0. Defaults: nanoGPT's shakespeare_char CPU run (4 layers,
    4 heads, width 128, block 64)."""

    def __init__(
        self, vocab: int, *, layers: int = 4, heads: int = 4, width: int = 128, block: int = 64
    ):
        super().__init__()
        self.block = block
        self.tok = nn.Embedding(vocab, width)
        self.pos = nn.Embedding(block, width)
        self.blocks = nn.ModuleList(Block(width, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(width, bias=False)
        self.head = nn.Linear(width, vocab, bias=False)
        self.head.weight = self.tok.weight  # tied
        self.apply(self._init)
        for name, p in self.named_parameters():  # nanoGPT: residual projections scaled by depth
            if name.endswith("proj.weight") or name.endswith("mlp.2.weight"):
                nn.init.normal_(p, std=0.02 / (2 * layers) ** 0.5)

    @staticmethod
    def _init(module: nn.Module) -> None:
        if isinstance(module, nn.Linear | nn.Embedding):
            nn.init.normal_(module.weight, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """``x`` [batch, time <= block] -> logits [batch, time, vocab]."""
        if x.shape[1] > self.block:
            raise ValueError(f"sequence of {x.shape[1]} exceeds the block size {self.block}")
        h = self.tok(x) + self.pos(torch.arange(x.shape[1], device=x.device))
        for block in self.blocks:
            h = block(h)
        return self.head(self.ln_f(h))


class TransformerTrainer:
    """nanoGPT's shakespeare_char recipe on a wall-clock budget: batch 12 random windows of
    ``block`` characters, AdamW (betas 0.9/0.99, weight decay 0.1 on matrices only), lr 1e-3
    with a 100-step linear warm-up, then cosine decay to 1e-4 over the budget's elapsed
    fraction (the time ``progress`` the caller passes), grad clip 1."""

    def __init__(
        self,
        corpus: np.ndarray,
        vocab: int,
        *,
        batch_size: int = 12,
        block: int = 64,
        lr: float = 1e-3,
        min_lr: float = 1e-4,
        warmup_steps: int = 100,
    ):
        self.corpus = torch.from_numpy(np.asarray(corpus).astype(np.int64))
        self.vocab, self.batch_size, self.block = vocab, batch_size, block
        self.lr, self.min_lr, self.warmup_steps, self.steps = lr, min_lr, warmup_steps, 0
        self.model = CharTransformer(vocab, block=block)
        decay = [p for p in self.model.parameters() if p.dim() >= 2]
        no_decay = [p for p in self.model.parameters() if p.dim() < 2]
        groups = [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}]
        self.optimizer = torch.optim.AdamW(groups, lr=lr, betas=(0.9, 0.99))
        self.chars_per_step = batch_size * block

    def lr_at(self, progress: float) -> float:
        if self.steps < self.warmup_steps:
            return self.lr * (self.steps + 1) / (self.warmup_steps + 1)
        cosine = 0.5 * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0)))
        return self.min_lr + cosine * (self.lr - self.min_lr)

    def step(self, progress: float = 0.0) -> float:
        for group in self.optimizer.param_groups:
            group["lr"] = self.lr_at(progress)
        starts = torch.randint(0, len(self.corpus) - self.block - 1, (self.batch_size,))
        x = torch.stack([self.corpus[s : s + self.block] for s in starts])
        y = torch.stack([self.corpus[s + 1 : s + self.block + 1] for s in starts])
        loss = F.cross_entropy(self.model(x).reshape(-1, self.vocab), y.reshape(-1))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(self.model.parameters(), 1.0)
        self.optimizer.step()
        self.steps += 1
        return loss.item()
