"""The demo's chart: backlog and ECS tasks per service over time (matplotlib, Agg backend, no display needed)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # after use(): the backend must be chosen first


@dataclass(frozen=True)
class ServiceSeries:
    """One ECS service's history: one value per cycle (None where nothing was published)."""

    name: str
    late: Sequence[float | None]
    due: Sequence[float | None]
    in_flight: Sequence[float | None]  # Pending + Running flow runs
    desired: Sequence[int]  # desired tasks after the policies acted
    running: Sequence[float | None]  # running tasks the publisher saw
    tracking_asks: Sequence[int | None]  # capacity target tracking set, None where it did not act
    step_asks: Sequence[int | None]  # capacity the step policy set, None where it did not act
    target_value: float
    max_capacity: int


def _plain(values: Sequence[float | None]) -> list[float]:
    return [float("nan") if v is None else float(v) for v in values]


def draw(path: Path, elapsed: Sequence[float], services: Sequence[ServiceSeries], arrivals: Sequence[float],
         title: str) -> Path:
    """Write the chart to ``path``: per service, the backlog on top and the tasks below it."""
    fig, axes = plt.subplots(2, len(services), figsize=(6.2 * len(services), 7.2), sharex=True, squeeze=False)
    for column, series in enumerate(services):
        backlog, tasks = axes[0][column], axes[1][column]
        backlog.plot(elapsed, _plain(series.due), color="tab:orange", marker=".", label="Due (incl. Late)")
        backlog.plot(elapsed, _plain(series.late), color="tab:red", marker=".", label="Late")
        backlog.plot(elapsed, _plain(series.in_flight), color="tab:gray", linestyle="--",
                     label="Pending + Running")
        backlog.set_title(f"{series.name}: backlog (target {series.target_value:g} per task)")
        backlog.set_ylabel("flow runs")
        tasks.step(elapsed, series.desired, where="post", color="tab:blue", linewidth=2,
                   label="Desired tasks (policies)")
        tasks.step(elapsed, _plain(series.running), where="post", color="tab:green", linestyle="--",
                   linewidth=2, label="Running tasks (published)")
        tasks.plot(elapsed, _plain(series.step_asks), linestyle="none", marker="^", markersize=9,
                   color="tab:purple", label="step policy acts (TaskShortfall)")
        tasks.plot(elapsed, _plain(series.tracking_asks), linestyle="none", marker="o", markersize=8,
                   markerfacecolor="none", markeredgewidth=2, color="tab:brown",
                   label="target tracking acts (BacklogPerTask)")
        tasks.axhline(series.max_capacity, color="black", linestyle=":", linewidth=1,
                      label=f"maxCapacity {series.max_capacity}")
        tasks.set_ylim(-0.3, series.max_capacity * 1.6 + 1)  # room for the legend above maxCapacity
        tasks.set_title(f"{series.name}: ECS tasks")
        tasks.set_ylabel("tasks")
        tasks.set_xlabel("elapsed time (s)")
        for axis in (backlog, tasks):
            for number, moment in enumerate(arrivals):
                axis.axvline(moment, color="tab:purple", linestyle=":", linewidth=1,
                             label="flow runs come due" if number == 0 else None)
            axis.grid(alpha=0.3)
            axis.legend(loc="upper right", fontsize="small")
    fig.suptitle(title)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
