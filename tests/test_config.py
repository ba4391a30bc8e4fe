from __future__ import annotations

import typing

import pytest

from charrnn.config import (
    SECTIONS,
    Config,
    TrainConfig,
    apply_overrides,
    dump_config,
    load_config,
    resolve_key,
)
from charrnn.errors import ConfigError


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  hidden_size: 128\ntrain:\n  lr: 0.001\n  batch_size: 16\n")
    cfg = load_config(path, ["lr=3e-3", "train.batch_size=32", "data.corpus=x.txt", "compile=true"])
    assert (
        cfg.model.hidden_size,
        cfg.train.lr,
        cfg.train.batch_size,
        cfg.data.corpus,
        cfg.train.compile,
    ) == (128, 0.003, 32, "x.txt", True)
    # what the file and the command line set
    assert cfg.train.model_fields_set == {"lr", "batch_size", "compile"}


def test_round_trip_through_yaml(tmp_path):
    cfg = load_config(
        None, ["hidden_size=99", "track.tags=[a, b]", 'track.sample_prompts=["A:\\n", "é|€"]']
    )
    path = tmp_path / "c.yaml"
    path.write_text(dump_config(cfg))
    assert load_config(path) == cfg
    assert Config.from_dict(cfg.to_dict()) == cfg


def test_yaml_1_1_floats_and_number_strings():
    # YAML 1.1: 3e-3 is a string
    path_free = load_config(None, ["lr=3e-3", "data.corpus=123", "track.run_id=2024"])
    assert (
        path_free.train.lr == 0.003
        and path_free.data.corpus == "123"
        and path_free.track.run_id == "2024"
    )
    assert (
        load_config(None, ["epochs=2"]).train.epochs == 2.0
        and load_config(None, ["max_steps=100.0"]).train.max_steps == 100
    )


def test_list_fields_take_yaml_lists():
    cfg = load_config(
        None,
        [
            "track.tags=[a, b]",
            "track.sample_temperatures=[0.5, 1]",
            'track.sample_prompts=["ROMEO:\\n", "x|y"]',
        ],
    )
    assert (cfg.track.tags, cfg.track.sample_temperatures, cfg.track.sample_prompts) == (
        ["a", "b"],
        [0.5, 1.0],
        ["ROMEO:\n", "x|y"],
    )
    assert load_config(None, ["track.tags=[]"]).track.tags == []
    assert Config().track.sample_prompts == [
        "ROMEO:\n",
        "JULIET:\n",
    ] and Config().track.sample_temperatures == [0.5, 0.8, 1.0]


@pytest.mark.parametrize(
    ("override", "example"),
    [
        ("track.tags=a, b", "[a, b]"),
        ("track.sample_temperatures=0.5,1.0", "[0.5, 0.8]"),
        ("track.sample_temperatures=0.8", "[0.5, 0.8]"),
        ("track.sample_prompts=ROMEO:\\n|JULIET:\\n", '["ROMEO:'),
    ],
)
def test_a_list_field_given_a_plain_string_says_to_write_a_list(override, example):
    with pytest.raises(ConfigError) as err:
        load_config(None, [override])
    assert override.split("=")[0] in str(err.value) and f"e.g. {example}" in str(err.value)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["lr=-1"], r"train\.lr=-1 is out of range: must be a number > 0"),
        (["hidden_size=0"], r"model\.hidden_size=0 is out of range: must be an integer >= 1"),
        (
            ["precision=fp16"],
            r"train\.precision='fp16' is not allowed: use one of: auto, fp32, bf16"
            r"(.|\n)*train\.precision=auto\|fp32\|bf16",
        ),
        (
            ["lr_schedule=foo"],
            r"train\.lr_schedule='foo' is not allowed: use one of: linear, cosine",
        ),
        (
            ["data.unk_policy=bogus"],
            r"data\.unk_policy='bogus' is not allowed: use one of: unk, error",
        ),
        (
            ["track.mode=maybe"],
            r"track\.mode='maybe' is not allowed: use one of: auto, online, offline, disabled",
        ),
        (["train.nope=1"], r"unknown key 'train\.nope'"),
        (["train.lrr=1"], r"unknown key 'train\.lrr'(.|\n)*did you mean train\.lr\?"),
        (["nope=1"], r"unknown config key 'nope'"),
        (
            ["batch_size=many"],
            r"train\.batch_size='many' has the wrong type: expected an integer >= 1",
        ),
        (["lr=true"], r"train\.lr=True has the wrong type: expected a number > 0"),
        (["compile=maybe"], r"train\.compile='maybe' has the wrong type: expected true or false"),
        (["track.tags={a: 1}"], r"track\.tags=\{'a': 1\} has the wrong type"),
        (["dropout=1"], r"model\.dropout=1 is out of range: must be auto, or a number in \[0, 1\)"),
        (["beta1=1"], r"train\.beta1=1 is out of range: must be a number in \(0, 1\)"),
        (["keep_last=0"], r"train\.keep_last=0 is out of range: must be an integer >= 1"),
        (["log_interval=0"], r"train\.log_interval=0"),
        (
            ["data.http_timeout_s=0"],
            r"data\.http_timeout_s=0 is out of range: must be a number > 0",
        ),
        (
            ["val_fraction=0.5", "test_fraction=0.5"],
            r"data\.val_fraction \+ data\.test_fraction = 1\.0 leaves no training split",
        ),
        (
            ["track.sample_temperatures=[0.5, 0]"],
            r"track\.sample_temperatures\.1=0 is out of range",
        ),
        (["lr=.nan"], r"train\.lr=nan has the wrong type"),
        (["lr"], "is not key=value"),
    ],
)
def test_bad_values_are_refused_at_load(overrides, message):
    with pytest.raises(ConfigError, match=message) as info:
        load_config(None, overrides)
    assert "->" in str(info.value)  # every error says how to fix it


