"""The search space of a sweep: which config keys a trial sets, and from what range.

A space file is YAML, one entry per config key::

    model.hidden_size: {low: 128, high: 512, step: 64}   # integers: low, high, step
    train.lr: {low: 0.002, high: 0.02, log: true}        # numbers: low, high, log
    train.seq_len: {choices: [16, 32, 64]}               # a choice

Integer keys sample integers, number keys numbers, ``choices`` any listed value.
The whole space is checked before any trial starts: an unknown key, a key a
trial may not set, an empty range or a value the config refuses is an error.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import yaml

from charrnn.config import SECTIONS, Config, load_config, resolve_key
from charrnn.errors import CharRNNError, ConfigError

# What the sweep itself decides for every trial: where it runs, how long, and on what.
RESERVED = {
    "data.corpus",
    "train.out_dir",
    "train.resume",
    "train.time_budget_s",
    "train.max_steps",
    "train.epochs",
    "train.trial_study",
    "train.trial_number",
}


@dataclass(frozen=True)
class Param:
    """One key's range: [low, high] (log-uniform when ``log``), or one of ``choices``."""

    key: str
    low: float | None = None
    high: float | None = None
    step: int | None = None
    log: bool = False
    choices: tuple[Any, ...] | None = None
    integer: bool = False

    def holds(self, value: Any) -> bool:
        """Whether ``value`` is one this range can draw."""
        if self.choices is not None:
            return value in self.choices
        if isinstance(value, bool) or not isinstance(value, int | float):
            return False
        if not self.low <= value <= self.high:
            return False
        return not self.integer or (value - self.low) % (self.step or 1) == 0

    def distribution(self):
        import optuna.distributions as d

        if self.choices is not None:
            return d.CategoricalDistribution(self.choices)
        if self.integer:
            return d.IntDistribution(
                int(self.low), int(self.high), log=self.log, step=self.step or 1
            )
        return d.FloatDistribution(self.low, self.high, log=self.log)


@dataclass(frozen=True)
class SearchSpace:
    params: tuple[Param, ...]

    def distributions(self) -> dict[str, Any]:
        return {p.key: p.distribution() for p in self.params}

    def base_point(self, cfg: Config) -> dict[str, Any]:
        """The base config's values of the searched keys that the space holds.

        A study's first trial: the settings a run would get without a sweep, so the
        report shows what the sweep gained and the pruner's median starts from a sane run.
        Keys whose base value the space cannot draw (outside a range, ``auto`` where no
        choice is ``auto``) are left to the sampler.
        """
        point = {}
        for p in self.params:
            section, _, name = p.key.partition(".")
            value = getattr(getattr(cfg, section), name)
            if p.holds(value):
                point[p.key] = value
        return point

    def to_dict(self) -> dict[str, dict]:
        """The space as its file would write it (what a study records and compares)."""
        out = {}
        for p in self.params:
            fields = asdict(p).items()
            entry = {k: v for k, v in fields if k not in ("key", "integer") and v is not None}
            entry = {k: v for k, v in entry.items() if k != "log" or v}
            if "choices" in entry:
                entry["choices"] = list(entry["choices"])
            out[p.key] = entry
        return out

    @staticmethod
    def overrides(params: dict[str, Any]) -> list[str]:
        """A trial's values as config overrides (``model.hidden_size=256``)."""
        return [f"{key}={_yaml_value(value)}" for key, value in params.items()]


def _yaml_value(value: Any) -> str:
    """One value as an override reads it back (YAML): ``0.005``, ``256``, ``true``."""
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


# A default a user would choose for a short CPU budget: size, depth, the optimiser's step,
# regularisation and the batch shape, around the defaults (bench/RESULTS.md).
DEFAULT_SPACE: dict[str, dict] = {
    "model.hidden_size": {"low": 128, "high": 512, "step": 64},
    # a range, not choices: the sampler's trust region steps to a neighbouring depth
    "model.num_layers": {"low": 1, "high": 3},
    "train.lr": {"low": 0.002, "high": 0.02, "log": True},
    # auto among the choices: the base settings' own rule is one of the candidates
    "model.dropout": {"choices": ["auto", 0.0, 0.1, 0.2, 0.3]},
    "train.weight_decay": {"low": 0.01, "high": 0.3, "log": True},
    "train.seq_len": {"choices": [16, 32, 64]},
    "train.batch_size": {"choices": [32, 64, 128]},
}


