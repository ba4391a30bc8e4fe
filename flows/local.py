"""Local Prefect for one machine: ``prefect server start`` on 127.0.0.1 (SQLite), the work pool,
every deployment in ``prefect.yaml``, the zombie-run automation (flows/zombies.py), and a
process worker whose flow runs send heartbeats; and a clean stop.

Everything lives in a state directory (default ``.prefect/``): ``PREFECT_HOME``
(the SQLite database and persisted task results), the server and worker logs,
and ``local.json`` with their PIDs and the API URL. Each process runs in its own
process group, so ``stop`` ends the server, the worker and any flow run the
worker started.
"""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

from charrnn.distributed.launch import child_env, kill_group

PROJECT_DIR = Path(__file__).resolve().parent.parent
WORK_POOL = "charrnn-local"
TRAINING_QUEUE = "training"  # concurrency 1: two trainings never share this machine
STOP_GRACE_S = 15.0  # SIGTERM to SIGKILL for the server and the worker


@dataclass
class LocalPrefect:
    state_dir: str
    api_url: str
    server_pid: int | None = None
    worker_pid: int | None = None

    @property
    def ui_url(self) -> str:
        return self.api_url.removesuffix("/api")

    def env(self, **extra: str) -> dict[str, str]:
        """The environment a Prefect CLI, worker or flow needs to talk to this server."""
        return prefect_env(Path(self.state_dir), self.api_url, **extra)


def prefect_env(state_dir: Path, api_url: str, **extra: str) -> dict[str, str]:
    return (
        child_env(  # without this process's wandb-core service: not theirs
            PREFECT_HOME=str((state_dir / "home").resolve()),
            PREFECT_API_URL=api_url,
            PREFECT_CLI_PROMPT="false",
            PREFECT_LOGGING_EXTRA_LOGGERS="charrnn",
            # charrnn logs outside a flow stay local, quietly
            PREFECT_LOGGING_TO_API_WHEN_MISSING_FLOW="ignore",
            PREFECT_SERVER_ANALYTICS_ENABLED="false",  # no telemetry calls from an offline box
            PYTHONUNBUFFERED="1",
        )
        | extra
    )


