"""How a sweep draws its trials: Bayesian optimisation near the best trial, learning from pruning.

Optuna's default sampler, TPE, draws its first ten trials at random (told to
model sooner, it drew little better than random in a one-off check recorded in
``bench/RESULTS.md``): a sweep of six short trials would be the base settings
and five random draws of a broad space. Optuna's GP sampler is its choice for few,
expensive trials. Two gaps remain for a short sweep, and :class:`TrustRegionGPSampler`
closes both:

- It models completed trials only, so it draws again and again next to settings
  the pruner stopped. Here a pruned trial counts, scored by its last validation.
- With a handful of trials in seven dimensions, its model is unsure everywhere
  far from them, and it draws at the ends of the ranges (512 units at lr 0.02
  and weight decay 0.3, for a 60 s budget). Here each draw's numeric values
  stay within a trust region around the best trial so far (TuRBO: Eriksson et
  al., 2019): half of each range, centred on the best trial's value, and at
  least one step either way of an integer. The region moves with the best
  trial, so a sweep still travels; choices stay free.

Imported only where a study is opened: Optuna is the ``sweep`` extra.
"""

from __future__ import annotations

import copy
import math

import optuna
from optuna.distributions import BaseDistribution, FloatDistribution, IntDistribution
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState

# Half the width of the trust region, as a share of each numeric range. On two synthetic
# landscapes over the default space (python -m bench.sampler; bench/RESULTS.md, "A trust
# region around the best trial"), 0.25 gained the most, or within 0.004 of the most, at 6
# and 15 trials where the optimum was near the base settings; where it was far, every
# region gained less than none at 6 trials (0.155 against 0.183) and as much at 15.
REGION = 0.25


def startup_trials(trials: int) -> int:
    """Trials drawn at random before the model takes over: a third, from 2 to Optuna's 10.

    For six: the base settings (enqueued) and one random draw.
    """
    return max(2, min(10, trials // 3))


def sampler(trials: int, seed: int | None = None) -> TrustRegionGPSampler:
    """The sampler of a sweep whose study will hold ``trials`` trials."""
    return TrustRegionGPSampler(n_startup_trials=startup_trials(trials), seed=seed)


class TrustRegionGPSampler(optuna.samplers.GPSampler):
    """Optuna's GP sampler, drawing near the best trial, with pruned trials scored.

    A pruned trial's score is its last validation: that score got it pruned
    (worse than the median of the others at the same point), so it steers the
    model away from those settings. Optuna's CMA-ES sampler treats pruned trials
    the same way (``consider_pruned_trials``).
    """

    def __init__(self, *, region: float | None = REGION, **kwargs):
        """``region``: half the trust region's width, a share of each range; None: no region."""
        super().__init__(**kwargs)
        self._region = region

    def sample_relative(self, study, trial, search_space):
        scored = _PrunedScored(study)
        best = _best(scored)
        if best is not None and self._region is not None:
            search_space = {
                key: narrow(dist, best.params[key], self._region) if key in best.params else dist
                for key, dist in search_space.items()
            }
        return super().sample_relative(scored, trial, search_space)


def _best(study: _PrunedScored) -> FrozenTrial | None:
    done = study._get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if not done:
        return None
    sign = -1 if study.direction == StudyDirection.MAXIMIZE else 1
    return min(done, key=lambda trial: sign * trial.value)


def narrow(dist: BaseDistribution, centre, half: float) -> BaseDistribution:
    """``dist`` cut to ``centre`` ± ``half`` of its range (on its log scale if log); choices whole.

    Integers keep their step's grid, so every value the region holds is one the
    full range holds, and at least one step either side of ``centre``: a short
    range (layers 1-3) would otherwise hold the centre alone, and never move.
    """
    if isinstance(dist, FloatDistribution) and dist.step is None:
        to, back = (math.log, math.exp) if dist.log else (float, float)
        reach = half * (to(dist.high) - to(dist.low))
        low = max(dist.low, back(to(centre) - reach))
        high = min(dist.high, back(to(centre) + reach))
        return FloatDistribution(low, high, log=dist.log)
    if isinstance(dist, IntDistribution) and dist.log:
        reach = half * (math.log(dist.high) - math.log(dist.low))
        low = min(centre - 1, math.ceil(centre * math.exp(-reach)))
        high = max(centre + 1, math.floor(centre * math.exp(reach)))
        return IntDistribution(max(dist.low, low), min(dist.high, high), log=True)
    if isinstance(dist, IntDistribution):
        reach, step = half * (dist.high - dist.low), dist.step
        low = min(centre - step, dist.low + step * math.ceil((centre - reach - dist.low) / step))
        high = max(centre + step, dist.low + step * math.floor((centre + reach - dist.low) / step))
        return IntDistribution(max(dist.low, low), min(dist.high, high), step=step)
    return dist


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
