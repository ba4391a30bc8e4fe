"""How a sweep draws its trials: Gaussian-process Bayesian optimisation that learns from pruning.

Optuna's default sampler, TPE, draws its first ten trials at random (told to
model sooner, it drew little better than random in a one-off check recorded in
``bench/RESULTS.md``): a sweep of six short trials would be the base settings
and five random draws of a broad space. Optuna's GP sampler is its choice for few,
expensive trials; it draws trials that run at once apart from each other. Its
one gap for a sweep is pruning: it models completed trials only, so it draws
again and again next to settings the pruner stopped. :class:`PruneAwareGPSampler`
closes it. Imported only where a study is opened: Optuna is the ``sweep`` extra.
"""

from __future__ import annotations

import copy

import optuna
from optuna.trial import FrozenTrial, TrialState


def startup_trials(trials: int) -> int:
    """Trials drawn at random before the model takes over: a third, from 2 to Optuna's 10.

    For six: the base settings (enqueued) and one random draw.
    """
    return max(2, min(10, trials // 3))


def sampler(trials: int, seed: int | None = None) -> PruneAwareGPSampler:
    """The sampler of a sweep whose study will hold ``trials`` trials."""
    return PruneAwareGPSampler(n_startup_trials=startup_trials(trials), seed=seed)


class PruneAwareGPSampler(optuna.samplers.GPSampler):
    """Optuna's GP sampler, with each pruned trial scored by its last validation.

    That score got the trial pruned (worse than the median of the others at the
    same point), so it steers the model away from those settings. Optuna's CMA-ES
    sampler treats pruned trials the same way (``consider_pruned_trials``).
    """

    def sample_relative(self, study, trial, search_space):
        return super().sample_relative(_PrunedScored(study), trial, search_space)


class _PrunedScored:
    """A study as the sampler reads it: pruned trials completed at their last validation.

    Optuna's samplers read trials through ``Study._get_trials``, a private method;
    ``tests/test_sweep.py`` fails if a new Optuna reads them another way.
    """

    def __init__(self, study: optuna.Study):
        self._study = study

    def __getattr__(self, name: str):
        return getattr(self._study, name)

    def _get_trials(
        self, deepcopy: bool = True, states=None, use_cache: bool = False
    ) -> list[FrozenTrial]:
        seen = self._study._get_trials(deepcopy=False, states=None, use_cache=use_cache)
        scored = [_scored(trial) for trial in seen]
        kept = [trial for trial in scored if states is None or trial.state in states]
        return [copy.deepcopy(trial) for trial in kept] if deepcopy else kept


def _scored(trial: FrozenTrial) -> FrozenTrial:
    if trial.state != TrialState.PRUNED or not trial.intermediate_values:
        return trial
    scored = copy.copy(trial)
    scored.state = TrialState.COMPLETE
    scored.value = trial.intermediate_values[max(trial.intermediate_values)]
    return scored
