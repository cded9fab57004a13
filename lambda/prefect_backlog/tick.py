"""One publisher sample: read Prefect, decide, act on AWS, publish. The handler and the dry run both run it.

The order follows the data: the queues are resolved, then their runs and their
pools' workers are read at the same time (ECS task counts meanwhile); the
tasks of services whose workers hold runs are checked and protected (which
also finds orphaned runs, whose process died with their task); then demand and
the signals are computed and everything is published at once. What the dry
run prints is what the Lambda would publish.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Literal, NamedTuple, TypeVar

from prefect_backlog.aws.cloudwatch import CloudWatchClient, put_metric_data
from prefect_backlog.aws.ecs import EcsReadError, EcsTaskClient, TaskCounts, describe_services
from prefect_backlog.aws.task_protection import ProtectionLedger, ServiceProtection, hold, reconcile
from prefect_backlog.backlog import QueueCounts, RunFacts, limit_reached
from prefect_backlog.config import Config, QueueConfig, ServiceConfig
from prefect_backlog.fanout import Fanout
from prefect_backlog.late_cause import FIELD_CAUSE, FIELD_DETAIL, FIELD_LATE, FIELD_QUEUE
from prefect_backlog.prefect_api import DepthMemory, PoolWorkers, PrefectClient, PrefectError, ResolvedQueue, RunLedger
from prefect_backlog.protection import LABELS_WORKER, Holding, holding_runs, orphaned_in_a_row, why_unlabelled
from prefect_backlog.remediation import crash_orphaned_runs, reschedule_orphaned_runs, reschedule_stuck_runs
from prefect_backlog.report import QueueResult, TickReport, compute_services, late_causes, metric_data

log = logging.getLogger("prefect_backlog")
T = TypeVar("T")

# Kept free at the end of each sample for PutMetricData, so a slow Prefect API cannot push
# the publish past the next sample or the Lambda timeout.
PUBLISH_RESERVE_SECONDS = 3.0

# "apply": protect and release tasks (the Lambda). "read": read ECS and report what would change (a dry
# run with --ecs). "off": no task-level ECS call at all (a dry run with assumed task counts).
ProtectionMode = Literal["apply", "read", "off"]


@dataclass
class WarmState:
    """What a warm Lambda container keeps between samples; a cold start loses it, at a cost in calls only."""

    depth: DepthMemory = field(default_factory=DepthMemory)
    ledger: RunLedger = field(default_factory=RunLedger)  # the Running runs read, for reads by changes (#22)
    protection: ProtectionLedger = field(default_factory=ProtectionLedger)
    orphaned: set[str] = field(default_factory=set)  # ids of the runs found orphaned in the last sample
    unlabelled_noted: bool = False  # told once per container that the server's runs carry no labels
    rebalancing_noted: set[tuple[str, str]] = field(default_factory=set)  # services told of AZ rebalancing
    # Per service, since when its desired count has been above running (a cold start forgets: reads as scaling-out
    # until late_cause.TASK_START_SECONDS have passed again).
    short_since: dict[tuple[str, str], datetime] = field(default_factory=dict)


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
    # Prefect 2.x pools report no active slots: count what their concurrency limit counts.
    unreported = {r.pool for r in found if r.pool_concurrency_limit is not None and r.pool_active_slots is None}
    pool_active = fanout.submit(lambda: client.pool_active_runs(unreported, fanout))
    try:
        services = {r.id: config.service_for(config.queues[r.config_index]) for r in found}
        prewarm = {queue_id: service.prewarm_seconds for queue_id, service in services.items()}
        # Task protection needs these queues' in-flight runs one by one (their workers).
        listed = {queue_id for queue_id, service in services.items() if service.task_protection}
        counts = client.read_counts(found, now, config.stuck_pending_seconds, fanout, prewarm, listed)
    except PrefectError as exc:  # credentials rejected half-way
        cause = f"could not read flow runs: {exc}"
        return PrefectReads([QueueResult(config=q, error=cause) for q in config.queues], {}, cause)
    finally:
        # Wait for the worker read (and the pool counts) either way, so no request outlives the tick and
        # ``client.requests_sent`` counts every one of them; their own failures are handled below.
        worker_read = _settle(workers.result)
        active = _settle(pool_active.result)
    counted = {pool: n for pool, n in active.items() if isinstance(n, int)} if isinstance(active, dict) else {}
    results = _queue_results(config, resolved, counts, now, counted)
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
                   counts: Mapping[str, QueueCounts | PrefectError], now: datetime,
                   pool_active: Mapping[str, int]) -> list[QueueResult]:
    """Each queue's result. A pool's runs in use are its reported active slots (3.x), else what was counted
    (2.x); a count that failed leaves the pool looking free, so its runs stay demand."""
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
                pool_limit_full=limit_reached(outcome.pool_concurrency_limit,
                                              outcome.pool_active_slots if outcome.pool_active_slots is not None
                                              else pool_active.get(outcome.pool)))
            results.append(QueueResult(config=queue, resolved=outcome, counts=read, backlog=backlog))
    return results


# --- task protection and orphaned runs ----------------------------------------------------------


@dataclass
class ProtectionStep:
    """The protection step of one sample: per service what was found and done, and the runs found orphaned."""

    services: dict[tuple[str, str], ServiceProtection] = field(default_factory=dict)
    orphaned: list[tuple[QueueConfig, RunFacts]] = field(default_factory=list)


def protect_tasks(config: Config, client: PrefectClient, queues: Sequence[QueueResult],
                  pools: Mapping[str, PoolWorkers | PrefectError], ecs: EcsTaskClient, fanout: Fanout,
                  warm: WarmState, now: datetime, mode: ProtectionMode) -> ProtectionStep:
    """Protect every task whose worker holds a run, release the others, and find the orphaned runs.

    A service whose runs are unknown (any of its queues unread, Prefect down)
    keeps its protected tasks protected, refreshed before they expire, and has
    nothing released. A service whose runs carry no worker at all (Prefect 2.x
    agents label nothing) is left as it is.
    """
    step = ProtectionStep()
    if mode == "off":
        return step
    by_index = {q.config.index: q for q in queues}
    holdings: dict[tuple[str, str], Holding] = {}
    unread: list[tuple[str, str]] = []
    for service in (s for s in config.services if s.task_protection):
        mine = [(by_index[i].counts, by_index[i].config.runs_in_worker_task) for i in service.queue_indexes]
        known = [(counts.in_flight_runs, in_task) for counts, in_task in mine
                 if counts is not None and counts.in_flight_runs is not None]
        if len(known) < len(mine):
            unread.append(service.key)  # its runs were not all read: keep what is protected, release nothing
            continue
        holding = holding_runs(known, now)
        if holding.unlabelled:
            _note_unlabelled(warm, service, client)
            continue
        holdings[service.key] = holding
        _log_unmapped(service, holding, by_index)

    apply = mode == "apply"
    interval = config.sample_interval_seconds
    online = {s.key: _online_workers(s, by_index, pools) for s in config.services}
    outcomes = fanout.map(
        lambda key: reconcile(ecs, key, holdings[key], warm.protection, now=now, sample_interval_seconds=interval,
                              online_workers=online[key], apply=apply) if key in holdings
        else hold(ecs, key, warm.protection, now=now, sample_interval_seconds=interval, apply=apply),
        [*holdings, *unread])
    for key, outcome in zip([*holdings, *unread], outcomes, strict=True):
        step.services[key] = outcome
        for error in outcome.errors:
            log.warning(f"task protection: {error}; left as it was", extra={"ecs_service": "/".join(key),
                                                                            "cause": error})
        if outcome.held and outcome.protect:
            verb = "kept" if apply else "would keep"
            log.warning(f"ECS service {'/'.join(key)}: its flow runs could not be read; {verb} "
                        f"{len(outcome.protect)} task(s) protected and released none",
                        extra={"ecs_service": "/".join(key), "protected": list(outcome.protect)})
    queue_of_run = {q.resolved.id: q for q in queues if q.resolved is not None}
    for key in holdings:
        outcome = step.services[key] = replace(step.services[key], unmapped=len(holdings[key].unmapped))
        step.orphaned += [(queue_of_run[run.queue_id].config, run) for run in outcome.orphaned
                          if run.queue_id in queue_of_run]
        if outcome.protect or outcome.release:
            verb = "protected" if apply else "would protect"
            log.info(f"ECS service {'/'.join(key)}: {verb} {len(outcome.protect)} busy task(s), "
                     f"released {len(outcome.release)} idle one(s)",
                     extra={"ecs_service": "/".join(key), "protected": list(outcome.protect),
                            "released": list(outcome.release)})
    return step


def _online_workers(service: ServiceConfig, by_index: Mapping[int, QueueResult],
                    pools: Mapping[str, PoolWorkers | PrefectError]) -> frozenset[str] | None:
    """The names of the ONLINE workers of the service's pools, or None when any of them was not read."""
    names: set[str] = set()
    for i in service.queue_indexes:
        resolved = by_index[i].resolved
        workers = pools.get(resolved.pool) if resolved is not None else None
        if not isinstance(workers, PoolWorkers):
            return None
        names |= workers.online_names
    return frozenset(names)


