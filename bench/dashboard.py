"""optuna-dashboard on a sweep's study, checked in headless Chromium.

    python -m bench.dashboard --storage sqlite:///runs/sweeps/studies.db --study shakespeare-60s

Starts ``optuna-dashboard STORAGE`` on 127.0.0.1, waits until it answers, loads the
study's page until the rendered page names the study, and screenshots it into
``bench/screenshots/optuna-dashboard.png`` (the page a user opens to review a sweep:
its trials, their history and parameters). Needs ``chromium`` (Debian: ``apt-get
install chromium``) and nothing from the network.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from bench.screenshots import Page, find_chromium, shoot
from flows.local import PROJECT_DIR, free_port


def study_id(storage: str, study: str) -> int:
    import optuna

    return optuna.storages.RDBStorage(storage).get_study_id_from_name(study)


def start_dashboard(storage: str, port: int, log: Path) -> subprocess.Popen:
    """``optuna-dashboard`` on 127.0.0.1:``port``; raises if it does not answer in 60 s."""
    exe = Path(sys.executable).with_name("optuna-dashboard")
    cmd = [str(exe), storage, "--host", "127.0.0.1", "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"optuna-dashboard exited: {log.read_text()[-2000:]}")
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/api/meta", timeout=2).close()
            return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError(f"optuna-dashboard did not answer in 60 s: {log.read_text()[-2000:]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--storage", required=True, help="the study database URL")
    parser.add_argument("--study", required=True, help="the study's name")
    parser.add_argument(
        "--out",
        type=Path,
        default=PROJECT_DIR / "bench" / "screenshots" / "optuna-dashboard.png",
        help="the PNG",
    )
    args = parser.parse_args(argv)
    browser = find_chromium()
    if browser is None:
        return 2
    work = Path(tempfile.mkdtemp(prefix="charrnn-dashboard-"))
    port = free_port()
    proc = start_dashboard(args.storage, port, work / "dashboard.log")
    try:
        url = f"http://127.0.0.1:{port}/dashboard/studies/{study_id(args.storage, args.study)}"
        args.out.parent.mkdir(parents=True, exist_ok=True)
        shoot(browser, Page("optuna-dashboard", url, args.study, height=1400), args.out, work)
        print(f"{args.out}  {url}")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
