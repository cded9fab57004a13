"""The publisher's opt-in writes to Prefect: runs stuck in Pending back to Scheduled, orphaned runs to Crashed
or back to Scheduled (``orphanedRuns``).

Both are capped per run and careful: each run is read again just before it is
changed (Prefect's set_state has no compare-and-set), and every change is
logged with the run id and counted in a metric.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import datetime

from prefect_backlog.backlog import RunFacts
from prefect_backlog.config import Config, QueueConfig
from prefect_backlog.prefect_api import PrefectClient, PrefectError
from prefect_backlog.protection import still_orphaned, task_id_of

log = logging.getLogger("prefect_backlog")


def reschedule_stuck_runs(config: Config, client: PrefectClient, stuck: Sequence[tuple[QueueConfig, str]],
                          now: datetime) -> int:
    """Stuck Pending runs back to Scheduled, at most ``max_reschedules_per_run``; returns how many were."""
    rescheduled = 0
    for queue, run_id in stuck[:config.max_reschedules_per_run]:
        try:
            accepted = client.reschedule_if_stuck(run_id, now, config.stuck_pending_seconds)
        except PrefectError as exc:
            log.warning(f"could not reschedule stuck Pending run {run_id} of {queue.label}: {exc}", extra={
                "queue": queue.label, "flow_run_id": run_id, "cause": str(exc)})
            continue
        if accepted:
            rescheduled += 1
            log.info(f"rescheduled stuck Pending run {run_id} of {queue.label}", extra={
                "queue": queue.label, "flow_run_id": run_id, "stuck_after_seconds": config.stuck_pending_seconds})
    if len(stuck) > config.max_reschedules_per_run:
        log.warning("more stuck Pending runs than one run may reschedule", extra={
            "stuck": len(stuck), "max_reschedules_per_run": config.max_reschedules_per_run})
    return rescheduled


def crash_orphaned_runs(config: Config, client: PrefectClient, orphaned: Sequence[tuple[QueueConfig, RunFacts]],
                        now: datetime) -> int:
    """Runs found orphaned in two samples in a row to Crashed, at most ``max_crashes_per_run``; each one only if,
    read again just before, it is still held by its dead task (:func:`still_orphaned`)."""
    crashed = 0
    for queue, run in orphaned[:config.max_crashes_per_run]:
        cause = (f"Crashed by the ECS autoscaler of {config.stack_name}: the ECS task of worker "
                 f"{run.worker_name!r} has stopped, so this run's process is gone")
        in_task = bool(queue.runs_in_worker_task)

        def still(current: RunFacts, seen: RunFacts = run, in_task: bool = in_task) -> bool:
            return still_orphaned(current, seen, in_task, now, config.stuck_pending_seconds)

        try:
            accepted = client.crash_if_orphaned(run.id, still, cause)
        except PrefectError as exc:
            log.warning(f"could not crash orphaned run {run.id} of {queue.label}: {exc}", extra={
                "queue": queue.label, "flow_run_id": run.id, "cause": str(exc)})
            continue
        if accepted:
            crashed += 1
            log.info(f"set orphaned run {run.id} of {queue.label} to Crashed (worker {run.worker_name})", extra={
                "queue": queue.label, "flow_run_id": run.id, "worker": run.worker_name})
    if len(orphaned) > config.max_crashes_per_run:
        log.warning("more orphaned runs than one run may crash", extra={
            "orphaned": len(orphaned), "max_crashes_per_run": config.max_crashes_per_run})
    return crashed


def reschedule_orphaned_runs(config: Config, client: PrefectClient,
                             orphaned: Sequence[tuple[QueueConfig, RunFacts]],
                             now: datetime) -> list[tuple[QueueConfig, RunFacts]]:
    """Runs found orphaned in two samples in a row back to Scheduled (due now), so a live worker runs them again:
    at most ``max_crashes_per_run`` per sample; returns those Prefect accepted.

    Each one is read again just before and changed only if it still holds its dead task
    (:func:`still_orphaned`) in the very state it was found in: a run that moved on since has something alive
    behind it. The state message names the task that died.
    """
    rescheduled: list[tuple[QueueConfig, RunFacts]] = []
    for queue, run in orphaned[:config.max_crashes_per_run]:
        task = task_id_of(run.worker_name)
        message = (f"Rescheduled by the ECS autoscaler of {config.stack_name}: ECS task {task} of worker "
                   f"{run.worker_name!r} has stopped while this run was {run.state_name}, so its process is gone; "
                   "a live worker runs it again")
        in_task = bool(queue.runs_in_worker_task)

        def still(current: RunFacts, seen: RunFacts = run, in_task: bool = in_task) -> bool:
            return ((current.state_type, current.state_name) == (seen.state_type, seen.state_name)
                    and still_orphaned(current, seen, in_task, now, config.stuck_pending_seconds))

        try:
            accepted = client.reschedule_if_orphaned(run.id, still, message, now)
        except PrefectError as exc:
            log.warning(f"could not reschedule orphaned run {run.id} of {queue.label}: {exc}", extra={
                "queue": queue.label, "flow_run_id": run.id, "ecs_task": task, "cause": str(exc)})
            continue
        if accepted:
            rescheduled.append((queue, run))
            log.info(f"set orphaned run {run.id} of {queue.label} back to Scheduled (ECS task {task} of worker "
                     f"{run.worker_name} has stopped)", extra={
                         "queue": queue.label, "flow_run_id": run.id, "worker": run.worker_name, "ecs_task": task})
        else:
            log.info(f"left orphaned run {run.id} of {queue.label} as it is: read again it no longer holds ECS task "
                     f"{task}, or Prefect did not accept the change",
                     extra={"queue": queue.label, "flow_run_id": run.id, "ecs_task": task})
    if len(orphaned) > config.max_crashes_per_run:
        log.warning("more orphaned runs than one sample may reschedule (maxCrashesPerRun)", extra={
            "orphaned": len(orphaned), "max_crashes_per_run": config.max_crashes_per_run})
    return rescheduled
