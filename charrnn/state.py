"""Everything a run needs to continue exactly where it stopped: the checkpoint schema, in one place.

A checkpoint holds the model, the optimiser, every stream's carried LSTM state
(gathered in global stream order), every rank's RNG streams, the step and the
training time, plus what identifies the run (config, shape, vocabulary, token
set). Because the data layout depends only on the global batch and the step,
a checkpoint written by W processes resumes on any other number of processes.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from .data import rank_slice
from .distributed import DistEnv
from .evaluate import EvalResult
from .model import CharLSTM

Hidden = tuple[torch.Tensor, torch.Tensor]


@dataclass
class TrainState:
    """The mutable state of a run; :meth:`to_payload` and :meth:`load_payload` are its checkpoint format."""

    model: CharLSTM
    optimizer: torch.optim.Optimizer
    hidden: Hidden  # this rank's carried streams, [layers, local batch, hidden]
    step: int = 0
    train_seconds: float = 0.0
    best_val_loss: float = math.inf

    def to_payload(self, env: DistEnv, *, val: EvalResult | None, identity: dict[str, Any]) -> dict[str, Any]:
        """The checkpoint payload (a collective when distributed: every rank must call it)."""
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": gather_rng(env),
            "step": self.step,
            "train_seconds": self.train_seconds,
            "hidden": gather_hidden(self.hidden, env),
            "world_size": env.world_size,
            "best_val_loss": self.best_val_loss if math.isfinite(self.best_val_loss) else None,
            "val": val.to_dict() if val else None,
            **identity,  # config, model_shape, vocab, tokens, lr_schedule
        }

    def load_payload(self, payload: dict[str, Any], env: DistEnv, *, batch_size: int, seed: int) -> None:
        """Continue from ``payload``, written by any number of processes."""
        device = self.hidden[0].device
        self.model.load_state_dict(payload["model"])
        self.model.lstm.flatten_parameters()
        self.optimizer.load_state_dict(payload["optimizer"])
        self.step, self.train_seconds = payload["step"], payload["train_seconds"]
        self.best_val_loss = payload["best_val_loss"] if payload["best_val_loss"] is not None else math.inf
        full_h, full_c = payload["hidden"]  # global [layers, batch, hidden]: slice ours
        rows = rank_slice(batch_size, env.rank, env.world_size)
        self.hidden = (full_h[:, rows].to(device).contiguous(), full_c[:, rows].to(device).contiguous())
        if payload["world_size"] == env.world_size:
            set_rng_state(payload["rng"][env.rank])
        else:  # RNG streams are per rank; a new world size gets fresh, seeded ones
            seed_everything(seed + env.rank + 7919 * self.step)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state()[1].tolist(), "python": list(random.getstate()[1])}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", np.array(state["numpy"], dtype=np.uint32), 624, 0, 0.0))
    random.setstate((3, tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def gather_hidden(hidden: Hidden, env: DistEnv) -> Hidden:
    """The carried hidden state of every stream, on CPU (collective when distributed)."""
    h, c = (s.detach().float() for s in hidden)
    if env.distributed:
        parts_h = [torch.empty_like(h) for _ in range(env.world_size)]
        parts_c = [torch.empty_like(c) for _ in range(env.world_size)]
        dist.all_gather(parts_h, h.contiguous())
        dist.all_gather(parts_c, c.contiguous())
        h, c = torch.cat(parts_h, dim=1), torch.cat(parts_c, dim=1)
    return h.cpu(), c.cpu()


def gather_rng(env: DistEnv) -> list[dict[str, Any]]:
    """Every rank's RNG state (index = rank)."""
    mine = rng_state()
    if not env.distributed:
        return [mine]
    states: list = [None] * env.world_size
    dist.all_gather_object(states, mine)
    return states
