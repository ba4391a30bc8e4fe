"""Experiment tracking: Weights & Biases on global rank 0, a null tracker everywhere else.

W&B is the product's face, but never a dependency of training: a W&B that
cannot start (bad settings, no network, a timeout) leaves a warning and a
:class:`NullTracker`, and any error while logging is reported once and then
ignored. Runs are offline unless credentials are configured (``wandb sync``
uploads them later). The run id is deterministic (from ``track.run_id`` or the
run directory) and opened with ``resume="allow``, so a torchrun restart or a
``--resume`` continues the same W&B run instead of starting a new one.

The API key is never read into our own code, logged or stored: W&B reads it
from its own places (``WANDB_API_KEY``, ``~/.netrc``).

Who writes what into one W&B run
--------------------------------
Each process that opens the run id writes its own offline directory
(``wandb/offline-run-*-<id>``); ``wandb sync`` merges them into one run. W&B's own
``_step`` counts rows per process, so the step axis of every chart is
``trainer/step`` (the optimisation step), and only training writes history.

Training (rank 0 of ``charrnn train``/``launch``; one directory per process start):

* config: the whole ``Config``, then the data and machine facts
* history rows, every one with ``trainer/step``: ``train/*``, ``lr``, ``grad_norm``, ``perf/*``,
  memory at each log interval; ``val/*`` at each validation (the fixed subsample); at the end
  ``val_full/*`` (the last model, whole split), ``best/val_*``, ``test/*`` and ``best_step``; the
  ``samples`` table (INCREMENTAL: one increment per evaluation)
* artefacts: ``dataset-<corpus>-<tokens>`` (alias latest); ``model-<run id>``, one version per
  checkpoint (aliases latest, and best at a new best val score), its metadata ``step``,
  ``val_bpc``/``val_loss_nats`` or ``val: "not measured at this step"``, corpus, config, lineage
* summary: W&B's last values, ``val/loss_nats`` and ``val/bpc`` as minima

Publishing (:func:`publish_to_wandb`, the pipeline's report step, after training ended; one
more directory): **no history rows**, so it can neither restart the step axis nor add a
``samples`` increment.

* summary: ``final/{val,test}_{loss_nats,bpc}``, ``final/step``, ``model_name``, ``production``
* artefact: one version in the model line's collection ``<model_name>`` (type model): the
  scored checkpoint ``model.pt`` and its samples (a ``samples`` table inside the artefact),
  metadata as a checkpoint's plus ``test_bpc``, the line and the champion/challenger decision;
  aliases ``run-<run id>``, and ``production`` when it was promoted (W&B adds ``latest``).
  Collections keep an alias on one version, so ``production`` moves to the line's newest champion.
"""

from __future__ import annotations

import logging
import netrc
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Protocol

from charrnn.config import TrackConfig
from charrnn.fsutil import sha256_bytes

log = logging.getLogger("charrnn")
SAMPLE_COLUMNS = ["step", "temperature", "prompt", "sample"]


class Tracker(Protocol):
    run_id: str | None

    def update_config(self, values: dict[str, Any]) -> None: ...
    def log(self, metrics: dict[str, Any], step: int) -> None: ...
    def log_samples(self, step: int, rows: Iterable[tuple[float, str, str]]) -> None: ...
    def log_dataset(
        self, name: str, files: dict[str, Path], metadata: dict[str, Any], max_upload_mb: float
    ) -> str | None: ...
    def log_model(
        self,
        path: Path,
        *,
        step: int,
        aliases: list[str],
        metadata: dict[str, Any],
        dataset_ref: str | None = None,
        name: str | None = None,
        samples: list[tuple[float, str, str]] | None = None,
    ) -> None: ...
    def set_summary(self, values: dict[str, Any]) -> None: ...
    def summary(self) -> dict[str, Any]: ...
    def finish(self, exit_code: int = 0) -> None: ...


class NullTracker:
    """Tracks nothing: other ranks, ``track.mode=disabled``, or a W&B that failed to start."""

    run_id = None

    def update_config(self, values):
        pass

    def log(self, metrics, step):
        pass

    def log_samples(self, step, rows):
        pass

    def log_dataset(self, name, files, metadata, max_upload_mb):
        return None

    def log_model(
        self, path, *, step, aliases, metadata, dataset_ref=None, name=None, samples=None
    ):
        pass

    def set_summary(self, values):
        pass

    def summary(self):
        return {}

    def finish(self, exit_code=0):
        pass


def has_wandb_credentials() -> bool:
    """True when W&B would authenticate.

    That is, an API key in the environment or ~/.netrc (never read out).
    """
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        hosts = netrc.netrc().hosts
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False
    return any("wandb" in host for host in hosts)


