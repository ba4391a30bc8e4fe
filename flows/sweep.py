"""``sweep``: the best model for a corpus and a budget; each trial is a ``train_pipeline`` run.

The study (Optuna, in SQLite or PostgreSQL) holds the trials, so a killed sweep
started again continues where it stopped. Each trial trains for ``budget_s``
seconds with settings drawn from the search space, reports every validation to
the study (whose median pruner may stop it), and joins the W&B group named
after the study; its own run tells the study how it ended. A trial runs as a
subflow of this flow, one at a time, or as a run of a deployment on its work
queue, as many at once as the queue's concurrency limit allows. Trials never
promote; the best one then challenges the production model of its line, like
any other run.
"""

from __future__ import annotations

import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Annotated
from uuid import UUID

from prefect import flow, get_run_logger
from pydantic import Field
from pydantic_core import to_jsonable_python

from charrnn.config import load_config
from charrnn.registry.lines import challenge_and_promote, model_line
from charrnn.sweep.space import SearchSpace, load_space
from charrnn.sweep.study import (
    default_storage,
    finished,
    has_password,
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


@dataclass(frozen=True)
class TrialPlan:
    """What every trial of one sweep shares: where it runs, on what, and for how long."""

    study: str
    study_url: str
    corpus: str
    line: str
    budget_s: float
    config_file: str | None
    overrides: list[str]
    launch: LaunchParams
    storage: StorageParams  # the trials' own: RUNS/sweeps/STUDY/
    tracking: TrackingParams
    deployment: str | None  # run trials as runs of this deployment; None: in this process

    def parameters(self, number: int, settings: list[str]) -> dict:
        """``train_pipeline``'s parameters for trial ``number`` with ``settings`` (overrides)."""
        return {
            "corpus": self.corpus,
            "model_name": self.line,
            "config_file": self.config_file,
            "overrides": [
                *self.overrides,
                *settings,
                f"train.trial_study={self.study}",
                f"train.trial_number={number}",
                f"track.group={self.study}",
            ],
            "time_budget_s": self.budget_s,
            "promote": False,
            "launch": self.launch,
            "sampling": SamplingParams(num_samples=1, length=200),
            "storage": self.storage,
            "tracking": self.tracking,
        }


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
    trial_deployment: str | None = None,
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
        trial_deployment: run each trial as a run of this deployment (e.g.
            train-pipeline/train), as many at once as its work queue's concurrency limit
            allows; default: one at a time in this flow's process.
        launch: processes per trial, as for train_pipeline.
        storage: where runs and the registry live; trials go to RUNS/sweeps/STUDY/.
        tracking: W&B mode and project; every trial joins the group named after the study.
    """
    logger = get_run_logger()
    line = model_line(model_name, corpus)
    # -- check everything before any trial: the space, the base config, the study
    space = load_space(space_file)
    base = load_config(config_file, list(overrides or []))
    name = study or f"{line}-{budget_s:g}s"
    url = study_storage or default_storage(storage.runs_dir)
    opened = open_study(open_storage(url), name, space, first=space.base_point(base), trials=trials)
    os.environ[STORAGE_ENV] = url  # the trials' training processes report to the same study
    if again := recover(opened):
        logger.warning("trials %s were left running by a killed sweep: running them again", again)
    done = len(finished(opened))
    logger.info("study %s in %s: %d of %d trials finished", name, redacted(url), done, trials)
    # -- the trials: each a train_pipeline run that tells the study its outcome
    plan = TrialPlan(
        study=name,
        study_url=url,
        corpus=corpus,
        line=line,
        budget_s=budget_s,
        config_file=config_file,
        overrides=list(overrides or []),
        launch=launch,
        storage=StorageParams(
            runs_dir=str(Path(storage.runs_dir) / "sweeps" / name),
            registry_dir=storage.registry_dir,
        ),
        tracking=tracking,
        deployment=trial_deployment,
    )
    run_trials(opened, space, plan, trials)
    return finish(opened, name, url, corpus, config_file, overrides, storage, line)


def run_trials(study, space: SearchSpace, plan: TrialPlan, trials: int) -> None:
    """Ask, start and wait for trials, ``slots`` at a time, until ``trials`` have finished."""
    slots = trial_slots(plan.deployment)
    running: dict[int, UUID] = {}
    failures = 0
    while len(finished(study)) < trials:
        while len(running) < slots and len(finished(study)) + len(running) < trials:
            trial = study.ask(space.distributions())
            trial.set_user_attr("owner", owner())
            settings = SearchSpace.overrides(trial.params)
            get_run_logger().info("trial %d: %s", trial.number, " ".join(settings))
            running[trial.number] = start_trial(plan, trial.number, settings)
        for number, state in wait_for_any(running):
            del running[number]
            if not state.is_completed():
                failures += 1
                fail_trial(study, number, state)
        if failures > max(2, trials // 2):
            raise RuntimeError(
                f"{failures} trials of study {plan.study} failed: see their runs' logs"
            )


def trial_slots(deployment: str | None) -> int:
    """Trials at once: 1 in this process; else the deployment's queue (and pool) limit."""
    if deployment is None:
        return 1
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        d = client.read_deployment_by_name(deployment)
        queue = client.read_work_queue_by_name(d.work_queue_name, work_pool_name=d.work_pool_name)
        pool = client.read_work_pool(d.work_pool_name)
    limits = [n for n in (queue.concurrency_limit, pool.concurrency_limit) if n]
    slots = min(limits) if limits else 1
    get_run_logger().info(
        "trials run %d at a time: %s",
        slots,
        f"the concurrency limit of {d.work_pool_name}/{d.work_queue_name}"
        if limits
        else f"{d.work_pool_name}/{d.work_queue_name} sets no concurrency limit",
    )
    return slots


def start_trial(plan: TrialPlan, number: int, settings: list[str]) -> UUID:
    """Trial ``number``'s run: in this process (done on return), or a deployment run."""
    run_name = f"{plan.study}-trial-{number}"
    params = plan.parameters(number, settings)
    if plan.deployment is None:
        state = train_pipeline.with_options(flow_run_name=run_name)(**params, return_state=True)
        return state.state_details.flow_run_id
    from prefect.deployments import run_deployment

    env = {} if has_password(plan.study_url) else {STORAGE_ENV: plan.study_url}
    run = run_deployment(
        plan.deployment,
        parameters=to_jsonable_python(params),
        flow_run_name=run_name,
        job_variables={"env": env},
        timeout=0,
        as_subflow=True,
    )
    return run.id


def wait_for_any(running: dict[int, UUID], poll_s: float = 2.0) -> list[tuple[int, object]]:
    """(trial number, final state) of the runs that have ended; waits until one has."""
    from prefect.client.orchestration import get_client

    with get_client(sync_client=True) as client:
        while True:
            ended = []
            for number, run_id in running.items():
                state = client.read_flow_run(run_id).state
                if state is not None and state.is_final():
                    ended.append((number, state))
            if ended:
                return ended
            time.sleep(poll_s)


def fail_trial(study, number: int, state) -> None:
    """A trial whose run failed: FAIL in the study, unless its run told the study first."""
    from optuna.trial import TrialState

    if study.trials[number].state == TrialState.RUNNING:
        study.tell(number, state=TrialState.FAIL)
    get_run_logger().warning("trial %d failed (%s)", number, state.message)


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
