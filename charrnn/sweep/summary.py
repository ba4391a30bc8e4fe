"""What a sweep found: a table of its trials, the best one, parameter importances and a picture.

Everything here reads the study alone, so the summary of a study that several
sweeps (or machines) filled is the same wherever it is written.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from charrnn.evaluation.evaluate import LN2
from charrnn.fsutil import atomic_write_text


@dataclass(frozen=True)
class TrialRow:
    number: int
    state: str  # COMPLETE, PRUNED, FAIL, RUNNING, WAITING
    params: dict[str, Any]
    val_nats: float | None  # the objective: the kept model's full val split, nats/char
    steps: int | None
    stopped: str  # why it stopped early ("pruned at step N", early stopping), or ""
    run_dir: str
    base: bool = False  # the base settings, the study's first trial

    @property
    def val_bpc(self) -> float | None:
        return None if self.val_nats is None else self.val_nats / LN2


def trial_rows(study) -> list[TrialRow]:
    rows = []
    for trial in study.get_trials(deepcopy=False):
        attrs = trial.user_attrs
        # a pruned trial's value is its last reported validation (on the subsample)
        value = attrs.get("val_nats", trial.value)
        rows.append(
            TrialRow(
                number=trial.number,
                state=trial.state.name,
                params=dict(trial.params),
                val_nats=value if value is not None and math.isfinite(value) else None,
                steps=attrs.get("steps"),
                stopped=attrs.get("stopped", ""),
                run_dir=attrs.get("run_dir", ""),
                base=bool(attrs.get("base")),
            )
        )
    return rows


def best_row(rows: list[TrialRow]) -> TrialRow | None:
    """The best completed or pruned trial by its full val score (pruned ones were scored too)."""
    scored = [r for r in rows if r.state in ("COMPLETE", "PRUNED") and r.val_nats is not None]
    return min(scored, key=lambda r: r.val_nats) if scored else None


def importances(study) -> dict[str, float]:
    """Optuna's parameter importances (fANOVA); empty until two trials completed."""
    import optuna
    from optuna.trial import TrialState

    if len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))) < 2:
        return {}
    try:
        return dict(optuna.importance.get_param_importances(study))
    except (RuntimeError, ValueError):  # e.g. every completed trial has the same value
        return {}


def markdown(name: str, rows: list[TrialRow], weights: dict[str, float], plot: str) -> str:
    """The sweep's report: the trials table, the best trial, importances, the picture."""
    keys = sorted({key for row in rows for key in row.params})
    head = ["trial", "state", *keys, "val bits/char", "steps", "stopped"]
    lines = [f"# Sweep `{name}`", "", f"{len(rows)} trials.", ""]
    lines += ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for row in rows:
        cells = [
            f"{row.number} (base)" if row.base else str(row.number),
            row.state,
            *(_cell(row.params.get(k)) for k in keys),
        ]
        bpc = f"{row.val_bpc:.4f}" if row.val_bpc is not None else "n/a"
        cells += [bpc, str(row.steps or ""), row.stopped]
        lines.append("| " + " | ".join(cells) + " |")
    best = best_row(rows)
    lines += ["", "## Best trial", ""]
    if best is None:
        lines.append("No trial has finished yet.")
    else:
        settings = ", ".join(f"`{k}={_cell(v)}`" for k, v in best.params.items())
        lines.append(
            f"Trial {best.number}: {best.val_bpc:.4f} bits/char on the val split, "
            f"with {settings}; run directory `{best.run_dir}`."
        )
        base = next((r for r in rows if r.base and r.val_bpc is not None), None)
        if base is not None and base is not best:
            lines.append(
                f"The base settings (trial {base.number}) scored {base.val_bpc:.4f}: "
                f"the sweep gained {base.val_bpc - best.val_bpc:.4f} bits/char."
            )
    lines += ["", "## Parameter importances (fANOVA)", ""]
    lines += [f"- `{k}`: {v:.3f}" for k, v in weights.items()] or ["Too few completed trials."]
    lines += ["", f"![val bits/char against each parameter]({plot})", ""]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "" if value is None else str(value)


