"""The benchmark suite runs end to end and records itself in a results file.

Figures are not checked: no timings in tests.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from helpers import run_env

REPO = Path(__file__).resolve().parent.parent
SECTIONS = (
    "Training throughput",
    "Quality per second",
    "Tokenisation",
    "Generation",
    "bf16 accuracy guard",
)


def _bench(*args: str, cache: Path) -> None:
    # Two threads as `python -m bench` would have; the suite's own subprocesses stay W&B-free.
    env = run_env(OMP_NUM_THREADS="2", CHARRNN_CACHE=str(cache))
    done = subprocess.run(
        [sys.executable, "-m", "bench", *args],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=500,
    )
    assert done.returncode == 0, done.stderr[-3000:]


@pytest.mark.slow
def test_quick_suite_writes_every_section_and_keeps_the_rest_of_the_file(tmp_path):
    out = tmp_path / "RESULTS.md"
    out.write_text("# Results\n\nhand-written history\n", encoding="utf-8")
    _bench("--quick", "--out", str(out), cache=tmp_path / "cache")
    text = out.read_text(encoding="utf-8")
    assert "hand-written history" in text
    for title in SECTIONS:
        assert f"### {title}" in text
    assert "| benchmark | target | figure | required | met |" in text
    assert (tmp_path / "quality_curve.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # replaces the suite's section (the quickest one)
    _bench("--quick", "--only", "generation", "--out", str(out), cache=tmp_path / "cache")
    text = out.read_text(encoding="utf-8")
    assert (
        text.count("<!-- suite:begin") == 1
        and "### Generation" in text
        and "### Training throughput" not in text
    )
    assert "hand-written history" in text


def test_headroom_table_states_each_gain_over_the_mean_of_the_defaults_and_their_spread():
    from bench.headroom import table

    text = table({"": [(1.63, 824), (1.65, 719)], "train.lr=0.012": [(1.62, 800), (1.60, 810)]}, 2)
    defaults, candidate, spread = text.splitlines()[1:]
    assert defaults.startswith("defaults") and "mean 1.6400" in defaults
    assert "mean 1.6100" in candidate and candidate.endswith("gain +0.0300")
    assert spread.endswith("0.0200 nats/char")
