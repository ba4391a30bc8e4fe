"""The ``publish`` task: a markdown report, Prefect artifacts, and the final entries of the W&B run.

Artifacts (keyed, so each new run adds a version the UI can compare):

* ``charrnn-report``  markdown: corpus, fingerprint, config, val/test bits/char, throughput,
  duration, checkpoint, champion/challenger outcome
* ``charrnn-samples`` table: prompt, sample number, temperature, text
* ``charrnn-wandb``   link: the W&B run URL, or the offline run directory and its ``wandb sync`` command
"""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

from charrnn.fsutil import atomic_write_text

REPORT_KEY, SAMPLES_KEY, WANDB_KEY = "charrnn-report", "charrnn-samples", "charrnn-wandb"


def _score_row(name: str, score: dict | None) -> str:
    if not score:
        return f"| {name} | n/a | n/a | n/a |"
    return f"| {name} | {score['loss_nats']:.4f} | {score['bpc']:.4f} | {score['chars']:,} |"


def render_report(run: dict) -> str:
    """The run as markdown; ``run`` holds only JSON values (see ``train_pipeline``)."""
    corpus, train, scores, promotion = run["corpus"], run["train"], run["eval"], run["promotion"]
    decision = promotion["decision"]
    champion = f"{decision['champion_bpc']:.4f}" if decision["champion_bpc"] is not None else "none"
    verdict = "**promoted to production**" if decision["promoted"] else "**not promoted** (production kept)"
    minutes, seconds = divmod(int(run["duration_s"]), 60)
    return f"""# charrnn run `{run['run_name']}`

| | |
|---|---|
| corpus | `{corpus['uri']}` |
| sha256 | `{corpus['sha256']}` |
| size | {corpus['num_chars']:,} characters |
| model | {run['model_summary']} |
| processes | {run['world_size']} ({run['launch']['nnodes']} node(s) x {run['launch']['nproc_per_node']}) |
| steps | {train['step']:,} (resumed from {train['resumed_from']:,}) |
| training time | {train['train_seconds']:.0f} s |
| throughput | {train['chars_per_s']:,.0f} chars/s |
| pipeline duration | {minutes} min {seconds} s |
| checkpoint | `{scores['checkpoint']}` (step {scores['step']}) |
| run directory | `{run['run_dir']}` |

## Scores of the checkpoint (whole splits)

| split | nats/char | bits/char | characters |
|---|---|---|---|
{_score_row('val', scores.get('val'))}
{_score_row('test', scores.get('test'))}

## Champion / challenger

Scored on the same held-out text ({decision['held_out']}, {decision['held_out_chars']:,} characters):
challenger {decision['challenger_bpc']:.4f} bits/char, production {champion}. The challenger was {verdict}: {decision['reason']}.

## W&B

{run['wandb_line']}

## Config

```yaml
{run['config_yaml'].rstrip()}
```
"""


def wandb_line(tracking: dict) -> tuple[str, str | None]:
    """(markdown line, link) for the W&B run."""
    if "wandb_url" in tracking:
        return f"[{tracking['wandb_run_id']}]({tracking['wandb_url']})", tracking["wandb_url"]
    if "wandb_dir" in tracking:
        return f"offline run `{tracking['wandb_dir']}`; upload it with `{tracking['wandb_sync']}`", Path(tracking["wandb_dir"]).resolve().as_uri()
    return "W&B was off for this run (track.mode=disabled or it could not start)", None


@task(name="publish")
def publish(run: dict, samples: list[dict]) -> dict:
    """Write report.md, create the Prefect artifacts and finish the W&B run; return where everything is."""
    from charrnn.config import TrackConfig
    from charrnn.tracking import dataset_artifact_name, publish_to_wandb

    logger = get_run_logger()
    run_dir = Path(run["run_dir"])
    track = TrackConfig(**run["track"])
    tracking = publish_to_wandb(
        track,
        run_dir,
        step=run["eval"]["step"],
        scores={split: run["eval"][split] for split in ("val", "test") if split in run["eval"]},
        samples=[(row["temperature"], row["prompt"], row["text"]) for row in samples],
        checkpoint=Path(run["eval"]["checkpoint"]),
        promoted=run["promotion"]["decision"]["promoted"],
        metadata={"corpus_uri": run["corpus"]["uri"], "corpus_sha256": run["corpus"]["sha256"], "champion_challenger": run["promotion"]["decision"]},
        dataset_ref=f"{dataset_artifact_name(run['corpus']['sha256'], run['tokens']['key'])}:latest",
    ) or run["train"].get("tracking", {})
    line, link = wandb_line(tracking)
    report = render_report({**run, "wandb_line": line})
    atomic_write_text(run_dir / "report.md", report)

    create_markdown_artifact(report, key=REPORT_KEY, description=f"charrnn run {run['run_name']}")
    create_table_artifact(
        [{"prompt": r["prompt"], "sample": r["sample"], "temperature": r["temperature"], "text": r["text"]} for r in samples],
        key=SAMPLES_KEY,
        description=f"samples from {run['eval']['checkpoint']}",
    )
    if link:
        description = "W&B run" if link.startswith("http") else f"W&B offline run; upload with `{tracking.get('wandb_sync')}`"
        create_link_artifact(link, link_text=tracking.get("wandb_run_id", "W&B run"), key=WANDB_KEY, description=description)
    logger.info("report: %s", run_dir / "report.md")
    return {"report": str(run_dir / "report.md"), "tracking": tracking, "wandb_line": line}
