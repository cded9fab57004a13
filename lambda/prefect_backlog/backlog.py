"""The backlog model: pure functions from flow runs and queue facts to the published figures.

This is where the scaling rules live (what counts as demand, paused queues,
runs inside worker tasks, the per-task signal), tested without HTTP or AWS.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime

# State names of SCHEDULED-type runs that a worker would start as soon as they are due.
# AwaitingConcurrencySlot is SCHEDULED too, but waits on a limit that more workers cannot lift.
DUE_STATE_NAMES = ("Scheduled", "Late", "AwaitingRetry")
LATE_STATE_NAME = "Late"


@dataclass(frozen=True)
class RunFacts:
    """The few fields of a flow run that the model needs."""

    id: str
    queue_id: str
    state_type: str  # SCHEDULED, PENDING, RUNNING, ...
    state_name: str
    scheduled_at: datetime | None  # next_scheduled_start_time, else expected_start_time


@dataclass(frozen=True)
class QueueBacklog:
    late: int
    due: int
    pending: int
    running: int
    oldest_late_age_seconds: float
    paused: bool  # the queue or its pool


@dataclass(frozen=True)
class QueueCounts:
    """Counts read for one queue before pause state is known (see :func:`summarize_runs`)."""

    late: int = 0
    due: int = 0
    pending: int = 0
    running: int = 0
    oldest_late_at: datetime | None = None

    def with_pause(self, paused: bool, now: datetime) -> QueueBacklog:
        return QueueBacklog(late=self.late, due=self.due, pending=self.pending, running=self.running,
                            oldest_late_age_seconds=seconds_since(self.oldest_late_at, now) or 0.0, paused=paused)


def seconds_since(moment: datetime | None, now: datetime) -> float | None:
    return None if moment is None else max(0.0, (now - moment).total_seconds())


def is_due(run: RunFacts, now: datetime) -> bool:
    if run.state_type != "SCHEDULED" or run.state_name not in DUE_STATE_NAMES:
        return False
    # A Late run is due by definition, whatever its recorded time.
    return run.state_name == LATE_STATE_NAME or (run.scheduled_at is not None and run.scheduled_at <= now)


def summarize_runs(runs: Iterable[RunFacts], queue_ids: Iterable[str], now: datetime) -> dict[str, QueueCounts]:
    """Count each queue's runs; every queue in ``queue_ids`` gets an entry (a true 0 when it has none)."""
    late: dict[str, int] = {}
    due: dict[str, int] = {}
    pending: dict[str, int] = {}
    running: dict[str, int] = {}
    oldest: dict[str, datetime] = {}
    seen: set[str] = set()
    for run in runs:
        if run.id in seen:  # pages read while runs change state can overlap
            continue
        seen.add(run.id)
        queue = run.queue_id
        if is_due(run, now):
            due[queue] = due.get(queue, 0) + 1
            if run.state_name == LATE_STATE_NAME:
                late[queue] = late.get(queue, 0) + 1
                if run.scheduled_at is not None and (queue not in oldest or run.scheduled_at < oldest[queue]):
                    oldest[queue] = run.scheduled_at
        elif run.state_type == "PENDING":
            pending[queue] = pending.get(queue, 0) + 1
        elif run.state_type == "RUNNING":
            running[queue] = running.get(queue, 0) + 1
    return {
        q: QueueCounts(late=late.get(q, 0), due=due.get(q, 0), pending=pending.get(q, 0),
                       running=running.get(q, 0), oldest_late_at=oldest.get(q))
        for q in queue_ids
    }


def queue_demand(backlog: QueueBacklog, runs_in_worker_task: bool) -> int:
    """Flow runs that need this queue's worker tasks.

    Due runs behind a paused queue or pool are not demand: more workers cannot
    start them. Runs in flight are demand only when they execute inside the
    worker's own task (Process worker): scaling that task in would kill them,
    and they still need it even while the queue is paused.
    """
    waiting = 0 if backlog.paused else backlog.due
    in_flight = backlog.pending + backlog.running if runs_in_worker_task else 0
    return waiting + in_flight


@dataclass(frozen=True)
class ServiceSignal:
    demand: int
    running_tasks: int
    desired_tasks: int
    backlog_per_task: float
    task_shortfall: int


def service_signal(demand: int, running_tasks: int, desired_tasks: int, target_backlog_per_task: float,
                   max_capacity: int) -> ServiceSignal:
    """The per-service figures the scaling policies follow.

    ``backlog_per_task`` divides by max(running, 1) so it is defined, and equal
    to the demand, at 0 tasks. ``task_shortfall`` is measured against the
    *desired* count so tasks that are still starting are not asked for twice.
    """
    needed = min(math.ceil(demand / target_backlog_per_task), max_capacity)
    return ServiceSignal(
        demand=demand,
        running_tasks=running_tasks,
        desired_tasks=desired_tasks,
        backlog_per_task=demand / max(running_tasks, 1),
        task_shortfall=max(0, needed - desired_tasks),
    )


def sum_demand(demands: Mapping[int, int | None], queue_indexes: Iterable[int]) -> int | None:
    """A service's demand, or None when any of its queues is unknown (a partial sum would read low)."""
    total = 0
    for index in queue_indexes:
        value = demands.get(index)
        if value is None:
            return None
        total += value
    return total