def _note_unlabelled(warm: WarmState, service: ServiceConfig, client: PrefectClient) -> None:
    """Say once per container why no task can be protected, naming the server's version (one extra request)."""
    if warm.unlabelled_noted:
        return
    warm.unlabelled_noted = True
    try:
        version: str | None = client.server_version()
    except PrefectError:
        version = None
    log.info(f"ECS service {service.path}: its flow runs carry no worker labels, so no task can be protected from "
             f"scale-in; scaling still counts their runs as demand. {why_unlabelled(version)}",
             extra={"ecs_service": service.path, "prefect_version": version})


def _log_unmapped(service: ServiceConfig, holding: Holding, by_index: Mapping[int, QueueResult]) -> None:
    if not holding.unmapped:
        return
    queue_ids = {run.queue_id for run in holding.unmapped}
    queues = ", ".join(q.config.path for i in service.queue_indexes
                       if (q := by_index[i]).resolved is not None and q.resolved.id in queue_ids)
    example = next((r.worker_name for r in holding.unmapped if r.worker_name), None)
    named = (f"e.g. {example!r}" if example else
             f"no prefect.worker.name label: not submitted by a {LABELS_WORKER}+ worker")
    log.warning(
        f"ECS service {service.path}: {len(holding.unmapped)} in-flight run(s) of {queues} come from workers whose "
        f"name holds no ECS task ID ({named}), so their tasks cannot be protected from scale-in; start "
        "each worker named exactly ecs-<task id>: prefect worker start ... --name \"ecs-<the last part of TaskARN "
        "from $ECS_CONTAINER_METADATA_URI_V4/task>\" (README: Name your workers after their task)",
        extra={"ecs_service": service.path, "unmapped": len(holding.unmapped), "queues": queues})