def _prefect(*args: str) -> list[str]:
    return [sys.executable, "-m", "prefect", *args]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def healthy(api_url: str, timeout_s: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{api_url}/health", timeout=timeout_s) as resp:
            return resp.status == 200
    except OSError:
        return False


def _spawn(
    cmd: list[str], log_path: Path, env: dict[str, str], cwd: Path = PROJECT_DIR
) -> subprocess.Popen:
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        return subprocess.Popen(
            cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=cwd, start_new_session=True
        )


def start_server(
    state_dir: Path, port: int = 4200, timeout_s: float = 120.0, database_url: str | None = None
) -> LocalPrefect:
    """``prefect server start`` on 127.0.0.1:PORT; returns once ``/api/health`` answers.

    ``database_url``: e.g. ``postgresql+asyncpg://USER:PASSWORD@HOST:5432/prefect``
    (production); default SQLite in the state directory.
    """
    state_dir.mkdir(parents=True, exist_ok=True)
    api_url = f"http://127.0.0.1:{port}/api"
    if healthy(api_url):
        raise RuntimeError(
            f"something already serves {api_url}: "
            "run `python -m flows stop` (or pick another --port)"
        )
    local = LocalPrefect(str(state_dir.resolve()), api_url)
    db = {"PREFECT_API_DATABASE_CONNECTION_URL": database_url} if database_url else {}
    proc = _spawn(
        _prefect("server", "start", "--host", "127.0.0.1", "--port", str(port)),
        state_dir / "server.log",
        local.env(**db),
    )
    local.server_pid = proc.pid
    _save(local)
    deadline = time.monotonic() + timeout_s
    while not healthy(api_url):
        if proc.poll() is not None or time.monotonic() > deadline:
            kill_group(proc.pid, STOP_GRACE_S)
            tail = (state_dir / "server.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(
                f"prefect server did not start (see {state_dir / 'server.log'}):\n{tail}"
            )
        time.sleep(0.5)
    return local


def run_cli(
    local: LocalPrefect, *args: str, check: bool = True, timeout_s: float = 180.0
) -> subprocess.CompletedProcess:
    result = subprocess.run(
        _prefect(*args),
        env=local.env(),
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )
    if check and result.returncode != 0:
        raise RuntimeError(
            f"`prefect {' '.join(args)}` failed ({result.returncode}):\n"
            f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )
    return result


def create_work_pool(local: LocalPrefect, pool: str = WORK_POOL) -> None:
    """A ``process`` work pool, and its ``training`` queue limited to one run at a time."""
    template = PROJECT_DIR / "infra" / "prefect" / "base-job-template-process.json"
    run_cli(
        local,
        "work-pool",
        "create",
        pool,
        "--type",
        "process",
        "--overwrite",
        "--base-job-template",
        str(template),
    )
    created = run_cli(
        local, "work-queue", "create", TRAINING_QUEUE, "--pool", pool, "--limit", "1", check=False
    )
    if created.returncode != 0:  # it exists already: make sure of its limit
        run_cli(local, "work-queue", "set-concurrency-limit", TRAINING_QUEUE, "1", "--pool", pool)


def deploy(local: LocalPrefect, *names: str, params: dict | None = None) -> None:
    """``prefect deploy`` from prefect.yaml: every deployment, or the named ones.

    ``params`` overrides their parameters.
    """
    args = ["deploy", *(a for n in names for a in ("--name", n))] if names else ["deploy", "--all"]
    if params:
        args += ["--params", json.dumps(params)]
    run_cli(local, *args)


def install_zombie_guard(local: LocalPrefect, after_s: float | None = None) -> None:
    """The automation that marks charrnn flow runs without heartbeats CRASHED; idempotent.

    See flows/zombies.py.
    """
    args = ["--after-s", f"{after_s:g}"] if after_s is not None else []
    cmd = [sys.executable, "-m", "flows", "zombie-guard", *args]
    result = subprocess.run(
        cmd, env=local.env(), cwd=PROJECT_DIR, capture_output=True, text=True, timeout=180
    )
    if result.returncode != 0:
        raise RuntimeError(
            f"`python -m flows zombie-guard` failed ({result.returncode}):\n"
            f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
        )


def start_worker(local: LocalPrefect, pool: str = WORK_POOL, **env: str) -> subprocess.Popen:
    """``prefect worker start``.

    Its flow runs send a heartbeat every $PREFECT_FLOWS_HEARTBEAT_FREQUENCY s (default 30).
    """
    from flows.zombies import HEARTBEAT_ENV, heartbeat_s

    env = {HEARTBEAT_ENV: str(heartbeat_s()), **env}
    proc = _spawn(
        _prefect("worker", "start", "--pool", pool, "--type", "process"),
        Path(local.state_dir) / "worker.log",
        local.env(**env),
    )
    local.worker_pid = proc.pid
    _save(local)
    return proc


def _save(local: LocalPrefect) -> None:
    path = Path(local.state_dir) / "local.json"
    path.write_text(json.dumps(asdict(local), indent=2) + "\n")


def load(state_dir: Path) -> LocalPrefect | None:
    path = state_dir / "local.json"
    if not path.is_file():
        return None
    return LocalPrefect(**json.loads(path.read_text()))


def stop(state_dir: Path) -> bool:
    """Stop the worker (and its flow runs), then the server. False if nothing was running."""
    local = load(state_dir)
    if local is None:
        return False
    kill_group(local.worker_pid, STOP_GRACE_S)
    kill_group(local.server_pid, STOP_GRACE_S)
    (state_dir / "local.json").unlink(missing_ok=True)
    return True


def up(state_dir: Path, port: int = 4200, zombie_after_s: float | None = None) -> LocalPrefect:
    """Server, work pool, deployments, zombie-run automation and a worker.

    Everything ``make serve`` promises.
    """
    local = start_server(state_dir, port)
    try:
        create_work_pool(local)
        deploy(local)
        install_zombie_guard(local, zombie_after_s)
        start_worker(local)
    except BaseException:
        stop(state_dir)
        raise
    return local
