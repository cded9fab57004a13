"""One publisher run: read every queue, compute the figures, publish them.

The Lambda handler and the local dry-run command both call into this module, so
what the dry run prints is what the Lambda would publish.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, NamedTuple, TypeVar

from prefect_backlog import metrics
from prefect_backlog.aws.cloudwatch import CloudWatchClient, Datum, put_metric_data
from prefect_backlog.aws.ecs import EcsClient, EcsReadError, TaskCounts, describe_services
from prefect_backlog.backlog import (
    QueueBacklog,
    QueueCounts,
    ServiceSignal,
    limit_reached,
    queue_demand,
    seconds_since,
    service_signal,
    sum_demand,
)
from prefect_backlog.config import Config, QueueConfig, ServiceConfig
from prefect_backlog.fanout import Fanout
from prefect_backlog.prefect_api import PoolWorkers, PrefectClient, PrefectError, ResolvedQueue

log = logging.getLogger("prefect_backlog")
T = TypeVar("T")

# Kept free at the end of each sample for PutMetricData, so a slow Prefect API cannot push
# the publish past the next sample or the Lambda timeout.
PUBLISH_RESERVE_SECONDS = 3.0


@dataclass(frozen=True)
class QueueResult:
    config: QueueConfig
    resolved: ResolvedQueue | None = None
    backlog: QueueBacklog | None = None
    error: str | None = None

    @property
    def demand(self) -> int | None:
        if self.backlog is None:
            return None
        return queue_demand(self.backlog, self.config.runs_in_worker_task)


@dataclass(frozen=True)
class ServiceResult:
    config: ServiceConfig
    demand: int | None
    signal: ServiceSignal | None = None
    error: str | None = None


@dataclass
class TickReport:
    now: datetime
    queues: list[QueueResult]
    services: list[ServiceResult] = field(default_factory=list)
    pools: dict[str, PoolWorkers | PrefectError] = field(default_factory=dict)
    whole_failure: str | None = None  # set when nothing could be read at all
    rescheduled: int = 0
    prefect_requests: int = 0
    put_metric_data_calls: int = 0
    duration_ms: float = 0.0

    @property
    def queue_errors(self) -> int:
        return sum(1 for q in self.queues if q.error is not None)

    @property
    def queues_read(self) -> int:
        return len(self.queues) - self.queue_errors

    @property
    def service_errors(self) -> int:
        return sum(1 for s in self.services if s.error is not None)

    def summary(self) -> dict[str, Any]:
        return {
            "queuesRead": self.queues_read,
            "queueReadErrors": self.queue_errors,
            "serviceReadErrors": self.service_errors,
            "prefectRequests": self.prefect_requests,
            "rescheduledFlowRuns": self.rescheduled,
            "putMetricDataCalls": self.put_metric_data_calls,
            "durationMs": round(self.duration_ms, 1),
            **({"wholeFailure": self.whole_failure} if self.whole_failure else {}),
        }


class PrefectReads(NamedTuple):
    queues: list[QueueResult]
    pools: dict[str, PoolWorkers | PrefectError]
    whole_failure: str | None  # set when nothing could be read at all


def read_prefect(config: Config, client: PrefectClient, now: datetime, fanout: Fanout) -> PrefectReads:
    """Every configured queue's backlog (or the reason it could not be read) and its pool's worker health.

    Once the queues are resolved, their runs and their pools' workers are
    independent reads, so they run at the same time: the tick waits for the
    slower of the two, not for their sum. ``whole_failure`` is set when the
    read failed as a whole (server down, credentials rejected, or every queue
    failed): the caller must fail loudly, and no worker health is reported then.
    """
    try:
        resolved = client.resolve_queues(config.queues)
    except PrefectError as exc:
        cause = f"could not look up the work queues: {exc}"
        return PrefectReads([QueueResult(config=q, error=cause) for q in config.queues], {}, cause)

    found = [r for r in resolved.values() if isinstance(r, ResolvedQueue)]
    workers = fanout.submit(lambda: client.read_workers({r.pool for r in found}, fanout))
    try:
        counts = client.read_counts(found, now, config.stuck_pending_seconds, fanout)
    except PrefectError as exc:  # credentials rejected half-way
        cause = f"could not read flow runs: {exc}"
        return PrefectReads([QueueResult(config=q, error=cause) for q in config.queues], {}, cause)
    finally:
        # Wait for the worker read either way, so no request outlives the tick and
        # ``client.requests_sent`` counts every one of them; its own failure is handled below.
        worker_read = _settle(workers.result)
    results = _queue_results(config, resolved, counts, now)
    if results and all(r.error for r in results):
        cause = "no configured queue could be read: " + "; ".join(sorted({r.error or "" for r in results}))
        return PrefectReads(results, {}, cause)  # the worker read is dropped, whatever it found
    if isinstance(worker_read, BaseException):
        raise worker_read  # a rejected credential, as calling read_workers here would have raised
    return PrefectReads(results, worker_read, None)


def _settle(call: Callable[[], T]) -> T | BaseException:
    try:
        return call()
    except Exception as exc:
        return exc


def _queue_results(config: Config, resolved: Mapping[int, ResolvedQueue | PrefectError],
                   counts: Mapping[str, QueueCounts | PrefectError], now: datetime) -> list[QueueResult]:
    results = []
    for queue in config.queues:
        outcome = resolved[queue.index]
        if isinstance(outcome, PrefectError):
            results.append(QueueResult(config=queue, error=str(outcome)))
            continue
        read = counts[outcome.id]
        if isinstance(read, PrefectError):
            results.append(QueueResult(config=queue, resolved=outcome, error=f"{queue.label}: {read}"))
        else:
            backlog = read.with_queue_state(
                now, paused=outcome.paused, queue_limit=outcome.concurrency_limit,
                pool_limit_full=limit_reached(outcome.pool_concurrency_limit, outcome.pool_active_slots))
            results.append(QueueResult(config=queue, resolved=outcome, backlog=backlog))
    return results


def compute_services(config: Config, queues: Sequence[QueueResult],
                     task_counts: Mapping[tuple[str, str], TaskCounts | EcsReadError]) -> list[ServiceResult]:
    demands = {q.config.index: q.demand for q in queues}
    results = []
    for service in config.services:
        demand = sum_demand(demands, service.queue_indexes)
        tasks = task_counts.get(service.key)
        if demand is None:
            failed = [q.config.label for q in queues if q.config.index in service.queue_indexes and q.error]
            results.append(ServiceResult(service, None, error=f"demand unknown: {', '.join(failed)} unread"))
        elif not isinstance(tasks, TaskCounts):
            results.append(ServiceResult(service, demand, error=str(tasks or "no task counts")))
        else:
            signal = service_signal(demand, tasks.running, tasks.desired, service.target_backlog_per_task,
                                    service.max_capacity)
            results.append(ServiceResult(service, demand, signal=signal))
    return results


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
        ]
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
    for service in report.services:
        if service.signal is None:
            continue
        dims = metrics.service_dimensions(*service.config.key)
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
    ]
    if report.rescheduled:
        data.append(Datum(metrics.RESCHEDULED_FLOW_RUNS, dims, report.rescheduled))
    return data


def run_tick(config: Config, client: PrefectClient, *, ecs: EcsClient, cloudwatch: CloudWatchClient | None,
             now: datetime) -> TickReport:
    """Read, compute and (when ``cloudwatch`` is given) publish one sample of every metric.

    Everything the sample does at the same time runs on one :class:`Fanout`,
    bounded at the client's request concurrency.
    """
    started = time.monotonic()
    with Fanout(client.max_concurrency) as fanout:
        # ECS task counts do not depend on Prefect: ask for them first so that round trip hides
        # behind the Prefect reads. describe_services reports per-service failures in its result;
        # anything else it raises surfaces from .result(), after any Prefect error.
        ecs_read = fanout.submit(lambda: describe_services(ecs, [s.key for s in config.services]))
        queues, pools, whole_failure = read_prefect(config, client, now, fanout)
        task_counts = ecs_read.result()
        report = TickReport(now=now, queues=queues, services=compute_services(config, queues, task_counts),
                            pools=pools, whole_failure=whole_failure)
        _log_unread(report)
        if config.reschedule_stuck_pending:
            report.rescheduled = reschedule_stuck_runs(config, client, queues, now)
        report.prefect_requests = client.requests_sent
        report.duration_ms = (time.monotonic() - started) * 1000
        if cloudwatch is not None:
            report.put_metric_data_calls = put_metric_data(
                cloudwatch, config.namespace, metric_data(report, config.stack_name), now,
                storage_resolution=config.storage_resolution, fanout=fanout)
    return report


def _log_unread(report: TickReport) -> None:
    """One warning per queue, pool or service that was not read, naming it and the cause in the message too
    (the Lambda's JSON logs also carry them as fields; a terminal shows only the message)."""
    for queue in report.queues:
        if queue.error:
            cause = queue.error.removeprefix(f"{queue.config.label}: ")
            log.warning(f"queue {queue.config.label} not read; nothing published for it: {cause}",
                        extra={"queue": queue.config.label, "cause": queue.error})
    for pool, workers in report.pools.items():
        if isinstance(workers, PrefectError):
            log.warning(f"worker health of pool {pool!r} not read: {workers}",
                        extra={"work_pool": pool, "cause": str(workers)})
    for service in report.services:
        if service.error:
            log.warning(f"scaling signal of ECS service {service.config.path} not published: {service.error}",
                        extra={"ecs_service": service.config.path, "cause": service.error})


def reschedule_stuck_runs(config: Config, client: PrefectClient, queues: Sequence[QueueResult],
                          now: datetime) -> int:
    """Opt-in remediation: stuck Pending runs back to Scheduled, at most ``max_reschedules_per_run``."""
    stuck = [(q, run_id) for q in queues if q.backlog for run_id in q.backlog.stuck_pending_ids]
    rescheduled = 0
    for queue, run_id in stuck[:config.max_reschedules_per_run]:
        try:
            accepted = client.reschedule_if_stuck(run_id, now, config.stuck_pending_seconds)
        except PrefectError as exc:
            log.warning("could not reschedule a stuck Pending run", extra={
                "queue": queue.config.label, "flow_run_id": run_id, "cause": str(exc)})
            continue
        if accepted:
            rescheduled += 1
            log.info("rescheduled a stuck Pending run", extra={
                "queue": queue.config.label, "flow_run_id": run_id,
                "stuck_after_seconds": config.stuck_pending_seconds})
    if len(stuck) > config.max_reschedules_per_run:
        log.warning("more stuck Pending runs than one run may reschedule", extra={
            "stuck": len(stuck), "max_reschedules_per_run": config.max_reschedules_per_run})
    return rescheduled


def run_samples(config: Config, new_client: Callable[[float], PrefectClient], *, ecs: EcsClient,
                cloudwatch: CloudWatchClient,
                deadline: float, wall_clock: Callable[[], datetime], clock: Callable[[], float] = time.monotonic,
                sleep: Callable[[float], None] = time.sleep) -> list[TickReport]:
    """One invocation: a single tick, or in fast mode one every 10 s until the next invocation is due.

    ``new_client(read_deadline)`` makes the Prefect client for one sample; each
    sample must finish reading before the next one starts, and all of them
    before ``deadline`` (a ``clock()`` value).
    """
    interval = config.sample_interval_seconds
    start = clock()
    reports = []
    for slot in range(config.samples_per_invocation):
        slot_start = start + slot * interval
        read_deadline = min(deadline, slot_start + interval) - PUBLISH_RESERVE_SECONDS
        if read_deadline <= max(slot_start, clock()):
            continue  # an earlier sample ran long: this slot has passed
        if slot_start > clock():
            sleep(slot_start - clock())
        reports.append(run_tick(config, new_client(read_deadline), ecs=ecs, cloudwatch=cloudwatch,
                                now=wall_clock()))
    return reports
