"""A torchrun worker for tests that must look inside every rank (not only rank 0's files).

    python -m torch.distributed.run --standalone --nproc-per-node 2 tests/ddp_probe.py \
        --result OUT.json --tokens DIR --out-dir RUN [--rank0-delay-s S] \
        [--hide-newest-checkpoint-on-rank1] [key=value ...]

It runs the real ``charrnn.train.train`` on each rank, then all-gathers every
rank's parameters and writes, from rank 0, the largest difference between
ranks, each rank's step and each rank's dropout decision. The probes stand for
what happens in production: ``--rank0-delay-s`` for rank 0's W&B set-up before
training (rank 0 starts its clock later), ``--hide-newest-checkpoint-on-rank1``
for node-local or stale storage on which another rank does not see the newest
checkpoint.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.distributed as dist

import charrnn.io.checkpoint as checkpoint_module
import charrnn.train.trainer as train_module
from charrnn.config import load_config
from charrnn.data.tokens import open_token_set
from charrnn.distributed.group import DistEnv, destroy_process_group

TRAINERS: list[train_module.Trainer] = []


def _install_probes(args: argparse.Namespace, env: DistEnv) -> None:
    original_fit = train_module.Trainer.fit

    def keep_trainer(self):
        TRAINERS.append(self)  # to read this rank's parameters after training
        return original_fit(self)

    train_module.Trainer.fit = keep_trainer
    if args.rank0_delay_s and env.rank == 0:
        original = train_module.Trainer.write_run_info

        def slow_write_run_info(self):
            original(self)
            time.sleep(args.rank0_delay_s)

        train_module.Trainer.write_run_info = slow_write_run_info
    if args.hide_newest_checkpoint_on_rank1 and env.rank == 1:
        original_list = checkpoint_module.list_checkpoints
        checkpoint_module.list_checkpoints = lambda run_dir: original_list(run_dir)[:-1]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--result", required=True)
    parser.add_argument("--tokens", required=True)
    parser.add_argument("--out-dir", required=True)
    parser.add_argument("--rank0-delay-s", type=float, default=0.0)
    parser.add_argument("--hide-newest-checkpoint-on-rank1", action="store_true")
    parser.add_argument("overrides", nargs="*", help="config key=value")
    args = parser.parse_args()
    env = DistEnv.from_env()
    _install_probes(args, env)
    cfg = load_config(None, [*args.overrides, f"train.out_dir={args.out_dir}"])
    result = train_module.train(cfg, open_token_set(args.tokens), env)
    flat = torch.cat([p.detach().float().flatten() for p in TRAINERS[0].state.model.parameters()])
    parts = [torch.empty_like(flat) for _ in range(env.world_size)]
    dist.all_gather(parts, flat)
    steps, dropout = [None] * env.world_size, [None] * env.world_size
    dist.all_gather_object(steps, (result.step, result.resumed_from))
    dist.all_gather_object(dropout, TRAINERS[0].dropout.to_payload())
    if env.rank == 0:
        gap = max(float((p - parts[0]).abs().max()) for p in parts)
        Path(args.result).write_text(
            json.dumps({"max_param_gap": gap, "steps": steps, "dropout": dropout})
        )
    # as the CLI does: a rank leaving early can make gloo abort a peer
    destroy_process_group(together=True)


if __name__ == "__main__":
    main()
