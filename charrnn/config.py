"""Typed, validated configuration: defaults, a YAML file, then ``key=value`` overrides.

Precedence is defaults < YAML file < command-line overrides. Keys are either
dotted (``train.lr=3e-3``) or, when unambiguous, bare (``lr=3e-3``); values are
read as YAML, so list fields take YAML lists (``track.tags=[a,b]``).

Every section is a pydantic model with ``extra="forbid"`` and
``validate_assignment=True``: an unknown key, a wrong type or a value outside
its choices or range is refused with a :class:`ConfigError` that names the key,
the allowed values and the fix -- when the config is loaded (before any run
directory, W&B run or process group exists) and when code assigns a field.
"""

from __future__ import annotations

import contextvars
import difflib
import json
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import annotated_types
import yaml
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainValidator,
    ValidationError,
    model_validator,
)
from pydantic_core import PydanticCustomError

from charrnn.errors import ConfigError


def _number(value: Any) -> Any:
    """Numbers, and strings that read as numbers; never true/false.

    Strings count because YAML 1.1 reads ``3e-3`` as a string.
    """
    if isinstance(value, bool):
        raise PydanticCustomError("number_type", "expected a number, got a boolean")
    return value


Int = Annotated[int, BeforeValidator(_number)]
Float = Annotated[float, BeforeValidator(_number)]
Fraction = Annotated[float, BeforeValidator(_number), Field(ge=0, lt=1)]


def _rate_or_auto(value: Any) -> float | str:
    """``auto``, or a number in [0, 1).

    One clear error either way, not one per member of a union.
    """
    if value == "auto":
        return value
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise PydanticCustomError("number_type", "expected auto or a number")
    try:
        number = float(value)
    except ValueError:
        raise PydanticCustomError("float_parsing", "expected auto or a number") from None
    if not 0 <= number < 1:  # also refuses nan
        raise PydanticCustomError("rate_range", "expected auto or a number in [0, 1)")
    return number


RateOrAuto = Annotated[float | Literal["auto"], PlainValidator(_rate_or_auto)]


_LOADING = contextvars.ContextVar("charrnn_config_loading", default=False)


class _Checked(BaseModel):
    """Construction and assignment in code raise ConfigError, like loading does."""

    def __init__(self, **values: Any) -> None:
        # Nested inside Config.model_validate: let pydantic collect every error with its location.
        if _LOADING.get():
            super().__init__(**values)
            return
        try:
            super().__init__(**values)
        except ValidationError as exc:
            raise _config_error(
                exc,
                where=f"{type(self).__name__}(...)",
                prefix=_SECTION_OF.get(type(self).__name__),
            ) from None

    def __setattr__(self, name: str, value: Any) -> None:
        try:
            super().__setattr__(name, value)
        except ValidationError as exc:
            raise _config_error(
                exc, where="assignment in code", prefix=_SECTION_OF.get(type(self).__name__)
            ) from None


class _Section(_Checked):
    model_config = ConfigDict(
        extra="forbid", validate_assignment=True, coerce_numbers_to_str=True, allow_inf_nan=False
    )


class DataConfig(_Section):
    corpus: str = Field(
        "shakespeare",
        min_length=1,
        description="the text to train on: a named corpus (shakespeare), a path, file://, "
        "http(s)://, any fsspec URL, or hf://datasets/NAME",
    )
    val_fraction: Fraction = Field(0.05, description="share of the corpus held out for validation")
    test_fraction: Fraction = Field(
        0.05, description="share held out for the final test score; with val_fraction, below 1"
    )
    token_dtype: Literal["auto", "uint8", "uint16", "uint32"] = Field(
        "auto",
        description="integer type of the token files; auto: the smallest that fits the vocab",
    )
    unk_policy: Literal["unk", "error"] = Field(
        "unk",
        description="characters outside the vocabulary in text encoded for a run "
        "(charrnn evaluate --split PATH): map them to <unk>, or stop with an error",
    )
    cache_dir: str = Field(
        "",
        description="where downloads and token files are kept; empty: $CHARRNN_CACHE or "
        "~/.cache/charrnn",
    )
    http_timeout_s: Float = Field(
        30.0, gt=0, description="seconds before one download attempt gives up"
    )
    http_retries: Int = Field(3, ge=0, description="further attempts after a failed download")

    @model_validator(mode="after")
    def _fractions_leave_a_training_split(self) -> DataConfig:
        if self.val_fraction + self.test_fraction >= 1:
            raise PydanticCustomError(
                "fraction_sum",
                "data.val_fraction + data.test_fraction = {total} leaves no training split: "
                "they must sum to less than 1",
                {"total": round(self.val_fraction + self.test_fraction, 12)},
            )
        return self


