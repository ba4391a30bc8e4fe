"""``corpus_watch``: emit ``charrnn.corpus.updated`` when a watched corpus really changed.

For each watched source the cheap validator comes first (HTTP ETag or
Last-Modified via HEAD, a file's size and mtime). Only when it differs from
the remembered one is the content fetched (into the content-addressed cache,
so the training it triggers finds it there) and hashed; the event fires only
if the sha256 differs. A touched-but-identical file therefore triggers
nothing. The last fingerprint of each source is a Prefect variable
``charrnn_corpus_<name>``, updated only after the event was emitted, so a
failed emit is retried by the next watch.

The ``train`` deployment's trigger in ``prefect.yaml`` turns the event into a
training run of ``{{ event.payload.uri }}`` in the model line named as the source
(``{{ event.resource.name }}``).
"""

from __future__ import annotations

import re

from prefect import flow, get_run_logger, task
from prefect.events import emit_event
from prefect.variables import Variable

from charrnn.data.corpus import fetch_corpus, source_validator
from charrnn.errors import ConfigError
from charrnn.registry.lines import validate_model_name

EVENT = "charrnn.corpus.updated"


def variable_name(name: str) -> str:
    return "charrnn_corpus_" + re.sub(r"[^a-z0-9_]+", "_", name.lower()).strip("_")


@task(name="check_source")
def check_source(
    name: str, uri: str, emit_on_first_sight: bool, cache_dir: str = "", timeout_s: float = 30.0
) -> dict:
    """Compare the source with its remembered fingerprint; emit the event if its content changed."""
    logger = get_run_logger()
    key = variable_name(name)
    previous = Variable.get(key, default=None)
    validator = source_validator(uri, timeout_s=timeout_s)
    if (
        previous
        and previous.get("uri") == uri
        and validator is not None
        and previous.get("validator") == validator
    ):
        logger.info("%s (%s): unchanged (%s)", name, uri, validator)
        return {
            "name": name,
            "uri": uri,
            "changed": False,
            "first_sight": False,
            "sha256": previous["sha256"],
        }

    corpus = fetch_corpus(uri, cache_dir or None, timeout_s=timeout_s)
    if previous is None:
        changed, why = emit_on_first_sight, "first sight"
    elif previous.get("uri") != uri:
        changed, why = True, f"new URI (was {previous.get('uri')})"
    else:
        changed, why = (
            previous.get("sha256") != corpus.sha256,
            f"sha256 {previous.get('sha256', '?')[:12]} -> {corpus.sha256[:12]}",
        )
    if changed:
        emit_event(
            event=EVENT,
            resource={
                "prefect.resource.id": f"charrnn.corpus.{name}",
                "prefect.resource.name": name,
            },
            payload={"uri": uri, "sha256": corpus.sha256},
        )
        logger.info("%s (%s): changed (%s); emitted %s", name, uri, why, EVENT)
    elif previous is None:
        logger.info(
            "%s (%s): first sight, baseline recorded (sha256 %s); no training started,"
            " later changes will start one."
            " To train on it now: run the train deployment with corpus=%s"
            " (`prefect deployment run train-pipeline/train --param corpus=%s`),"
            " or watch with emit_on_first_sight=true",
            name,
            uri,
            corpus.sha256[:12],
            uri,
            uri,
        )
    else:
        logger.info("%s (%s): content unchanged (same sha256)", name, uri)
    Variable.set(key, {"uri": uri, "validator": validator, "sha256": corpus.sha256}, overwrite=True)
    return {
        "name": name,
        "uri": uri,
        "changed": changed,
        "first_sight": previous is None,
        "sha256": corpus.sha256,
    }


@flow(
    name="corpus-watch",
    description="Fingerprint watched corpora and emit charrnn.corpus.updated "
    "for each that changed.",
)
def corpus_watch(
    sources: dict[str, str] | None = None,
    emit_on_first_sight: bool = False,
    cache_dir: str = "",
    timeout_s: float = 30.0,
) -> list[dict]:
    """Check every watched corpus once.

    Args:
        sources: name -> corpus URI (default: the offline shakespeare corpus). A change retrains
            the model line of that name (letters, digits, - _ .).
        emit_on_first_sight: also emit for a source seen for the first time (default: only
            record its baseline).
        cache_dir: corpus cache ("" -> $CHARRNN_CACHE or ~/.cache/charrnn).
        timeout_s: network timeout per request.
    """
    sources = sources or {"shakespeare": "shakespeare"}
    # a source's name is the model line its changes retrain (prefect.yaml's trigger)
    for name in sources:
        try:
            validate_model_name(name)
        except ConfigError as exc:
            raise ConfigError(
                f"source name {name!r} cannot name the model line its changes retrain",
                where="corpus_watch sources",
                fix=exc.fix,
            ) from None
    results, failures = [], []
    for name, uri in sources.items():  # one unreachable source must not hide the others' changes
        try:
            results.append(check_source(name, uri, emit_on_first_sight, cache_dir, timeout_s))
        except Exception as exc:
            failures.append(f"{name} ({uri}): {exc}")
    if failures:
        raise RuntimeError("could not check: " + "; ".join(failures))
    return results
