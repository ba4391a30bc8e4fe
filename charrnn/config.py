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
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from .errors import ConfigError


def _number(value: Any) -> Any:
    """Numbers, and strings that read as numbers (YAML 1.1 reads ``3e-3`` as a string); never true/false."""
    if isinstance(value, bool):
        raise PydanticCustomError("number_type", "expected a number, got a boolean")
    return value


Int = Annotated[int, BeforeValidator(_number)]
Float = Annotated[float, BeforeValidator(_number)]
Fraction = Annotated[float, BeforeValidator(_number), Field(ge=0, lt=1)]


def _rate_or_auto(value: Any) -> float | str:
    """``auto``, or a number in [0, 1): one clear error either way, not one per member of a union."""
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


def _split(value: Any, sep: str) -> Any:
    """The old single-string form of a list field: ``"a,b"`` -> ``["a", "b"]``; a scalar -> a one-item list."""
    if isinstance(value, str):
        return [part.strip() for part in value.split(sep) if part.strip()]
    if isinstance(value, int | float) and not isinstance(value, bool):
        return [value]
    return value


class _Checked(BaseModel):
    """Construction and assignment in code raise ConfigError, like loading does."""

    def __init__(self, **values: Any) -> None:
        if _LOADING.get():  # nested inside Config.model_validate: let pydantic collect every error with its location
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
        "shakespeare", min_length=1
    )  # URI: named corpus, path, file://, http(s)://, fsspec, hf://datasets/NAME
    val_fraction: Fraction = 0.05
    test_fraction: Fraction = 0.05  # val_fraction + test_fraction < 1
    token_dtype: Literal["auto", "uint8", "uint16", "uint32"] = "auto"
    unk_policy: Literal["unk", "error"] = (
        "unk"  # characters outside the vocabulary in text encoded for a run (charrnn evaluate --split PATH): map to <unk>, or stop
    )
    cache_dir: str = ""  # "" -> $CHARRNN_CACHE or ~/.cache/charrnn
    http_timeout_s: Float = Field(30.0, gt=0)
    http_retries: Int = Field(3, ge=0)

    @model_validator(mode="after")
    def _fractions_leave_a_training_split(self) -> DataConfig:
        if self.val_fraction + self.test_fraction >= 1:
            raise PydanticCustomError(
                "fraction_sum",
                "data.val_fraction + data.test_fraction = {total} leaves no training split: they must sum to less than 1",
                {"total": round(self.val_fraction + self.test_fraction, 12)},
            )
        return self


class ModelConfig(_Section):
    embedding_dim: Int = Field(64, ge=1)
    hidden_size: Int = Field(256, ge=1)
    num_layers: Int = Field(2, ge=1)
    # Between the LSTM layers and before the head. auto: none while the run sees its corpus a few
    # times, 0.3 once it repeats it many times (charrnn/dropout.py has the rule and its measurements).
    dropout: RateOrAuto = Field("auto", description="auto, or a number in [0, 1)")


class TrainConfig(_Section):
    out_dir: str = Field("runs/default", min_length=1)
    batch_size: Int = Field(
        64, ge=1
    )  # global number of parallel streams, split across ranks (a multiple of the process count)
    seq_len: Int = Field(
        16, ge=1
    )  # truncated-BPTT window; the state is still carried across windows
    segment_windows: Int = Field(
        32, ge=0
    )  # streams hop to a new random segment every this many windows; 0: classic contiguous streams
    lr: Float = Field(7e-3, gt=0)
    lr_schedule: Literal["linear", "cosine"] = (
        "linear"  # after warm-up: linear | cosine, to lr * min_lr_ratio at the run's end
    )
    min_lr_ratio: Float = Field(
        0.0, ge=0, le=1
    )  # with beta1 0.7 and lr 7e-3: -0.019 nats/char at 1,400 steps vs cosine to 0.1 (bench/RESULTS.md)
    warmup_steps: Int = Field(20, ge=0)
    weight_decay: Float = Field(
        0.1, ge=0
    )  # AdamW, matrices only; shakespeare 600 s: 1.509 -> 1.405 nats/char, 120 s: 1.530 -> 1.510 (bench/RESULTS.md)
    beta1: Float = Field(
        0.7, gt=0, lt=1
    )  # a short gradient memory pays on a short budget (0.9 -> 0.8 -> 0.7, bench/RESULTS.md)
    beta2: Float = Field(0.99, gt=0, lt=1)
    grad_clip: Float = Field(1.0, ge=0)  # max global grad norm; 0 disables
    max_steps: Int = Field(
        0, ge=0
    )  # 0 -> unlimited; training stops at the first of max_steps, epochs, time_budget_s
    epochs: Float = Field(0.0, ge=0)  # 0 -> unlimited
    time_budget_s: Float = Field(
        120.0, ge=0
    )  # wall-clock budget for the training loop; 0 -> unlimited
    lr_decay_steps: Int = Field(
        0, ge=0
    )  # decay horizon in steps; 0 -> the run's own end (steps, epochs or time)
    eval_interval: Int = Field(
        0, ge=0
    )  # steps between validations; 0 -> evals_per_run of them, spread over the run
    evals_per_run: Int = Field(
        16, ge=0
    )  # validations at 1/N, 2/N, ... of the run (steps, epochs or clock); 0 -> only at the end
    val_chars: Int = Field(
        0, ge=0
    )  # characters of the val split each validation scores (a fixed subsample); 0 -> auto, ~5% of training time
    patience: Int = Field(
        4, ge=0
    )  # stop after this many validations without a new best (best.pt is kept); 0 -> never stop early
    eval_batch_size: Int = Field(
        32, ge=1
    )  # parallel streams for evaluation (fewer: each starts with more context)
    log_interval: Int = Field(100, ge=1)
    checkpoint_interval: Int = Field(
        500, ge=1
    )  # steps; also saved at the end and on SIGINT/SIGTERM
    keep_last: Int = Field(3, ge=1)
    seed: Int = Field(1337, ge=0)
    precision: Literal["auto", "fp32", "bf16"] = "auto"  # bf16: autocast with fp32 master weights
    device: Literal["auto", "cpu", "cuda"] = "auto"
    compile: bool = False
    grad_compression: Literal["none", "bf16"] = (
        "none"  # DDP: all-reduce gradients in bf16 (half the bytes; not bit-exact across layouts)
    )
    resume: bool = False