def resolve_mode(requested: str) -> str:
    """``track.mode`` -> the W&B mode.

    ``requested`` is already one of auto|online|offline|disabled: the config refuses
    anything else.
    """
    if requested == "auto":
        env_mode = os.environ.get("WANDB_MODE")
        if env_mode in ("online", "offline", "disabled"):
            return env_mode
        return "online" if has_wandb_credentials() else "offline"
    return requested


def dataset_artifact_name(corpus_sha256: str, tokens_key: str) -> str:
    return f"dataset-{corpus_sha256[:12]}-{tokens_key[:8]}"


def default_run_id(run_dir: str | os.PathLike[str]) -> str:
    """Stable for a run directory, so every restart and resume finds the same W&B run."""
    return "charrnn-" + sha256_bytes(str(Path(run_dir).resolve()).encode())[:12]


class WandbTracker:
    def __init__(
        self, cfg: TrackConfig, *, run_dir: Path, run_id: str, mode: str, config: dict[str, Any]
    ):
        import wandb

        self._wandb = wandb
        self._failed = False
        self.run_id = run_id
        directory = Path(cfg.dir or run_dir)
        directory.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(
            project=cfg.project,
            entity=cfg.entity or None,
            group=cfg.group or None,
            tags=list(cfg.tags) or None,
            name=cfg.name or None,
            id=run_id,
            resume="allow",
            dir=str(directory),
            mode=mode,
            config=config,
            settings=wandb.Settings(init_timeout=cfg.init_timeout_s, console="off", silent=True),
        )
        # One x-axis for everything: the optimisation step. A resumed run re-logs the steps
        # after its checkpoint; a custom step metric keeps them instead of dropping them.
        self.run.define_metric("trainer/step")
        self.run.define_metric("*", step_metric="trainer/step")
        for name in ("val/loss_nats", "val/bpc"):
            self.run.define_metric(name, step_metric="trainer/step", summary="min")
        self._table = wandb.Table(columns=SAMPLE_COLUMNS, log_mode="INCREMENTAL")
        self._dataset_ref: str | None = None
        self.offline_dir = Path(self.run.dir).parent if mode == "offline" else None

    def _guard(self, what: str, fn, *args, **kwargs):
        """Run a W&B call; on the first error warn, then keep training without W&B."""
        if self._failed:
            return None
        try:
            return fn(*args, **kwargs)
        except Exception as exc:  # W&B must never stop training
            self._failed = True
            log.warning(
                "W&B %s failed (%s: %s); training continues without W&B logging",
                what,
                type(exc).__name__,
                exc,
            )
            return None

    def update_config(self, values: dict[str, Any]) -> None:
        self._guard("config update", self.run.config.update, values, allow_val_change=True)

    def log(self, metrics: dict[str, Any], step: int) -> None:
        self._guard("log", self.run.log, {"trainer/step": step, **metrics})

    def _add_samples(self, table, step: int, rows: Iterable[tuple[float, str, str]]) -> None:
        for temperature, prompt, text in rows:  # a newline prompt would show as an empty cell
            table.add_data(step, temperature, prompt.replace("\n", "⏎"), text)

    def log_samples(self, step: int, rows: Iterable[tuple[float, str, str]]) -> None:
        def add_and_log():
            self._add_samples(self._table, step, rows)
            self.run.log({"samples": self._table, "trainer/step": step})

        self._guard("sample table", add_and_log)

    def log_dataset(
        self, name: str, files: dict[str, Path], metadata: dict[str, Any], max_upload_mb: float
    ) -> str | None:
        def build():
            artifact = self._wandb.Artifact(name, type="dataset", metadata=metadata)
            for entry, path in files.items():
                if path.stat().st_size <= max_upload_mb * 2**20:
                    artifact.add_file(str(path), name=entry)
                else:  # large token files: recorded by reference (path + checksum), not uploaded
                    artifact.add_reference(path.resolve().as_uri(), name=entry)
            self.run.log_artifact(artifact, aliases=["latest"])
            return f"{name}:latest"

        self._dataset_ref = self._guard("dataset artefact", build)
        return self._dataset_ref

    def log_model(
        self,
        path: Path,
        *,
        step: int,
        aliases: list[str],
        metadata: dict[str, Any],
        dataset_ref: str | None = None,
        name: str | None = None,
        samples: list[tuple[float, str, str]] | None = None,
    ) -> None:
        """A model artefact version.

        It goes in ``model-<run id>`` (training's checkpoints) or the collection ``name``
        (a model line).
        """

        def build():
            artifact = self._wandb.Artifact(
                name or f"model-{self.run_id}",
                type="model",
                # use_artifact() does not work offline: the lineage lives in metadata, so it
                # survives `wandb sync`.
                metadata={
                    **metadata,
                    "step": step,
                    "lineage": {"dataset": dataset_ref or self._dataset_ref},
                },
            )
            artifact.add_file(str(path), name="model.pt")
            # Inside the artefact, not a history row: the run's `samples` increments stay
            # training's.
            if samples:
                table = self._wandb.Table(columns=SAMPLE_COLUMNS)
                self._add_samples(table, step, samples)
                artifact.add(table, "samples")
            self.run.log_artifact(artifact, aliases=aliases)

        self._guard("model artefact", build)

    def set_summary(self, values: dict[str, Any]) -> None:
        self._guard("summary", self.run.summary.update, values)

    def summary(self) -> dict[str, Any]:
        info = {"wandb_run_id": self.run_id, "wandb_mode": self.run.settings.mode}
        if self.offline_dir is not None:
            info["wandb_dir"] = str(self.offline_dir)
            # Every process that reopened this run id (a resume, the pipeline's publish step)
            # wrote its own offline directory; the glob uploads them all into the one W&B run.
            info["wandb_sync"] = f"wandb sync {self.offline_dir.parent}/offline-run-*-{self.run_id}"
        else:
            info["wandb_url"] = self.run.url
        return info

    def finish(self, exit_code: int = 0) -> None:
        self._guard("finish", self.run.finish, exit_code=exit_code)


