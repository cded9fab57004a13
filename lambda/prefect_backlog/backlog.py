"""The backlog model: pure functions from flow runs and queue facts to the published figures.

This is where the scaling rules live (what counts as demand, paused queues,
runs inside worker tasks, the per-task signal), tested without HTTP or AWS.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta

# State names of SCHEDULED-type runs that a worker would start as soon as they are due.
# AwaitingConcurrencySlot is SCHEDULED too, but waits on a limit that more workers cannot lift.
DUE_STATE_NAMES = ("Scheduled", "Late", "AwaitingRetry")
LATE_STATE_NAME = "Late"
# Only a run in exactly this state is announced ahead: AwaitingRetry and AwaitingConcurrencySlot wait on
# something else than their start time.
SCHEDULED_STATE_NAME = "Scheduled"
# The in-flight states, owned here (the query plan reads exactly these): runs a worker has claimed and whose
# process (or submission) is still alive in the worker. By type: Pending, Running, Cancelling, and Paused when
# named "Paused" (one named "Suspended" has left its process: it resumes as a new submission). By name, among
# SCHEDULED-type states: AwaitingRetry, the run's engine waiting in its own process for its retry (Prefect retries
# a failed flow in the same process: 2.18 engine "will attempt to run again", 3.x FlowRunEngine), but only a
# worker's run (see RunFacts.retrying). AwaitingConcurrencySlot, Resuming and Scheduled have no process.
IN_FLIGHT_STATE_TYPES = ("PENDING", "RUNNING", "CANCELLING", "PAUSED")
PAUSED_STATE_NAME = "Paused"
AWAITING_RETRY_STATE_NAME = "AwaitingRetry"
IN_FLIGHT_SCHEDULED_NAMES = (AWAITING_RETRY_STATE_NAME,)


@dataclass(frozen=True)
class RunFacts:
    """The few fields of a flow run that the model needs."""

    id: str
    queue_id: str
    state_type: str  # SCHEDULED, PENDING, RUNNING, ...
    state_name: str
    scheduled_at: datetime | None  # next_scheduled_start_time, else expected_start_time
    state_since: datetime | None = None  # when the run entered its current state
    worker_name: str | None = None  # label prefect.worker.name: 3.1.9+ workers stamp it (3.1.6+ server)
    labelled: bool = True  # False: the API has no labels at all (Prefect 2.x, or a 3.x server before 3.1.6)

    @property
    def retrying(self) -> bool:
        """Waiting to retry in its own process: AwaitingRetry, and a worker's run (its ``prefect.worker.name``
        label, or no labels at all on this API: Prefect 2.x, where an agent's run cannot be told from another).

        A SCHEDULED-type run, but never Late, and not due: its engine proposes Running itself when the delay
        ends. An AwaitingRetry run that no worker labelled (created through the API) is left to :func:`is_due`.
        """
        return (self.state_type == "SCHEDULED" and self.state_name in IN_FLIGHT_SCHEDULED_NAMES
                and (self.worker_name is not None or not self.labelled))

    @property
    def in_flight(self) -> bool:
        """Claimed and not finished, with its flow process (or its submission) still alive in the worker."""
        if self.state_type == "SCHEDULED":
            return self.retrying
        return self.state_type in IN_FLIGHT_STATE_TYPES and (
            self.state_type != "PAUSED" or self.state_name == PAUSED_STATE_NAME)


@dataclass(frozen=True)
class QueueBacklog:
    late: int
    due: int
    pending: int
    running: int
    oldest_late_age_seconds: float
    paused: bool  # the queue or its pool
    stuck_pending_ids: tuple[str, ...] = ()  # Pending for longer than the configured threshold
    concurrency_limited: bool = False  # the queue's or its pool's concurrency limit is used up
    cancelling: int = 0
    paused_runs: int = 0  # runs Paused in their process (not Suspended)
    orphaned: int = 0  # in-flight runs whose worker's task has stopped (their process is gone)
    upcoming: int = 0  # Scheduled runs starting within the service's prewarmSeconds
    retrying: int = 0  # a worker's runs in AwaitingRetry: their process waits for the retry (RunFacts.retrying)

    @property
    def stuck_pending(self) -> int:
        return len(self.stuck_pending_ids)

    @property
    def in_flight(self) -> int:
        """Runs whose process is alive in a worker: Pending, Running, Cancelling, Paused and waiting to retry,
        less the orphaned."""
        return max(0, self.pending + self.running + self.cancelling + self.paused_runs + self.retrying
                   - self.orphaned)


@dataclass(frozen=True)
class QueueCounts:
    """Counts read for one queue before pause state is known (see :func:`summarize_runs`)."""

    late: int = 0
    due: int = 0
    pending: int = 0
    running: int = 0
    oldest_late_at: datetime | None = None
    stuck_pending_ids: tuple[str, ...] = ()
    cancelling: int = 0
    paused_runs: int = 0
    upcoming: int = 0
    retrying: int = 0
    # The in-flight runs themselves (with their workers), when they were read one by one; None when only
    # counted (a deep backlog): task protection then reads them itself. Not part of what the counts equal.
    in_flight_runs: tuple[RunFacts, ...] | None = field(default=(), compare=False)

    def __add__(self, other: QueueCounts) -> QueueCounts:
        """The counts of two disjoint sets of runs (the client reads a queue's runs in disjoint slices)."""
        oldest = [t for t in (self.oldest_late_at, other.oldest_late_at) if t is not None]
        runs = None if self.in_flight_runs is None or other.in_flight_runs is None else (
            self.in_flight_runs + other.in_flight_runs)
        return QueueCounts(late=self.late + other.late, due=self.due + other.due,
                           pending=self.pending + other.pending, running=self.running + other.running,
                           oldest_late_at=min(oldest, default=None),
                           stuck_pending_ids=self.stuck_pending_ids + other.stuck_pending_ids,
                           cancelling=self.cancelling + other.cancelling,
                           paused_runs=self.paused_runs + other.paused_runs, upcoming=self.upcoming + other.upcoming,
                           retrying=self.retrying + other.retrying, in_flight_runs=runs)

    def with_queue_state(self, now: datetime, *, paused: bool, queue_limit: int | None,
                         pool_limit_full: bool = False, orphaned: int = 0) -> QueueBacklog:
        """The published backlog, once the queue's pause state, concurrency limits and orphans are known."""
        in_use = self.pending + self.running
        return QueueBacklog(late=self.late, due=self.due, pending=self.pending, running=self.running,
                            oldest_late_age_seconds=seconds_since(self.oldest_late_at, now) or 0.0, paused=paused,
                            stuck_pending_ids=self.stuck_pending_ids,
                            concurrency_limited=pool_limit_full or limit_reached(queue_limit, in_use),
                            cancelling=self.cancelling, paused_runs=self.paused_runs, orphaned=orphaned,
                            upcoming=self.upcoming, retrying=self.retrying)


def limit_reached(limit: int | None, in_use: int | None) -> bool:
    """A Prefect concurrency limit (None: no limit) that leaves no slot for another run."""
    return limit is not None and in_use is not None and in_use >= limit


def seconds_since(moment: datetime | None, now: datetime) -> float | None:
    return None if moment is None else max(0.0, (now - moment).total_seconds())


def is_upcoming(run: RunFacts, now: datetime, window_seconds: float) -> bool:
    """Scheduled to start after now and within the window: a worker will be needed for it soon."""
    return (run.state_type == "SCHEDULED" and run.state_name == SCHEDULED_STATE_NAME and run.scheduled_at is not None
            and now < run.scheduled_at <= now + timedelta(seconds=window_seconds))


# A worker's run waiting to retry whose retry time passed this long ago has no process left to propose Running
# (its engine does so at that time): a worker must claim it, so it is due again (a task of a submit-only service
# that died during the delay, a worker restarted). Generous: an engine proposes within a second or two.
RETRY_START_GRACE_SECONDS = 120


def is_due(run: RunFacts, now: datetime) -> bool:
    """Waiting for a worker to start it: Scheduled or Late, or AwaitingRetry of no worker's, and its time has come.
    A worker's run waiting to retry is in flight instead (its own process starts it): never Late, and due only
    once its retry time is more than :data:`RETRY_START_GRACE_SECONDS` past (its process is gone)."""
    if run.retrying:
        return run.scheduled_at is not None and (now - run.scheduled_at).total_seconds() > RETRY_START_GRACE_SECONDS
    if run.state_type != "SCHEDULED" or run.state_name not in DUE_STATE_NAMES:
        return False
    # A Late run is due by definition, whatever its recorded time.
    return run.state_name == LATE_STATE_NAME or (run.scheduled_at is not None and run.scheduled_at <= now)


@dataclass
class _Tally:
    late: int = 0
    due: int = 0
    pending: int = 0
    running: int = 0
    cancelling: int = 0
    paused: int = 0
    upcoming: int = 0
    retrying: int = 0
    oldest_late_at: datetime | None = None
    stuck: list[str] = field(default_factory=list)
    in_flight: list[RunFacts] = field(default_factory=list)


def is_stuck_pending(run: RunFacts, now: datetime, stuck_after_seconds: float) -> bool:
    """Pending for longer than a worker needs to start a run: its worker most likely died after claiming it."""
    return (run.state_type == "PENDING" and run.state_since is not None
            and run.state_since <= now - timedelta(seconds=stuck_after_seconds))


def summarize_runs(runs: Iterable[RunFacts], queue_ids: Iterable[str], now: datetime,
                   stuck_after_seconds: float, prewarm: Mapping[str, float] | None = None) -> dict[str, QueueCounts]:
    """Count each queue's runs; every queue in ``queue_ids`` gets an entry (a true 0 when it has none).

    ``prewarm`` gives each queue's window, in seconds, for its upcoming runs (none: no upcoming run).
    """
    tallies: dict[str, _Tally] = {q: _Tally() for q in queue_ids}
    seen: set[str] = set()
    for run in runs:
        if run.id in seen or run.queue_id not in tallies:  # pages read while runs change can overlap
            continue
        seen.add(run.id)
        tally = tallies[run.queue_id]
        if is_due(run, now):
            tally.due += 1
            if run.state_name == LATE_STATE_NAME:
                tally.late += 1
                if run.scheduled_at is not None and (tally.oldest_late_at is None
                                                     or run.scheduled_at < tally.oldest_late_at):
                    tally.oldest_late_at = run.scheduled_at
        elif is_upcoming(run, now, (prewarm or {}).get(run.queue_id, 0)):
            tally.upcoming += 1
        elif run.in_flight:
            tally.in_flight.append(run)
            if run.state_type == "PENDING":
                tally.pending += 1
                if is_stuck_pending(run, now, stuck_after_seconds):
                    tally.stuck.append(run.id)
            elif run.state_type == "RUNNING":
                tally.running += 1
            elif run.state_type == "CANCELLING":
                tally.cancelling += 1
            elif run.retrying:
                tally.retrying += 1
            else:
                tally.paused += 1
    return {q: QueueCounts(late=t.late, due=t.due, pending=t.pending, running=t.running,
                           oldest_late_at=t.oldest_late_at, stuck_pending_ids=tuple(t.stuck),
                           cancelling=t.cancelling, paused_runs=t.paused, upcoming=t.upcoming,
                           retrying=t.retrying, in_flight_runs=tuple(t.in_flight))
            for q, t in tallies.items()}


def queue_demand(backlog: QueueBacklog, runs_in_worker_task: bool) -> int:
    """Flow runs that need this queue's worker tasks.

    Due and upcoming runs behind a paused queue or pool, or behind a used-up
    concurrency limit, are not demand: more workers cannot start them.
    Upcoming runs (Scheduled to start within the service's prewarmSeconds) are
    demand before they are due, so their tasks are up in time. Runs in flight
    (Pending, Running, Cancelling, Paused, a worker's AwaitingRetry) are demand only when they execute
    inside the worker's own task (Process worker): scaling that task in would
    kill them, and they still need it even while the queue is paused. Orphaned
    runs are not: their task is gone, and no task can bring their process back.
    """
    waiting = 0 if backlog.paused or backlog.concurrency_limited else backlog.due + backlog.upcoming
    in_flight = backlog.in_flight if runs_in_worker_task else 0
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

    ``backlog_per_task`` divides by the *desired* count, max(desired, 1):
    Application Auto Scaling multiplies a target-tracking metric by the
    scalable target's current capacity, which for an ECS service is its
    DesiredCount, and needs the metric to fall in proportion as that capacity
    grows (AAS user guide, "Target tracking scaling policies"). Divided by the
    running count instead, a service asked for 4 tasks with 1 running yet
    would read 4x too high while Fargate starts the rest, and protected tasks
    held above desired would ratchet desired below the need. With desired as
    the denominator, AAS's proportional answer ceil(desired * metric / target)
    is ceil(demand / target) whatever is still starting. At 0 desired it is the
    demand itself, so a scale-from-zero still reads above target.
    ``task_shortfall`` is measured against desired for the same reason: tasks
    still starting are not asked for twice.
    """
    needed = min(math.ceil(demand / target_backlog_per_task), max_capacity)
    return ServiceSignal(
        demand=demand,
        running_tasks=running_tasks,
        desired_tasks=desired_tasks,
        backlog_per_task=demand / max(desired_tasks, 1),
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
