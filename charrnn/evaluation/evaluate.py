"""Exact evaluation: mean next-character loss over a whole split.

The split is cut into a fixed number of streams (independent of the number of
processes); each rank takes a contiguous share and runs it window by window
(each window read from the memmap when needed), carrying the LSTM state; the
(loss sum, character count) pair is summed over ranks in float64. The result
is the same for any world size.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F

from charrnn.data.batches import IGNORE_INDEX, eval_windows
from charrnn.distributed.group import DistEnv, all_reduce_sum
from charrnn.model.lstm import CharLSTM

LN2 = math.log(2.0)


@dataclass(frozen=True)
class EvalResult:
    loss_nats: float  # mean nats per character
    bpc: float  # bits per character
    perplexity: float
    chars: int

    def to_dict(self) -> dict:
        return asdict(self)


def result_from_sums(loss_sum: float, chars: int) -> EvalResult:
    if chars == 0:
        return EvalResult(float("nan"), float("nan"), float("nan"), 0)
    mean = loss_sum / chars
    return EvalResult(mean, mean / LN2, math.exp(mean) if mean < 700 else math.inf, chars)


@torch.no_grad()
def evaluate_tokens(
    model: CharLSTM,
    tokens: np.ndarray,
    *,
    num_streams: int = 128,
    window: int = 256,
    device: torch.device | str = "cpu",
    env: DistEnv | None = None,
    autocast_dtype: torch.dtype | None = None,
) -> EvalResult:
    env = env or DistEnv()
    was_training = model.training
    model.eval()
    totals = torch.zeros(2, dtype=torch.float64, device=device)  # (loss sum, chars)
    state = None
    for x, y in eval_windows(tokens, num_streams, window, rank=env.rank, world_size=env.world_size):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with torch.autocast(
            device_type=torch.device(device).type,
            dtype=autocast_dtype or torch.bfloat16,
            enabled=autocast_dtype is not None,
        ):
            logits, state = model(x, state)
        loss = F.cross_entropy(
            logits.float().flatten(0, 1), y.flatten(), ignore_index=IGNORE_INDEX, reduction="sum"
        )
        totals[0] += loss.double()
        totals[1] += (y != IGNORE_INDEX).sum()
    all_reduce_sum(totals)
    model.train(was_training)
    return result_from_sums(totals[0].item(), int(totals[1].item()))


def format_score(score: dict) -> str:
    """One line for an ``EvalResult.to_dict()``: nats/char, bits/char, perplexity."""
    return (
        f"{score['loss_nats']:.4f} nats/char | {score['bpc']:.4f} bits/char | "
        f"perplexity {score['perplexity']:.3f}"
    )


def final_scores(
    model: CharLSTM,
    tokens,
    *,
    num_streams: int,
    known: dict[str, dict] | None = None,
    device: torch.device | str = "cpu",
) -> tuple[dict[str, dict], set[str]]:
    """Exact scores of ``model`` on the whole val and test splits of ``tokens``.

    Training scores its final model on both splits at the end (in DDP, on all
    ranks); ``known`` holds such scores of this model (``TrainResult.scores_at``),
    reused instead of computed twice. Returns (split -> score, the splits that
    were reused).
    """
    from charrnn.data.tokens import load_split

    scores, reused = {}, set()
    for split in ("val", "test"):
        if tokens.num_tokens[split] <= 1:
            continue
        if (known or {}).get(split):
            scores[split] = known[split]
            reused.add(split)
        else:
            scores[split] = evaluate_tokens(
                model, load_split(tokens, split), num_streams=num_streams, device=device
            ).to_dict()
    return scores, reused
