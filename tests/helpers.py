"""Plain test helpers: the one tiny model, corpora, subprocess environments, process checks.

Fixtures live in ``conftest.py``; everything here is an ordinary function or
constant, imported with ``from helpers import ...``. That works as ``from
conftest import`` did: pytest (``prepend`` import mode, no ``tests/__init__.py``)
puts ``tests/`` on ``sys.path`` before it imports the rootdir conftest.
"""

from __future__ import annotations

import glob
import json
import random
import subprocess
import sys
from pathlib import Path

import pytest

from charrnn.config import SECTIONS, Config
from charrnn.distributed.launch import child_env
from charrnn.model.precision import cpu_has_native_bf16

# precision=auto trains in bf16 only on CPUs with native bf16 (AVX512-BF16 or AMX; oneDNN
# would emulate it on other AVX-512 CPUs). Tests that compare numbers pin fp32 so they hold on every
# machine; the bf16 paths have tests of their own (test_bf16.py), which run only here.
CPU_BF16 = cpu_has_native_bf16()  # what precision=auto trains in bf16 on
requires_cpu_bf16 = pytest.mark.skipif(
    not CPU_BF16, reason="this CPU has no native bf16 LSTM kernels (needs AVX512-BF16 or AMX)"
)

# --------------------------------------------------------------------------- the tiny model

# The one tiny model and data layout: trains in seconds on one CPU core. Every test form of it
# (a Config, or key=value overrides for the CLI, torchrun and the flows) is made from this dict.
TINY: dict[str, object] = {
    "data.val_fraction": 0.1,
    "data.test_fraction": 0.05,
    "model.embedding_dim": 16,
    "model.hidden_size": 32,
    "model.num_layers": 2,
    "train.batch_size": 8,
    "train.seq_len": 32,
    "train.warmup_steps": 5,
    "train.device": "cpu",
    "train.precision": "fp32",  # exact comparisons hold on every CPU; bf16 has its own tests
    # Validation where a test asks for it (eval_interval, or evals_per_run spread over the
    # run): the default schedule, early stopping and best.pt have their own tests
    # (test_validation.py).
    "train.evals_per_run": 0,
}


def _dotted(name: str) -> str:
    """``seq_len`` -> ``train.seq_len``: the section that has the field.

    Field names are unique across sections.
    """
    if "." in name:
        return name
    sections = [section for section, model in SECTIONS.items() if name in model.model_fields]
    assert len(sections) == 1, f"{name!r} is a field of {sections or 'no section'}"
    return f"{sections[0]}.{name}"


def tiny_settings(**changes: object) -> dict[str, object]:
    """:data:`TINY` with ``changes`` (by field name: ``seq_len=16``) on top, as dotted keys."""
    return {**TINY, **{_dotted(name): value for name, value in changes.items()}}


def tiny_overrides(**changes: object) -> list[str]:
    """The tiny model as ``key=value`` overrides.

    For ``charrnn train``, ``charrnn launch`` and the flows' ``overrides``.
    """
    return [f"{key}={value}" for key, value in tiny_settings(**changes).items()]


def tiny_config(corpus: Path | str, out_dir: Path, **train) -> Config:
    """The tiny model as a Config for an in-process run of 20 steps.

    ``train`` sets ``cfg.train`` fields.
    """
    cfg = Config()
    run = tiny_settings(
        corpus=str(corpus),
        out_dir=str(out_dir),
        dropout=0.1,
        log_interval=5,
        eval_interval=10,
        checkpoint_interval=10,
        eval_batch_size=16,
        max_steps=20,
        mode="disabled",  # W&B has its own tests (test_tracking.py)
    )
    for key, value in run.items():
        section, field = key.split(".")
        setattr(getattr(cfg, section), field, value)
    for key, value in train.items():
        setattr(cfg.train, key, value)
    return cfg


# The tiny model for a whole pipeline run (the flow's own parameters set the steps and W&B).
TINY_OVERRIDES = tiny_overrides(log_interval=10, checkpoint_interval=20, eval_batch_size=8)

