"""The records a pipeline run passes between its steps, its report and its end-of-run printout.

Every step of a run hands the next one a typed record (``CorpusRef``, ``TokenSet``,
``TrainResult``, ``Scores``, ``Promotion``, ``Sample``); at the end, ``RunReport``
holds all of them and renders ``report.md``, and ``RunResult`` is what a run returns
and writes as ``pipeline_result.json``. They are dataclasses of JSON values, so they
cross process boundaries (Prefect persists them as task results) unchanged.
"""

from __future__ import annotations

import base64
import json
import math
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from charrnn.config import Config, dump_config
from charrnn.data.corpus import CorpusRef
from charrnn.data.tokens import TokenSet
from charrnn.distributed.launch import LaunchSpec
from charrnn.evaluation.evaluate import format_score
from charrnn.registry.lines import Promotion
from charrnn.train.trainer import TrainResult


@dataclass(frozen=True)
class Scores:
    """Exact scores of one checkpoint on the whole val and test splits (``eval.json``)."""

    checkpoint: str
    step: int
    val: dict | None = None  # an EvalResult.to_dict(); None when the split is empty
    test: dict | None = None

    @property
    def splits(self) -> dict[str, dict]:
        return {
            split: score
            for split, score in (("val", self.val), ("test", self.test))
            if score is not None
        }

    @property
    def held_out(self) -> dict | None:
        """The score champion/challenger compares: test, else val."""
        return self.test or self.val

    def to_dict(self) -> dict:
        return {"checkpoint": self.checkpoint, "step": self.step, **self.splits}


@dataclass(frozen=True)
class Sample:
    prompt: str
    sample: int  # 1-based number of the sample for this prompt
    temperature: float
    text: str  # prompt + generated text

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class RunReport:
    """Everything one pipeline run did.

    This is what ``report.md`` (and the Prefect report artifact) shows.
    """

    run_name: str
    run_dir: str
    corpus: CorpusRef
    tokens: TokenSet
    train: TrainResult
    scores: Scores
    promotion: Promotion
    launch: LaunchSpec
    config: Config
    duration_s: float
    # The model line (charrnn.registry): whose production model this run challenged.
    model_name: str = ""

    @property
    def world_size(self) -> int:
        return self.launch.nproc_per_node * self.launch.nnodes

    @property
    def model_summary(self) -> str:
        m = self.config.model
        return (
            f"{m.num_layers}x{m.hidden_size} LSTM, embedding {m.embedding_dim}, "
            f"vocab {self.tokens.vocab_size}"
        )

    def markdown(self, wandb: str, samples: Sequence[Sample] = ()) -> str:
        """The report.

        ``wandb`` is its W&B line (:func:`wandb_line`), ``samples`` the run's samples.
        The learning curve comes from the run directory's ``metrics.jsonl``.
        """
        corpus, train, scores, decision = (
            self.corpus,
            self.train,
            self.scores,
            self.promotion.decision,
        )
        champion = f"{decision.champion_bpc:.4f}" if decision.champion_bpc is not None else "none"
        verdict = (
            "**promoted to production**"
            if decision.promoted
            else "**not promoted** (production kept)"
        )
        minutes, seconds = divmod(int(self.duration_s), 60)
        curve = curve_markdown(read_curve(Path(self.run_dir) / "metrics.jsonl"))
        return f"""# charrnn run `{self.run_name}`

| | |
|---|---|
| model line | `{self.model_name or self.promotion.model_name or "n/a"}` |
| corpus | `{corpus.uri}` |
| sha256 | `{corpus.sha256}` |
| size | {corpus.num_chars:,} characters |
| model | {self.model_summary} |
| processes | {self.world_size} ({self.launch.nnodes} node(s) x {self.launch.nproc_per_node}) |
| steps | {train.step:,} (resumed from {train.resumed_from:,}) |
| stopped by | {_stop_reason(train)} |
| validation | {train.validations} passes during training, {train.eval_seconds:.1f} s |
| training time | {train.train_seconds:.0f} s |
| throughput | {train.chars_per_s:,.0f} chars/s |
| pipeline duration | {minutes} min {seconds} s |
| checkpoint | `{scores.checkpoint}` (step {scores.step}) |
| run directory | `{self.run_dir}` |

## Scores of the checkpoint (whole splits)

| split | nats/char | bits/char | characters |
|---|---|---|---|
{_score_row("val", scores.val)}
{_score_row("test", scores.test)}

## Learning curve

{curve}

## Samples

{samples_markdown(samples)}

## Champion / challenger

Scored on the same held-out text ({decision.held_out}, {decision.held_out_chars:,} characters):
challenger {decision.challenger_bpc:.4f} bits/char, production {champion}. \
The challenger was {verdict}: {decision.reason}.

## W&B

{wandb}

## Config

```yaml
{dump_config(self.config).rstrip()}
```
"""