class ModelConfig(_Section):
    embedding_dim: Int = Field(64, ge=1, description="size of each character's embedding vector")
    hidden_size: Int = Field(256, ge=1, description="LSTM state size of every layer")
    num_layers: Int = Field(2, ge=1, description="number of stacked LSTM layers")
    # auto, because the right rate depends on how often a run repeats its corpus: none for a few
    # passes, 0.3 for many (charrnn/train/dropout.py has the rule and the runs behind it).
    dropout: RateOrAuto = Field(
        "auto",
        description="dropout between the LSTM layers and before the head; auto: chosen from the "
        "epochs the run will see",
    )


# Parallel streams when scoring a split: train.eval_batch_size's default, and that of the
# scoring functions called without a config (registry, flows).
EVAL_STREAMS = 32


# TrainConfig is one section of keys (train.lr, train.patience, ...) made of the parts
# below, so a reader holds one concern at a time and a component can take only the
# part it reads (make_optimizer an OptimiserConfig, EvalSchedule a ValidationConfig).


class RunFilesConfig(_Section):
    """Where the run lives and what it keeps."""

    out_dir: str = Field(
        "runs/default", min_length=1, description="run directory: checkpoints, samples, report"
    )
    resume: bool = Field(
        False, description="continue the run in out_dir from its latest checkpoint"
    )
    checkpoint_interval: Int = Field(
        500,
        ge=1,
        description="steps between checkpoints; also saved at the end and on SIGINT/SIGTERM",
    )
    keep_last: Int = Field(3, ge=1, description="step checkpoints kept (best.pt is kept besides)")


class BatchConfig(_Section):
    """What one step reads."""

    batch_size: Int = Field(
        64,
        ge=1,
        description="parallel streams per step, in total over all processes (a multiple of "
        "the process count)",
    )
    seq_len: Int = Field(
        16, ge=1, description="truncated-BPTT window; the state is carried across windows"
    )
    segment_windows: Int = Field(
        32,
        ge=0,
        description="a stream hops to a new random place every this many windows; 0: "
        "contiguous streams",
    )


class OptimiserConfig(_Section):
    """AdamW and its learning-rate schedule."""

    lr: Float = Field(7e-3, gt=0, description="peak learning rate (AdamW), reached after warm-up")
    lr_schedule: Literal["linear", "cosine"] = Field(
        "linear", description="decay after warm-up, to lr * min_lr_ratio at the run's end"
    )
    min_lr_ratio: Float = Field(0.0, ge=0, le=1, description="final learning rate as a share of lr")
    warmup_steps: Int = Field(20, ge=0, description="steps of linear warm-up from 0 to lr")
    lr_decay_steps: Int = Field(
        0, ge=0, description="decay horizon in steps; 0: the run's own end (steps, epochs or time)"
    )
    weight_decay: Float = Field(
        0.1, ge=0, description="AdamW weight decay, on weight matrices only (biases spared)"
    )
    # A short gradient memory pays on the short budgets runs usually have (bench/RESULTS.md).
    beta1: Float = Field(0.7, gt=0, lt=1, description="AdamW's first-moment decay")
    beta2: Float = Field(0.99, gt=0, lt=1, description="AdamW's second-moment decay")
    grad_clip: Float = Field(1.0, ge=0, description="largest global gradient norm; 0: no clipping")


class HorizonConfig(_Section):
    """When training stops: the first of steps, epochs and the clock."""

    max_steps: Int = Field(
        0,
        ge=0,
        description="step limit; 0: none. Training stops at the first of max_steps, epochs "
        "and time_budget_s",
    )
    epochs: Float = Field(0.0, ge=0, description="passes over the training split; 0: no limit")
    time_budget_s: Float = Field(
        120.0, ge=0, description="wall-clock seconds for the training loop; 0: no limit"
    )