def y_cap(values: list[float]) -> float | None:
    """Where the picture's y-axis ends, or None for all of it.

    One trial far worse than the rest (a model the budget could not train,
    pruned at 4.7 bits/char) would squash every other point into a line: the
    axis stops at the median plus three times its distance to the best; worse
    trials are drawn on that edge as triangles.
    """
    if len(values) < 3:
        return None
    best, middle = min(values), statistics.median(values)
    cap = middle + 3 * (middle - best)
    return cap if max(values) > cap > best else None


def write_plot(rows: list[TrialRow], path: Path, scales: dict[str, str] | None = None) -> Path:
    """val bits/char against each parameter, one panel per parameter; pruned trials hollow.

    ``scales``: each parameter's axis, as :func:`axis_scales` reads them from the
    study; a parameter without one is a choice if any value is text, else linear.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.ticker import NullFormatter

    keys = sorted({key for row in rows for key in row.params})
    cap = y_cap([r.val_bpc for r in rows if r.val_bpc is not None])
    fig, axes = plt.subplots(
        1, max(len(keys), 1), figsize=(3 * max(len(keys), 1), 3), squeeze=False
    )
    for ax, key in zip(axes[0], keys, strict=False):
        values = [r.params[key] for r in rows if key in r.params]
        scale = (scales or {}).get(key) or _scale(values)
        x, ticks = _axis(values, scale)
        for state, style in (
            ("COMPLETE", {"c": "C0"}),
            ("PRUNED", {"facecolors": "none", "edgecolors": "C3"}),
        ):
            points = [
                (r.params[key], r.val_bpc)
                for r in rows
                if r.state == state and key in r.params and r.val_bpc is not None
            ]
            for label, marker, shown in (
                (state.lower(), "o", [p for p in points if cap is None or p[1] <= cap]),
                (f"{state.lower()}, above", "^", [p for p in points if cap and p[1] > cap]),
            ):
                if shown:
                    ys = [min(p[1], cap) if cap else p[1] for p in shown]
                    xs = [x(p[0]) for p in shown]
                    ax.scatter(xs, ys, label=label, marker=marker, **style)
        if ticks is not None:
            ax.set_xticks(list(ticks.values()), list(ticks))
        elif scale == "log":
            ax.set_xscale("log")
            ax.xaxis.set_minor_formatter(NullFormatter())  # the minor labels overlap
        ax.set_xlabel(key)
        ax.set_ylabel("val bits/char")
        if cap:
            ax.set_ylim(top=cap + 0.02 * (cap - min(ax.get_ylim())))
    axes[0][0].legend(fontsize="small")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    fig.savefig(tmp, format="png", dpi=80)
    plt.close(fig)
    tmp.replace(path)
    return path


def axis_scales(study) -> dict[str, str]:
    """Each parameter's axis: ``choice`` (a ``choices`` entry), ``log`` or ``linear``."""
    from optuna.distributions import CategoricalDistribution

    scales = {}
    for trial in study.get_trials(deepcopy=False):
        for key, drawn in trial.distributions.items():
            if isinstance(drawn, CategoricalDistribution):
                scales[key] = "choice"
            else:
                scales[key] = "log" if drawn.log else "linear"
    return scales


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _scale(values: list[Any]) -> str:
    return "linear" if all(_is_number(v) for v in values) else "choice"


def _axis(values: list[Any], scale: str) -> tuple[Callable[[Any], float], dict[str, float] | None]:
    """A panel's x: (value -> position, tick labels or None).

    A number is its own position, unless the parameter is a choice: choices are
    placed in order, numbers by value and then text (``auto``), so the panel reads
    left to right whatever order the trials drew them in.
    """
    if scale != "choice":
        return float, None

    def rank(value: Any) -> tuple:
        return (0, float(value), "") if _is_number(value) else (1, 0.0, str(value))

    ticks = {str(v): float(i) for i, v in enumerate(sorted(set(values), key=rank))}
    return (lambda value: ticks[str(value)]), ticks


def write_report(name: str, study, out_dir: Path) -> tuple[Path, str]:
    """``OUT/report.md`` and ``OUT/trials.png``; returns (report path, its markdown)."""
    rows = trial_rows(study)
    write_plot(rows, out_dir / "trials.png", axis_scales(study))
    text = markdown(name, rows, importances(study), "trials.png")
    atomic_write_text(out_dir / "report.md", text)
    return out_dir / "report.md", text
