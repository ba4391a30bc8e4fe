"""The study that holds a sweep's trials, in a real database (Optuna RDB storage).

SQLite under the runs directory by default; PostgreSQL (or any SQLAlchemy URL)
for several workers on several machines. A study records its search space, so
a second sweep under the same name with another space is refused instead of
mixing trials that searched different things. A sweep that was killed left its
running trial behind: :func:`recover` marks it failed and queues its
parameters again, so the study continues where it stopped.
"""

from __future__ import annotations

import logging
import os
import socket
from dataclasses import asdict, dataclass
from pathlib import Path

from charrnn.errors import ConfigError
from charrnn.sweep.space import SearchSpace
from charrnn.train.pruning import median_pruner

log = logging.getLogger("charrnn")

# Objective and intermediate values: val nats/char (lower is better).
DIRECTION = "minimize"


def default_storage(runs_dir: str | Path) -> str:
    """``sqlite:///RUNS/sweeps/studies.db`` (the directory is created)."""
    path = Path(runs_dir).resolve() / "sweeps" / "studies.db"
    path.parent.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{path}"


def redacted(url: str) -> str:
    """The URL without its password: what errors and logs may show."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(url).render_as_string(hide_password=True)
    except Exception:  # not a URL at all: show only its scheme
        return url.split(":", 1)[0] + ":..."


def open_storage(url: str):
    """An RDB storage that answered a query; a clear error when the database cannot be reached."""
    import optuna

    connect = {"connect_timeout": 10} if url.startswith("postgresql") else {}
    try:
        storage = optuna.storages.RDBStorage(
            url, engine_kwargs={"pool_pre_ping": True, "connect_args": connect}
        )
        storage.get_all_studies()
    except Exception as exc:  # sqlalchemy and driver errors alike
        reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else type(exc).__name__
        raise ConfigError(
            f"cannot reach the study storage {redacted(url)} ({reason.replace(url, '...')})",
            fix="check the URL, that the database server is up and this machine may connect "
            "(e.g. postgresql://USER@HOST:5432/DB), or leave --storage out for SQLite under "
            "the runs directory",
        ) from None
    return storage


def check_study(storage, name: str, space: SearchSpace) -> bool:
    """Whether study ``name`` exists; an error (nothing written) if it exists with another space."""
    import optuna

    names = {summary.study_name for summary in optuna.get_all_study_summaries(storage)}
    if name not in names:
        return False
    recorded = optuna.load_study(study_name=name, storage=storage).user_attrs.get("space")
    if recorded != space.to_dict():
        raise ConfigError(
            f"study {name!r} exists with another search space",
            where=redacted(storage.url),
            fix=f"use another --study name, or the space it was created with: {recorded}",
        )
    return True


def open_study(storage, name: str, space: SearchSpace, first: dict | None = None, trials: int = 10):
    """The study ``name``, created with ``space`` when new (checked by :func:`check_study`).

    A new study's first trial is ``first`` (the base settings, see
    :meth:`SearchSpace.base_point`) where given. ``trials``: how many the sweep will
    run, which sets how many :func:`~charrnn.sweep.sampler.sampler` draws at random.
    """
    import optuna

    from charrnn.sweep.sampler import sampler

    exists = check_study(storage, name, space)
    study = optuna.create_study(
        study_name=name,
        storage=storage,
        direction=DIRECTION,
        sampler=sampler(trials),
        pruner=median_pruner(),
        load_if_exists=exists,
    )
    if not exists:
        study.set_user_attr("space", space.to_dict())
        if first:
            study.enqueue_trial(first, user_attrs={"base": True})
    return study


def owner() -> str:
    """``host:pid`` of this sweep process: recorded on each trial it asks for."""
    return f"{socket.gethostname()}:{os.getpid()}"


def _abandoned(trial) -> bool:
    """A running trial whose sweep process, on this host, is gone (killed or crashed)."""
    host, _, pid = str(trial.user_attrs.get("owner", "")).rpartition(":")
    if host != socket.gethostname() or not pid.isdigit():
        return False  # another machine's trial, or not ours to judge
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def recover(study) -> list[int]:
    """Trials a killed sweep on this host left running: failed, their parameters queued again.

    Trials other machines are running are left alone, so several sweeps can share a study.
    """
    from optuna.trial import TrialState

    running = study.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    stale = [trial for trial in running if _abandoned(trial)]
    for trial in stale:
        study.tell(trial.number, state=TrialState.FAIL)
        study.enqueue_trial(trial.params, user_attrs={"retry_of": trial.number})
    return [trial.number for trial in stale]


def finished(study) -> list:
    """The trials that ran to a verdict: completed or pruned."""
    from optuna.trial import TrialState

    return study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED))


@dataclass(frozen=True)
class TrialOutcome:
    """What a finished trial's run tells its study: its scores and where its model is."""

    run_dir: str
    checkpoint: str
    steps: int
    val_nats: float | None  # the kept model's full val split: the objective
    held_out_bpc: float | None  # test split (else val): what champion/challenger compares
    stopped: str = ""  # why it stopped early ("pruned at step N", early stopping), or ""
    pruned: bool = False
    wandb_run_id: str | None = None


def record_outcome(url: str, study_name: str, number: int, outcome: TrialOutcome) -> None:
    """Store ``outcome`` on trial ``number`` and end it: pruned, or complete with its score.

    The trial's own run calls this, in whatever process or machine ran it, so the
    sweep only has to wait for the run to end.
    """
    import optuna
    from optuna.trial import TrialState

    storage = open_storage(url)
    study_id = storage.get_study_id_from_name(study_name)
    trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, number)
    for key, value in asdict(outcome).items():
        storage.set_trial_user_attr(trial_id, key, value)
    study = optuna.load_study(study_name=study_name, storage=storage)
    if outcome.pruned:
        study.tell(number, state=TrialState.PRUNED)
    elif outcome.val_nats is None:  # no val split to score: nothing to compare it by
        study.tell(number, state=TrialState.FAIL)
    else:
        study.tell(number, outcome.val_nats)


def has_password(url: str) -> bool:
    """Whether the URL carries a password (then it never goes into a run's parameters)."""
    from sqlalchemy.engine import make_url

    try:
        return bool(make_url(url).password)
    except Exception:  # not a URL sqlalchemy reads: treat it as secret
        return True