class ValidationConfig(_Section):
    """Validation during training, early stopping, and scoring."""

    eval_interval: Int = Field(
        0, ge=0, description="steps between validations; 0: evals_per_run, spread over the run"
    )
    evals_per_run: Int = Field(
        16,
        ge=0,
        description="validations at 1/N, 2/N, ... of the run (steps, epochs or clock); 0: "
        "only at the end",
    )
    val_chars: Int = Field(
        0,
        ge=0,
        description="characters of the val split each validation scores (a fixed subsample); "
        "0: auto, about 5 % of the training time",
    )
    patience: Int = Field(
        4,
        ge=0,
        description="stop after this many validations without a new best (best.pt is kept); "
        "0: never stop early",
    )
    eval_batch_size: Int = Field(
        EVAL_STREAMS,
        ge=1,
        description="parallel streams when scoring a split (fewer: each starts with more context)",
    )


class RuntimeConfig(_Section):
    """How the processes run: device, precision, seed, logging."""

    device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="auto: CUDA when a GPU is visible, else CPU"
    )
    precision: Literal["auto", "fp32", "bf16"] = Field(
        "auto",
        description="bf16: autocast with fp32 master weights; auto: bf16 where the GPU or CPU "
        "has native bf16, else fp32",
    )
    compile: bool = Field(False, description="run the model through torch.compile")
    grad_compression: Literal["none", "bf16"] = Field(
        "none",
        description="DDP: all-reduce gradients in bf16 (half the bytes; not bit-exact across "
        "layouts)",
    )
    seed: Int = Field(1337, ge=0, description="seed of initialisation, batching and dropout")
    log_interval: Int = Field(100, ge=1, description="steps between training log lines")


class TrialConfig(_Section):
    """Whether this run is a trial of a sweep (an Optuna study), which may stop it early."""

    trial_study: str = Field(
        "",
        description="the Optuna study this run is a trial of (its storage URL comes from "
        "CHARRNN_STUDY_STORAGE); empty: not a trial",
    )
    trial_number: Int = Field(
        -1, ge=-1, description="the trial's number in trial_study; -1: not a trial"
    )


# Pydantic orders inherited fields from the last base to the first: listed bottom-up, the
# keys come out in the order of the parts above.
class TrainConfig(
    TrialConfig,
    RuntimeConfig,
    ValidationConfig,
    HorizonConfig,
    OptimiserConfig,
    BatchConfig,
    RunFilesConfig,
):
    """The [train] section: its keys are those of its parts."""

    @classmethod
    def parts(cls) -> list[type[_Section]]:
        """The parts in reading order, each with its docstring as a heading."""
        return list(reversed(cls.__bases__))


Tag = Annotated[str, Field(min_length=1, max_length=64)]  # W&B's limits for a tag
Temperature = Annotated[float, BeforeValidator(_number), Field(gt=0)]


class TrackConfig(_Section):
    mode: Literal["auto", "online", "offline", "disabled"] = Field(
        "auto", description="W&B mode; auto: online if W&B credentials exist, else offline"
    )
    project: str = Field("charrnn", description="W&B project")
    entity: str = Field("", description="W&B entity (team or user); empty: W&B's default")
    group: str = Field("", description="W&B group the run joins; empty: none")
    tags: list[Tag] = Field(default_factory=list, description="W&B tags of the run")
    name: str = Field("", description="W&B display name; empty: W&B's default")
    run_id: str = Field(
        "",
        description="W&B run id; empty: derived from the run directory, so a resume continues "
        "the same W&B run",
    )
    dir: str = Field("", description="where W&B writes its files; empty: the run directory")
    init_timeout_s: Float = Field(
        60.0, gt=0, description="a W&B that cannot start within this is skipped with a warning"
    )
    sample_prompts: list[str] = Field(
        default_factory=lambda: ["ROMEO:\n", "JULIET:\n"],
        description="prompts of the W&B samples table",
    )
    sample_temperatures: list[Temperature] = Field(
        default_factory=lambda: [0.5, 0.8, 1.0],
        description="temperatures of the W&B samples table, one row each",
    )
    sample_length: Int = Field(200, ge=1, description="characters generated per sample")
    log_checkpoints: bool = Field(True, description="upload checkpoints as W&B model artefacts")
    dataset_max_mb: Float = Field(
        64.0,
        ge=0,
        description="token files above this many MB are logged by reference, not uploaded",
    )


SECTIONS: dict[str, type[_Section]] = {
    "data": DataConfig,
    "model": ModelConfig,
    "train": TrainConfig,
    "track": TrackConfig,
}
_SECTION_OF = {cls.__name__: name for name, cls in SECTIONS.items()}


