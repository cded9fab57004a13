"""The demo's chart: backlog and ECS tasks per service over the cycles (matplotlib, Agg backend, no display needed)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # after use(): the backend must be chosen first
from matplotlib.axes import Axes


@dataclass(frozen=True)
class ServiceSeries:
    """One ECS service's history: one value per cycle (None where nothing was published)."""

    name: str
    late: Sequence[float | None]
    due: Sequence[float | None]
    upcoming: Sequence[float | None]  # Scheduled runs within prewarmSeconds (UpcomingFlowRuns)
    in_flight: Sequence[float | None]  # Pending + Running flow runs
    desired: Sequence[int]  # desired tasks after the policies acted
    running: Sequence[float | None]  # running tasks the publisher saw
    protected: Sequence[float | None]  # tasks protected from scale-in after the sample (ProtectedTasks)
    tracking_asks: Sequence[int | None]  # capacity target tracking set, None where it did not act
    step_asks: Sequence[int | None]  # capacity the step policy set, None where it did not act
    stopped_idle: Sequence[int]  # idle tasks ECS stopped at the start of the cycle (scale-in)
    stopped_busy: Sequence[int]  # busy tasks ECS stopped at the start of the cycle: their runs died
    target_value: float
    max_capacity: int


@dataclass(frozen=True)
class BurstMark:
    """When a burst's runs came due, in cycles (fractional: between two samples)."""

    at: float
    label: str
    announced: bool  # created ahead by a schedule, or unannounced (created as they came due)


def _plain(values: Sequence[float | None]) -> list[float]:
    return [float("nan") if v is None else float(v) for v in values]


def _counts(values: Sequence[int]) -> list[float]:
    """Markers only where something happened."""
    return [float(v) if v else float("nan") for v in values]


def _mark_bursts(axis: Axes, bursts: Sequence[BurstMark]) -> None:
    for burst in bursts:
        axis.axvline(burst.at, color="tab:green" if burst.announced else "tab:purple",
                     linestyle="--" if burst.announced else ":", linewidth=1.5, label=burst.label)


def _backlog(axis: Axes, cycles: Sequence[int], series: ServiceSeries) -> None:
    axis.plot(cycles, _plain(series.upcoming), color="tab:green", marker=".", label="Upcoming (within prewarmSeconds)")
    axis.plot(cycles, _plain(series.due), color="tab:orange", marker=".", label="Due (incl. Late)")
    axis.plot(cycles, _plain(series.late), color="tab:red", marker=".", label="Late")
    axis.plot(cycles, _plain(series.in_flight), color="tab:gray", linestyle="--", label="Pending + Running")
    axis.set_title(f"{series.name}: flow runs (target {series.target_value:g} per task)")
    axis.set_ylabel("flow runs")


def _tasks(axis: Axes, cycles: Sequence[int], series: ServiceSeries) -> None:
    protected = _plain(series.protected)  # below the other lines, which it often equals
    axis.fill_between(cycles, protected, step="post", color="tab:orange", alpha=0.2, linewidth=0)
    axis.step(cycles, protected, where="post", color="tab:orange", linewidth=3, label="Protected (busy)")
    axis.step(cycles, series.desired, where="post", color="tab:blue", linewidth=2, label="Desired (policies)")
    axis.step(cycles, _plain(series.running), where="post", color="tab:cyan", linestyle="--", linewidth=2,
              label="Running (up a cycle after asked)")
    axis.plot(cycles, _plain(series.step_asks), linestyle="none", marker="^", markersize=8, color="tab:purple",
              label="step policy acts")
    axis.plot(cycles, _plain(series.tracking_asks), linestyle="none", marker="o", markersize=8,
              markerfacecolor="none", markeredgewidth=2, color="tab:brown", label="target tracking acts")
    # Side by side where one scale-in stopped both kinds (the same count would hide one behind the other).
    axis.plot([c - 0.15 for c in cycles], _counts(series.stopped_idle), linestyle="none", marker="v", markersize=9,
              color="black", label="ECS stopped idle (how many)")
    axis.plot([c + 0.15 for c in cycles], _counts(series.stopped_busy), linestyle="none", marker="X", markersize=11,
              color="red", label="ECS stopped BUSY (runs orphaned)")
    axis.axhline(series.max_capacity, color="black", linestyle=":", linewidth=1, label="maxCapacity")
    axis.set_ylim(-0.3, series.max_capacity + 1)
    axis.set_title(f"{series.name}: ECS tasks")
    axis.set_ylabel("tasks")
    axis.set_xlabel("cycle (one publisher sample; a minute in production)")


def draw(path: Path, cycles: Sequence[int], services: Sequence[ServiceSeries], bursts: Sequence[BurstMark],
         title: str) -> Path:
    """Write the chart to ``path``: per service a column, the flow runs on top and the tasks below.

    Each row of plots has one legend, in a strip of its own below it, so the
    plots keep their width and the text stays readable at the README's width.
    """
    with plt.rc_context({"font.size": 11}):
        fig = plt.figure(figsize=(6 * len(services), 10))
        grid = fig.add_gridspec(4, len(services), height_ratios=(3, 0.5, 3, 0.55), hspace=0.38, wspace=0.16,
                                left=0.06, right=0.98, top=0.92, bottom=0.01)
        backlog = [fig.add_subplot(grid[0, c]) for c in range(len(services))]
        tasks = [fig.add_subplot(grid[2, c], sharex=backlog[0]) for c in range(len(services))]
        for column, series in enumerate(services):
            _backlog(backlog[column], cycles, series)
            _tasks(tasks[column], cycles, series)
            for axis in (backlog[column], tasks[column]):
                _mark_bursts(axis, bursts)
                axis.grid(alpha=0.3)
        burst_labels = {b.label for b in bursts}
        for row, first, columns in ((1, backlog[0], 3), (3, tasks[0], 4)):
            strip = fig.add_subplot(grid[row, :])
            strip.axis("off")
            shown = [(h, label) for h, label in zip(*first.get_legend_handles_labels(), strict=True)
                     if row == 1 or label not in burst_labels]  # the bursts once, in the upper legend
            strip.legend(*zip(*shown, strict=True), loc="center", ncol=columns, frameon=False, fontsize="medium",
                         columnspacing=1.2, handlelength=2.2)
        fig.suptitle(title, fontsize="large")
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=100)
        plt.close(fig)
    return path
