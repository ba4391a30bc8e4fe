"""The ``report_run`` task: ``report.md``, the Prefect artifacts and the W&B run's final entries.

Artifacts (keyed, so each new run adds a version the UI can compare):

* ``charrnn-report``  markdown: ``charrnn.report.RunReport.markdown`` (corpus, fingerprint, config,
  val/test bits/char, throughput, duration, checkpoint, champion/challenger outcome)
* ``charrnn-samples`` table: prompt, sample number, temperature, text
* ``charrnn-wandb``   a link to the W&B run, or (offline) markdown with the run's directory
  and its ``wandb sync`` command
"""

from __future__ import annotations

from pathlib import Path

from prefect import get_run_logger, task
from prefect.artifacts import create_link_artifact, create_markdown_artifact, create_table_artifact

from charrnn.fsutil import atomic_write_text
from charrnn.registry.report import RunReport, Sample, wandb_line

REPORT_KEY, SAMPLES_KEY, WANDB_KEY = "charrnn-report", "charrnn-samples", "charrnn-wandb"


def update_wandb(run: RunReport, samples: list[Sample]) -> dict:
    """Add the final scores and the model with its samples to the training's W&B run.

    The scores go into the summary, the model and samples into the line's artefact; no
    history rows. Returns its tracking facts (training's when W&B is off).
    """
    from charrnn.tracking import dataset_artifact_name, publish_to_wandb

    return (
        publish_to_wandb(
            run.config.track,
            Path(run.run_dir),
            step=run.scores.step,
            scores=run.scores.splits,
            samples=[(row.temperature, row.prompt, row.text) for row in samples],
            checkpoint=Path(run.scores.checkpoint),
            promoted=run.promotion.promoted,
            model_name=run.model_name or run.promotion.model_name,
            metadata={
                "corpus_uri": run.corpus.uri,
                "corpus_sha256": run.corpus.sha256,
                "champion_challenger": run.promotion.decision.to_dict(),
            },
            dataset_ref=f"{dataset_artifact_name(run.corpus.sha256, run.tokens.key)}:latest",
        )
        or run.train.tracking
    )


@task(name="report_run")
def report_run(run: RunReport, samples: list[Sample]) -> tuple[str, dict, str]:
    """Finish the W&B run, write report.md and create the Prefect artifacts.

    Returns (report path, tracking, W&B line).
    """
    tracking = update_wandb(run, samples)
    line, link = wandb_line(tracking)
    report = run.markdown(line, samples)
    path = Path(run.run_dir) / "report.md"
    atomic_write_text(path, report)

    create_markdown_artifact(report, key=REPORT_KEY, description=f"charrnn run {run.run_name}")
    create_table_artifact(
        [row.to_dict() for row in samples],
        key=SAMPLES_KEY,
        description=f"samples from {run.scores.checkpoint}",
    )
    if "wandb_url" in tracking:
        create_link_artifact(
            link, link_text=tracking["wandb_run_id"], key=WANDB_KEY, description="W&B run"
        )
    # offline: a file:// link opens nowhere from the UI's http page; a path and the upload command
    elif "wandb_dir" in tracking:
        body = (
            f"W&B offline run `{tracking['wandb_run_id']}`\n\n"
            f"- directory: `{Path(tracking['wandb_dir']).resolve()}`\n"
            f"- upload: `{tracking['wandb_sync']}`\n"
        )
        create_markdown_artifact(
            body, key=WANDB_KEY, description="W&B offline run: upload it with wandb sync"
        )
    get_run_logger().info("report: %s", path)
    return str(path), tracking, line