class Config(_Checked):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    data: DataConfig = Field(default_factory=DataConfig)
    model: ModelConfig = Field(default_factory=ModelConfig)
    train: TrainConfig = Field(default_factory=TrainConfig)
    track: TrackConfig = Field(default_factory=TrackConfig)

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump()

    @classmethod
    def from_dict(cls, raw: dict[str, Any], *, where: str = "config") -> Config:
        _check_keys(raw or {}, where)
        return _validate({s: v or {} for s, v in (raw or {}).items()}, {}, where)


# --------------------------------------------------------------------------- keys


def _check_keys(raw: dict[str, Any], where: str) -> None:
    for section, values in raw.items():
        if section not in SECTIONS:
            raise ConfigError(
                f"unknown section {section!r}",
                where=where,
                fix=(
                    f"use one of: {', '.join(SECTIONS)}"
                    f"{_did_you_mean(str(section), list(SECTIONS))}"
                ),
            )
        if values is None:
            continue
        if not isinstance(values, dict):
            raise ConfigError(f"section {section!r} must be a mapping of key: value", where=where)
        for key in values:
            _check_key(section, key, where)


def _check_key(section: str, key: Any, where: str) -> None:
    names = list(SECTIONS[section].model_fields)
    if key not in names:
        raise ConfigError(
            f"unknown key {f'{section}.{key}'!r}",
            where=where,
            fix=(
                f"valid keys in [{section}]: {', '.join(names)}"
                f"{_did_you_mean(str(key), names, prefix=f'{section}.')}"
            ),
        )


def _did_you_mean(word: str, options: list[str], prefix: str = "") -> str:
    close = difflib.get_close_matches(word, options, n=1)
    return f" (did you mean {prefix}{close[0]}?)" if close else ""


def resolve_key(key: str) -> str:
    """Turn ``lr`` into ``train.lr``; dotted keys pass through."""
    if "." in key:
        return key
    owners = [name for name, cls in SECTIONS.items() if key in cls.model_fields]
    if len(owners) == 1:
        return f"{owners[0]}.{key}"
    if not owners:
        every = [f"{s}.{k}" for s, cls in SECTIONS.items() for k in cls.model_fields]
        close = difflib.get_close_matches(key, [k.split(".")[1] for k in every], n=1)
        hint = f" (did you mean {resolve_key(close[0])}?)" if close else ""
        raise ConfigError(
            f"unknown config key {key!r}",
            fix=f"run `charrnn config` to list every key, or use section.key{hint}",
        )
    raise ConfigError(
        f"ambiguous key {key!r}", fix=f"write one of: {', '.join(f'{o}.{key}' for o in owners)}"
    )


# --------------------------------------------------------------------------- errors


# What a field accepts where its type alone cannot say it (error messages and --explain).
_ACCEPTS = {
    "model.dropout": "auto, or a number in [0, 1)",
    "track.tags": "a list of tags, e.g. [a, b]",
    "track.sample_prompts": 'a list of prompts, e.g. ["ROMEO:\\n", "JULIET:\\n"]',
    "track.sample_temperatures": "a list of temperatures > 0, e.g. [0.5, 0.8]",
}


def _allowed(key: str) -> str | None:
    """What ``section.name`` accepts, in words: its choices, or its type and range."""
    section, _, name = key.partition(".")
    cls = SECTIONS.get(section)
    info = cls.model_fields.get(name.split(".")[0]) if cls else None
    if info is None:
        return None
    field = f"{section}.{name.split('.')[0]}"
    if field in _ACCEPTS:
        return _ACCEPTS[field]
    annotation = info.annotation
    if get_origin(annotation) is Literal:
        return "one of: " + ", ".join(str(v) for v in get_args(annotation))
    words = {int: "an integer", float: "a number", bool: "true or false", str: "a string"}.get(
        annotation, str(annotation)
    )
    bounds = {type(m): m for m in info.metadata if isinstance(m, annotated_types.BaseMetadata)}
    low = (
        f"[{bounds[annotated_types.Ge].ge}"
        if annotated_types.Ge in bounds
        else f"({bounds[annotated_types.Gt].gt}"
        if annotated_types.Gt in bounds
        else None
    )
    high = (
        f"{bounds[annotated_types.Le].le}]"
        if annotated_types.Le in bounds
        else f"{bounds[annotated_types.Lt].lt})"
        if annotated_types.Lt in bounds
        else None
    )
    if low and high:
        return f"{words} in {low}, {high}"
    if low:
        return f"{words} {'>=' if low[0] == '[' else '>'} {low[1:]}"
    if high:
        return f"{words} {'<=' if high[-1] == ']' else '<'} {high[:-1]}"
    if annotated_types.MinLen in bounds:
        return f"a non-empty {words.removeprefix('a ')}"
    return words


