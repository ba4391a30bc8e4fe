"""The run report's markdown: samples and the learning curve.

The markdown is report.md and the charrnn-report artifact.
"""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path

from charrnn.registry.report import (
    CurvePoint,
    RunReport,
    Sample,
    curve_markdown,
    read_curve,
    samples_markdown,
    sparkline,
    thin,
)


def _report(run_dir: Path) -> RunReport:
    from charrnn.config import load_config
    from charrnn.data.corpus import CorpusRef
    from charrnn.data.tokens import TokenSet
    from charrnn.distributed.launch import LaunchSpec
    from charrnn.registry.lines import Decision, ProductionModel, Promotion
    from charrnn.registry.report import Scores
    from charrnn.train.trainer import TrainResult

    score = {"loss_nats": 1.5, "bpc": 2.16, "perplexity": 4.48, "chars": 1000}
    corpus = CorpusRef("shakespeare", "ab" * 32, "/cache/corpora/x.txt", 100, 100)
    tokens = TokenSet(
        "/cache/tokens/k", "k" * 24, "ab" * 32, 65, "uint8", {"train": 90, "val": 5, "test": 5}
    )
    trained = TrainResult(
        str(run_dir),
        f"{run_dir}/c.pt",
        None,
        100,
        0,
        score,
        None,
        1.5,
        1e4,
        12.0,
        tracking={"mode": "disabled"},
    )
    production = ProductionModel(
        "/reg/m.pt",
        "cd" * 32,
        f"{run_dir}/best.pt",
        str(run_dir),
        2.1,
        "shakespeare",
        "ab" * 32,
        "2026-01-01T00:00:00+0000",
    )
    promotion = Promotion(
        Decision(True, 2.1, None, "test split of k", 999, "no production model yet"), production
    )
    scores = Scores(f"{run_dir}/best.pt", 100, val=score)
    return RunReport(
        "r",
        str(run_dir),
        corpus,
        tokens,
        trained,
        scores,
        promotion,
        LaunchSpec(nproc_per_node=1),
        load_config(None, []),
        3.0,
    )


def _write_metrics(run_dir: Path, steps: int, log: int = 10, evaluate: int = 20) -> None:
    """A metrics.jsonl shaped as training writes it.

    Train rows every ``log`` steps, val rows every ``evaluate``.
    """
    lines = []
    for step in range(log, steps + 1, log):
        lines.append(
            {
                "step": step,
                "train/loss_nats": 4.0 - step / 1000,
                "train/bpc": 5.0 - step / 1000,
                "lr": 1e-3,
            }
        )
        if step % evaluate == 0:
            lines.append(
                {"step": step, "val/loss_nats": 4.1 - step / 1000, "val/bpc": 5.1 - step / 1000}
            )
    lines.append({"step": steps, "test/loss_nats": 3.0, "test/bpc": 4.3})
    run_dir.mkdir(parents=True, exist_ok=True)
    # a torn last line
    (run_dir / "metrics.jsonl").write_text(
        "".join(json.dumps(line) + "\n" for line in lines) + '{"step": 9'
    )


def _table_rows(markdown: str) -> list[list[str]]:
    """The learning-curve table's body rows, as cells."""
    curve = markdown.split("## Learning curve", 1)[1].split("\n## ", 1)[0]
    rows = [line for line in curve.splitlines() if re.match(r"^\| [\d,]+ \|", line)]
    return [[cell.strip() for cell in row.strip("|").split("|")] for row in rows]


def test_report_shows_samples_with_visible_prompts(tmp_path):
    samples = [
        Sample("\n", 1, 0.8, "\nROMEO: come"),
        Sample("\n", 2, 0.8, "\nJULIET: go"),
        Sample("KING\t", 1, 0.5, "KING\tsays ```"),
    ]
    markdown = _report(tmp_path).markdown("off", samples)

    section = markdown.split("## Samples", 1)[1].split("\n## ", 1)[0]
    assert "**prompt `⏎`** · sample 1 · temperature 0.8" in section
    assert "**prompt `⏎`** · sample 2 · temperature 0.8" in section
    assert "**prompt `KING⇥`** · sample 1 · temperature 0.5" in section
    assert "```text\n\nROMEO: come\n```" in section and "```text\n\nJULIET: go\n```" in section
    # A sample holding ``` gets a longer fence, so it cannot end its own code block early.
    assert "````text\nKING\tsays ```\n````" in section