def _stop_reason(train: TrainResult) -> str:
    """Why training ended: its budget, early stopping (and why), or a signal."""
    if train.stopped_by:
        return f"signal {train.stopped_by}"
    return train.stopped_early or "its budget (steps, epochs or time)"


def _score_row(name: str, score: dict | None) -> str:
    if not score:
        return f"| {name} | n/a | n/a | n/a |"
    return f"| {name} | {score['loss_nats']:.4f} | {score['bpc']:.4f} | {score['chars']:,} |"


# --------------------------------------------------------------------------- learning curve

CURVE_ROWS = 12  # the report's table: enough to see the shape, short enough to read at a glance
SPARK = "▁▂▃▄▅▆▇█"


@dataclass(frozen=True)
class CurvePoint:
    step: int
    train_bpc: float | None
    val_bpc: float | None


def read_curve(path: Path) -> list[CurvePoint]:
    """Train and val bits/char by step from a run's ``metrics.jsonl``; [] when there is none.

    Rows are the val evaluations, each with the latest train loss logged at or before its
    step (the two are logged at different intervals); a run without val rows (an empty
    val split) gets its train rows. A resumed run logs some steps twice: the later record
    wins.
    """
    train: dict[int, float] = {}
    val: dict[int, float] = {}
    for record in _records(path):
        step = record.get("step")
        if not isinstance(step, int):
            continue
        if "train/bpc" in record:
            train[step] = float(record["train/bpc"])
        if "val/bpc" in record:
            val[step] = float(record["val/bpc"])
    if not val:
        return [CurvePoint(step, bpc, None) for step, bpc in sorted(train.items())]
    return [CurvePoint(step, _latest(train, step), bpc) for step, bpc in sorted(val.items())]


def _records(path: Path) -> list[dict]:
    """The JSON lines of ``path``.

    A torn last line (a killed run) or a missing file reads as nothing.
    """
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError:
        return []
    records = []
    for line in lines:
        try:
            record = json.loads(line)
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
    return records


def _latest(values: dict[int, float], step: int) -> float | None:
    earlier = [s for s in values if s <= step]
    return values[max(earlier)] if earlier else None


def thin(items: Sequence, keep: int) -> list:
    """At most ``keep`` items evenly spread over ``items``, always the first and the last."""
    if len(items) <= keep:
        return list(items)
    if keep <= 1:
        return [items[-1]]
    picked = sorted({round(i * (len(items) - 1) / (keep - 1)) for i in range(keep)})
    return [items[i] for i in picked]


def sparkline(values: Sequence[float], width: int = 40) -> str:
    """One block character per value (at most ``width``, evenly spread).

    The lowest draws as ▁, the highest as █.
    """
    values = thin(values, width)
    if not values:
        return ""
    low, high = min(values), max(values)
    span = high - low or 1.0  # a flat curve draws as a flat line of ▁
    return "".join(SPARK[min(len(SPARK) - 1, int((v - low) / span * len(SPARK)))] for v in values)


