"""What the tracker reads from the config, with W&B stubbed out: fast.

It reads tags, sample prompts and temperatures.
"""

from __future__ import annotations

import sys
import types

from charrnn import tracking
from charrnn.config import TrackConfig, load_config
from charrnn.evaluation.sample import sample_rows


def test_tags_reach_wandb_as_a_list(monkeypatch, tmp_path):
    calls = []

    class Run:
        dir = str(tmp_path / "wandb" / "offline-run-x" / "files")
        settings = types.SimpleNamespace(mode="offline")

        def define_metric(self, *args, **kwargs):
            pass

    fake = types.SimpleNamespace(
        init=lambda **kw: calls.append(kw) or Run(),
        Settings=lambda **kw: kw,
        Table=lambda **kw: None,
    )
    monkeypatch.setitem(sys.modules, "wandb", fake)
    for overrides, expected in (
        (["track.tags=[a, b]"], ["a", "b"]),
        ([], None),
    ):
        cfg = load_config(None, overrides).track
        tracking.WandbTracker(cfg, run_dir=tmp_path, run_id="x", mode="offline", config={})
        assert calls[-1]["tags"] == expected


def test_sample_rows_use_every_prompt_at_every_temperature(monkeypatch):
    monkeypatch.setattr(
        "charrnn.evaluation.sample.generate",
        lambda model, vocab, prompt, settings, device: [f"<{t}>" for t in settings.temperature],
    )
    model = types.SimpleNamespace(train=lambda: None)
    cfg = load_config(
        None, ['track.sample_prompts=["A:\\n", "B|C"]', "track.sample_temperatures=[0.5, 1]"]
    ).track
    rows = sample_rows(model, None, cfg, "cpu", seed=1)
    assert rows == [
        (0.5, "A:\n", "A:\n<0.5>"),
        (0.5, "B|C", "B|C<0.5>"),
        (1.0, "A:\n", "A:\n<1.0>"),
        (1.0, "B|C", "B|C<1.0>"),
    ]
    # defaults: 2 prompts x 3 temperatures
    assert len(sample_rows(model, None, TrackConfig(), "cpu", seed=1)) == 6
