"""What one sample found, per queue, pool and service, and the metric data it turns into.

A queue or service that could not be read contributes nothing: no value is
ever published for something that was not read (a false 0 would scale a
service in while work waits).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from prefect_backlog import metrics
from prefect_backlog.aws.cloudwatch import Datum
from prefect_backlog.aws.ecs import EcsReadError, TaskCounts
from prefect_backlog.aws.task_protection import ServiceProtection
from prefect_backlog.backlog import (
    QueueBacklog,
    QueueCounts,
    ServiceSignal,
    queue_demand,
    seconds_since,
    service_signal,
    sum_demand,
)
from prefect_backlog.config import Config, QueueConfig, ServiceConfig
from prefect_backlog.late_cause import LateCause, LateFacts, late_cause
from prefect_backlog.prefect_api import PoolWorkers, PrefectError, ResolvedQueue


@dataclass(frozen=True)
class QueueResult:
    config: QueueConfig
    resolved: ResolvedQueue | None = None
    counts: QueueCounts | None = None
    backlog: QueueBacklog | None = None
    error: str | None = None
    orphans_known: bool = False  # its service's tasks were checked, so backlog.orphaned is a true count

    @property
    def demand(self) -> int | None:
        if self.backlog is None:
            return None
        return queue_demand(self.backlog, self.config.runs_in_worker_task)

    def with_orphans(self, orphaned: int) -> QueueResult:
        if self.backlog is None:
            return self
        return replace(self, backlog=replace(self.backlog, orphaned=orphaned), orphans_known=True)

    def with_rescheduled(self, rescheduled: int) -> QueueResult:
        """Orphaned runs it set back to Scheduled in this sample: due now (demand at once), still reported
        as read (Running, orphaned)."""
        if self.backlog is None or not rescheduled:
            return self
        return replace(self, backlog=replace(self.backlog, due=self.backlog.due + rescheduled))


@dataclass(frozen=True)
class ServiceResult:
    config: ServiceConfig
    demand: int | None
    signal: ServiceSignal | None = None
    error: str | None = None
    protection: ServiceProtection | None = None  # None: not protected (off, or Prefect 2.x)

    @property
    def unmapped(self) -> int | None:
        """In-flight runs whose worker carries no task ID, where protection applies and the runs were read."""
        return self.protection.unmapped if self.protection is not None and not self.protection.held else None


@dataclass
class TickReport:
    now: datetime
    queues: list[QueueResult]
    services: list[ServiceResult] = field(default_factory=list)
    pools: dict[str, PoolWorkers | PrefectError] = field(default_factory=dict)
    whole_failure: str | None = None  # set when nothing could be read at all
    rescheduled: int = 0
    crashed: int = 0
    rescheduled_orphans: int = 0  # orphaned runs set back to Scheduled (orphanedRuns "reschedule")
    prefect_requests: int = 0
    put_metric_data_calls: int = 0
    duration_ms: float = 0.0
    late_causes: dict[int, LateCause] = field(default_factory=dict)  # by queue config index: queues with Late runs

    @property
    def queue_errors(self) -> int:
        return sum(1 for q in self.queues if q.error is not None)

    @property
    def queues_read(self) -> int:
        return len(self.queues) - self.queue_errors

    @property
    def service_errors(self) -> int:
        return sum(1 for s in self.services if s.error is not None)

    @property
    def protection_errors(self) -> int:
        return sum(len(s.protection.errors) for s in self.services if s.protection is not None)

    @property
    def ecs_task_calls(self) -> int:
        return sum(s.protection.calls for s in self.services if s.protection is not None)

    @property
    def orphaned(self) -> int | None:
        """Orphaned runs of every queue whose tasks were checked; None when none could be."""
        known = [q.backlog.orphaned for q in self.queues if q.orphans_known and q.backlog is not None]
        return sum(known) if known else None

    def summary(self) -> dict[str, Any]:
        return {
            "queuesRead": self.queues_read,
            "queueReadErrors": self.queue_errors,
            "serviceReadErrors": self.service_errors,
            "prefectRequests": self.prefect_requests,
            "rescheduledFlowRuns": self.rescheduled,
            "protectedTasks": sum(s.protection.protected or 0 for s in self.services if s.protection),
            "orphanedFlowRuns": self.orphaned,
            "crashedFlowRuns": self.crashed,
            "rescheduledOrphanedFlowRuns": self.rescheduled_orphans,
            "protectionErrors": self.protection_errors,
            "ecsTaskCalls": self.ecs_task_calls,
            "putMetricDataCalls": self.put_metric_data_calls,
            "durationMs": round(self.duration_ms, 1),
            **({"wholeFailure": self.whole_failure} if self.whole_failure else {}),
        }


def compute_services(config: Config, queues: Sequence[QueueResult],
                     task_counts: Mapping[tuple[str, str], TaskCounts | EcsReadError],
                     protection: Mapping[tuple[str, str], ServiceProtection] | None = None,
                     ) -> list[ServiceResult]:
    """Each service's demand and signal; ``protection`` gives, per service, what its protection step did."""
    demands = {q.config.index: q.demand for q in queues}
    results = []
    for service in config.services:
        demand = sum_demand(demands, service.queue_indexes)
        tasks = task_counts.get(service.key)
        protected = (protection or {}).get(service.key)
        if demand is None:
            failed = [q.config.label for q in queues if q.config.index in service.queue_indexes and q.error]
            results.append(ServiceResult(service, None, error=f"demand unknown: {', '.join(failed)} unread",
                                         protection=protected))  # kept protected while its runs are unread
        elif not isinstance(tasks, TaskCounts):
            results.append(ServiceResult(service, demand, error=str(tasks or "no task counts"), protection=protected))
        else:
            signal = service_signal(demand, tasks.running, tasks.desired, service.target_backlog_per_task,
                                    service.max_capacity)
            results.append(ServiceResult(service, demand, signal=signal, protection=protected))
    return results


