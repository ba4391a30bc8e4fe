"""Generation: the step-wise (``LSTMCell``) view of the trained weights.

The prime is run through the fused LSTM once; then each new character costs
one :meth:`Stepper.advance` (the engine of :meth:`CharLSTM.step`) for all
streams together, so a step's fixed cost per op is shared by ``num_samples``
streams and only the matrix products grow with them. :func:`sample_rows` is
the table of samples that training logs at each validation.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from charrnn.config import TrackConfig
from charrnn.data.vocab import Vocab
from charrnn.errors import ConfigError
from charrnn.model.lstm import CharLSTM, Stepper
from charrnn.model.precision import autocast_dtype


@dataclass(frozen=True)
class SampleSettings:
    length: int = 500
    temperature: float | tuple[float, ...] = 1.0  # a tuple: one per sample (num_samples of them)
    top_k: int = 0  # 0: no top-k filter
    top_p: float = 1.0  # 1.0: no nucleus filter
    argmax: bool = False  # greedy decoding (deterministic)
    num_samples: int = 1
    seed: int | None = None
    precision: str = "auto"  # the step-wise matrix products: auto | fp32 | bf16 (see matmul_dtype)


# One stream's step is bound by reading the weights, where bf16 products run slower than fp32 on
# a bf16 CPU; with more streams they are faster: slightly from about 8 streams, clearly from 16
# (bench/generation.py, bench/RESULTS.md).
BF16_FROM_STREAMS = 16


def matmul_dtype(
    precision: str, device: torch.device | str, streams: int = BF16_FROM_STREAMS
) -> torch.dtype:
    """The dtype of :class:`Stepper`'s matrix products for ``streams`` streams.

    auto: bf16 where the hardware has native bf16 (training's rule) and there are at
    least ``BF16_FROM_STREAMS`` streams, else fp32; bf16 is refused without native bf16.
    """
    try:
        native = autocast_dtype(precision, torch.device(device))
    except ConfigError as exc:
        raise ConfigError(
            exc.what,
            where=f"sampling precision={precision}",
            fix="use precision auto (bf16 where the hardware has it, else fp32) or fp32",
        ) from None
    if native is None or (precision == "auto" and streams < BF16_FROM_STREAMS):
        return torch.float32
    return native


def filter_logits(logits: torch.Tensor, top_k: int, top_p: float) -> torch.Tensor:
    """Mask logits outside the top-k and outside the smallest nucleus of mass top_p."""
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[..., -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, descending=True, dim=-1)
        cumulative = sorted_logits.softmax(-1).cumsum(-1)
        # keep the token that crosses top_p
        drop_sorted = cumulative - sorted_logits.softmax(-1) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    return logits


def uniforms(steps: int, batch: int, generator: torch.Generator) -> torch.Tensor:
    """[steps, batch, 1] uniform draws in (0, 1) for :func:`sample_tokens`, all drawn at once.

    One RNG call per generation instead of one per character; ``u > 0`` keeps
    zero-probability tokens out (see :func:`sample_tokens`).
    """
    u = torch.rand(steps, batch, 1, generator=generator, device=generator.device)
    return u.clamp_min_(torch.finfo(u.dtype).tiny)


def sample_tokens(
    probs: torch.Tensor, u: torch.Tensor, out: torch.Tensor | None = None
) -> torch.Tensor:
    """One token per row of ``probs`` [batch, vocab] by inverse-CDF sampling with ``u`` [batch, 1].

    The same distribution as ``torch.multinomial(probs, 1)`` from one uniform draw
    per row instead of one per vocabulary entry: on a CPU that RNG work was a
    tenth of a 64-stream generation step. The pick is the first index with
    ``cdf >= u * cdf[-1]``: a zero-probability token repeats its predecessor's
    cdf and is never first, and as ``u < 1`` the threshold never passes
    ``cdf[-1]`` (a product rounds to at most its larger factor), so the index
    stays in range. Returns [batch, 1], into ``out`` when given.
    """
    cdf = probs.cumsum(-1)
    return torch.searchsorted(cdf, u * cdf[:, -1:], out=out)


def _sampler(
    settings: SampleSettings, batch: int, device
) -> Callable[[torch.Tensor, int, torch.Tensor], None]:
    """``pick(logits, step, out)``: writes each row's next token into ``out`` [batch].

    It runs on the device.
    """
    if settings.argmax:

        def greedy(logits: torch.Tensor, step: int, out: torch.Tensor) -> None:
            torch.argmax(logits, -1, out=out)

        return greedy
    generator = torch.Generator(device=device)
    if settings.seed is None:
        generator.seed()  # a fresh seed for this generator only; the global RNG stays as it was
    else:
        generator.manual_seed(settings.seed)
    u = uniforms(settings.length, batch, generator)
    temperature = _temperatures(settings.temperature, batch, device)
    filtered = settings.top_k > 0 or settings.top_p < 1.0

    def pick(logits: torch.Tensor, step: int, out: torch.Tensor) -> None:
        logits = logits.float()
        if temperature is not None:
            logits = logits / temperature
        if filtered:
            logits = filter_logits(logits, settings.top_k, settings.top_p)
        sample_tokens(logits.softmax(-1), u[step], out=out.unsqueeze(1))

    return pick


def _temperatures(
    temperature: float | tuple[float, ...], batch: int, device
) -> torch.Tensor | float | None:
    """What :func:`_sampler` divides logits by.

    A number, a [batch, 1] tensor of per-row ones, or None for 1.
    """
    if isinstance(temperature, tuple):
        if len(temperature) != batch:
            raise ValueError(
                f"{len(temperature)} temperatures for {batch} samples: give one per sample"
            )
        return torch.tensor(temperature, device=device).clamp_min(1e-6).unsqueeze(1)
    return None if temperature == 1.0 else max(temperature, 1e-6)


def _primed(
    model: CharLSTM, vocab: Vocab, prime: str, batch: int, device, dtype: torch.dtype
) -> tuple[Stepper, torch.Tensor]:
    """A :class:`Stepper` for ``batch`` streams, and the last character of ``prime``.

    The stepper has read all of ``prime`` but that last character. The prime runs
    once through the fused LSTM for one stream, whose state all streams then
    share: every stream reads the same prime.
    """
    prime_ids = torch.as_tensor(vocab.encode(prime or "\n"), device=device)
    state = model.initial_state(1, device)
    if len(prime_ids) > 1:
        _, state = model(prime_ids[:-1].unsqueeze(0), state)
    return Stepper(
        model, tuple(s.expand(-1, batch, -1) for s in state), matmul_dtype=dtype
    ), prime_ids[-1]


@torch.inference_mode()
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

    Tokens go column by column into one buffer on the device and are decoded
    once at the end: without ``on_chars`` the loop never waits for the device
    and runs no per-stream Python. Runs the model in eval mode and gives it
    back in the mode it came in.
    """
    was_training = model.training
    model.eval()
    try:
        n = settings.num_samples
        stepper, last = _primed(
            model, vocab, prime, n, device, matmul_dtype(settings.precision, device, n)
        )
        pick = _sampler(settings, n, device)
        # row 0: the prime's last character
        tokens = torch.empty(settings.length + 1, n, dtype=torch.long, device=device)
        tokens[0] = last
        table = ("\ufffd", *vocab.chars)
        for step in range(settings.length):
            pick(stepper.advance(tokens[step]), step, tokens[step + 1])
            if on_chars:
                on_chars([table[i] for i in tokens[step + 1].tolist()])
        return [vocab.decode(row) for row in tokens[1:].T.tolist()]
    finally:
        model.train(was_training)


def sample_rows(
    model: CharLSTM, vocab: Vocab, cfg: TrackConfig, device, *, seed: int
) -> list[tuple[float, str, str]]:
    """(temperature, prompt, sample) for every configured prompt and temperature.

    The rows go temperature by temperature. Each prompt's temperatures are one batch
    (one stream each: a validation pays for one prompt's steps, not one per row), seeded
    with ``seed`` + the prompt's index, so every row draws its own uniforms: with one
    seed for all, the same draws picked the same characters, and two prompts' samples
    converged to one text. The seeds stay the same at every evaluation, so the rows of
    one prompt and temperature show the model improving, not new luck.
    """
    temperatures, prompts = tuple(cfg.sample_temperatures), cfg.sample_prompts
    # texts[prompt index][temperature index]
    texts = [
        generate(
            model,
            vocab,
            prompt,
            SampleSettings(
                length=cfg.sample_length,
                temperature=temperatures,
                num_samples=len(temperatures),
                seed=seed + index,
            ),
            device=device,
        )
        for index, prompt in enumerate(prompts)
    ]
    return [
        (t, prompt, prompt + texts[j][i])
        for i, t in enumerate(temperatures)
        for j, prompt in enumerate(prompts)
    ]