def curve_markdown(points: Sequence[CurvePoint], rows: int = CURVE_ROWS) -> str:
    """The learning curve: a picture (SVG), sparklines and a table of at most ``rows`` steps.

    The picture is an inline ``data:image/svg+xml`` URI: Prefect's UI renders it (its
    sanitizer lets ``data:image/`` through) and it needs no plotting library; the table
    and sparklines carry the same numbers for ``report.md`` read in a terminal.
    """
    if not points:
        return "No metrics.jsonl in the run directory: no curve to show."
    lines = [f"![train and val bits/char by step]({svg_data_uri(points)})", ""]
    for name, series in (
        ("train", [p.train_bpc for p in points]),
        ("val", [p.val_bpc for p in points]),
    ):
        known = [v for v in series if v is not None]
        if known:
            lines.append(
                f"- {name} `{sparkline(known)}` {known[0]:.3f} → {known[-1]:.3f} bits/char"
            )
    lines += ["", "| step | train bits/char | val bits/char |", "|---:|---:|---:|"]
    lines += [
        f"| {p.step:,} | {_bpc(p.train_bpc)} | {_bpc(p.val_bpc)} |" for p in thin(points, rows)
    ]
    return "\n".join(lines)


def _bpc(value: float | None) -> str:
    return "–" if value is None else f"{value:.4f}"


def svg_data_uri(points: Sequence[CurvePoint], width: int = 480, height: int = 160) -> str:
    """A small line chart of train (blue) and val (orange) bits/char, as a base64 SVG data URI."""
    pad = 28  # room for the axis labels
    values = [
        v for p in points for v in (p.train_bpc, p.val_bpc) if v is not None and math.isfinite(v)
    ]
    low, high = (min(values), max(values)) if values else (0.0, 1.0)
    first, last = points[0].step, points[-1].step

    def xy(step: int, value: float) -> str:
        x = pad + (step - first) / ((last - first) or 1) * (width - 2 * pad)
        y = height - pad - (value - low) / ((high - low) or 1) * (height - 2 * pad)
        return f"{x:.1f},{y:.1f}"

    lines = []
    for colour, attr in (("#1f77b4", "train_bpc"), ("#ff7f0e", "val_bpc")):
        coords = " ".join(
            xy(p.step, getattr(p, attr)) for p in points if getattr(p, attr) is not None
        )
        if coords:
            lines.append(
                f'<polyline fill="none" stroke="{colour}" stroke-width="2" points="{coords}"/>'
            )
    text = 'font-family="sans-serif" font-size="11" fill="#555"'
    svg = (
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}">'
        '<rect width="100%" height="100%" fill="white"/>'
        f'<path d="M{pad},{pad} V{height - pad} H{width - pad}" stroke="#999" fill="none"/>'
        f"{''.join(lines)}"
        f'<text x="{pad}" y="{pad - 8}" {text}>{high:.2f} bits/char</text>'
        f'<text x="{pad + 4}" y="{height - pad - 4}" {text}>{low:.2f}</text>'
        f'<text x="{pad}" y="{height - 8}" {text}>step {first:,}</text>'
        f'<text x="{width - pad}" y="{height - 8}" text-anchor="end" {text}>step {last:,}</text>'
        f'<text x="{width - pad}" y="{pad - 8}" text-anchor="end" {text}>'
        '<tspan fill="#1f77b4">train</tspan> <tspan fill="#ff7f0e">val</tspan></text></svg>'
    )
    return "data:image/svg+xml;base64," + base64.b64encode(svg.encode()).decode()


# --------------------------------------------------------------------------- samples


def visible(text: str) -> str:
    """``text`` with its newlines and tabs drawn (⏎, ⇥), so a prompt of whitespace shows up."""
    return text.replace("\n", "⏎").replace("\t", "⇥")


def _code_span(text: str) -> str:
    """``text`` as inline code that survives backticks in it.

    The fence is one backtick longer than the longest run of them in ``text``.
    """
    fence = "`" * (_longest_backtick_run(text) + 1)
    pad = " " if text.startswith("`") or text.endswith("`") else ""
    return f"{fence}{pad}{text}{pad}{fence}"