Tag = Annotated[str, Field(min_length=1, max_length=64)]  # W&B's limits for a tag
Temperature = Annotated[float, BeforeValidator(_number), Field(gt=0)]


class TrackConfig(_Section):
    mode: Literal["auto", "online", "offline", "disabled"] = (
        "auto"  # auto: online if W&B credentials exist, else offline
    )
    project: str = "charrnn"
    entity: str = ""
    group: str = ""
    tags: list[Tag] = Field(
        default_factory=list, description="a list of tags, e.g. [a, b] (or the old form a,b)"
    )
    name: str = ""  # display name; "" -> W&B's default
    run_id: str = ""  # "" -> derived from the run directory, so a resume continues the same W&B run
    dir: str = ""  # where W&B writes its files; "" -> the run directory
    init_timeout_s: Float = Field(
        60.0, gt=0
    )  # a W&B that cannot start within this is skipped with a warning
    sample_prompts: list[str] = Field(
        default_factory=lambda: ["ROMEO:\n", "JULIET:\n"],
        description='a list of prompts, e.g. ["ROMEO:\\n", "JULIET:\\n"] (or the old form ROMEO:\\n|JULIET:\\n)',
    )  # prompts for the samples table
    sample_temperatures: list[Temperature] = Field(
        default_factory=lambda: [0.5, 0.8, 1.0],
        description="a list of temperatures > 0, e.g. [0.5, 0.8] (or the old form 0.5,0.8)",
    )
    sample_length: Int = Field(200, ge=1)
    log_checkpoints: bool = True  # upload checkpoints as `model` artefacts
    dataset_max_mb: Float = Field(
        64.0, ge=0
    )  # token files above this are logged by reference, not uploaded

    @field_validator("tags", mode="before")
    @classmethod
    def _tags_from_string(cls, value: Any) -> Any:
        return _split(value, ",")

    @field_validator("sample_temperatures", mode="before")
    @classmethod
    def _temperatures_from_string(cls, value: Any) -> Any:
        return _split(value, ",")

    @field_validator("sample_prompts", mode="before")
    @classmethod
    def _prompts_from_string(cls, value: Any) -> Any:
        """The old form: ``|``-separated, with backslash escapes (``ROMEO:\\n|JULIET:\\n``)."""
        if not isinstance(value, str):
            return value
        return [_unescape(p) for p in value.split("|") if p]


def _unescape(text: str) -> str:
    if "\\" not in text:
        return text
    # unicode_escape decodes latin-1 bytes: turn other characters into \uXXXX escapes first so they survive.
    return text.encode("latin-1", "backslashreplace").decode("unicode_escape")


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
                fix=f"use one of: {', '.join(SECTIONS)}{_did_you_mean(str(section), list(SECTIONS))}",
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
            fix=f"valid keys in [{section}]: {', '.join(names)}{_did_you_mean(str(key), names, prefix=f'{section}.')}",
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


def _allowed(key: str) -> str | None:
    """What ``section.name`` accepts, in words: its choices, its type and range, or its description."""
    section, _, name = key.partition(".")
    cls = SECTIONS.get(section)
    info = cls.model_fields.get(name.split(".")[0]) if cls else None
    if info is None:
        return None
    if info.description:
        return info.description
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


_TYPE_ERRORS = {"int_parsing", "int_type", "int_from_float", "float_parsing", "float_type", "bool_parsing", "bool_type",
                "string_type", "list_type", "number_type", "finite_number", "model_type", "model_attributes_type", "dict_type"}  # fmt: skip


def _config_error(
    exc: ValidationError,
    *,
    where: str,
    sources: dict[str, str] | None = None,
    prefix: str | None = None,
) -> ConfigError:
    """One ConfigError for all of a ValidationError's problems, each naming its key, what it accepts and the fix."""
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
                f"write {field} as {allowed}{example}; quote text that YAML would read as a number or a boolean"
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
    """Apply ``key=value`` strings (values read as YAML) to ``cfg`` in place, validating the result."""
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
    """Refuse a global batch that ``processes`` training processes cannot share equally (before starting them)."""
    batch = cfg.train.batch_size
    if processes >= 1 and batch % processes:
        lower, higher = batch - batch % processes, batch + processes - batch % processes
        raise ConfigError(
            f"train.batch_size={batch} (global streams) is not divisible by the {processes} training processes"
            f"{f' ({layout})' if layout else ''}: every process must own the same number of streams",
            where=where,
            fix=f"set train.batch_size to a multiple of {processes} ({', '.join(str(b) for b in (lower, higher) if b > 0)}), or use another number of processes",
        )


class _Dumper(yaml.SafeDumper):
    """Strings with line breaks as one double-quoted line ("ROMEO:\\n"), not YAML's folded blocks."""


_Dumper.add_representer(
    str,
    lambda dumper, text: dumper.represent_scalar(
        "tag:yaml.org,2002:str", text, style='"' if "\n" in text else None
    ),
)


def dump_config(cfg: Config) -> str:
    return yaml.dump(cfg.to_dict(), Dumper=_Dumper, sort_keys=False)
