"""The records a pipeline run passes between its steps, the run's report and its end-of-run printout.

Every step of a run hands the next one a typed record (``CorpusRef``, ``TokenSet``,
``TrainResult``, ``Scores``, ``Promotion``, ``Sample``); at the end, ``RunReport``
holds all of them and renders ``report.md``, and ``RunResult`` is what a run returns
and writes as ``pipeline_result.json``. They are dataclasses of JSON values, so they
cross process boundaries (Prefect persists them as task results) unchanged.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .config import Config, dump_config
from .corpus import CorpusRef
from .evaluate import format_score
from .launch import LaunchSpec
from .registry import Promotion
from .tokens import TokenSet
from .train import TrainResult


@dataclass(frozen=True)
class Scores:
    """Exact scores of one checkpoint on the whole val and test splits (``eval.json``)."""

    checkpoint: str
    step: int
    val: dict | None = None  # an EvalResult.to_dict(); None when the split is empty
    test: dict | None = None

    @property
    def splits(self) -> dict[str, dict]:
        return {split: score for split, score in (("val", self.val), ("test", self.test)) if score is not None}

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
    """Everything one pipeline run did: what ``report.md`` (and the Prefect report artifact) shows."""

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
    model_name: str = ""  # the model line (charrnn.registry): whose production model this run challenged

    @property
    def world_size(self) -> int:
        return self.launch.nproc_per_node * self.launch.nnodes

    @property
    def model_summary(self) -> str:
        m = self.config.model
        return f"{m.num_layers}x{m.hidden_size} LSTM, embedding {m.embedding_dim}, vocab {self.tokens.vocab_size}"

    def markdown(self, wandb: str) -> str:
        """The report; ``wandb`` is its W&B line (:func:`wandb_line`)."""
        corpus, train, scores, decision = self.corpus, self.train, self.scores, self.promotion.decision
        champion = f"{decision.champion_bpc:.4f}" if decision.champion_bpc is not None else "none"
        verdict = "**promoted to production**" if decision.promoted else "**not promoted** (production kept)"
        minutes, seconds = divmod(int(self.duration_s), 60)
        return f"""# charrnn run `{self.run_name}`

| | |
|---|---|
| model line | `{self.model_name or self.promotion.model_name or 'n/a'}` |
| corpus | `{corpus.uri}` |
| sha256 | `{corpus.sha256}` |
| size | {corpus.num_chars:,} characters |
| model | {self.model_summary} |
| processes | {self.world_size} ({self.launch.nnodes} node(s) x {self.launch.nproc_per_node}) |
| steps | {train.step:,} (resumed from {train.resumed_from:,}) |
| training time | {train.train_seconds:.0f} s |
| throughput | {train.chars_per_s:,.0f} chars/s |
| pipeline duration | {minutes} min {seconds} s |
| checkpoint | `{scores.checkpoint}` (step {scores.step}) |
| run directory | `{self.run_dir}` |

## Scores of the checkpoint (whole splits)

| split | nats/char | bits/char | characters |
|---|---|---|---|
{_score_row('val', scores.val)}
{_score_row('test', scores.test)}

## Champion / challenger

Scored on the same held-out text ({decision.held_out}, {decision.held_out_chars:,} characters):
challenger {decision.challenger_bpc:.4f} bits/char, production {champion}. The challenger was {verdict}: {decision.reason}.

## W&B

{wandb}

## Config

```yaml
{dump_config(self.config).rstrip()}
```
"""


def _score_row(name: str, score: dict | None) -> str:
    if not score:
        return f"| {name} | n/a | n/a | n/a |"
    return f"| {name} | {score['loss_nats']:.4f} | {score['bpc']:.4f} | {score['chars']:,} |"


def wandb_line(tracking: dict) -> tuple[str, str | None]:
    """(markdown line, link) for the W&B run of a ``TrainResult.tracking``-shaped dict."""
    if "wandb_url" in tracking:
        return f"[{tracking['wandb_run_id']}]({tracking['wandb_url']})", tracking["wandb_url"]
    if "wandb_dir" in tracking:
        return f"offline run `{tracking['wandb_dir']}`; upload it with `{tracking['wandb_sync']}`", Path(tracking["wandb_dir"]).resolve().as_uri()
    return "W&B was off for this run (track.mode=disabled or it could not start)", None


def wandb_where(tracking: dict) -> str | None:
    """The W&B run in one plain line (URL, or offline directory and sync command); None when W&B was off."""
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
        paths = [("samples", self.samples), ("checkpoint", self.checkpoint), ("report", self.report), ("W&B run", self.wandb), ("production", f"{self.production} ({kept})"), ("Prefect", prefect)]
        scores = {"val": self.val, "test": self.test}
        return end_of_run("train-pipeline", self.step, self.train_seconds, self.chars_per_s, scores, "sample", self.first_sample, paths)


def end_of_run(what: str, step: int, train_seconds: float, chars_per_s: float, scores: dict[str, dict | None], sample_title: str, sample: str, paths: list[tuple[str, str | None]]) -> str:
    """The one end-of-run printout (``charrnn run``, ``python -m flows run``): scores, a sample, where things are."""
    lines = ["", f"=== {what} finished: step {step}, {train_seconds:.0f}s of training, {chars_per_s:,.0f} chars/s"]
    lines += [f"{split:>5}: {format_score(score)}" for split, score in scores.items() if score]
    lines += [f"--- {sample_title} ---", sample, "---"]
    lines += [f"{label + ':':<12}{value}" for label, value in paths if value is not None]
    return "\n".join(lines)
