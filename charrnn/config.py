"""Typed configuration: dataclass defaults, a YAML file, then ``key=value`` overrides.

Precedence is defaults < YAML file < command-line overrides. Keys are either
dotted (``train.lr=3e-3``) or, when unambiguous, bare (``lr=3e-3``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import types
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from .errors import ConfigError


@dataclass
class DataConfig:
    corpus: str = "shakespeare"  # URI: named corpus, path, file://, http(s)://, fsspec, hf://datasets/NAME
    val_fraction: float = 0.05
    test_fraction: float = 0.05
    token_dtype: str = "auto"  # auto | uint8 | uint16 | uint32
    unk_policy: str = "unk"  # unseen characters at encode time: "unk" (map to <unk>) or "error"
    cache_dir: str = ""  # "" -> $CHARRNN_CACHE or ~/.cache/charrnn
    http_timeout_s: float = 30.0
    http_retries: int = 3


@dataclass
class ModelConfig:
    embedding_dim: int = 64
    hidden_size: int = 256
    num_layers: int = 2
    dropout: float = 0.0


@dataclass
class TrainConfig:
    out_dir: str = "runs/default"
    batch_size: int = 64  # global number of parallel streams, split across ranks
    seq_len: int = 16  # truncated-BPTT window; the state is still carried across windows
    segment_windows: int = 32  # streams hop to a new random segment every this many windows; 0: classic contiguous streams
    lr: float = 7e-3
    lr_schedule: str = "linear"  # after warm-up: linear | cosine, to lr * min_lr_ratio at the run's end
    min_lr_ratio: float = 0.0  # with beta1 0.7 and lr 7e-3: -0.019 nats/char at 1,400 steps vs cosine to 0.1 (bench/RESULTS.md)
    warmup_steps: int = 20
    weight_decay: float = 0.0
    beta1: float = 0.7  # a short gradient memory pays on a short budget (0.9 -> 0.8 -> 0.7, bench/RESULTS.md)
    beta2: float = 0.99
    grad_clip: float = 1.0  # max global grad norm; 0 disables
    max_steps: int = 0  # 0 -> unlimited; training stops at the first of max_steps, epochs, time_budget_s
    epochs: float = 0.0  # 0 -> unlimited
    time_budget_s: float = 120.0  # wall-clock budget for the training loop; 0 -> unlimited
    lr_decay_steps: int = 0  # decay horizon in steps; 0 -> the run's own end (steps, epochs or time)
    eval_interval: int = 0  # steps between full validation passes; 0 -> only at the end
    eval_batch_size: int = 32  # parallel streams for evaluation (fewer: each starts with more context)
    log_interval: int = 100
    checkpoint_interval: int = 500  # steps; also saved at the end and on SIGINT/SIGTERM
    keep_last: int = 3
    seed: int = 1337
    precision: str = "auto"  # auto | fp32 | bf16 (autocast with fp32 master weights)
    device: str = "auto"  # auto | cpu | cuda
    compile: bool = False
    resume: bool = False


@dataclass
class TrackConfig:
    mode: str = "auto"  # auto (online if W&B credentials exist, else offline) | online | offline | disabled
    project: str = "charrnn"
    entity: str = ""
    group: str = ""
    tags: str = ""  # comma-separated
    name: str = ""  # display name; "" -> W&B's default
    run_id: str = ""  # "" -> derived from the run directory, so a resume continues the same W&B run
    dir: str = ""  # where W&B writes its files; "" -> the run directory
    init_timeout_s: float = 60.0  # a W&B that cannot start within this is skipped with a warning
    sample_prompts: str = "ROMEO:\n|JULIET:\n"  # |-separated prompts for the samples table
    sample_temperatures: str = "0.5,0.8,1.0"
    sample_length: int = 200
    log_checkpoints: bool = True  # upload checkpoints as `model` artefacts
    dataset_max_mb: float = 64.0  # token files above this are logged by reference, not uploaded


@dataclass
class Config:
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    track: TrackConfig = field(default_factory=TrackConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: dict[str, Any], *, where: str = "config") -> Config:
        cfg = cls()
        for section, values in (raw or {}).items():
            if not hasattr(cfg, section):
                raise ConfigError(
                    f"unknown section {section!r}",
                    where=where,
                    fix=f"use one of: {', '.join(_section_names())}",
                )
            if not isinstance(values, dict):
                raise ConfigError(f"section {section!r} must be a mapping", where=where)
            for key, value in values.items():
                _set_field(cfg, f"{section}.{key}", value, where=where)
        return cfg


def _section_names() -> list[str]:
    return [f.name for f in dataclasses.fields(Config)]


def _coerce(value: Any, annotation: Any, key: str, where: str) -> Any:
    """Check ``value`` against a field annotation, converting the lossless cases."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        annotation = next(a for a in options if a is not type(None))
    if annotation is bool:
        if isinstance(value, bool):
            return value
    elif annotation is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
    elif annotation is float:
        if isinstance(value, str):  # YAML 1.1 reads "3e-3" (no dot) as a string
            with contextlib.suppress(ValueError):
                value = float(value)
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif annotation is str:
        if isinstance(value, str | int | float) and not isinstance(value, bool):
            return str(value)
    raise ConfigError(
        f"expected {getattr(annotation, '__name__', annotation)}, got {value!r}",
        where=f"{where}: {key}",
        fix="fix the value's type (e.g. 3e-3 for a float, true/false for a bool)",
    )


