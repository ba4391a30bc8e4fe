"""The CLI's config handling: `charrnn config`, `evaluate`'s options, `launch`'s early checks.

`evaluate`'s options here: --config, key=value and data.unk_policy.
"""

from __future__ import annotations

import json

import pytest
import yaml
from helpers import make_text, tiny_config

from charrnn import cli
from charrnn.config import SECTIONS


def _run(capsys, *argv: str) -> tuple[int, str, str]:
    code = cli.main(list(argv))
    out = capsys.readouterr()
    return code, out.out, out.err


def test_config_lists_every_key_with_overrides_after_options(capsys, tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  hidden_size: 32\n")
    code, out, _ = _run(
        capsys,
        "config",
        "lr=3e-3",
        "--config",
        str(path),
        "track.tags=[a, b]",
        "track.sample_temperatures=[0.5, 1]",
    )
    assert code == 0
    shown = yaml.safe_load(out)
    assert set(shown) == {"data", "model", "train", "track"}
    assert (
        shown["model"]["hidden_size"],
        shown["train"]["lr"],
        shown["track"]["tags"],
        shown["track"]["sample_temperatures"],
    ) == (32, 0.003, ["a", "b"], [0.5, 1.0])


def test_config_explain_describes_every_key_with_its_value(capsys):
    code, out, _ = _run(capsys, "config", "--explain", "lr=3e-3")
    assert code == 0
    blocks = {}
    lines = out.splitlines()
    for i, line in enumerate(lines):
        if line.startswith("  ") and " = " in line and not line.startswith("      "):
            key, _, value = line.strip().partition(" = ")
            blocks[key] = (value, lines[i + 1].strip(), lines[i + 2].strip())
    every = {f"{s}.{k}" for s, cls in SECTIONS.items() for k in cls.model_fields}
    assert set(blocks) == every
    for key, (_, description, accepts) in blocks.items():
        assert description and description != "None", key
        assert accepts.startswith("accepts: ") and accepts != "accepts: None", key
    assert blocks["train.lr"][0] == "0.003"
    assert blocks["train.precision"][2] == "accepts: one of: auto, fp32, bf16"


def test_every_config_field_has_a_description():
    missing = [
        f"{s}.{k}"
        for s, cls in SECTIONS.items()
        for k, info in cls.model_fields.items()
        if not (info.description or "").strip()
    ]
    assert missing == []


def test_bad_values_stop_with_one_clear_message(capsys):
    code, out, err = _run(capsys, "config", "precision=fp16")
    assert code == 2 and out == ""
    assert (
        err.count("error:") == 1
        and "train.precision='fp16' is not allowed: use one of: auto, fp32, bf16" in err
        and "Traceback" not in err
    )


@pytest.fixture
def no_torchrun(monkeypatch):
    calls = []
    monkeypatch.setattr(
        "charrnn.distributed.launch.run_torchrun",
        lambda spec, train_args: calls.append((spec, train_args)) or 0,
    )
    return calls


def test_launch_refuses_a_batch_that_does_not_split_before_torchrun_starts(
    capsys, tmp_path, no_torchrun
):
    code, _, err = _run(
        capsys,
        "launch",
        "--nproc-per-node",
        "2",
        "--",
        "--out-dir",
        str(tmp_path / "run"),
        "batch_size=3",
    )
    assert code == 2 and not no_torchrun
    assert err.count("error:") == 1 and "Traceback" not in err
    assert (
        "train.batch_size=3 (global streams) is not divisible by the 2 training processes "
        "(--nproc-per-node 2 x --nnodes 1)" in err
    )
    assert "multiple of 2 (2, 4)" in err

    path = tmp_path / "c.yaml"  # read the way `charrnn train` reads it: --config, then key=value
    path.write_text("train:\n  batch_size: 6\n")
    code, _, err = _run(
        capsys,
        "launch",
        "--nproc-per-node",
        "2",
        "--nnodes",
        "2",
        "--rdzv-endpoint",
        "127.0.0.1:29400",
        "--",
        "--config",
        str(path),
    )
    assert (
        code == 2
        and not no_torchrun
        and "batch_size=6" in err
        and "4 training processes (--nproc-per-node 2 x --nnodes 2)" in err
    )
    code, _, err = _run(
        capsys, "launch", "--nproc-per-node", "2", "--", "--config", str(path), "lr=-1"
    )
    assert code == 2 and not no_torchrun and "train.lr=-1 is out of range" in err

    assert (
        _run(
            capsys,
            "launch",
            "--nproc-per-node",
            "2",
            "--",
            "--config",
            str(path),
            "--resume",
            "batch_size=4",
        )[0]
        == 0
    )
    assert _run(capsys, "launch", "--nproc-per-node", "3", "--", "--config", str(path))[0] == 0
    assert [args for _, args in no_torchrun] == [
        ["--config", str(path), "--resume", "batch_size=4"],
        ["--config", str(path)],
    ]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory):
    """A two-step run trained with data.unk_policy=error.

    Prepare and train do not read the policy; evaluate does.
    """
    from charrnn.data.prepare import prepare
    from charrnn.train.trainer import train

    root = tmp_path_factory.mktemp("unk")
    corpus = root / "corpus.txt"
    corpus.write_text(make_text(20_000))
    cfg = tiny_config(corpus, root / "run", max_steps=2)
    cfg.data.cache_dir = str(root / "cache")
    cfg.data.unk_policy = "error"
    _, tokens = prepare(cfg)
    return train(cfg, tokens).checkpoint, root