def _with_orphans(queues: Sequence[QueueResult], config: Config, step: ProtectionStep) -> list[QueueResult]:
    """The queues with their orphaned runs counted, where their service's protection step could know them."""
    checked = {i for s in config.services if (found := step.services.get(s.key)) and found.orphans_known
               for i in s.queue_indexes}
    orphaned: dict[int, int] = {}
    for queue, _ in step.orphaned:
        orphaned[queue.index] = orphaned.get(queue.index, 0) + 1
    return [q.with_orphans(orphaned.get(q.config.index, 0)) if q.config.index in checked else q for q in queues]


def _with_rescheduled(queues: Sequence[QueueResult],
                      rescheduled: Sequence[tuple[QueueConfig, RunFacts]]) -> list[QueueResult]:
    per_queue: dict[int, int] = {}
    for queue, _ in rescheduled:
        per_queue[queue.index] = per_queue.get(queue.index, 0) + 1
    return [q.with_rescheduled(per_queue.get(q.config.index, 0)) for q in queues]


# --- one sample -------------------------------------------------------------------------------


def run_tick(config: Config, client: PrefectClient, *, ecs: EcsTaskClient, cloudwatch: CloudWatchClient | None,
             now: datetime, warm: WarmState | None = None, protection: ProtectionMode = "apply",
             writes: bool = True) -> TickReport:
    """Read, decide, act and (when ``cloudwatch`` is given) publish one sample of every metric.

    ``protection`` needs an ECS client with the task-level calls unless it is
    "off"; ``writes`` False makes no change in Prefect (a dry run). Everything
    the sample does at the same time runs on one :class:`Fanout`, bounded at
    the client's request concurrency.
    """
    started = time.monotonic()
    warm = warm if warm is not None else WarmState(depth=client.depth_memory)
    with Fanout(client.max_concurrency) as fanout:
        # ECS task counts do not depend on Prefect: ask for them first so that round trip hides
        # behind the Prefect reads. describe_services reports per-service failures in its result;
        # anything else it raises surfaces from .result(), after any Prefect error.
        ecs_read = fanout.submit(lambda: describe_services(ecs, [s.key for s in config.services]))
        queues, pools, whole_failure = read_prefect(config, client, now, fanout)
        # Even when Prefect could not be read at all: protection must outlast the outage.
        step = protect_tasks(config, client, queues, pools, ecs, fanout, warm, now, protection)
        queues = _with_orphans(queues, config, step)
        orphaned_twice = orphaned_in_a_row(warm.orphaned, [run for _, run in step.orphaned])
        twice = {run.id for run in orphaned_twice}
        rescheduled: list[tuple[QueueConfig, RunFacts]] = []
        if writes and config.orphaned_runs == "reschedule" and twice:
            # Before the signals: a run set back to Scheduled is demand again in this very sample.
            rescheduled = reschedule_orphaned_runs(config, client, [(q, r) for q, r in step.orphaned if r.id in twice],
                                                   now)
            queues = _with_rescheduled(queues, rescheduled)
        task_counts = ecs_read.result()
        _note_rebalancing(config, task_counts, warm)
        report = TickReport(now=now, queues=queues, pools=pools, whole_failure=whole_failure,
                            services=compute_services(config, queues, task_counts, step.services))
        _log_unread(report)
        report.late_causes = late_causes(config, report, task_counts, _short_for(task_counts, warm, now))
        _log_late_causes(report)
        if writes and config.reschedule_stuck_pending:
            stuck = [(q.config, run_id) for q in queues if q.backlog for run_id in q.backlog.stuck_pending_ids]
            report.rescheduled = reschedule_stuck_runs(config, client, stuck, now)
        report.rescheduled_orphans = len(rescheduled)
        if writes and config.crash_orphaned_runs and orphaned_twice:
            report.crashed = crash_orphaned_runs(config, client, [(q, r) for q, r in step.orphaned if r.id in twice],
                                                 now)
        warm.orphaned = {run.id for _, run in step.orphaned}
        # Read in full next time after runs this sample moved itself, and after any orphan: a run whose task died
        # may be claimed again under another worker, a change no read by changes can see (prefect_api/ledger.py).
        if client.ledger is not None and (report.rescheduled or report.crashed or rescheduled or step.orphaned):
            client.ledger.forget()
        report.prefect_requests = client.requests_sent
        report.duration_ms = (time.monotonic() - started) * 1000
        if cloudwatch is not None:
            report.put_metric_data_calls = put_metric_data(
                cloudwatch, config.namespace, metric_data(report, config.stack_name), now,
                storage_resolution=config.storage_resolution, fanout=fanout)
    return report


