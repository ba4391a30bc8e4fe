"""Training throughput: charrnn's training step against a plain ``nn.LSTM`` loop of the same size.

Both run in this one process, alternating in rounds so that machine drift hits
both equally; the figure is the median chars/s over rounds, and the ratio is
charrnn / plain. The plain loop is written the way a user would: random
windows gathered per step, zero initial state, ``torch.optim.Adam``,
``loss.item()`` every step.

    python bench/throughput.py [--rounds 5] [--steps 30] [key=value model/train overrides]
"""

from __future__ import annotations

import argparse
import platform
import statistics
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from charrnn.config import load_config
from charrnn.data import StreamBatcher
from charrnn.model import CharLSTM, ModelShape
from charrnn.train import autocast_dtype, make_optimizer, train_step

VOCAB = 74  # the shakespeare corpus


class PlainLSTM(nn.Module):
    def __init__(self, vocab: int, emb: int, hidden: int, layers: int):
        super().__init__()
        self.embed = nn.Embedding(vocab, emb)
        self.lstm = nn.LSTM(emb, hidden, layers, batch_first=True)
        self.head = nn.Linear(hidden, vocab)

    def forward(self, x):
        out, _ = self.lstm(self.embed(x))
        return self.head(out)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=30, help="timed steps per round and contender")
    parser.add_argument("overrides", nargs="*", help="config overrides (model.*, train.*)")
    args = parser.parse_args()
    cfg = load_config(None, args.overrides)
    m, t = cfg.model, cfg.train
    torch.manual_seed(0)
    data = np.random.default_rng(0).integers(0, VOCAB, size=4_000_000, dtype=np.uint8)

    model = CharLSTM(ModelShape.from_config(m, VOCAB))
    optimizer = make_optimizer(model, t)
    batcher = StreamBatcher(data, t.batch_size, t.seq_len)
    amp = autocast_dtype(t.precision, torch.device("cpu"))
    state = model.initial_state(t.batch_size)
    step = 0

    def charrnn_steps(n: int) -> None:
        nonlocal state, step
        for _ in range(n):
            batch = batcher.batch(step)
            if batch.window == 0:
                state = model.initial_state(t.batch_size)
            _, _, state = train_step(model, optimizer, batch.inputs, batch.targets, state, amp_dtype=amp, grad_clip=t.grad_clip)
            step += 1

    plain = PlainLSTM(VOCAB, m.embedding_dim, m.hidden_size, m.num_layers)
    plain_opt = torch.optim.Adam(plain.parameters(), lr=t.lr)
    corpus = torch.from_numpy(data.astype(np.int64))

    def plain_steps(n: int) -> None:
        for _ in range(n):
            starts = torch.randint(0, len(corpus) - t.seq_len - 1, (t.batch_size,))
            x = torch.stack([corpus[s : s + t.seq_len] for s in starts])
            y = torch.stack([corpus[s + 1 : s + t.seq_len + 1] for s in starts])
            loss = F.cross_entropy(plain(x).reshape(-1, VOCAB), y.reshape(-1))
            plain_opt.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(plain.parameters(), 1.0)
            plain_opt.step()
            loss.item()

    chars = t.batch_size * t.seq_len
    rates: dict[str, list[float]] = {"charrnn": [], "plain": []}
    contenders = {"charrnn": charrnn_steps, "plain": plain_steps}
    for fn in contenders.values():
        fn(3)  # warm-up: allocator, oneDNN primitive caches
    for _ in range(args.rounds):
        for name, fn in contenders.items():
            start = time.perf_counter()
            fn(args.steps)
            rates[name].append(args.steps * chars / (time.perf_counter() - start))

    flops = 3 * model.flops_per_char()  # forward + backward ~ 3x forward
    print(f"machine: {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads, torch {torch.__version__}, cpu capability {torch.backends.cpu.get_cpu_capability()}")
    print(f"model: {m.num_layers}x{m.hidden_size} (emb {m.embedding_dim}), batch {t.batch_size} x seq {t.seq_len}, precision {'bf16' if amp else 'fp32'}")
    for name, values in rates.items():
        med = statistics.median(values)
        print(f"{name:>8}: {med:10,.0f} chars/s (median of {len(values)} rounds; {flops * med / 1e9:.1f} GFLOP/s est.)")
    ratio = statistics.median(rates["charrnn"]) / statistics.median(rates["plain"])
    print(f"ratio charrnn/plain: {ratio:.2f}x")


if __name__ == "__main__":
    main()