def load_space(path: str | Path | None) -> SearchSpace:
    """The space in a YAML file, or :data:`DEFAULT_SPACE`; checked entry by entry."""
    where = str(path) if path else "the default search space"
    if path is None:
        raw: Any = DEFAULT_SPACE
    else:
        try:
            raw = yaml.safe_load(Path(path).read_text(encoding="utf-8"))
        except OSError as exc:
            raise ConfigError(
                f"cannot read the search space ({exc.strerror})", where=where
            ) from None
        except yaml.YAMLError as exc:
            raise ConfigError(f"the search space is not valid YAML ({exc})", where=where) from None
    if not isinstance(raw, dict) or not raw:
        raise ConfigError(
            "a search space is a non-empty mapping of config key to range",
            where=where,
            fix="write e.g. `train.lr: {low: 0.002, high: 0.02, log: true}`, one key per line",
        )
    return SearchSpace(tuple(parse_param(str(key), spec, where) for key, spec in raw.items()))


def parse_param(key: str, spec: Any, where: str) -> Param:
    """One entry of a space, checked.

    The key must be known and settable, its range non-empty and accepted by the config.
    """
    try:
        key = resolve_key(key)
    except CharRNNError as exc:
        raise ConfigError(
            f"unknown parameter {key!r} in the search space: {exc.what}",
            where=where,
            fix="use config keys as `charrnn config --explain` lists them",
        ) from None
    section, _, name = key.partition(".")
    if section not in SECTIONS or name not in SECTIONS[section].model_fields:
        raise ConfigError(
            f"unknown parameter {key!r} in the search space",
            where=where,
            fix="use config keys as `charrnn config --explain` lists them",
        )
    if key in RESERVED or section in ("data", "track"):
        raise ConfigError(
            f"{key} cannot be searched: the sweep sets it for every trial",
            where=where,
            fix="remove it from the space; --budget-s sets each trial's budget",
        )
    if not isinstance(spec, dict):
        raise ConfigError(
            f"{key}: a range is a mapping (low/high or choices), not {spec!r}",
            where=where,
            fix=f"write e.g. `{key}: {{low: 1, high: 4}}`",
        )
    unknown = set(spec) - {"low", "high", "step", "log", "choices"}
    if unknown:
        raise ConfigError(
            f"{key}: unknown range field(s) {', '.join(sorted(unknown))}",
            where=where,
            fix="use low, high, step, log or choices",
        )
    param = _range(key, spec, where)
    for value in param.choices if param.choices is not None else (param.low, param.high):
        try:  # the config's own checks: a trial must never fail on a value the space allowed
            load_config(None, [f"{key}={value}"])
        except ConfigError as exc:
            raise ConfigError(
                f"{key}: the space allows {value!r}, which the config refuses ({exc.what})",
                where=where,
            ) from None
    return param


def _number_or_text(value: Any) -> Any:
    """YAML 1.1 reads ``1e-05`` as text: a choice that reads as a number is one."""
    if isinstance(value, str):
        try:
            return int(value) if value.strip().lstrip("+-").isdigit() else float(value)
        except ValueError:
            return value
    return value


def _range(key: str, spec: dict, where: str) -> Param:
    if "choices" in spec:
        choices = spec["choices"]
        if not isinstance(choices, list) or not choices:
            raise ConfigError(
                f"{key}: choices is empty",
                where=where,
                fix=f"list at least one value, e.g. `{key}: {{choices: [a, b]}}`",
            )
        return Param(key, choices=tuple(_number_or_text(c) for c in choices))
    if "low" not in spec or "high" not in spec:
        raise ConfigError(f"{key}: a range needs low and high (or choices)", where=where)
    low, high, log = spec["low"], spec["high"], bool(spec.get("log", False))
    numbers = all(isinstance(v, int | float) and not isinstance(v, bool) for v in (low, high))
    if not numbers or not all(math.isfinite(v) for v in (low, high)):
        raise ConfigError(
            f"{key}: low and high must be numbers (got {low!r}, {high!r})", where=where
        )
    if not low < high:
        raise ConfigError(
            f"{key}: the range [{low}, {high}] is empty",
            where=where,
            fix="make low smaller than high, or use `choices: [VALUE]` for one value",
        )
    if log and low <= 0:
        raise ConfigError(f"{key}: a log range needs low > 0 (got {low})", where=where)
    integer = SECTIONS[key.split(".")[0]].model_fields[key.split(".")[1]].annotation is int
    step = spec.get("step")
    if step is not None and (not integer or not isinstance(step, int) or step < 1):
        raise ConfigError(f"{key}: step is for integer keys, a whole number >= 1", where=where)
    return Param(key, low=low, high=high, step=step, log=log, integer=integer)
