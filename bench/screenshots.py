"""Browser check of the Prefect run page.

Runs the pipeline once (tiny), then screenshots what a user opens.

    python -m bench.screenshots                  # PNGs into bench/screenshots/
    python -m bench.screenshots --out /tmp/shots --keep

It starts its own ``prefect server`` on 127.0.0.1 (SQLite in a temp directory), runs
``python -m flows run`` on the offline ``shakespeare`` corpus with a tiny model and W&B
offline, and takes headless Chromium screenshots of the completed flow run page, its
``charrnn-report`` artifact and its ``charrnn-training-progress`` artifact (classic UI),
and of the run page and the report in the new UI (``/v2``). Needs
``chromium`` (Debian: ``apt-get install chromium``) and nothing from the network.

Prefect's UI is a single-page app: a page that is still loading screenshots as a
skeleton. So each page is first loaded with ``--dump-dom`` and must contain a text only
the rendered page has; then its screenshot must not be blank (pixel spread, with PIL).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from flows.local import PROJECT_DIR, LocalPrefect, free_port, start_server, stop

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    "--hide-scrollbars", "--virtual-time-budget=15000",
]  # fmt: skip
TINY_RUN = [
    "model.embedding_dim=16", "model.hidden_size=32", "model.num_layers=2", "train.batch_size=8",
    "train.seq_len=32", "train.warmup_steps=5", "train.precision=fp32", "train.log_interval=10",
    "train.eval_interval=10", "train.checkpoint_interval=20", "train.eval_batch_size=8",
]  # fmt: skip
REPORT_HEIGHT = 2000  # down to the samples and champion/challenger; the config below is cut


@dataclass(frozen=True)
class Page:
    name: str  # the PNG's name, without .png
    url: str
    expect: str  # a text only the rendered page has
    height: int = 1000  # the report is long: a taller window shows its curve and samples


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out", type=Path, default=PROJECT_DIR / "bench" / "screenshots", help="where the PNGs go"
    )
    parser.add_argument("--steps", type=int, default=60, help="training steps of the tiny run")
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the server's state and the run directory (printed)",
    )
    args = parser.parse_args(argv)
    browser = find_chromium()
    if browser is None:
        return 2
    work = Path(tempfile.mkdtemp(prefix="charrnn-screenshots-"))
    local = start_server(work / "prefect", free_port())
    try:
        run_pipeline(local, work, args.steps)
        pages = run_pages(local)
        args.out.mkdir(parents=True, exist_ok=True)
        for page in pages:
            png = args.out / f"{page.name}.png"
            shoot(browser, page, png, work)
            print(f"{png}  {page.url}")
    finally:
        stop(work / "prefect")
        if args.keep:
            print(f"kept: {work}")
        else:
            shutil.rmtree(work, ignore_errors=True)
    return 0


def run_pipeline(local: LocalPrefect, work: Path, steps: int) -> None:
    """``python -m flows run`` in a subprocess.

    The subprocess talks to this server only (its own PREFECT_HOME).
    """
    cmd = [
        sys.executable,
        "-m",
        "flows",
        "run",
        "--corpus",
        "shakespeare",
        "--nproc-per-node",
        "1",
        "--max-steps",
        str(steps),
    ]
    cmd += [
        "--wandb-mode",
        "offline",
        "--runs-dir",
        str(work / "runs"),
        "--length",
        "120",
        *TINY_RUN,
    ]
    env = local.env(
        CHARRNN_CACHE=str(work / "cache"), WANDB_DIR=str(work / "wandb"), WANDB_SILENT="true"
    )
    done = subprocess.run(
        cmd, cwd=PROJECT_DIR, env=env, capture_output=True, text=True, timeout=900
    )
    if done.returncode != 0:
        raise RuntimeError(
            f"the pipeline failed ({done.returncode}):\n"
            f"{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        )


def api(local: LocalPrefect, path: str, body: dict) -> list[dict]:
    request = urllib.request.Request(
        f"{local.api_url}{path}",
        data=json.dumps(body).encode(),
        headers={"Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30) as resp:
        return json.loads(resp.read())


def run_pages(local: LocalPrefect) -> list[Page]:
    """The completed flow run's page and its two artifacts' pages."""
    runs = api(
        local,
        "/flow_runs/filter",
        {
            "sort": "START_TIME_DESC",
            "limit": 1,
            "flow_runs": {"state": {"type": {"any_": ["COMPLETED"]}}},
        },
    )
    if not runs:
        raise RuntimeError("no completed flow run on the server")
    run = runs[0]
    artifacts = api(
        local, "/artifacts/filter", {"artifacts": {"flow_run_id": {"any_": [run["id"]]}}}
    )
    by_key = {artifact["key"]: artifact for artifact in artifacts if artifact.get("key")}
    report, progress = by_key["charrnn-report"], by_key["charrnn-training-progress"]
    # Deep links open the classic UI; the server's front page redirects a new browser to the
    # new UI under /v2, which renders markdown with other code (react-markdown): both are shot.
    ui, v2 = local.ui_url, f"{local.ui_url}/v2"
    return [
        Page("flow-run", f"{ui}/runs/flow-run/{run['id']}", run["name"]),
        Page(
            "report-artifact",
            f"{ui}/artifacts/artifact/{report['id']}",
            "Learning curve",
            height=REPORT_HEIGHT,
        ),
        Page(
            "progress-artifact",
            f"{ui}/artifacts/artifact/{progress['id']}",
            "charrnn-training-progress",
        ),
        Page("flow-run-v2", f"{v2}/runs/flow-run/{run['id']}", run["name"]),
        Page(
            "report-artifact-v2",
            f"{v2}/artifacts/artifact/{report['id']}",
            "Learning curve",
            height=REPORT_HEIGHT,
        ),
    ]


def find_chromium() -> str | None:
    """The chromium binary; None, having said how to install it, where there is none."""
    browser = shutil.which("chromium")
    if browser is None:
        print("chromium is not installed (Debian: apt-get install chromium)", file=sys.stderr)
    return browser


def shoot(browser: str, page: Page, png: Path, work: Path) -> None:
    """Load the page until it shows ``page.expect``, then screenshot it.

    Raises if it never rendered.
    """
    for _ in range(3):  # a cold server answers the first page slowly
        dom = chromium(browser, work, page, "--dump-dom")
        if page.expect in dom:
            break
    else:
        raise RuntimeError(f"{page.url} never showed {page.expect!r} (the UI did not render)")
    png.unlink(missing_ok=True)
    chromium(browser, work, page, f"--screenshot={png}")
    if not png.is_file():
        raise RuntimeError(f"chromium wrote no screenshot of {page.url}")
    shrink(png)
    if blank(png):
        raise RuntimeError(f"{png} is blank")


def chromium(browser: str, work: Path, page: Page, action: str) -> str:
    """One headless Chromium run; returns its stdout.

    A fresh profile each time: no saved UI preference, no cache.
    """
    profile = tempfile.mkdtemp(prefix="chromium-", dir=work)
    cmd = [
        browser,
        *CHROMIUM_FLAGS,
        f"--user-data-dir={profile}",
        f"--window-size=1400,{page.height}",
        action,
        page.url,
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    return done.stdout


def shrink(png: Path) -> None:
    """A 128-colour palette.

    UI pages are flat colours, and the PNGs are committed (a few hundred KB in all).
    """
    try:
        from PIL import Image
    except ImportError:
        return
    with Image.open(png) as image:
        small = image.convert("RGB").quantize(colors=128)
    small.save(png, optimize=True)


def blank(png: Path) -> bool:
    """A page of (nearly) one colour: the SPA showed nothing. Without PIL: a tiny file."""
    try:
        from PIL import Image, ImageStat
    except ImportError:
        return png.stat().st_size < 20_000
    with Image.open(png) as image:
        spread = ImageStat.Stat(image.convert("L")).stddev[0]
    return spread < 5.0


if __name__ == "__main__":
    sys.exit(main())
