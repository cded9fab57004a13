"""Why a queue's runs are Late: one cause per queue, decided from what the sample already read (pure).

The precedence (first that holds wins), most specific and most actionable first:

1. ``paused``: the queue or its work pool is paused; nothing starts until it is resumed.
2. ``concurrency-limit``: the queue's or its pool's concurrency limit is used up; more tasks cannot help.
3. ``no-worker``: no agent/worker has polled the queue within the health window (or ever).
4. ``at-max-capacity``: the ECS service is at its maxCapacity; it cannot be given more tasks.
5. ``tasks-not-starting``: ECS reports it cannot place or start the service's tasks, or desired has stayed
   above running for longer than a task start should take (:data:`TASK_START_SECONDS`).
6. ``scaling-out``: tasks are asked for (desired above running, or a shortfall the scaling policies act on)
   and starting within the expected time: the normal, short-lived cause.
7. ``unknown``: none of these; the detail says what was seen.

Paused and limited come before no-worker because a worker that polls a paused queue gets nothing, and a
fleet scaled to zero behind a paused queue has no worker either: the pause is what to fix.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Literal

LateCauseName = Literal["paused", "concurrency-limit", "no-worker", "at-max-capacity", "tasks-not-starting",
                        "scaling-out", "unknown"]
LATE_CAUSES: tuple[LateCauseName, ...] = ("paused", "concurrency-limit", "no-worker", "at-max-capacity",
                                          "tasks-not-starting", "scaling-out", "unknown")

# A Fargate task pulls its image and starts in about two minutes (config.DEFAULT_PREWARM_SECONDS); desired above
# running for longer than this (with room for a slow pull) means the tasks are not starting.
TASK_START_SECONDS = 300
# ECS service events this recent count; an older "unable to place" has likely been resolved or replaced.
ECS_EVENT_WINDOW_SECONDS = 600
# What ECS service events say when it cannot place or start a task (ECS developer guide, "Amazon ECS service
# event messages"): no capacity or resources, no IP in the subnet, RunTask failing or throttled.
CANNOT_START_PHRASES = ("unable to place a task", "was unable to", "is unable to consistently start tasks",
                        "failed to launch a task", "unable to launch", "insufficient", "throttl")
# An event that says tasks did start ends an earlier failure.
STARTED_PHRASES = ("has started", "has reached a steady state")


@dataclass(frozen=True)
class ServiceEvent:
    """One ECS service event (DescribeServices ``events``): when, and what it said."""

    at: datetime
    message: str


@dataclass(frozen=True)
class LateFacts:
    """What one sample read that bears on one queue's Late runs."""

    late: int
    paused: bool
    concurrency_limited: bool
    # Seconds since an agent/worker last polled the queue; None: never polled. 2.x agents and 3.x workers both
    # stamp the queue's last_polled when they fetch its runs, so this covers both.
    seconds_since_polled: float | None
    health_window_seconds: float
    max_capacity: int | None = None  # None: the service's tasks were not read
    running_tasks: int | None = None
    desired_tasks: int | None = None
    task_shortfall: int | None = None
    short_for_seconds: float | None = None  # how long desired has been above running, as far as known
    events: Sequence[ServiceEvent] = ()


@dataclass(frozen=True)
class LateCause:
    cause: LateCauseName
    detail: str


def cannot_start_event(events: Sequence[ServiceEvent], now: datetime) -> ServiceEvent | None:
    """The newest recent event that says ECS cannot place or start tasks, unless a newer one says tasks started."""
    for event in sorted(events, key=lambda e: e.at, reverse=True):
        if event.at < now - timedelta(seconds=ECS_EVENT_WINDOW_SECONDS):
            return None
        text = event.message.lower()
        if any(p in text for p in STARTED_PHRASES):
            return None
        if any(p in text for p in CANNOT_START_PHRASES):
            return event
    return None


def late_cause(facts: LateFacts, now: datetime) -> LateCause | None:
    """The cause of the queue's Late runs (see the module's docstring for the order); None when none is Late."""
    if facts.late <= 0:
        return None
    if facts.paused:
        return LateCause("paused", "the queue or its work pool is paused")
    if facts.concurrency_limited:
        return LateCause("concurrency-limit", "the queue's or its pool's concurrency limit is used up")
    if facts.seconds_since_polled is None:
        return LateCause("no-worker", "no agent/worker has ever polled the queue")
    if facts.seconds_since_polled > facts.health_window_seconds:
        return LateCause("no-worker", f"no agent/worker has polled the queue for {facts.seconds_since_polled:.0f} s "
                                      f"(health window {facts.health_window_seconds:.0f} s)")
    running, desired = facts.running_tasks, facts.desired_tasks
    if running is None or desired is None or facts.max_capacity is None:
        return LateCause("unknown", "the ECS service's task counts were not read")
    if desired >= facts.max_capacity:
        return LateCause("at-max-capacity", f"the ECS service is at its maxCapacity ({desired}/{facts.max_capacity} "
                                            f"tasks desired, {running} running)")
    event = cannot_start_event(facts.events, now)
    if event is not None:
        return LateCause("tasks-not-starting", f"ECS at {event.at.isoformat()}: {event.message}")
    short_for = facts.short_for_seconds
    if desired > running and short_for is not None and short_for > TASK_START_SECONDS:
        return LateCause("tasks-not-starting", f"{desired} tasks desired, {running} running for {short_for:.0f} s "
                                               f"(a task start should take under {TASK_START_SECONDS} s)")
    if desired > running or (facts.task_shortfall or 0) > 0:
        return LateCause("scaling-out", f"{desired} tasks desired, {running} running, "
                                        f"{facts.task_shortfall or 0} more to ask for")
    return LateCause("unknown", f"workers poll and the service has the tasks it asks for ({running} running, "
                                f"{desired} desired, max {facts.max_capacity}): check the workers' --limit and logs")