def _longest_backtick_run(text: str) -> int:
    longest = run = 0
    for char in text:
        run = run + 1 if char == "`" else 0
        longest = max(longest, run)
    return longest


def samples_markdown(samples: Sequence[Sample]) -> str:
    """Each sample as a heading and its text in a code block.

    The heading shows the visible prompt, the sample's number and its temperature.
    """
    if not samples:
        return "No samples."
    blocks = []
    for row in samples:
        # A sample with ``` in it cannot close the block.
        fence = "`" * max(3, _longest_backtick_run(row.text) + 1)
        title = (
            f"**prompt {_code_span(visible(row.prompt))}** · sample {row.sample} · "
            f"temperature {row.temperature:g}"
        )
        blocks.append(f"{title}\n\n{fence}text\n{row.text}\n{fence}")
    return "\n\n".join(blocks)


def wandb_line(tracking: dict) -> tuple[str, str | None]:
    """(markdown line, link) for the W&B run of a ``TrainResult.tracking``-shaped dict."""
    if "wandb_url" in tracking:
        return f"[{tracking['wandb_run_id']}]({tracking['wandb_url']})", tracking["wandb_url"]
    if "wandb_dir" in tracking:
        return (
            f"offline run `{tracking['wandb_dir']}`; upload it with `{tracking['wandb_sync']}`",
            Path(tracking["wandb_dir"]).resolve().as_uri(),
        )
    return "W&B was off for this run (track.mode=disabled or it could not start)", None


def wandb_where(tracking: dict) -> str | None:
    """The W&B run in one plain line: URL, or offline directory and sync command.

    None when W&B was off.
    """
    if "wandb_url" in tracking:
        return tracking["wandb_url"]
    if "wandb_dir" in tracking:
        return f"{tracking['wandb_dir']} (offline; upload with `{tracking['wandb_sync']}`)"
    return None


@dataclass(frozen=True)
class RunResult:
    """What a pipeline run returns, and writes as ``pipeline_result.json``."""

    run_dir: str
    checkpoint: str
    step: int
    val: dict | None
    test: dict | None
    samples: str  # samples.txt
    first_sample: str
    report: str  # report.md
    wandb: str  # the report's W&B line
    tracking: dict = field(default_factory=dict)
    promoted: bool = False
    production: str = ""  # the line's production.json in the registry
    model_name: str = ""  # the model line; "" in results written before model lines
    chars_per_s: float = 0.0
    train_seconds: float = 0.0

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def load(cls, path: str | os.PathLike[str]) -> RunResult:
        return cls(**json.loads(Path(path).read_text()))

    def printout(self, prefect: str) -> str:
        """The end-of-run printout of ``python -m flows run``."""
        kept = "this model was promoted" if self.promoted else "kept the earlier model"
        paths = [
            ("samples", self.samples),
            ("checkpoint", self.checkpoint),
            ("report", self.report),
            ("W&B run", self.wandb),
            ("production", f"{self.production} ({kept})"),
            ("Prefect", prefect),
        ]
        scores = {"val": self.val, "test": self.test}
        return end_of_run(
            "train-pipeline",
            self.step,
            self.train_seconds,
            self.chars_per_s,
            scores,
            "sample",
            self.first_sample,
            paths,
        )


def end_of_run(
    what: str,
    step: int,
    train_seconds: float,
    chars_per_s: float,
    scores: dict[str, dict | None],
    sample_title: str,
    sample: str,
    paths: list[tuple[str, str | None]],
) -> str:
    """The one end-of-run printout (``charrnn run``, ``python -m flows run``).

    Scores, a sample, and where things are.
    """
    lines = [
        "",
        f"=== {what} finished: step {step}, {train_seconds:.0f}s of training, "
        f"{chars_per_s:,.0f} chars/s",
    ]
    lines += [f"{split:>5}: {format_score(score)}" for split, score in scores.items() if score]
    lines += [f"--- {sample_title} ---", sample, "---"]
    lines += [f"{label + ':':<12}{value}" for label, value in paths if value is not None]
    return "\n".join(lines)