_TYPE_ERRORS = {
    "int_parsing",
    "int_type",
    "int_from_float",
    "float_parsing",
    "float_type",
    "bool_parsing",
    "bool_type",
    "string_type",
    "list_type",
    "number_type",
    "finite_number",
    "model_type",
    "model_attributes_type",
    "dict_type",
}


def _config_error(
    exc: ValidationError,
    *,
    where: str,
    sources: dict[str, str] | None = None,
    prefix: str | None = None,
) -> ConfigError:
    """One ConfigError for all of a ValidationError's problems.

    Each problem names its key, what it accepts and the fix.
    """
    problems, fixes, places = [], [], []
    for err in exc.errors(include_url=False):
        loc = [str(part) for part in err["loc"]]
        if prefix:
            loc.insert(0, prefix)
        field = ".".join(loc[:2])
        key = ".".join(loc)  # list items: track.sample_temperatures.1
        value, kind = err.get("input"), err["type"]
        allowed = _allowed(field)
        default = _default(field)
        example = f" (default: {default})" if default is not None else ""
        if kind == "literal_error":
            problems.append(f"{key}={value!r} is not allowed: use {allowed}")
            choices = (
                allowed.removeprefix("one of: ").replace(", ", "|") if allowed else "a valid value"
            )
            fixes.append(f"set {field}={choices}")
        elif kind in ("extra_forbidden", "no_such_attribute"):
            problems.append(f"unknown key {key!r}")
            fixes.append("run `charrnn config` to list every key")
        elif kind in _TYPE_ERRORS:
            problems.append(f"{key}={value!r} has the wrong type: expected {allowed or kind}")
            fixes.append(
                f"write {field} as {allowed}{example}; "
                "quote text that YAML would read as a number or a boolean"
            )
        elif kind == "fraction_sum":
            problems.append(err["msg"])
            fixes.append("lower data.val_fraction or data.test_fraction")
        elif allowed is None:
            problems.append(f"{key}: {err['msg']}")
            fixes.append("run `charrnn config` to list every key and its value")
        else:  # ranges, lengths
            problems.append(f"{key}={value!r} is out of range: must be {allowed}")
            fixes.append(f"set {field} to {allowed}{example}")
        places.append((sources or {}).get(field, where))
    if len(problems) == 1:
        return ConfigError(problems[0], where=places[0], fix=fixes[0])
    lines = [f"{len(problems)} invalid config values:"]
    for place, problem, fix in zip(places, problems, fixes, strict=True):
        lines += [f"  {place}: {problem}", f"    -> {fix}"]
    return ConfigError(
        "\n".join(lines),
        fix="fix each value above; `charrnn config` prints every key with its value",
    )


def _default(field: str) -> str | None:
    section, _, name = field.partition(".")
    cls = SECTIONS.get(section)
    if cls is None or name not in cls.model_fields:
        return None
    info = cls.model_fields[name]
    value = info.get_default(call_default_factory=True)
    if isinstance(value, list):  # one line, escapes kept (YAML folds a "\n" over lines)
        return json.dumps(value, ensure_ascii=False)
    return (
        yaml.safe_dump(value, default_flow_style=True, width=1000)
        .strip()
        .removesuffix("...")
        .strip()
    )


def _validate(raw: dict[str, Any], sources: dict[str, str], where: str) -> Config:
    token = _LOADING.set(True)
    try:
        return Config.model_validate(raw)
    except ValidationError as exc:
        raise _config_error(exc, where=where, sources=sources) from None
    finally:
        _LOADING.reset(token)


# --------------------------------------------------------------------------- loading


