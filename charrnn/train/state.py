"""Everything a run needs to continue exactly where it stopped: the checkpoint schema, in one place.

A checkpoint holds the model, the optimiser, every stream's carried LSTM state
(gathered in global stream order), every rank's RNG streams, the step and the
training time, plus what identifies the run (config, shape, vocabulary, token
set). Because the data layout depends only on the global batch and the step,
a checkpoint written by W processes resumes on any other number of processes.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from charrnn.data.batches import rank_slice
from charrnn.distributed.group import DistEnv
from charrnn.errors import CheckpointError
from charrnn.evaluation.evaluate import EvalResult
from charrnn.model.lstm import CharLSTM
from charrnn.train.validation import EarlyStopping

Hidden = tuple[torch.Tensor, torch.Tensor]


@dataclass
class TrainState:
    """The mutable state of a run.

    :meth:`to_payload` and :meth:`load_payload` are its checkpoint format.
    """

    model: CharLSTM
    optimizer: torch.optim.Optimizer
    hidden: Hidden  # this rank's carried streams, [layers, local batch, hidden]
    step: int = 0
    train_seconds: float = 0.0
    early_stopping: EarlyStopping = field(default_factory=lambda: EarlyStopping(patience=0))
    val_chars: int = 0  # the validation subsample's size, fixed at the first validation

    def to_payload(
        self, env: DistEnv, *, batch_size: int, val: EvalResult | None, identity: dict[str, Any]
    ) -> dict[str, Any] | None:
        """The checkpoint payload on rank 0, None on the others.

        A collective: every rank must call it.
        """
        hidden, rng = gather_hidden(self.hidden, env, batch_size), gather_rng(env)
        if not env.is_main:
            return None
        return {
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "rng": rng,
            "step": self.step,
            "train_seconds": self.train_seconds,
            "hidden": hidden,
            "world_size": env.world_size,
            **self.early_stopping.to_payload(),  # best_val_loss, best_step, stale_evals
            "val_chars": self.val_chars,
            "val": val.to_dict() if val else None,
            **identity,  # config, model_shape, vocab, tokens, lr_schedule
        }

    def load_payload(
        self, payload: dict[str, Any], env: DistEnv, *, batch_size: int, seed: int
    ) -> None:
        """Continue from ``payload``, written by any number of processes."""
        device = self.hidden[0].device
        self.model.load_state_dict(payload["model"])
        self.model.lstm.flatten_parameters()
        self.optimizer.load_state_dict(
            regroup_optimizer_state(payload["optimizer"], self.model, self.optimizer)
        )
        self.step, self.train_seconds = payload["step"], payload["train_seconds"]
        self.early_stopping.load_payload(payload)
        self.val_chars = payload.get("val_chars", 0)
        full_h, full_c = payload["hidden"]  # global [layers, batch, hidden]: slice ours
        rows = rank_slice(batch_size, env.rank, env.world_size)
        self.hidden = (
            full_h[:, rows].to(device).contiguous(),
            full_c[:, rows].to(device).contiguous(),
        )
        if payload["world_size"] == env.world_size:
            set_rng_state(payload["rng"][env.rank])
        else:  # RNG streams are per rank; a new world size gets fresh, seeded ones
            seed_everything(seed + env.rank + 7919 * self.step)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state() -> dict[str, Any]:
    state = {
        "torch": torch.get_rng_state(),
        "numpy": np.random.get_state()[1].tolist(),
        "python": list(random.getstate()[1]),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(("MT19937", np.array(state["numpy"], dtype=np.uint32), 624, 0, 0.0))
    random.setstate((3, tuple(state["python"]), None))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def gather_hidden(hidden: Hidden, env: DistEnv, batch_size: int) -> Hidden | None:
    """The carried hidden state of every stream, on rank 0's CPU; None elsewhere.

    A collective when distributed. Gathered to rank 0 only, which alone writes
    checkpoints: an all-gather would send every rank the whole state at every
    checkpoint for nothing. Ranks own contiguous, balanced stream ranges
    (``rank_slice``), so the parts can differ in size by one row.
    """
    h, c = (s.detach().float().contiguous() for s in hidden)
    if not env.distributed:
        return h.cpu(), c.cpu()
    rows = [
        len(range(batch_size)[rank_slice(batch_size, r, env.world_size)])
        for r in range(env.world_size)
    ]
    parts = {
        name: [torch.empty(h.shape[0], n, h.shape[2], device=h.device) for n in rows]
        if env.is_main
        else None
        for name in ("h", "c")
    }
    dist.gather(h, parts["h"], dst=0)
    dist.gather(c, parts["c"], dst=0)
    if not env.is_main:
        return None
    return torch.cat(parts["h"], dim=1).cpu(), torch.cat(parts["c"], dim=1).cpu()


def gather_rng(env: DistEnv) -> list[dict[str, Any]] | None:
    """Every rank's RNG state (index = rank) on rank 0; None elsewhere."""
    mine = rng_state()
    if not env.distributed:
        return [mine]
    states: list | None = [None] * env.world_size if env.is_main else None
    dist.gather_object(mine, states, dst=0)
    return states


def regroup_optimizer_state(
    saved: dict[str, Any], model: torch.nn.Module, optimizer: torch.optim.Optimizer
) -> dict[str, Any]:
    """``saved`` laid out in ``optimizer``'s parameter groups.

    Checkpoints before weight decay was limited to the matrices hold one group
    over ``model.parameters()`` in order; the optimiser now has two (matrices,
    then vectors). Each parameter keeps its moments and step, and each group
    its own weight decay, so such a checkpoint resumes as if it had been
    written today. A state already in today's layout passes through unchanged.
    """
    if len(saved["param_groups"]) == len(optimizer.param_groups):
        return saved
    if len(saved["param_groups"]) != 1:
        raise CheckpointError(
            f"the optimizer state has {len(saved['param_groups'])} parameter groups; "
            f"this version reads 1 or {len(optimizer.param_groups)}",
            fix="resume with the charrnn version that wrote the checkpoint, "
            "or start a new run (without --resume) in another train.out_dir",
        )
    old_index = {id(p): i for i, p in enumerate(model.parameters())}
    hyper = {k: v for k, v in saved["param_groups"][0].items() if k != "params"}
    groups, state, index = [], {}, 0
    for group in optimizer.param_groups:
        ids = []
        for p in group["params"]:
            if old_index[id(p)] in saved["state"]:
                state[index] = saved["state"][old_index[id(p)]]
            ids.append(index)
            index += 1
        groups.append({**hyper, "weight_decay": group["weight_decay"], "params": ids})
    return {"state": state, "param_groups": groups}