def _note_rebalancing(config: Config, task_counts: Mapping[tuple[str, str], TaskCounts | EcsReadError],
                      warm: WarmState) -> None:
    """Once per container and service: a protected service with Availability Zone rebalancing on. ECS's guide
    does not say that rebalancing skips protected tasks, so it may stop a busy one (README: Scale-in never
    stops a busy task)."""
    for service in config.services:
        counts = task_counts.get(service.key)
        if (service.task_protection and isinstance(counts, TaskCounts) and counts.az_rebalancing
                and service.key not in warm.rebalancing_noted):
            warm.rebalancing_noted.add(service.key)
            log.warning(f"ECS service {service.path} has Availability Zone rebalancing ENABLED: ECS may stop its "
                        "tasks to rebalance zones, and AWS does not document that it skips protected tasks; "
                        f"turn it off for a worker service: aws ecs update-service --cluster {service.cluster} "
                        f"--service {service.service} --availability-zone-rebalancing DISABLED",
                        extra={"ecs_service": service.path})


def _short_for(task_counts: Mapping[tuple[str, str], TaskCounts | EcsReadError], warm: WarmState,
               now: datetime) -> dict[tuple[str, str], float]:
    """Per service whose desired count is above running, for how long this container has seen it so."""
    for key, counts in task_counts.items():
        if not isinstance(counts, TaskCounts):
            continue  # unread: neither starts nor ends the wait
        if counts.desired > counts.running:
            warm.short_since.setdefault(key, now)
        else:
            warm.short_since.pop(key, None)
    return {key: (now - since).total_seconds() for key, since in warm.short_since.items()}


def _log_late_causes(report: TickReport) -> None:
    """One line per queue with Late runs, naming the cause (the fields let Logs Insights group by it)."""
    by_index = {q.config.index: q for q in report.queues}
    for index, cause in report.late_causes.items():
        queue = by_index[index]
        path = queue.resolved.path if queue.resolved else queue.config.path
        late = queue.backlog.late if queue.backlog else 0
        log.info(f"queue {path}: {late} Late run(s), cause {cause.cause}: {cause.detail}",
                 extra={FIELD_QUEUE: path, FIELD_LATE: late, FIELD_CAUSE: cause.cause, FIELD_DETAIL: cause.detail})


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


def run_samples(config: Config, new_client: Callable[[float], PrefectClient], *, ecs: EcsTaskClient,
                cloudwatch: CloudWatchClient, deadline: float, wall_clock: Callable[[], datetime],
                warm: WarmState | None = None, clock: Callable[[], float] = time.monotonic,
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
                                now=wall_clock(), warm=warm))
    return reports
