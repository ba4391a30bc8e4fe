"""No zombie flow runs: an automation marks a charrnn flow run CRASHED once its heartbeats stop.

A flow run whose process dies together with its worker (the machine loses power,
the OOM killer or a container eviction takes the whole process tree, ``kill -9``
of the worker's process group) has nobody left to report it: Prefect shows it
RUNNING forever, and it keeps the ``training`` queue's only concurrency slot.
This is Prefect's own remedy (docs: "How to detect and respond to zombie
flows"): every flow run emits ``prefect.flow-run.heartbeat`` events every
``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` seconds, and a proactive automation
expects, after each heartbeat, another event of the same flow run within a
window; when none comes it sets the run CRASHED (which frees its slot).

Differences from the docs' recipe, and why:

- Scoped to flow runs tagged ``charrnn`` (every deployment in prefect.yaml has
  that tag, and ``python -m flows run`` tags its runs): on a shared server,
  other people's flows heartbeat at Prefect's default 180 s and a 120 s window
  would crash them while they run.
- ``prefect.flow-run.Running`` (a server-side event, never lost) also starts
  the window, so a run killed before its first heartbeat reached the server is
  caught too.

The heartbeat frequency is Prefect's setting: ``make serve`` gives the worker
(and so its flow runs) ``PREFECT_FLOWS_HEARTBEAT_FREQUENCY`` (default 30 s,
Prefect's minimum), and prefect.yaml puts the same value into every
deployment's job environment, so any worker of a production pool passes it on.
The window defaults to 120 s (``CHARRNN_ZOMBIE_AFTER_S``): a live run must miss
three heartbeats in a row before it is called crashed, and a dead one holds the
training slot for about two minutes. The window must stay above the heartbeat
period (Prefect also wants at least 10 s for a proactive trigger).

prefect.yaml cannot declare this automation: its ``triggers:`` only create
automations that run that deployment. ``make serve`` installs it, and for a
production server run ``python -m flows zombie-guard`` (idempotent) with
``PREFECT_API_URL`` pointing at it; ``infra/prefect/worker.sh`` does.

Limits: the automation fires on silence, not on death. A server (or network)
outage longer than the window makes live runs look dead too; when the server
comes back those runs are marked CRASHED while they still run. A run already in
a final state is never changed (Prefect refuses CRASHED after a final state).
"""

from __future__ import annotations

import os
from datetime import timedelta

HEARTBEAT_ENV = "PREFECT_FLOWS_HEARTBEAT_FREQUENCY"
WINDOW_ENV = "CHARRNN_ZOMBIE_AFTER_S"
DEFAULT_HEARTBEAT_S = 30  # Prefect's minimum (a lower value is refused or raised to 30)
DEFAULT_AFTER_S = 120  # three missed heartbeats
MIN_HEARTBEAT_S = 30
MIN_WINDOW_S = 10  # Prefect's minimum `within` of a proactive trigger
AUTOMATION_NAME = "charrnn: crash flow runs without heartbeats"
TAG = "charrnn"


def heartbeat_s() -> int:
    """The heartbeat period this project's flow runs use.

    $PREFECT_FLOWS_HEARTBEAT_FREQUENCY, else 30.
    """
    return int(os.environ.get(HEARTBEAT_ENV) or DEFAULT_HEARTBEAT_S)


def after_s() -> float:
    """The silence after which a run is called crashed: $CHARRNN_ZOMBIE_AFTER_S, else 120."""
    return float(os.environ.get(WINDOW_ENV) or DEFAULT_AFTER_S)


def check_window(after: float, heartbeat: int) -> None:
    if heartbeat < MIN_HEARTBEAT_S:
        raise ValueError(
            f"heartbeat period {heartbeat}s ({HEARTBEAT_ENV}): "
            f"Prefect's minimum is {MIN_HEARTBEAT_S}s"
        )
    if after < MIN_WINDOW_S or after <= heartbeat:
        raise ValueError(
            f"zombie window {after:g}s (--after-s, --zombie-after-s or {WINDOW_ENV})"
            f" must exceed the heartbeat period {heartbeat}s"
            f" (and be at least {MIN_WINDOW_S}s), or live runs would be marked crashed;"
            " 3-4x the period is safe"
        )


def zombie_automation(
    after: float | None = None,
    heartbeat: int | None = None,
    tag: str = TAG,
    name: str = AUTOMATION_NAME,
):
    """The automation, as Prefect's ``AutomationCore`` (what ``create_automation`` takes)."""
    from prefect.client.schemas.objects import StateType
    from prefect.events.actions import ChangeFlowRunState
    from prefect.events.schemas.automations import AutomationCore, EventTrigger, Posture

    after = after_s() if after is None else after
    heartbeat = heartbeat_s() if heartbeat is None else heartbeat
    check_window(after, heartbeat)
    return AutomationCore(
        name=name,
        description=(
            f"A flow run tagged {tag!r} that sends no event for {after:g}s after a heartbeat"
            f" (every {heartbeat}s) or after it started running has lost its process:"
            " mark it Crashed, which frees its work-queue slot."
            " Installed by charrnn's flows/zombies.py."
        ),
        trigger=EventTrigger(
            match={"prefect.resource.id": "prefect.flow-run.*"},
            match_related={
                "prefect.resource.role": "tag",
                "prefect.resource.id": f"prefect.tag.{tag}",
            },
            after={"prefect.flow-run.heartbeat", "prefect.flow-run.Running"},
            expect={"prefect.flow-run.*"},  # any event of the run: a heartbeat, or any state change
            for_each={"prefect.resource.id"},
            posture=Posture.Proactive,
            threshold=1,
            within=timedelta(seconds=after),
        ),
        actions=[
            ChangeFlowRunState(
                state=StateType.CRASHED,
                message=f"No heartbeat for {after:g}s: the flow run's process is gone "
                f"(marked by the {name!r} automation).",
            )
        ],
    )


def ensure_zombie_automation(
    after: float | None = None,
    heartbeat: int | None = None,
    tag: str = TAG,
    name: str = AUTOMATION_NAME,
) -> tuple[str, str]:
    """Create the automation, or update the one of that name; idempotent.

    Returns (automation id, what was done). Talks to the server of the current
    Prefect settings (``PREFECT_API_URL``).
    """
    from prefect.client.orchestration import get_client
    from prefect.events.schemas.automations import AutomationCore

    wanted = zombie_automation(after, heartbeat, tag, name)
    with get_client(sync_client=True) as client:
        existing = client.read_automations_by_name(name)
        for extra in existing[1:]:  # two setups racing could have made a second one
            client.delete_automation(extra.id)
        if not existing:
            return str(client.create_automation(wanted)), "created"
        current = existing[0]
        if AutomationCore.model_validate(current.model_dump(exclude={"id"})) == wanted:
            return str(current.id), "unchanged"
        client.update_automation(current.id, wanted)
        return str(current.id), "updated"
