"""Pruning a sweep's trial: each validation goes to its Optuna study, which may stop the run.

Rank 0 reports to the study and asks its pruner; the answer is broadcast, so
every rank stops at the same step. Validations are reported by their number
(1, 2, ...), not by training step: trials with other batch shapes take other
step counts for the same share of their budget, and the pruner compares trials
at equal shares.
"""

from __future__ import annotations

import logging
import os

from charrnn.config import TrialConfig
from charrnn.distributed import group as dist_utils
from charrnn.distributed.group import DistEnv
from charrnn.errors import ConfigError

log = logging.getLogger("charrnn")

# Where the trial's study lives. An environment variable, not a config key: a database URL
# may hold a password, and the config goes into checkpoints, W&B and reports.
STORAGE_ENV = "CHARRNN_STUDY_STORAGE"
# Trials that never reach this many validations are not compared (their first scores are
# mostly warm-up), and the first two trials run to the end to set the median.
WARMUP_VALIDATIONS = 4
STARTUP_TRIALS = 2


def study_storage(study: str) -> str:
    """The storage URL of a trial's study, from :data:`STORAGE_ENV`; an error when unset."""
    url = os.environ.get(STORAGE_ENV, "")
    if not url:
        raise ConfigError(
            f"train.trial_study={study!r} but {STORAGE_ENV} is not set",
            fix=f"export {STORAGE_ENV}=<the study's storage URL> (the sweep flow sets it "
            "for trials it runs itself; set it on the workers that run deployed trials)",
        )
    return url


def median_pruner():
    """The sweep's pruner; a study does not store its pruner, so every process builds this one."""
    import optuna

    return optuna.pruners.MedianPruner(
        n_startup_trials=STARTUP_TRIALS, n_warmup_steps=WARMUP_VALIDATIONS
    )


class TrialPruner:
    """One rank's link to the trial this run is."""

    def __init__(self, study: str, number: int, env: DistEnv):
        self.study_name, self.number, self.env = study, number, env
        self.trial = self._open_trial() if env.is_main else None

    @classmethod
    def from_config(cls, t: TrialConfig, env: DistEnv) -> TrialPruner | None:
        if not t.trial_study:
            return None
        if t.trial_number < 0:
            raise ConfigError(
                f"train.trial_study={t.trial_study!r} needs train.trial_number",
                fix="set train.trial_number to the trial's number in the study, "
                "or leave train.trial_study empty",
            )
        return cls(t.trial_study, t.trial_number, env)

    def _open_trial(self):
        import optuna

        rdb = optuna.storages.RDBStorage(study_storage(self.study_name))
        study = optuna.load_study(study_name=self.study_name, storage=rdb, pruner=median_pruner())
        try:
            study_id = rdb.get_study_id_from_name(self.study_name)
            trial_id = rdb.get_trial_id_from_study_id_trial_number(study_id, self.number)
        except KeyError:
            raise ConfigError(
                f"study {self.study_name!r} has no trial number {self.number}",
                fix="start trials from the sweep flow (python -m flows sweep)",
            ) from None
        return optuna.Trial(study, trial_id)

    def should_stop(self, validation: int, loss_nats: float) -> bool:
        """Report the ``validation``-th score; True on every rank when the study stops the trial."""
        prune = False
        if self.trial is not None:
            self.trial.report(loss_nats, validation)
            prune = self.trial.should_prune()
        return bool(dist_utils.broadcast_object(prune))