def test_several_bad_values_are_reported_together_with_their_source(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  lr: -1\nmodel:\n  hidden_size: 0\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, ["precision=fp16"])
    text = str(info.value)
    assert "3 invalid config values" in text
    assert (
        f"{path}: train.lr=-1" in text
        and f"{path}: model.hidden_size=0" in text
        and "command line: train.precision='fp16'" in text
    )


def test_assignment_and_construction_in_code_are_checked():
    cfg = Config()
    with pytest.raises(ConfigError, match=r"train\.lr=-1 is out of range"):
        cfg.train.lr = -1
    assert cfg.train.lr == 7e-3  # unchanged
    with pytest.raises(ConfigError, match=r"train\.precision='fp16' is not allowed"):
        cfg.train.precision = "fp16"
    with pytest.raises(ConfigError, match=r"unknown key 'train\.nope'"):
        cfg.train.nope = 1
    with pytest.raises(ConfigError, match=r"train\.batch_size=0"):
        TrainConfig(batch_size=0)
    with pytest.raises(ConfigError, match=r"leaves no training split"):
        cfg.data.val_fraction = 0.99
    # fine in either order while the sum stays below 1
    cfg.data.val_fraction, cfg.data.test_fraction = 0.1, 0.05
    assert (
        apply_overrides(cfg, ["lr=1e-2"]) is cfg
        and cfg.train.lr == 0.01
        and cfg.data.val_fraction == 0.1
    )


def _literal_fields():
    for section, cls in SECTIONS.items():
        for name, info in cls.model_fields.items():
            if typing.get_origin(info.annotation) is typing.Literal:
                yield f"{section}.{name}", typing.get_args(info.annotation)


LITERALS = list(_literal_fields())


def test_the_literal_walk_finds_every_choice_field():
    assert {key for key, _ in LITERALS} == {
        "data.token_dtype",
        "data.unk_policy",
        "train.lr_schedule",
        "train.precision",
        "train.device",
        "train.grad_compression",
        "track.mode",
    }


@pytest.mark.parametrize(("key", "choices"), LITERALS, ids=[key for key, _ in LITERALS])
def test_every_choice_field_refuses_a_bad_value_and_loads_each_allowed_one(key, choices, tmp_path):
    with pytest.raises(ConfigError) as info:
        load_config(None, [f"{key}=not-a-choice"])
    text = str(info.value)
    assert key in text and all(str(choice) in text for choice in choices), text
    section, _, name = key.partition(".")
    path = tmp_path / "c.yaml"
    for choice in choices:
        assert getattr(getattr(load_config(None, [f"{key}={choice}"]), section), name) == choice
        path.write_text(f"{section}:\n  {name}: {choice}\n")
        assert getattr(getattr(load_config(path), section), name) == choice


def test_resolve_key():
    assert (
        resolve_key("lr") == "train.lr"
        and resolve_key("unk_policy") == "data.unk_policy"
        and resolve_key("track.tags") == "track.tags"
    )
    with pytest.raises(
        ConfigError, match="unknown config key 'hiden_size'(.|\n)*did you mean model.hidden_size"
    ):
        resolve_key("hiden_size")


def test_bad_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("trian:\n  lr: 1\n")
    with pytest.raises(ConfigError, match="unknown section 'trian'"):
        load_config(path)
    path.write_text("train:\n  lr: 1\n  lrr: 2\n")
    with pytest.raises(ConfigError, match=f"{path}: unknown key 'train.lrr'"):
        load_config(path)
    path.write_text("train:\nmodel:\n  hidden_size: 8\n")  # an empty section is fine
    assert load_config(path).model.hidden_size == 8
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    assert Config().train.batch_size > 0