@pytest.mark.slow
def test_evaluate_applies_unk_policy_to_a_text_file(capsys, checkpoint, tmp_path):
    ckpt, root = checkpoint
    text = tmp_path / "held_out.txt"
    # é is in this vocabulary; ñ, € and 😀 are not
    text.write_text("ROMEO:\nseñor so €\nyes 😀 ñ\n", encoding="utf-8")

    # The checkpoint's own policy (error) applies unless the command line says otherwise.
    for extra in ([], ["data.unk_policy=error"]):
        code, out, err = _run(
            capsys, "evaluate", ckpt, "--split", str(text), "--device", "cpu", *extra
        )
        assert code == 2 and out == "" and "Traceback" not in err, err
        assert f"{text}: 3 character(s) not in the vocabulary (4 occurrence(s))" in err
        for shown in (
            "'ñ' (U+00F1) first at line 2, column 3",
            "'€' (U+20AC) first at line 2, column 10",
            "'😀' (U+1F600) first at line 3, column 5",
        ):
            assert shown in err
        assert "data.unk_policy=unk" in err

    config = tmp_path / "eval.yaml"
    config.write_text("data:\n  unk_policy: unk\ntrain:\n  device: cpu\n")
    code, out, err = _run(
        capsys, "evaluate", ckpt, "--split", str(text), "--json", "--config", str(config)
    )
    assert code == 0, err
    # the unseen characters count, as <unk>
    assert json.loads(out)["chars"] == len(text.read_text(encoding="utf-8")) - 1
    code, out, err = _run(
        capsys,
        "evaluate",
        ckpt,
        "--split",
        str(text),
        "--json",
        "data.unk_policy=unk",
        "device=cpu",
    )
    assert code == 0, err

    # The prepared splits were encoded with the training vocabulary: the policy does not
    # reject them.
    code, out, err = _run(
        capsys,
        "evaluate",
        ckpt,
        "--split",
        "val",
        "--tokens",
        _tokens_dir(root),
        "--json",
        "data.unk_policy=error",
    )
    assert code == 0 and json.loads(out)["chars"] > 0, err


def _tokens_dir(root) -> str:
    (meta,) = (root / "cache" / "tokens").glob("*/meta.json")
    return str(meta.parent)