def late_causes(config: Config, report: TickReport, task_counts: Mapping[tuple[str, str], TaskCounts | EcsReadError],
                short_for: Mapping[tuple[str, str], float]) -> dict[int, LateCause]:
    """Per queue (config index) with Late runs, why (late_cause.py); ``short_for`` gives, per service, how long
    its desired count has been above running, as far as this container knows."""
    signals = {s.config.key: s.signal for s in report.services}
    causes: dict[int, LateCause] = {}
    for queue in report.queues:
        if queue.backlog is None or queue.resolved is None or queue.backlog.late <= 0:
            continue
        service = config.service_for(queue.config)
        tasks = task_counts.get(service.key)
        known = tasks if isinstance(tasks, TaskCounts) else None
        signal = signals.get(service.key)
        cause = late_cause(LateFacts(
            late=queue.backlog.late, paused=queue.backlog.paused, concurrency_limited=queue.backlog.concurrency_limited,
            seconds_since_polled=seconds_since(queue.resolved.last_polled, report.now),
            health_window_seconds=config.unpolled_alarm_seconds,
            max_capacity=service.max_capacity if known else None,
            running_tasks=known.running if known else None, desired_tasks=known.desired if known else None,
            task_shortfall=signal.task_shortfall if signal else None, short_for_seconds=short_for.get(service.key),
            events=known.events if known else ()), report.now)
        if cause is not None:
            causes[queue.config.index] = cause
    return causes


def late_by_cause(report: TickReport) -> dict[tuple[tuple[str, str], str], int]:
    """Late runs per (service, cause): only the pairs that have some (so nothing is published for the others)."""
    by_index = {q.config.index: q for q in report.queues}
    totals: dict[tuple[tuple[str, str], str], int] = {}
    for index, cause in report.late_causes.items():
        queue = by_index[index]
        key = (queue.config.service_key, cause.cause)
        totals[key] = totals.get(key, 0) + (queue.backlog.late if queue.backlog else 0)
    return totals


