"""The checkpointer: when a run saves, where it resumes from, and best.pt's weights.

best.pt's weights are the ones the final scores use. Rank 0 alone writes (and
publishes to object storage); every rank gathers its share of the state first,
because carried streams and RNG states are per rank. A resumed run continues
from the file rank 0 chose, read by every rank, so no two ranks can start from
different steps.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from charrnn.config import Config
from charrnn.data.tokens import TokenSet
from charrnn.distributed import group as dist_utils
from charrnn.distributed.group import DistEnv
from charrnn.errors import CheckpointError, ConfigError
from charrnn.evaluation.evaluate import EvalResult
from charrnn.io.checkpoint import (
    checkpoint_dir,
    list_checkpoints,
    load_checkpoint,
    load_latest_valid,
    remove_stale_files,
    save_checkpoint,
)
from charrnn.io.storage import RunDir
from charrnn.tracking import Tracker
from charrnn.train.state import TrainState

log = logging.getLogger("charrnn")


class Checkpointer:
    """One rank's view of the run directory's checkpoints."""

    def __init__(
        self, cfg: Config, tokens: TokenSet, env: DistEnv, tracker: Tracker, run_dir: RunDir
    ):
        self.cfg, self.tokens, self.env, self.tracker, self.run_dir = (
            cfg,
            tokens,
            env,
            tracker,
            run_dir,
        )
        self.last_path: Path | None = None  # the newest checkpoint this session wrote (rank 0)

    def due(self, step: int, *, finished: bool, interrupted: bool, is_best: bool) -> bool:
        """Periodically, at the end (or on a signal), and whenever validation finds a new best."""
        return finished or interrupted or is_best or step % self.cfg.train.checkpoint_interval == 0

    def save(
        self,
        state: TrainState,
        val: EvalResult | None,
        *,
        is_best: bool,
        identity: dict[str, Any],
    ) -> None:
        """Every rank gathers its share; rank 0 saves and publishes.

        Rank 0 saves best.pt too when ``is_best``.
        """
        t = self.cfg.train
        # A collective when distributed: every rank calls it.
        payload = state.to_payload(self.env, batch_size=t.batch_size, val=val, identity=identity)
        if self.env.is_main:
            path = save_checkpoint(
                self.run_dir.path, payload, step=state.step, is_best=is_best, keep_last=t.keep_last
            )
            self.run_dir.publish_checkpoint(path, is_best=is_best)
            if self.cfg.track.log_checkpoints:
                self.log_to_wandb(path, state.step, val, is_best=is_best)
            self.last_path = path
        dist_utils.barrier()

    def log_to_wandb(self, path: Path, step: int, val: EvalResult | None, *, is_best: bool) -> None:
        scores = (
            {"val_bpc": val.bpc, "val_loss_nats": val.loss_nats, "val_chars": val.chars}
            if val
            else {"val": "not measured at this step"}
        )
        metadata = {
            **scores,
            "corpus_sha256": self.tokens.corpus_sha256,
            "config": self.cfg.to_dict(),
        }
        aliases = ["latest", "best"] if is_best else ["latest"]
        self.tracker.log_model(path, step=step, aliases=aliases, metadata=metadata)

    def find_resume(self, *, restarted: bool) -> tuple[dict[str, Any], Path] | None:
        """The checkpoint to continue from (``--resume``, or a torchrun restart).

        A run is never overwritten: without either, a run directory that already
        holds checkpoints is an error.
        """
        if self.env.is_main:  # what killed saves left: never newer than the newest valid checkpoint
            remove_stale_files(self.run_dir.path)
        if not (self.cfg.train.resume or restarted):
            existing = self.run_dir.existing_checkpoints()
            if existing:  # every rank sees the run directory, so every rank stops here
                raise ConfigError(
                    f"run directory already holds {len(existing)} checkpoint(s)",
                    where=self.run_dir.where,
                    fix="pass --resume (train.resume=true) to continue it, "
                    "or choose another train.out_dir",
                )
            return None
        self.run_dir.pull_for_resume()
        found = self.agreed_checkpoint()
        if found is None and self.env.is_main:
            log.info(
                "--resume: no valid checkpoint in %s, starting from scratch", self.run_dir.path
            )
        return found

    def agreed_checkpoint(self) -> tuple[dict[str, Any], Path] | None:
        """Rank 0 picks the newest valid checkpoint; the other ranks load and verify that same file.

        Ranks that chose for themselves could resume at different steps (node-local or stale
        storage) and hang at the first collective. Loaded on the CPU: the RNG states in it
        must stay CPU tensors, and the model and optimiser copy their tensors to the device.
        """
        found = load_latest_valid(self.run_dir.path) if self.env.is_main else None
        name = dist_utils.broadcast_object(found[1].name if found else None)
        if name is None or found is not None:
            return found
        path = checkpoint_dir(self.run_dir.path) / name
        try:
            return load_checkpoint(path), path
        except CheckpointError as exc:
            raise CheckpointError(
                f"rank 0 resumes from {name}, which rank {self.env.rank} cannot read ({exc.what})",
                where=str(path),
                fix="every machine must see the same run directory: a shared volume, "
                "or train.out_dir=s3://... (object storage)",
            ) from None

    def load_best(self, state: TrainState) -> None:
        """Every rank takes best.pt's weights.

        Rank 0 reads the file it wrote and sends them to the others.
        """
        best = self.run_dir.path / "best.pt"
        weights = load_checkpoint(best)["model"] if self.env.is_main else None
        state.model.load_state_dict(dist_utils.broadcast_object(weights))

    def newest(self) -> Path | None:
        """The newest checkpoint of the run (rank 0).

        This session's, else one a finished run left.
        """
        if self.last_path is None and self.env.is_main:  # resumed at or past the end
            return next(reversed(list_checkpoints(self.run_dir.path)), None)
        return self.last_path