def _parse_overrides(overrides: list[str]) -> list[tuple[str, str, Any]]:
    """``key=value`` strings -> (section, name, YAML value), keys resolved and checked."""
    parsed = []
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(
                f"override {item!r} is not key=value",
                fix="write e.g. train.lr=3e-3 (or lr=3e-3; lists as track.tags=[a,b])",
            )
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as exc:
            raise ConfigError(
                f"cannot parse value {raw!r}: {exc}", where=f"override {item!r}"
            ) from None
        section, _, name = resolve_key(key.strip()).partition(".")
        if section not in SECTIONS:
            raise ConfigError(
                f"unknown section {section!r} in {key.strip()!r}",
                where="command line",
                fix=f"use one of: {', '.join(SECTIONS)}",
            )
        _check_key(section, name, "command line")
        parsed.append((section, name, value))
    return parsed


def _merge(raw: dict[str, Any], overrides: list[str], sources: dict[str, str]) -> dict[str, Any]:
    merged = {section: dict(values or {}) for section, values in raw.items()}
    for section, name, value in _parse_overrides(overrides):
        merged.setdefault(section, {})[name] = value
        sources[f"{section}.{name}"] = "command line"
    return merged


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Apply ``key=value`` strings (values read as YAML) to ``cfg`` in place.

    The result is validated as a whole.
    """
    sources: dict[str, str] = {}
    new = _validate(_merge(cfg.to_dict(), overrides, sources), sources, "command line")
    for section in SECTIONS:
        setattr(cfg, section, getattr(new, section))
    return cfg


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    """Defaults < the YAML file at ``path`` < ``overrides``, validated once as a whole.

    Keys set by the file or the overrides are in each section's ``model_fields_set``.
    """
    raw: dict[str, Any] = {}
    sources: dict[str, str] = {}
    if path:
        path = Path(path)
        if not path.is_file():
            raise ConfigError(
                "config file not found", where=str(path), fix="check the --config path"
            )
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"invalid YAML: {exc}", where=str(path)) from None
        if not isinstance(raw, dict):
            raise ConfigError("top level must be a mapping of sections", where=str(path))
        _check_keys(raw, str(path))
        sources = {f"{s}.{k}": str(path) for s, values in raw.items() for k in values or {}}
    return _validate(
        _merge(raw, overrides or [], sources), sources, "command line" if not path else str(path)
    )


def check_batch_split(
    cfg: Config, processes: int, *, layout: str = "", where: str = "train.batch_size"
) -> None:
    """Refuse a global batch that ``processes`` training processes cannot share equally.

    Called before starting them.
    """
    batch = cfg.train.batch_size
    if processes >= 1 and batch % processes:
        lower, higher = batch - batch % processes, batch + processes - batch % processes
        raise ConfigError(
            f"train.batch_size={batch} (global streams) is not divisible by the "
            f"{processes} training processes"
            f"{f' ({layout})' if layout else ''}: "
            "every process must own the same number of streams",
            where=where,
            fix=(
                f"set train.batch_size to a multiple of {processes} "
                f"({', '.join(str(b) for b in (lower, higher) if b > 0)}), "
                "or use another number of processes"
            ),
        )


class _Dumper(yaml.SafeDumper):
    """Strings with line breaks as one double-quoted line ("ROMEO:\\n").

    Not as YAML's folded blocks.
    """


_Dumper.add_representer(
    str,
    lambda dumper, text: dumper.represent_scalar(
        "tag:yaml.org,2002:str", text, style='"' if "\n" in text else None
    ),
)


def dump_config(cfg: Config) -> str:
    return yaml.dump(cfg.to_dict(), Dumper=_Dumper, sort_keys=False)


def explain_config(cfg: Config) -> str:
    """Every key with its value, what it does and what it accepts: the reference users read."""
    lines = []
    for section, cls in SECTIONS.items():
        lines.append(f"[{section}]")
        values = getattr(cfg, section)
        parts = cls.parts() if cls is TrainConfig else [cls]
        for part in parts:
            if len(parts) > 1:
                lines.append(f"  # {part.__doc__}")
            for name, info in part.model_fields.items():
                lines.append(f"  {section}.{name} = {_show(getattr(values, name))}")
                lines.append(f"      {info.description}")
                lines.append(f"      accepts: {_allowed(f'{section}.{name}')}")
        lines.append("")
    return "\n".join(lines)


def _show(value: Any) -> str:
    """A value on one line, as it would be written on the command line (escapes for newlines)."""
    if isinstance(value, str) and value and value.isprintable():
        return value
    return json.dumps(value, ensure_ascii=False)