def metric_data(report: TickReport, publisher: str) -> list[Datum]:
    """Everything one run publishes. A queue or service that was not read contributes nothing."""
    data: list[Datum] = []
    for queue in report.queues:
        if queue.backlog is None or queue.resolved is None:
            continue
        dims = metrics.queue_dimensions(queue.resolved.pool, queue.resolved.name)
        b = queue.backlog
        data += [
            Datum(metrics.LATE_FLOW_RUNS, dims, b.late),
            Datum(metrics.DUE_FLOW_RUNS, dims, b.due),
            Datum(metrics.PENDING_FLOW_RUNS, dims, b.pending),
            Datum(metrics.RUNNING_FLOW_RUNS, dims, b.running),
            Datum(metrics.OLDEST_LATE_RUN_AGE, dims, b.oldest_late_age_seconds),
            Datum(metrics.QUEUE_PAUSED, dims, int(b.paused)),
            Datum(metrics.STUCK_PENDING_FLOW_RUNS, dims, b.stuck_pending),
            Datum(metrics.CONCURRENCY_LIMITED, dims, int(b.concurrency_limited)),
            Datum(metrics.UPCOMING_FLOW_RUNS, dims, b.upcoming),
        ]
        if queue.orphans_known:
            data.append(Datum(metrics.ORPHANED_FLOW_RUNS, dims, b.orphaned))
        polled = seconds_since(queue.resolved.last_polled or queue.resolved.created, report.now)
        if polled is not None:
            data.append(Datum(metrics.SECONDS_SINCE_LAST_POLLED, dims, polled))
    for pool, workers in report.pools.items():
        if isinstance(workers, PrefectError):
            continue
        dims = metrics.pool_dimensions(pool)
        data.append(Datum(metrics.ONLINE_WORKERS, dims, workers.online))
        heartbeat_age = seconds_since(workers.newest_heartbeat, report.now)
        if heartbeat_age is not None:
            data.append(Datum(metrics.SECONDS_SINCE_WORKER_HEARTBEAT, dims, heartbeat_age))
    # Late runs by cause per service, only while non-zero: each (service, cause) pair is a metric billed only for
    # the hours it is published (README: Why is it Late).
    for ((cluster, service_name), cause), late in sorted(late_by_cause(report).items()):
        data.append(Datum(metrics.LATE_FLOW_RUNS, metrics.late_cause_dimensions(cluster, service_name, cause), late))
    for service in report.services:
        dims = metrics.service_dimensions(*service.config.key)
        # A service whose runs were unread publishes nothing, ProtectedTasks included (its protection was
        # only kept: the log says how many tasks).
        if service.protection is not None and service.protection.protected is not None and not service.protection.held:
            data.append(Datum(metrics.PROTECTED_TASKS, dims, service.protection.protected))
        if service.unmapped is not None:
            data.append(Datum(metrics.UNMAPPED_FLOW_RUNS, dims, service.unmapped))
        if service.signal is None:
            continue
        s = service.signal
        data += [
            Datum(metrics.BACKLOG_PER_TASK, dims, s.backlog_per_task),
            Datum(metrics.DEMAND_FLOW_RUNS, dims, s.demand),
            Datum(metrics.TASK_SHORTFALL, dims, s.task_shortfall),
            Datum(metrics.RUNNING_TASKS, dims, s.running_tasks),
            Datum(metrics.DESIRED_TASKS, dims, s.desired_tasks),
        ]
    dims = metrics.publisher_dimensions(publisher)
    data += [
        Datum(metrics.QUEUES_READ, dims, report.queues_read),
        Datum(metrics.QUEUE_READ_ERRORS, dims, report.queue_errors),
        Datum(metrics.SERVICE_READ_ERRORS, dims, report.service_errors),
        Datum(metrics.TICK_DURATION, dims, report.duration_ms),
        Datum(metrics.PROTECTION_ERRORS, dims, report.protection_errors),
    ]
    if report.orphaned is not None:
        data.append(Datum(metrics.ORPHANED_FLOW_RUNS, dims, report.orphaned))
    if report.rescheduled:
        data.append(Datum(metrics.RESCHEDULED_FLOW_RUNS, dims, report.rescheduled))
    if report.crashed:
        data.append(Datum(metrics.CRASHED_FLOW_RUNS, dims, report.crashed))
    if report.rescheduled_orphans:
        data.append(Datum(metrics.RESCHEDULED_ORPHANED_FLOW_RUNS, dims, report.rescheduled_orphans))
    return data
