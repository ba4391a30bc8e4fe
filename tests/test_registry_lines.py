"""Model lines in the champion/challenger registry: each line has its own production model."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from helpers import make_text, tiny_config

from charrnn.data.prepare import prepare
from charrnn.errors import ConfigError
from charrnn.registry.lines import (
    challenge_and_promote,
    default_model_name,
    model_line,
    pointer_path,
    read_production,
)
from charrnn.train.trainer import train


@pytest.fixture(scope="module")
def trained(tmp_path_factory) -> dict[str, tuple]:
    """Tiny models on two corpora: a good and a worse one on "a", one on "b".

    Each as (checkpoint, tokens, corpus, held-out bpc).
    """
    root = tmp_path_factory.mktemp("lines")
    cache = pytest.MonkeyPatch.context()
    models = {}
    with cache as patch:
        patch.setenv("CHARRNN_CACHE", str(root / "cache"))
        for corpus_name, seed in (("a", 1), ("b", 2)):
            (root / f"{corpus_name}.txt").write_text(make_text(30_000, seed=seed))
        for key, corpus_name, steps in (("a-good", "a", 60), ("a-worse", "a", 2), ("b", "b", 20)):
            cfg = tiny_config(
                root / f"{corpus_name}.txt",
                root / key,
                max_steps=steps,
                eval_interval=0,
                checkpoint_interval=steps,
            )
            corpus, tokens = prepare(cfg)
            result = train(cfg, tokens)
            models[key] = (result.checkpoint, tokens, corpus, result.test["bpc"])
    return models


def _promote(registry: Path, model, line: str):
    checkpoint, tokens, corpus, bpc = model
    return challenge_and_promote(
        registry,
        checkpoint,
        tokens,
        run_dir=str(Path(checkpoint).parent),
        corpus=corpus,
        challenger_bpc=bpc,
        model_name=line,
    )


def test_lines_promote_independently_and_never_displace_each_other(trained, tmp_path):
    registry = tmp_path / "registry"
    a = _promote(registry, trained["a-worse"], "a")
    # another corpus, another line: its own first champion
    b = _promote(registry, trained["b"], "b")
    assert a.promoted and b.promoted and a.model_name == "a" and b.production.model_name == "b"
    assert read_production(registry, "a").checkpoint_sha256 == a.production.checkpoint_sha256
    assert read_production(registry, "b").checkpoint_sha256 == b.production.checkpoint_sha256

    better = _promote(registry, trained["a-good"], "a")  # beats a's champion; b's is untouched
    assert (
        better.promoted
        and better.decision.champion_bpc is not None
        and "line a" in better.decision.reason
    )
    assert read_production(registry, "a").checkpoint_sha256 == better.production.checkpoint_sha256
    assert read_production(registry, "b") == b.production

    worse = _promote(registry, trained["a-worse"], "a")  # the same line, a worse model: rejected
    assert (
        not worse.promoted
        and worse.production is None
        and worse.decision.challenger_bpc > worse.decision.champion_bpc
    )
    assert read_production(registry, "a") == better.production
    assert sorted(p.parent.name for p in (registry / "lines").glob("*/production.json")) == [
        "a",
        "b",
    ]


def test_a_pre_lines_pointer_is_its_corpus_line_only(trained, tmp_path):
    registry = tmp_path / "registry"
    promoted = _promote(registry, trained["a-worse"], "a").production
    legacy = promoted.to_dict()
    del legacy["model_name"]  # as written before model lines
    (registry / "production.json").write_text(json.dumps(legacy))
    shutil.rmtree(registry / "lines")
    # corpus a.txt -> line "a"
    assert read_production(registry, "a").checkpoint == promoted.checkpoint
    assert read_production(registry, "b") is None  # other lines never see it
    assert _promote(registry, trained["b"], "b").decision.champion_bpc is None


def test_model_names(tmp_path):
    assert default_model_name("shakespeare") == "shakespeare"
    assert default_model_name("/data/my corpus.txt") == "my-corpus"
    assert default_model_name("https://example.org/x/lyrics.txt?raw=1") == "lyrics"
    assert default_model_name("hf://datasets/karpathy/tiny_shakespeare") == "tiny_shakespeare"
    assert (
        model_line(None, "file:///tmp/poems.txt") == "poems"
        and model_line("poems-v2", "shakespeare") == "poems-v2"
    )
    for bad in ("", "../x", "a/b", "with space", ".hidden", "x" * 129):
        with pytest.raises(ConfigError, match="model_name") as err:
            model_line(bad, "shakespeare")
        assert "letters, digits" in str(err.value)
    with pytest.raises(ConfigError):
        pointer_path(tmp_path, "..")