def test_report_without_samples_or_metrics_says_so(tmp_path):
    markdown = _report(tmp_path / "missing").markdown("off")
    assert "No samples." in markdown and "No metrics.jsonl" in markdown
    assert samples_markdown([]) == "No samples." and curve_markdown([]).startswith(
        "No metrics.jsonl"
    )


def test_report_curve_rows_are_few_ordered_and_end_at_the_last_step(tmp_path):
    _write_metrics(tmp_path, steps=500)  # 25 val evaluations: thinned to 12 rows
    markdown = _report(tmp_path).markdown("off")

    rows = _table_rows(markdown)
    steps = [int(row[0].replace(",", "")) for row in rows]
    assert len(rows) == 12 and steps == sorted(steps) and len(set(steps)) == 12
    assert steps[0] == 20 and steps[-1] == 500
    # train and val bits/char at that step
    assert rows[-1] == ["500", f"{5.0 - 0.5:.4f}", f"{5.1 - 0.5:.4f}"]
    # sparklines fall from █ towards ▁
    assert "- train `█" in markdown and "4.500 bits/char" in markdown


def test_curve_pairs_val_steps_with_the_latest_train_loss(tmp_path):
    # train at 15, 30, 45, 60; val where step % 20 == 0: 60 only
    _write_metrics(tmp_path, steps=60, log=15, evaluate=20)
    points = read_curve(tmp_path / "metrics.jsonl")
    assert points == [CurvePoint(60, 5.0 - 0.06, 5.1 - 0.06)]

    lines = [json.dumps({"step": s, "train/bpc": 5.0 - s / 100}) for s in (10, 20, 30)]
    # a resumed run repeats step 20
    lines += [json.dumps({"step": 25, "val/bpc": 4.9}), json.dumps({"step": 20, "train/bpc": 1.0})]
    (tmp_path / "metrics.jsonl").write_text("\n".join(lines))
    assert read_curve(tmp_path / "metrics.jsonl") == [CurvePoint(25, 1.0, 4.9)]


def test_curve_without_val_rows_shows_training(tmp_path):
    (tmp_path / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": s, "train/bpc": 3.0}) + "\n" for s in (5, 10))
    )
    points = read_curve(tmp_path / "metrics.jsonl")
    assert points == [CurvePoint(5, 3.0, None), CurvePoint(10, 3.0, None)]
    text = curve_markdown(points)
    assert "| 10 | 3.0000 | – |" in text and "- val" not in text


def test_curve_picture_is_an_svg_data_uri(tmp_path):
    text = curve_markdown([CurvePoint(10, 5.0, 5.1), CurvePoint(20, 4.0, 4.2)])
    uri = re.search(r"!\[[^\]]*\]\((data:image/svg\+xml;base64,[A-Za-z0-9+/=]+)\)", text).group(1)
    svg = base64.b64decode(uri.split(",", 1)[1]).decode()
    assert svg.startswith("<svg") and svg.count("<polyline") == 2


def test_thin_and_sparkline():
    assert (
        thin(list(range(100)), 12)[0] == 0
        and thin(list(range(100)), 12)[-1] == 99
        and len(thin(list(range(100)), 12)) == 12
    )
    assert thin([1, 2, 3], 12) == [1, 2, 3] and thin([1, 2, 3], 1) == [3]
    assert (
        sparkline([3.0, 2.0, 1.0]) == "█▅▁"
        and sparkline([2.0, 2.0]) == "▁▁"
        and sparkline([]) == ""
    )
    assert len(sparkline([float(i) for i in range(100)], width=40)) == 40
