"""Generation: the step-wise (``LSTMCell``) view of the trained weights.

The prime is run through the fused LSTM once; then each new character costs
one :meth:`CharLSTM.step` for all streams together, so ``num_samples`` streams
cost little more than one. :func:`sample_rows` is the table of samples that
training logs at each validation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from .config import TrackConfig
from .model import CharLSTM
from .vocab import Vocab


@dataclass(frozen=True)
class SampleSettings:
    length: int = 500
    temperature: float = 1.0
    top_k: int = 0  # 0: no top-k filter
    top_p: float = 1.0  # 1.0: no nucleus filter
    argmax: bool = False  # greedy decoding (deterministic)
    num_samples: int = 1
    seed: int | None = None


def filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Mask logits outside the top-k and outside the smallest nucleus of mass top_p."""
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        drop_sorted = cumulative - sorted_logits.softmax(-1) >= top_p  # keep the token that crosses top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def sample_tokens(probs: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """One token per row of ``probs`` [batch, vocab] by inverse-CDF sampling.

    The same distribution as ``torch.multinomial(probs, 1)`` from one uniform draw
    per row instead of one per vocabulary entry: on a CPU that RNG work was a
    tenth of a 64-stream generation step. ``u > 0`` and ``cdf >= u`` never pick a
    zero-probability token.
    """
    cdf = probs.cumsum(-1)
    u = torch.rand(probs.shape[0], 1, generator=generator, device=probs.device).clamp_min_(torch.finfo(probs.dtype).tiny) * cdf[:, -1:]
    return (cdf < u).sum(-1).clamp_max_(probs.shape[-1] - 1)


@torch.no_grad()
def generate(
    model: CharLSTM,
    vocab: Vocab,
    prime: str,
    settings: SampleSettings,
    *,
    device: torch.device | str = "cpu",
    on_chars: Callable[[list[str]], None] | None = None,
) -> list[str]:
    """Return ``num_samples`` continuations of ``prime``; ``on_chars`` sees each new column.

    Runs the model in eval mode and gives it back in the mode it came in.
    """
    was_training = model.training
    model.eval()
    try:
        generator = torch.Generator(device=device)
        generator.manual_seed(settings.seed if settings.seed is not None else torch.seed())
        n = settings.num_samples
        prime_ids = torch.as_tensor(vocab.encode(prime or "\n"), device=device)
        batch_prime = prime_ids.unsqueeze(0).expand(n, -1)
        state = model.initial_state(n, device)
        if batch_prime.shape[1] > 1:  # fused pass over all but the last prime character
            _, state = model(batch_prime[:, :-1], state)
        token = batch_prime[:, -1]
        table = ("\ufffd", *vocab.chars)
        out: list[list[str]] = [[] for _ in range(n)]
        for _ in range(settings.length):
            logits, state = model.step(token, state)
            if settings.argmax:
                token = logits.argmax(-1)
            else:
                logits = filter_logits(logits.float() / max(settings.temperature, 1e-6), settings.top_k, settings.top_p)
                token = sample_tokens(logits.softmax(-1), generator)
            chars = [table[i] for i in token.tolist()]
            for row, ch in zip(out, chars, strict=True):
                row.append(ch)
            if on_chars:
                on_chars(chars)
        return ["".join(row) for row in out]
    finally:
        model.train(was_training)


def sample_rows(model: CharLSTM, vocab: Vocab, cfg: TrackConfig, device, *, seed: int) -> list[tuple[float, str, str]]:
    """(temperature, prompt, sample) for every configured prompt and temperature.

    Each row has a seed of its own (``seed`` + its index): with one seed for all,
    the same uniform draws picked the same characters, and two prompts' samples
    converged to one text. The seeds stay the same at every evaluation, so the
    rows of one prompt and temperature show the model improving, not new luck.
    """
    rows = []
    for temperature in cfg.sample_temperatures:
        for prompt in cfg.sample_prompts:
            settings = SampleSettings(length=cfg.sample_length, temperature=temperature, seed=seed + len(rows))
            rows.append((temperature, prompt, prompt + generate(model, vocab, prompt, settings, device=device)[0]))
    return rows