def _set_field(cfg: Config, dotted: str, value: Any, *, where: str) -> None:
    section_name, _, name = dotted.partition(".")
    section = getattr(cfg, section_name)
    hints = typing.get_type_hints(type(section))
    if name not in hints:
        raise ConfigError(
            f"unknown key {dotted!r}",
            where=where,
            fix=f"valid keys in [{section_name}]: {', '.join(hints)}",
        )
    setattr(section, name, _coerce(value, hints[name], dotted, where))


def resolve_key(key: str) -> str:
    """Turn ``lr`` into ``train.lr``; dotted keys pass through."""
    if "." in key:
        return key
    owners = [
        s.name
        for s in dataclasses.fields(Config)
        if key in typing.get_type_hints(s.default_factory)  # type: ignore[arg-type]
    ]
    if len(owners) == 1:
        return f"{owners[0]}.{key}"
    if not owners:
        raise ConfigError(
            f"unknown config key {key!r}",
            fix="run `charrnn config` to list every key, or use section.key",
        )
    raise ConfigError(f"ambiguous key {key!r}", fix=f"write one of: {', '.join(f'{o}.{key}' for o in owners)}")


def apply_overrides(cfg: Config, overrides: list[str]) -> Config:
    """Apply ``key=value`` strings; values are parsed as YAML scalars."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"override {item!r} is not key=value", fix="write e.g. train.lr=3e-3")
        try:
            value = yaml.safe_load(raw) if raw != "" else ""
        except yaml.YAMLError as exc:
            raise ConfigError(f"cannot parse value {raw!r}: {exc}", where=f"override {item!r}") from None
        _set_field(cfg, resolve_key(key.strip()), value, where="command line")
    return cfg


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
    cfg = Config()
    if path:
        path = Path(path)
        if not path.is_file():
            raise ConfigError("config file not found", where=str(path), fix="check the --config path")
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except yaml.YAMLError as exc:
            raise ConfigError(f"invalid YAML: {exc}", where=str(path)) from None
        if not isinstance(raw, dict):
            raise ConfigError("top level must be a mapping of sections", where=str(path))
        cfg = Config.from_dict(raw, where=str(path))
    return apply_overrides(cfg, overrides or [])


def dump_config(cfg: Config) -> str:
    return yaml.safe_dump(cfg.to_dict(), sort_keys=False)
