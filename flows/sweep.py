"""``sweep``: the best model for a corpus and a budget; each trial is a ``train_pipeline`` run.

The study (Optuna, in SQLite or PostgreSQL) holds the trials, so a killed sweep
started again continues where it stopped. Each trial trains for ``budget_s``
seconds with settings drawn from the search space, reports every validation to
the study (whose median pruner may stop it), and joins the W&B group named
after the study. Trials never promote; the best one then challenges the
production model of its line, like any other run.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated

from prefect import flow, get_run_logger
from pydantic import Field

from charrnn.config import load_config
from charrnn.registry.lines import challenge_and_promote, model_line
from charrnn.registry.runs import load_train_summary
from charrnn.sweep.space import SearchSpace, load_space
from charrnn.sweep.study import (
    default_storage,
    finished,
    open_storage,
    open_study,
    owner,
    recover,
    redacted,
)
from charrnn.sweep.summary import best_row, trial_rows, write_report
from charrnn.train.pruning import STORAGE_ENV
from flows.params import LaunchParams, Positive, SamplingParams, StorageParams, TrackingParams
from flows.pipeline import train_pipeline
from flows.tasks import download, tokenise


@dataclass(frozen=True)
class SweepResult:
    study: str
    storage: str  # without its password
    trials: int  # finished: completed or pruned
    pruned: int
    best_trial: int | None
    best_val_bpc: float | None
    best_run_dir: str
    promoted: bool
    report: str

    def to_dict(self) -> dict:
        return asdict(self)


@flow(
    name="sweep",
    log_prints=True,
    description="Search model and training settings for a corpus and a per-trial budget; "
    "prune poor trials; promote the best.",
)
def sweep(
    corpus: str = "shakespeare",
    trials: Positive = 12,
    budget_s: Annotated[float, Field(gt=0)] = 60.0,
    space_file: str | None = None,
    study: str | None = None,
    study_storage: str | None = None,
    model_name: str | None = None,
    config_file: str | None = None,
    overrides: list[str] | None = None,
    launch: LaunchParams = LaunchParams(),
    storage: StorageParams = StorageParams(),
    tracking: TrackingParams = TrackingParams(),
) -> SweepResult:
    """Run trials until the study has ``trials`` finished ones, then promote the best.

    Args:
        corpus: corpus URI, as for train_pipeline.
        trials: finished (completed or pruned) trials the study should hold.
        budget_s: wall-clock training seconds of each trial.
        space_file: YAML search space (config key -> low/high[/step/log] or choices);
            default: hidden size, layers, lr, dropout, weight decay, seq_len, batch.
        study: the study's name; default LINE-BUDGETs (e.g. shakespeare-60s), so the same
            command continues the same study.
        study_storage: SQLAlchemy URL of the study database, e.g.
            postgresql://USER@HOST/DB; default: SQLite under the runs directory.
        model_name: the model line the best trial challenges; default: the corpus's name.
        config_file: YAML config every trial starts from.
        overrides: key=value overrides every trial starts from.
        launch: processes per trial, as for train_pipeline.
        storage: where runs and the registry live; trials go to RUNS/sweeps/STUDY/.
        tracking: W&B mode and project; every trial joins the group named after the study.
    """
    logger = get_run_logger()
    line = model_line(model_name, corpus)
    # -- check everything before any trial: the space, the base config, the study
    space = load_space(space_file)
    load_config(config_file, list(overrides or []))
    name = study or f"{line}-{budget_s:g}s"
    url = study_storage or default_storage(storage.runs_dir)
    db = open_storage(url)
    opened = open_study(db, name, space)
    os.environ[STORAGE_ENV] = url  # the trials' training processes report to the same study
    if again := recover(opened):
        logger.warning("trials %s were left running by a killed sweep: running them again", again)
    logger.info(
        "study %s in %s: %d of %d trials finished",
        name,
        redacted(url),
        len(finished(opened)),
        trials,
    )
    # -- the trials
    trial_dirs = StorageParams(
        runs_dir=str(Path(storage.runs_dir) / "sweeps" / name), registry_dir=storage.registry_dir
    )
    failures = 0
    while len(finished(opened)) < trials:
        trial = opened.ask(space.distributions())
        trial.set_user_attr("owner", owner())
        ok = run_trial(
            opened,
            trial,
            name,
            corpus,
            line,
            budget_s,
            config_file,
            list(overrides or []),
            launch,
            trial_dirs,
            tracking,
        )
        failures += not ok
        if failures > max(2, trials // 2):
            raise RuntimeError(f"{failures} trials of study {name} failed: see their runs' logs")
    return finish(opened, name, url, corpus, config_file, overrides, storage, line)


def run_trial(
    study, trial, name, corpus, line, budget_s, config_file, overrides, launch, dirs, tracking
) -> bool:
    """One trial as a ``train_pipeline`` subflow; its verdict goes to the study. False: failed."""
    from optuna.trial import TrialState

    logger = get_run_logger()
    settings = SearchSpace.overrides(trial.params)
    logger.info("trial %d: %s", trial.number, " ".join(settings))
    trial_overrides = [
        *overrides,
        *settings,
        f"train.trial_study={name}",
        f"train.trial_number={trial.number}",
        f"track.group={name}",
    ]
    state = train_pipeline.with_options(flow_run_name=f"{name}-trial-{trial.number}")(
        corpus=corpus,
        model_name=line,
        config_file=config_file,
        overrides=trial_overrides,
        time_budget_s=budget_s,
        promote=False,
        launch=launch,
        sampling=SamplingParams(num_samples=1, length=200),
        storage=dirs,
        tracking=tracking,
        return_state=True,
    )
    if not state.is_completed():
        study.tell(trial.number, state=TrialState.FAIL)
        logger.warning("trial %d failed (%s)", trial.number, state.message)
        return False
    result = state.result()
    summary = load_train_summary(result.run_dir)
    held_out = result.test or result.val or {}
    facts = {
        "run_dir": result.run_dir,
        "checkpoint": result.checkpoint,
        "steps": summary.step,
        "stopped": summary.stopped_early or "",
        "val_nats": (result.val or {}).get("loss_nats"),
        "held_out_bpc": held_out.get("bpc"),
        "wandb_run_id": summary.tracking.get("wandb_run_id"),
    }
    for key, value in facts.items():
        trial.set_user_attr(key, value)
    if summary.pruned_at is not None:
        study.tell(trial.number, state=TrialState.PRUNED)
        logger.info("trial %d: %s", trial.number, summary.stopped_early)
    else:
        study.tell(trial.number, facts["val_nats"])
    return True


def finish(study, name, url, corpus, config_file, overrides, storage, line) -> SweepResult:
    """The report (report.md, trials.png, Prefect artifacts), then the best trial challenges."""
    from prefect.artifacts import create_markdown_artifact, create_table_artifact

    rows = trial_rows(study)
    best = best_row(rows)
    report, text = write_report(name, study, Path(storage.runs_dir) / "sweeps" / name)
    key = "".join(c if c.isalnum() else "-" for c in name.lower()).strip("-")
    create_markdown_artifact(text, key=f"sweep-{key}", description=f"sweep {name}")
    table = [
        {
            "trial": r.number,
            "state": r.state,
            **r.params,
            "val_bpc": r.val_bpc,
            "steps": r.steps,
            "stopped": r.stopped,
        }
        for r in rows
    ]
    create_table_artifact(table, key=f"sweep-{key}-trials", description=f"trials of sweep {name}")
    promoted = False
    if best is not None:
        promoted = promote_best(
            study.trials[best.number], corpus, config_file, overrides, storage, line
        )
    get_run_logger().info("sweep %s: report %s", name, report)
    return SweepResult(
        study=name,
        storage=redacted(url),
        trials=sum(r.state in ("COMPLETE", "PRUNED") for r in rows),
        pruned=sum(r.state == "PRUNED" for r in rows),
        best_trial=best.number if best else None,
        best_val_bpc=best.val_bpc if best else None,
        best_run_dir=best.run_dir if best else "",
        promoted=promoted,
        report=str(report),
    )


def promote_best(trial, corpus, config_file, overrides, storage, line) -> bool:
    """Champion/challenger of the best trial's model, on the same held-out text as any run's."""
    cfg = load_config(config_file, list(overrides or []))
    cfg.data.corpus = corpus
    corpus_ref = download(cfg)
    tokens = tokenise(corpus_ref, cfg)
    attrs = trial.user_attrs
    promotion = challenge_and_promote(
        storage.registry_dir,
        attrs["checkpoint"],
        tokens,
        run_dir=attrs["run_dir"],
        corpus=corpus_ref,
        challenger_bpc=attrs["held_out_bpc"],
        model_name=line,
        wandb_run_id=attrs.get("wandb_run_id"),
    )
    get_run_logger().info("best trial %d: %s", trial.number, promotion.decision.reason)
    return promotion.promoted
