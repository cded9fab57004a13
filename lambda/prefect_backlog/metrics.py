"""Metric names, units and dimensions: defined once for the publisher, the policies and the alarms.

The Lambda publishes with these names and the CDK constructs build scaling
policies, alarms and the dashboard from the same definitions, so renaming a
metric cannot silently leave a policy watching a metric nobody publishes.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum


class Unit(StrEnum):
    COUNT = "Count"
    SECONDS = "Seconds"
    MILLISECONDS = "Milliseconds"
    NONE = "None"


@dataclass(frozen=True)
class MetricDef:
    name: str
    unit: Unit
    description: str


# Per work queue; dimensions WorkPool and WorkQueue.
LATE_FLOW_RUNS = MetricDef("LateFlowRuns", Unit.COUNT, "Flow runs in state Late")
DUE_FLOW_RUNS = MetricDef(
    "DueFlowRuns", Unit.COUNT,
    "Flow runs due but not claimed: Late plus Scheduled whose start time has passed (AwaitingRetry only when no "
    "worker's: a worker's run waiting to retry is in flight)")
PENDING_FLOW_RUNS = MetricDef("PendingFlowRuns", Unit.COUNT, "Flow runs claimed by a worker, not yet running")
RUNNING_FLOW_RUNS = MetricDef("RunningFlowRuns", Unit.COUNT, "Flow runs running")
OLDEST_LATE_RUN_AGE = MetricDef(
    "OldestLateRunAgeSeconds", Unit.SECONDS, "Seconds since the oldest Late run was due (0 when none is Late)")
QUEUE_PAUSED = MetricDef("QueuePaused", Unit.NONE, "1 when the queue or its pool is paused, else 0")
SECONDS_SINCE_LAST_POLLED = MetricDef(
    "SecondsSinceLastPolled", Unit.SECONDS,
    "Seconds since an agent/worker last polled the queue (since its creation when never polled)")
STUCK_PENDING_FLOW_RUNS = MetricDef(
    "StuckPendingFlowRuns", Unit.COUNT,
    "Runs Pending for longer than stuckPendingSeconds: claimed by a worker that most likely died")
CONCURRENCY_LIMITED = MetricDef(
    "ConcurrencyLimited", Unit.NONE,
    "1 when the queue's concurrency limit (or its pool's, on 3.x) is used up: due runs wait on the limit, "
    "not on workers, and add no demand")
UPCOMING_FLOW_RUNS = MetricDef(
    "UpcomingFlowRuns", Unit.COUNT,
    "Scheduled runs that start within the service's prewarmSeconds: demand already, so their tasks are up when "
    "they are due")
ORPHANED_FLOW_RUNS = MetricDef(
    "OrphanedFlowRuns", Unit.COUNT,
    "In-flight runs whose worker's ECS task has stopped: their process died with it; they are not demand "
    "(per queue, and the publisher's total)")
QUEUE_METRICS = (LATE_FLOW_RUNS, DUE_FLOW_RUNS, PENDING_FLOW_RUNS, RUNNING_FLOW_RUNS, OLDEST_LATE_RUN_AGE,
                 QUEUE_PAUSED, SECONDS_SINCE_LAST_POLLED, STUCK_PENDING_FLOW_RUNS, CONCURRENCY_LIMITED,
                 UPCOMING_FLOW_RUNS, ORPHANED_FLOW_RUNS)

# Per work pool; dimension WorkPool. Workers (3.x, and 2.x workers) heartbeat; 2.x agents do not.
ONLINE_WORKERS = MetricDef("OnlineWorkers", Unit.COUNT, "Workers of the pool whose status is ONLINE")
SECONDS_SINCE_WORKER_HEARTBEAT = MetricDef(
    "SecondsSinceWorkerHeartbeat", Unit.SECONDS,
    "Seconds since the newest heartbeat of any worker in the pool (not published when the pool has no workers)")
POOL_METRICS = (ONLINE_WORKERS, SECONDS_SINCE_WORKER_HEARTBEAT)

# Per ECS service; dimensions ClusterName and ServiceName (the names AWS/ECS uses).
BACKLOG_PER_TASK = MetricDef(
    "BacklogPerTask", Unit.NONE,
    "Scaling signal for target tracking: demand / max(desired tasks, 1)")
DEMAND_FLOW_RUNS = MetricDef(
    "DemandFlowRuns", Unit.COUNT,
    "Flow runs that need this service's tasks: due and upcoming runs of unpaused queues, plus in-flight runs "
    "where runs execute inside the worker task")
TASK_SHORTFALL = MetricDef(
    "TaskShortfall", Unit.COUNT,
    "Tasks missing for the demand: ceil(demand / target backlog per task) - desired tasks, capped at the "
    "service's maximum, never negative; drives the step policy that scales out of 0 and answers bursts")
RUNNING_TASKS = MetricDef("RunningTasks", Unit.COUNT, "Running tasks of the service (ECS DescribeServices)")
DESIRED_TASKS = MetricDef("DesiredTasks", Unit.COUNT, "Desired tasks of the service (ECS DescribeServices)")
PROTECTED_TASKS = MetricDef(
    "ProtectedTasks", Unit.COUNT,
    "Tasks of the service under ECS scale-in protection because their worker holds a flow run")
UNMAPPED_FLOW_RUNS = MetricDef(
    "UnmappedFlowRuns", Unit.COUNT,
    "In-flight runs of the service's queues whose worker name carries no ECS task ID: their task cannot be "
    "protected (fix the worker's start command)")
SERVICE_METRICS = (BACKLOG_PER_TASK, DEMAND_FLOW_RUNS, TASK_SHORTFALL, RUNNING_TASKS, DESIRED_TASKS, PROTECTED_TASKS,
                   UNMAPPED_FLOW_RUNS)

# Per publisher (one per stack); dimension Publisher.
QUEUES_READ = MetricDef("QueuesRead", Unit.COUNT, "Configured queues whose backlog was read and published")
QUEUE_READ_ERRORS = MetricDef(
    "QueueReadErrors", Unit.COUNT, "Configured queues whose backlog could not be read; nothing was published for them")
SERVICE_READ_ERRORS = MetricDef(
    "ServiceReadErrors", Unit.COUNT, "ECS services whose scaling signal could not be computed this run")
TICK_DURATION = MetricDef("PublisherDuration", Unit.MILLISECONDS, "Time one publisher run took")
RESCHEDULED_FLOW_RUNS = MetricDef(
    "RescheduledFlowRuns", Unit.COUNT,
    "Stuck Pending runs set back to Scheduled this run (only with rescheduleStuckPending)")
PROTECTION_ERRORS = MetricDef(
    "ProtectionErrors", Unit.COUNT,
    "ECS task reads or task-protection calls that failed this run; protection was left as it was")
CRASHED_FLOW_RUNS = MetricDef(
    "CrashedFlowRuns", Unit.COUNT,
    "Orphaned runs set to Crashed this run (only with orphanedRuns \"crash\", or crashOrphanedRuns)")
RESCHEDULED_ORPHANED_FLOW_RUNS = MetricDef(
    "RescheduledOrphanedFlowRuns", Unit.COUNT,
    "Orphaned runs set back to Scheduled this run, for a live worker to run again (only with orphanedRuns "
    "\"reschedule\")")
PUBLISHER_METRICS = (QUEUES_READ, QUEUE_READ_ERRORS, SERVICE_READ_ERRORS, TICK_DURATION, RESCHEDULED_FLOW_RUNS,
                     PROTECTION_ERRORS, ORPHANED_FLOW_RUNS, CRASHED_FLOW_RUNS, RESCHEDULED_ORPHANED_FLOW_RUNS)


def queue_dimensions(work_pool: str, work_queue: str) -> dict[str, str]:
    return {"WorkPool": work_pool, "WorkQueue": work_queue}


def pool_dimensions(work_pool: str) -> dict[str, str]:
    return {"WorkPool": work_pool}


def service_dimensions(cluster: str, service: str) -> dict[str, str]:
    return {"ClusterName": cluster, "ServiceName": service}


def late_cause_dimensions(cluster: str, service: str, cause: str) -> dict[str, str]:
    """LateFlowRuns per ECS service and cause (late_cause.py), published only while non-zero."""
    return {"ClusterName": cluster, "ServiceName": service, "Cause": cause}


def publisher_dimensions(publisher: str) -> dict[str, str]:
    return {"Publisher": publisher}