def make_tracker(
    cfg: TrackConfig, *, is_main: bool, run_dir: Path, config: dict[str, Any]
) -> Tracker:
    """The W&B tracker on rank 0 (or a NullTracker if W&B is off or cannot start)."""
    if not is_main:
        return NullTracker()
    mode = resolve_mode(cfg.mode)
    if mode == "disabled":
        return NullTracker()
    run_id = cfg.run_id or default_run_id(run_dir)
    try:
        tracker = WandbTracker(cfg, run_dir=run_dir, run_id=run_id, mode=mode, config=config)
    except Exception as exc:  # ImportError, timeouts, bad settings, unwritable dirs ...
        log.warning(
            "W&B could not start (%s: %s); training continues without W&B. "
            "Check track.* settings or set track.mode=disabled.",
            type(exc).__name__,
            exc,
        )
        return NullTracker()
    log.info("W&B run %s (%s) in %s", run_id, mode, tracker.offline_dir or tracker.run.url)
    return tracker


def checkpoint_scores(scores: dict[str, dict[str, float]]) -> dict[str, Any]:
    """A model artefact's scores, in training's vocabulary.

    Val (or that it was not measured) and test when known.
    """
    val, test = scores.get("val"), scores.get("test")
    fields: dict[str, Any] = (
        {"val_bpc": val["bpc"], "val_loss_nats": val["loss_nats"]}
        if val
        else {"val": "not measured at this step"}
    )
    if test:
        fields |= {"test_bpc": test["bpc"], "test_loss_nats": test["loss_nats"]}
    return fields


def publish_to_wandb(
    cfg: TrackConfig,
    run_dir: Path,
    *,
    step: int,
    scores: dict[str, dict[str, float]],
    samples: list[tuple[float, str, str]],
    checkpoint: Path,
    promoted: bool,
    model_name: str,
    metadata: dict[str, Any],
    dataset_ref: str | None,
) -> dict[str, Any]:
    """After training, write the final scores and the model to the training's W&B run.

    The scores go in the summary; the model, with its samples, is an artefact of
    its line.

    Reopens the run by its deterministic id (``resume="allow"``) and writes no
    history (module docstring: who writes what). The model goes into the line's
    collection ``model_name``, with ``production`` when it was promoted. Returns
    the tracker's summary (run id, URL or offline directory and its ``wandb
    sync`` command), or ``{}`` when W&B is off or cannot start.
    """
    tracker = make_tracker(cfg, is_main=True, run_dir=run_dir, config={})
    if tracker.run_id is None:
        return {}
    try:
        final = {
            f"final/{split}_{name}": value
            for split, score in scores.items()
            for name, value in score.items()
            if name in ("loss_nats", "bpc")
        }
        tracker.set_summary(
            {**final, "final/step": step, "model_name": model_name, "production": promoted}
        )
        # One collection per model line, logged into directly: Run.link_artifact raises
        # NotImplementedError offline (wandb 0.31) and `wandb sync` replays no links, whereas a
        # logged version syncs as it is. Online and offline-then-synced runs thus end up the
        # same: `<project>/<model_name>:production`.
        aliases = [f"run-{tracker.run_id}", *(["production"] if promoted else [])]
        line_metadata = {**metadata, **checkpoint_scores(scores), "model_name": model_name}
        tracker.log_model(
            checkpoint,
            step=step,
            aliases=aliases,
            metadata=line_metadata,
            dataset_ref=dataset_ref,
            name=model_name,
            samples=samples,
        )
        return tracker.summary()
    finally:
        tracker.finish()
