"""``python -m flows``: run the pipeline, check watched corpora, or start/stop local Prefect.

    python -m flows run [--corpus URI] [--model-name LINE] [--nproc-per-node 2] [KEY=VALUE ...]
    python -m flows sweep [--corpus URI] [--trials 12] [--budget-s 60] [--space FILE.yaml]
    python -m flows watch NAME=URI [NAME=URI ...]
    python -m flows serve [--port 4200]      # server + work pool + deployments + worker
    python -m flows stop
    python -m flows zombie-guard [--after-s 120]   # on any server: crash charrnn runs
                                                   # without heartbeats

``run`` talks to the server that ``serve`` started when there is one (so the
run shows up in its UI); otherwise Prefect starts a temporary local server for
the duration of the run, on the same database.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from charrnn.cli import nproc_arg
from flows.local import PROJECT_DIR, WORK_POOL, healthy, load, stop, up
from flows.zombies import DEFAULT_AFTER_S, HEARTBEAT_ENV, WINDOW_ENV, after_s, heartbeat_s

DEFAULT_STATE = Path(os.environ.get("CHARRNN_PREFECT_DIR", PROJECT_DIR / ".prefect"))


def _use_local_prefect(state_dir: Path) -> str | None:
    """Point this process at the local server (or its database) before Prefect is imported."""
    os.environ.setdefault("PREFECT_LOGGING_EXTRA_LOGGERS", "charrnn")
    os.environ.setdefault("PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW", "ignore")
    # no telemetry calls from an offline box
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    # what the zombie-run automation expects (flows/zombies.py)
    os.environ.setdefault(HEARTBEAT_ENV, str(heartbeat_s()))
    if "PREFECT_API_URL" in os.environ:
        return os.environ["PREFECT_API_URL"]
    os.environ.setdefault("PREFECT_HOME", str((state_dir / "home").resolve()))
    # The temporary server migrates a new database before it answers: on a small, busy machine
    # that takes longer than Prefect's 20 s default (seen here on a fresh clone).
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "180")
    # Prefect makes only the last level
    Path(os.environ["PREFECT_HOME"]).mkdir(parents=True, exist_ok=True)
    local = load(state_dir)
    if local is not None and healthy(local.api_url):
        os.environ["PREFECT_API_URL"] = local.api_url
        return local.api_url
    return None


def cmd_run(args: argparse.Namespace) -> int:
    api_url = _use_local_prefect(args.state_dir)
    from prefect import tags

    from flows.params import LaunchParams, SamplingParams, StorageParams, TrackingParams
    from flows.pipeline import train_pipeline
    from flows.zombies import TAG

    # like the deployments' runs: the zombie-run automation watches runs with this tag
    with tags(TAG):
        result = train_pipeline(
            corpus=args.corpus,
            config_file=args.config,
            overrides=args.overrides,
            time_budget_s=args.time_budget_s,
            max_steps=args.max_steps,
            model_name=args.model_name,
            skip_if_trained=args.skip_if_trained,
            launch=LaunchParams(nproc_per_node=args.nproc_per_node),
            sampling=SamplingParams(prompts=[args.prime], num_samples=1, length=args.length),
            storage=StorageParams(
                runs_dir=args.runs_dir,
                registry_dir=args.registry_dir or str(Path(args.runs_dir) / "registry"),
            ),
            tracking=TrackingParams(wandb_mode=args.wandb_mode),
        )
    where = (
        api_url.removesuffix("/api")
        if api_url
        else "run `make serve` and open http://127.0.0.1:4200"
    )
    print(result.printout(f"flow runs, logs and artifacts in the UI: {where}"))
    return 0


def cmd_sweep(args: argparse.Namespace) -> int:
    api_url = _use_local_prefect(args.state_dir)
    from prefect import tags

    from flows.params import LaunchParams, StorageParams, TrackingParams
    from flows.sweep import sweep
    from flows.zombies import TAG

    with tags(TAG):
        result = sweep(
            corpus=args.corpus,
            trials=args.trials,
            budget_s=args.budget_s,
            space_file=args.space,
            study=args.study,
            study_storage=args.storage,
            model_name=args.model_name,
            config_file=args.config,
            overrides=args.overrides,
            trial_deployment=args.trial_deployment,
            launch=LaunchParams(nproc_per_node=args.nproc_per_node),
            storage=StorageParams(
                runs_dir=args.runs_dir,
                registry_dir=args.registry_dir or str(Path(args.runs_dir) / "registry"),
            ),
            tracking=TrackingParams(wandb_mode=args.wandb_mode),
        )
    best = (
        f"trial {result.best_trial}: {result.best_val_bpc:.4f} val bits/char "
        f"({result.best_run_dir})"
        if result.best_trial is not None
        else "none"
    )
    print(f"=== sweep {result.study} finished: {result.trials} trials, {result.pruned} pruned")
    print(f"best:    {best}")
    print(f"model:   {'promoted to production' if result.promoted else 'production kept'}")
    print(f"report:  {result.report}")
    print(f"study:   {result.storage} (optuna-dashboard {result.storage})")
    where = api_url.removesuffix("/api") if api_url else "run `make serve` and open the UI"
    print(f"Prefect: the sweep and each trial's run: {where}")
    return 0


def cmd_watch(args: argparse.Namespace) -> int:
    _use_local_prefect(args.state_dir)
    from flows.watch import corpus_watch

    sources = {}
    for item in args.sources:
        name, sep, uri = item.partition("=")
        if not sep:
            print(f"error: {item!r} is not NAME=URI", file=sys.stderr)
            return 2
        sources[name] = uri
    for row in corpus_watch(sources=sources or None, emit_on_first_sight=args.emit_on_first_sight):
        if row["changed"]:
            what = "CHANGED (emitted charrnn.corpus.updated)"
        elif row.get("first_sight"):
            what = "first sight: baseline recorded, no training started"
        else:
            what = "unchanged"
        print(f"{row['name']}: {what} ({row['uri']}, sha256 {row['sha256'][:12]})")
        if row.get("first_sight") and not row["changed"]:
            print(
                "  later changes will trigger training; to train on it now: "
                f"python -m flows run --corpus {row['uri']}"
            )
            print(
                "  (or, with `make serve` running: "
                f"prefect deployment run train-pipeline/train --param corpus={row['uri']})"
            )
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    local = up(args.state_dir, args.port, args.zombie_after_s)
    print(
        f"Prefect server: {local.ui_url} (API {local.api_url}), "
        f"database and logs in {local.state_dir}"
    )
    print(
        f"work pool {WORK_POOL} (process) with a worker; "
        "deployments from prefect.yaml: train, nightly, corpus-watch"
    )
    print(
        f"flow runs send a heartbeat every {heartbeat_s()}s; a charrnn run silent for "
        f"{args.zombie_after_s or after_s():g}s is marked Crashed"
    )
    print(
        "to use the prefect CLI against it (the shakespeare corpus is embedded: no network needed):"
    )
    print(f"  export PREFECT_API_URL={local.api_url}")
    print("  prefect deployment run train-pipeline/train --param corpus=shakespeare")
    print("stop everything with `make serve-stop` (python -m flows stop)")
    return 0


def cmd_zombie_guard(args: argparse.Namespace) -> int:
    api_url = _use_local_prefect(args.state_dir)
    if api_url is None:
        print(
            "error: no Prefect server: set PREFECT_API_URL, or start one with `make serve`",
            file=sys.stderr,
        )
        return 2
    from flows.zombies import AUTOMATION_NAME, ensure_zombie_automation

    after = args.after_s if args.after_s is not None else after_s()
    try:
        automation_id, done = ensure_zombie_automation(after, heartbeat_s())
    except ValueError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(
        f"automation {AUTOMATION_NAME!r} ({automation_id}) {done} on {api_url}: "
        f"runs tagged charrnn silent for {after:g}s are marked Crashed"
    )
    print(
        f"flow runs must send heartbeats: {HEARTBEAT_ENV}={heartbeat_s()} on the workers "
        "(prefect.yaml sets it for the deployments)"
    )
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    print(
        "stopped the local Prefect server and worker"
        if stop(args.state_dir)
        else f"nothing running (no {args.state_dir / 'local.json'})"
    )
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m flows",
        description="charrnn's Prefect flows: run the pipeline, watch corpora, serve locally.",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=DEFAULT_STATE,
        help=f"local Prefect state: database, logs, PIDs (default: {DEFAULT_STATE})",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser(
        "run",
        help="run train_pipeline once, here",
        description="Run the whole pipeline in this process (tasks log to Prefect).",
    )
    p.add_argument(
        "--corpus",
        default="shakespeare",
        help="corpus URI (default: the offline shakespeare corpus)",
    )
    p.add_argument("--config", help="YAML config file")
    p.add_argument(
        "--nproc-per-node",
        type=nproc_arg,
        default="auto",
        help="training processes per machine, or auto (default): "
        "one per GPU, else the CPU's fastest layout",
    )
    p.add_argument(
        "--time-budget-s",
        type=float,
        default=None,
        help="training wall-clock budget (default: the config's, 120 s)",
    )
    p.add_argument("--max-steps", type=int, default=None, help="training step budget")
    p.add_argument(
        "--wandb-mode",
        default="auto",
        choices=["auto", "online", "offline", "disabled"],
        help="W&B mode (auto: online with credentials, else offline)",
    )
    p.add_argument("--runs-dir", default="runs", help="where run directories go (default: runs)")
    p.add_argument(
        "--registry-dir",
        default=None,
        help="champion/challenger registry (default: RUNS_DIR/registry)",
    )
    p.add_argument(
        "--model-name",
        default=None,
        help="model line to compete in: letters, digits, - _ . "
        "(default: the corpus's name, e.g. shakespeare or a file's stem)",
    )
    p.add_argument(
        "--skip-if-trained",
        action="store_true",
        help="report an earlier run of the same corpus and settings instead of training",
    )
    p.add_argument("--prime", default="ROMEO:\n", help="prompt of the printed sample")
    p.add_argument("--length", type=int, default=400, help="length of the printed sample")
    p.add_argument(
        "overrides",
        nargs="*",
        metavar="KEY=VALUE",
        help="config overrides, e.g. hidden_size=512 train.lr=3e-3",
    )
    p.set_defaults(func=cmd_run)

    p = sub.add_parser(
        "sweep",
        help="search settings for a corpus and a budget; promote the best",
        description="Run trials (each a train_pipeline run) until the study holds --trials "
        "finished ones; poor trials are pruned; the best challenges production.",
    )
    p.add_argument("--corpus", default="shakespeare", help="corpus URI (default: shakespeare)")
    p.add_argument("--trials", type=int, default=12, help="finished trials wanted (default: 12)")
    p.add_argument(
        "--budget-s", type=float, default=60.0, help="training seconds per trial (default: 60)"
    )
    p.add_argument("--space", help="YAML search space (default: the built-in space)")
    p.add_argument("--study", help="study name (default: LINE-BUDGETs; the same name continues)")
    p.add_argument(
        "--storage",
        help="study database URL, e.g. postgresql://USER@HOST/DB "
        "(default: SQLite in RUNS_DIR/sweeps/studies.db)",
    )
    p.add_argument("--config", help="YAML config every trial starts from")
    p.add_argument(
        "--trial-deployment",
        help="run trials as runs of this deployment (e.g. train-pipeline/train; needs `make "
        "serve`), as many at once as its queue allows (default: one at a time, here)",
    )
    p.add_argument(
        "--nproc-per-node", type=nproc_arg, default="auto", help="processes per trial (auto)"
    )
    p.add_argument(
        "--wandb-mode", default="auto", choices=["auto", "online", "offline", "disabled"]
    )
    p.add_argument("--runs-dir", default="runs", help="runs directory (default: runs)")
    p.add_argument("--registry-dir", default=None, help="registry (default: RUNS_DIR/registry)")
    p.add_argument("--model-name", default=None, help="the line the best trial challenges")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="overrides for every trial")
    p.set_defaults(func=cmd_sweep)

    p = sub.add_parser(
        "watch",
        help="run corpus_watch once",
        description="Fingerprint each NAME=URI and emit charrnn.corpus.updated "
        "for those that changed.",
    )
    p.add_argument(
        "sources",
        nargs="*",
        metavar="NAME=URI",
        help="watched corpora (default: shakespeare=shakespeare)",
    )
    p.add_argument(
        "--emit-on-first-sight", action="store_true", help="emit for sources never seen before too"
    )
    p.set_defaults(func=cmd_watch)

    p = sub.add_parser(
        "serve",
        help="start local Prefect: server, work pool, deployments, worker",
        description="Start `prefect server start` on 127.0.0.1 (SQLite), a process work pool, "
        "every deployment of prefect.yaml and a worker, in the background.",
    )
    p.add_argument("--port", type=int, default=4200, help="server port (default: 4200)")
    p.add_argument(
        "--zombie-after-s",
        type=float,
        default=None,
        help="mark a flow run Crashed after this long without a heartbeat "
        f"(default: ${WINDOW_ENV} or {DEFAULT_AFTER_S})",
    )
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser(
        "zombie-guard",
        help="install the automation that marks flow runs without heartbeats Crashed",
        description="Create or update (idempotent) the automation that marks flow runs tagged "
        "charrnn Crashed when no heartbeat came for a while, on the server of "
        "PREFECT_API_URL (or `serve`'s). Flow runs must send heartbeats: "
        f"{HEARTBEAT_ENV} (default {heartbeat_s()}).",
    )
    p.add_argument(
        "--after-s",
        type=float,
        default=None,
        help=f"seconds without a heartbeat (default: ${WINDOW_ENV} or {DEFAULT_AFTER_S}); "
        f"must exceed {HEARTBEAT_ENV}",
    )
    p.set_defaults(func=cmd_zombie_guard)

    p = sub.add_parser(
        "stop",
        help="stop what `serve` started",
        description="Stop the worker (and its flow runs) and the server.",
    )
    p.set_defaults(func=cmd_stop)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from charrnn.errors import CharRNNError

    try:
        return args.func(args)
    except CharRNNError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
