"""The two baselines every benchmark compares against, written the way a user would.

(a) :class:`SeedCellLSTM`: the seed lecture's approach, a Python loop over one
    ``nn.LSTMCell`` a character at a time (embedding 100, hidden 128, batch 1,
    200-character windows).
(b) :class:`PlainLSTM`: a plain fp32 ``nn.LSTM`` of charrnn's default size,
    trained on random windows from a zero state each batch, ``torch.optim.Adam``,
    ``loss.item()`` every step.
"""

from __future__ import annotations

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

    def __init__(self, corpus: np.ndarray, vocab: int, *, emb: int, hidden: int, layers: int, batch_size: int, seq_len: int, lr: float):
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
