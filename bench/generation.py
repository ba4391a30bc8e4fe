"""Generation throughput.

``charrnn sample``'s engine for 1, 16 and 64 batched streams, against a naive loop.

* ``charrnn, 1 stream``: :func:`charrnn.sample.generate` as ``charrnn sample``
  runs it (the prime through the fused LSTM once, then one step-wise update
  per character, streamed to a sink as it comes);
* ``charrnn, 16 streams`` / ``64 streams``: the same call with ``num_samples``
  16 and 64: every step advances all streams in one batched update;
* ``naive re-feed``: what a user writes first: at every step run the whole
  prefix through the model from a zero state and sample from the last logits.

Each of the first three runs in fp32 and, where the CPU has native bf16, with
bf16 matrix products too (the cell state stays fp32); ``precision=auto`` picks
bf16 there from 16 streams, and the targets compare what auto picks.

All use the default model size and temperature-1 sampling; figures are total
generated characters per second, median of alternating rounds, and the
batched ones also as a ratio to one stream measured in the same rounds. A
step's time is its matrix products (which grow with the streams) plus a fixed
cost per op (which does not): the ratio is bounded by how much of one
stream's step is that fixed cost.

    python -m bench.generation [--length 400] [--rounds 3]
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from bench.common import Report, Target
from charrnn.config import Config
from charrnn.data.corpus import fetch_corpus
from charrnn.data.vocab import Vocab
from charrnn.evaluation.sample import SampleSettings, generate, matmul_dtype
from charrnn.model.lstm import CharLSTM, ModelShape

PRIME = "ROMEO:\n"


@torch.no_grad()
def naive_refeed(
    model: CharLSTM, vocab: Vocab, prime: str, length: int, generator: torch.Generator
) -> str:
    ids = torch.as_tensor(vocab.encode(prime), dtype=torch.long).unsqueeze(0)
    for _ in range(length):
        logits, _ = model(ids)  # the whole prefix again, from a zero state
        nxt = torch.multinomial(logits[:, -1].softmax(-1), 1, generator=generator)
        ids = torch.cat([ids, nxt], dim=1)
    return vocab.decode(ids[0, len(prime) :].tolist())


def run(*, length: int = 400, rounds: int = 3, log: Callable[[str], None] = print) -> Report:
    cfg = Config()
    # the default corpus's characters
    vocab = Vocab.from_text(Path(fetch_corpus("shakespeare").path).read_text(encoding="utf-8"))
    torch.manual_seed(0)
    model = CharLSTM(ModelShape.from_config(cfg.model, vocab.size)).eval()
    sink = io.StringIO()

    # what charrnn sample's precision=auto picks here for that many streams
    def auto(streams: int) -> str:
        return "bf16" if matmul_dtype("auto", "cpu", streams) == torch.bfloat16 else "fp32"

    precisions = ["fp32", "bf16"] if auto(64) == "bf16" else ["fp32"]

    def one_stream(precision: str) -> Callable[[], int]:
        def run_one() -> int:
            settings = SampleSettings(length=length, seed=1, precision=precision)
            generate(model, vocab, PRIME, settings, on_chars=lambda chars: sink.write(chars[0]))
            return length

        return run_one

    def batched(n: int, precision: str) -> Callable[[], int]:
        def run_batch() -> int:
            generate(
                model,
                vocab,
                PRIME,
                SampleSettings(length=length, num_samples=n, seed=1, precision=precision),
            )
            return n * length

        return run_batch

    def naive() -> int:
        naive_refeed(model, vocab, PRIME, length, torch.Generator().manual_seed(1))
        return length

    contenders: dict[str, Callable[[], int]] = {}
    for p in precisions:
        contenders |= {
            f"{p}, 1 stream": one_stream(p),
            f"{p}, 16 streams": batched(16, p),
            f"{p}, 64 streams": batched(64, p),
        }
    contenders["naive re-feed, 1 stream"] = naive
    med = _median_rates(contenders, rounds, log)
    one, naive_rate = med[f"{auto(1)}, 1 stream"], med["naive re-feed, 1 stream"]
    ratio = {n: med[f"{auto(n)}, {n} streams"] / one for n in (16, 64)}
    picks = ", ".join(f"{n} -> {auto(n)}" for n in (1, 16, 64))
    lines = [
        f"model: {cfg.model.num_layers}x{cfg.model.hidden_size} (emb {cfg.model.embedding_dim}), "
        f"vocab {vocab.size}, {length} chars per stream, "
        f"{torch.get_num_threads()} threads; precision auto here, "
        f"streams -> products: {picks} (the cell state stays fp32)"
    ]
    lines += [f"{name:>24}: {rate:10,.0f} chars/s" for name, rate in med.items()]
    for p in precisions:
        lines.append(
            f"{p}: 16 streams / 1 stream {med[f'{p}, 16 streams'] / med[f'{p}, 1 stream']:.1f}x;  "
            f"64 streams / 1 stream {med[f'{p}, 64 streams'] / med[f'{p}, 1 stream']:.1f}x"
        )
    targets = [
        Target(
            (
                f"64 batched streams ({auto(64)}) vs 1 stream ({auto(1)}) at precision auto, "
                "total chars/s"
            ),
            f"{ratio[64]:.1f}x",
            ">= 20x",
            ratio[64] >= 20,
        ),
        Target(
            f"16 batched streams ({auto(16)}) vs 1 stream ({auto(1)}) at precision auto",
            f"{ratio[16]:.1f}x",
            "-",
            None,
        ),
        Target(
            "1 stream at precision auto vs 1 stream fp32",
            f"{one / med['fp32, 1 stream']:.2f}x",
            "no slower: >= 0.97 (run-to-run noise)",
            one / med["fp32, 1 stream"] >= 0.97,
        ),
        Target(
            f"1 stream vs naive re-feed ({length} chars)", f"{one / naive_rate:.1f}x", "-", None
        ),
    ]
    cmd = "python -m bench.generation" + (
        f" --length {length} --rounds {rounds}" if (length, rounds) != (400, 3) else ""
    )
    return Report("Generation", cmd, "\n".join(lines), targets)


def _median_rates(
    contenders: dict[str, Callable[[], int]], rounds: int, log: Callable[[str], None]
) -> dict[str, float]:
    """Characters per second of each contender.

    One warm-up, then the median of ``rounds`` alternating rounds.
    """
    log(f"generation: {len(contenders)} contenders x {rounds} rounds")
    rates: dict[str, list[float]] = {name: [] for name in contenders}
    for fn in contenders.values():
        fn()  # warm-up
    for _ in range(rounds):
        for name, fn in contenders.items():
            start = time.perf_counter()
            chars = fn()
            rates[name].append(chars / (time.perf_counter() - start))
    return {name: statistics.median(v) for name, v in rates.items()}


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--length", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    print(run(length=args.length, rounds=args.rounds).text())


if __name__ == "__main__":
    main()
