"""Pruning a sweep's trial: each validation goes to its Optuna study, which may stop the run.

Rank 0 reports to the study and asks its pruner; the answer is broadcast, so
every rank stops at the same step. Validations are reported by their number
(1, 2, ...), not by training step: trials with other batch shapes take other
step counts for the same share of their budget, and the pruner compares trials
at equal shares.
"""

from __future__ import annotations

import logging
import math
import os

from charrnn.config import TrainConfig
from charrnn.distributed import group as dist_utils
from charrnn.distributed.group import DistEnv
from charrnn.errors import ConfigError

log = logging.getLogger("charrnn")

# Where the trial's study lives. An environment variable, not a config key: a database URL
# may hold a password, and the config goes into checkpoints, W&B and reports.
STORAGE_ENV = "CHARRNN_STUDY_STORAGE"
# The pruner judges a trial from a quarter of its validations on (the 4th of the default 16),
# and the first two trials run to the end to set the median. Every run decays its lr to 0 at
# the end of its budget, so mid-run a larger step still scores worse than it will finish
# (short-horizon bias, Wu et al. 2018), and some trials near good settings are stopped. Judging
# from half the run instead gained nothing in six 60 s sweeps on four corpora and made them
# ~9 % longer (bench/RESULTS.md, "When the pruner judges").
WARMUP_SHARE = 0.25
# With validations every `eval_interval` steps their number is not known up front.
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


def warmup_validations(t: TrainConfig) -> int:
    """Validations a trial runs before the pruner may stop it: :data:`WARMUP_SHARE` of them."""
    if t.eval_interval or not t.evals_per_run:
        return WARMUP_VALIDATIONS
    return max(1, math.ceil(WARMUP_SHARE * t.evals_per_run))


def median_pruner(warmup: int = WARMUP_VALIDATIONS):
    """The sweep's pruner, judging from the ``warmup``-th validation on.

    A study does not store its pruner, so every process builds one; a trial's own
    decides (the sweep flow never prunes).
    """
    import optuna

    return optuna.pruners.MedianPruner(n_startup_trials=STARTUP_TRIALS, n_warmup_steps=warmup)


class TrialPruner:
    """One rank's link to the trial this run is."""

    def __init__(self, study: str, number: int, env: DistEnv, warmup: int = WARMUP_VALIDATIONS):
        self.study_name, self.number, self.env, self.warmup = study, number, env, warmup
        self.trial = self._open_trial() if env.is_main else None

    @classmethod
    def from_config(cls, t: TrainConfig, env: DistEnv) -> TrialPruner | None:
        if not t.trial_study:
            return None
        if t.trial_number < 0:
            raise ConfigError(
                f"train.trial_study={t.trial_study!r} needs train.trial_number",
                fix="set train.trial_number to the trial's number in the study, "
                "or leave train.trial_study empty",
            )
        return cls(t.trial_study, t.trial_number, env, warmup_validations(t))

    def _open_trial(self):
        import optuna

        rdb = optuna.storages.RDBStorage(study_storage(self.study_name))
        study = optuna.load_study(
            study_name=self.study_name, storage=rdb, pruner=median_pruner(self.warmup)
        )
        try:
            study_id = rdb.get_study_id_from_name(self.study_name)
            trial_id = rdb.get_trial_id_from_study_id_trial_number(study_id, self.number)
        except KeyError:
            raise ConfigError(
                f"study {self.study_name!r} has no trial number {self.number}",
                fix="start trials from the sweep flow (python -m flows sweep)",
            ) from None
        return optuna.Trial(study, trial_id)

    def should_stop(self, validation: int, loss_nats: float, final: bool = False) -> bool:
        """Report the ``validation``-th score; True on every rank when the study stops the trial.

        Never at the run's last validation (``final``, agreed by every rank): there is
        nothing left to save, and the trial ends COMPLETE with its full-split score.
        """
        if self.trial is not None:
            self.trial.report(loss_nats, validation)
        if final:
            return False
        prune = self.trial is not None and self.trial.should_prune()
        return bool(dist_utils.broadcast_object(prune))
