"""Production Prefect on a real PostgreSQL.

`prefect server start` on a real PostgreSQL, `prefect deploy`, a worker, a
completed `train` run.

The test starts its own PostgreSQL cluster (Debian's `postgresql` package,
installed by `make test` when missing) on a free 127.0.0.1 port in a temp
directory, and stops and removes it afterwards.
"""

from __future__ import annotations

import json
import subprocess
import time

import pytest
from helpers import PG_BIN, TINY_OVERRIDES, make_text

pytestmark = [pytest.mark.prefect, pytest.mark.slow]


def test_train_deployment_on_a_postgresql_backed_server(postgres, http_server, tmp_path):
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from charrnn.distributed.launch import kill_group
    from flows.local import (
        create_work_pool,
        deploy,
        free_port,
        start_server,
        start_worker,
        stop,
    )

    state = tmp_path / "prefect"
    local = start_server(state, free_port(), database_url=postgres)
    worker = None
    try:
        create_work_pool(local)
        runs = tmp_path / "runs"
        deploy(
            local,
            "train",
            params={
                "overrides": TINY_OVERRIDES,
                "max_steps": 20,
                "launch": {"nproc_per_node": 1, "retries": 0},
                "sampling": {"length": 50},
                "storage": {"runs_dir": str(runs), "registry_dir": str(tmp_path / "registry")},
                "tracking": {"wandb_mode": "disabled"},
            },
        )
        worker = start_worker(
            local,
            CHARRNN_CACHE=str(tmp_path / "cache"),
            OMP_NUM_THREADS="1",
            WANDB_MODE="disabled",
            PREFECT_WORKER_QUERY_SECONDS="1",
        )
        http_server.files["pg.txt"] = make_text(40_000, seed=7).encode()

        with temporary_settings(updates={PREFECT_API_URL: local.api_url}):
            from prefect.deployments import run_deployment

            flow_run = run_deployment(
                "train-pipeline/train", parameters={"corpus": http_server.url("pg.txt")}, timeout=0
            )
            deadline = time.monotonic() + 300
            with get_client(sync_client=True) as client:
                while time.monotonic() < deadline:
                    run = client.read_flow_run(flow_run.id)
                    if run.state and run.state.is_final():
                        break
                    time.sleep(1)
        assert run.state.name == "Completed", (
            run.state,
            (state / "worker.log").read_text()[-3000:],
        )
        result = json.loads(next(runs.glob(f"*-{run.name}/pipeline_result.json")).read_text())
        assert result["step"] == 20

        # The run is in PostgreSQL, not in a SQLite file.
        rows = subprocess.run(
            [
                f"{PG_BIN[-1]}/psql",
                postgres.replace("postgresql+asyncpg", "postgresql"),
                "-tAc",
                f"select state_name from flow_run where id = '{run.id}'",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=True,
        )
        assert rows.stdout.strip() == "Completed"
        assert not list(state.rglob("*.db"))
    finally:
        if worker is not None:
            kill_group(worker.pid, grace_s=15)
        stop(state)