# PostgreSQL's programs (Debian's postgresql package; `make test` installs it).
PG_BIN = sorted(glob.glob("/usr/lib/postgresql/*/bin"))

# --------------------------------------------------------------------------- corpora and caches


def make_text(num_chars: int, seed: int = 0) -> str:
    """A small, learnable play-like corpus (speaker lines and verse) with non-ASCII characters."""
    rng = random.Random(seed)
    names = ["ROMEO", "JULIET", "NURSE", "FRIAR", "MERCUTIO"]
    words = [
        "the",
        "of",
        "and",
        "to",
        "my",
        "thou",
        "thy",
        "love",
        "night",
        "day",
        "sweet",
        "fair",
        "death",
        "light",
        "heart",
        "is",
        "not",
        "but",
        "with",
        "be",
    ]
    words += ["café", "naïve", "—"]
    parts: list[str] = []
    size = 0
    while size < num_chars:
        lines = [
            " ".join(rng.choice(words) for _ in range(rng.randint(4, 9))).capitalize()
            for _ in range(rng.randint(1, 4))
        ]
        speech = f"{rng.choice(names)}:\n" + "\n".join(lines) + "\n\n"
        parts.append(speech)
        size += len(speech)
    return "".join(parts)[:num_chars]


def cache_listing(root: Path) -> list[str]:
    """Every file under the cache (locks excluded), to show a failure left it untouched."""
    if not root.exists():
        return []
    return sorted(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and "locks" not in p.parts and not p.name.endswith(".lock")
    )


# --------------------------------------------------------------------------- subprocesses


def run_env(**extra: str) -> dict[str, str]:
    """The environment for a child ``charrnn``/``torchrun``/``prefect`` process.

    One thread, W&B off unless asked.
    """
    env = child_env()  # without the WANDB_SERVICE that in-process W&B use (the pipeline tests) sets
    env.setdefault("OMP_NUM_THREADS", "1")
    env.setdefault("WANDB_MODE", "disabled")  # W&B has its own tests
    env.update(extra)
    return env


def process_tree(root_pid: int) -> set[int]:
    """``root_pid`` and every live descendant, from /proc."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    found, todo = set(), [root_pid]
    while todo:
        pid = todo.pop()
        if Path(f"/proc/{pid}").exists():
            found.add(pid)
        todo.extend(children.get(pid, []))
    return found


def alive(pid: int) -> bool:
    """True for a running process (a zombie has finished)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


# --------------------------------------------------------------------------- Prefect


def task_states(flow_run_id) -> dict[str, list[str]]:
    """Task name -> the state names of its runs in one flow run (e.g. {"tokenise": ["Cached"]})."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    with get_client(sync_client=True) as client:
        runs = client.read_task_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id]))
        )
    states: dict[str, list[str]] = {}
    for run in runs:
        states.setdefault(run.name.rsplit("-", 1)[0], []).append(
            run.state.name if run.state else "?"
        )
    return states


# --------------------------------------------------------------------------- W&B offline runs


def wandb_records(run_dir: Path) -> list[dict]:
    """Every record of one offline W&B run directory.

    Read with the SDK's own reader (`wandb leet inspect --json`).
    """
    wandb_cli = Path(sys.executable).with_name("wandb")
    run_file = next(Path(run_dir).glob("run-*.wandb"))
    out = subprocess.run(
        [str(wandb_cli), "leet", "inspect", "--json", str(run_file)],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return [json.loads(line) for line in out.stdout.splitlines() if line.strip()]


def offline_runs(out: Path) -> list[Path]:
    """The offline W&B run directories under ``out/wandb``, oldest first.

    Sorted by name: the names are timestamped.
    """
    return sorted((Path(out) / "wandb").glob("offline-run-*"))


def history_rows(records: list[dict]) -> list[dict]:
    return [r["history"]["item"] for r in records if r["type"] == "history"]
