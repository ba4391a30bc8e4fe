from __future__ import annotations

import pytest

from charrnn.config import Config, dump_config, load_config
from charrnn.errors import ConfigError


def test_yaml_then_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  hidden_size: 128\ntrain:\n  lr: 0.001\n  batch_size: 16\n")
    cfg = load_config(path, ["lr=3e-3", "train.batch_size=32", "data.corpus=x.txt", "compile=true"])
    assert (cfg.model.hidden_size, cfg.train.lr, cfg.train.batch_size, cfg.data.corpus, cfg.train.compile) == (128, 0.003, 32, "x.txt", True)


def test_round_trip_through_yaml(tmp_path):
    cfg = load_config(None, ["hidden_size=99"])
    path = tmp_path / "c.yaml"
    path.write_text(dump_config(cfg))
    assert load_config(path) == cfg


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["train.nope=1"], "unknown key 'train.nope'"),
        (["nope=1"], "unknown config key 'nope'"),
        (["batch_size=many"], "expected int"),
        (["lr"], "is not key=value"),
    ],
)
def test_bad_overrides(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_bad_file(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("trian:\n  lr: 1\n")
    with pytest.raises(ConfigError, match="unknown section 'trian'"):
        load_config(path)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    assert Config().train.batch_size > 0
