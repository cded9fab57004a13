"""Run one publisher tick locally against any Prefect API and print what would be published.

    PYTHONPATH=lambda python -m prefect_backlog.dry_run [--context cdk.json] [--api-url URL] [--json]

Needs no AWS credentials: nothing is sent to CloudWatch, and ECS task counts
are taken as given by ``--running-tasks`` (default 0, the scale-from-zero
case) unless ``--ecs`` asks the real ECS API. Credentials for a protected
Prefect API come from the same variables the Prefect client uses:
PREFECT_API_KEY (bearer) or PREFECT_API_AUTH_STRING (``user:pass``, basic).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from prefect_backlog.aws.ecs import EcsTaskClient
from prefect_backlog.config import ConfigError, parse_config
from prefect_backlog.prefect_api import PrefectClient, authorization_header
from prefect_backlog.report import QueueResult, TickReport, metric_data
from prefect_backlog.tick import run_tick

CREDENTIAL_VARIABLES = {"bearer": "PREFECT_API_KEY", "basic": "PREFECT_API_AUTH_STRING"}


class AssumedTaskCounts:
    """Stands in for the ECS client: every service reports the same assumed task counts, and has no tasks."""

    def __init__(self, running: int) -> None:
        self.running = running

    def describe_services(self, *, cluster: str, services: list[str]) -> dict[str, Any]:
        return {"services": [{"serviceName": s, "status": "ACTIVE", "runningCount": self.running,
                              "desiredCount": self.running} for s in services]}

    def list_tasks(self, **_: Any) -> dict[str, Any]:
        return {"taskArns": []}

    def describe_tasks(self, *, cluster: str, tasks: list[str]) -> dict[str, Any]:
        return {"tasks": [], "failures": []}

    def get_task_protection(self, *, cluster: str, tasks: list[str]) -> dict[str, Any]:
        return {"protectedTasks": [], "failures": []}

    def update_task_protection(self, **_: Any) -> dict[str, Any]:
        raise AssertionError("a dry run never changes task protection")


class UsageError(Exception):
    """The dry run cannot start as asked (exit code 2); the message says what to do."""


def ecs_client() -> EcsTaskClient:
    """A real ECS client for --ecs, or UsageError naming what is missing (region, credentials)."""
    import boto3  # only when asked: the dry run must work without AWS libraries configured
    import botocore.exceptions

    session = boto3.Session()
    if session.region_name is None:
        raise UsageError("--ecs needs an AWS region: set AWS_DEFAULT_REGION (or AWS_PROFILE with a region)")
    try:
        credentials = session.get_credentials()
    except botocore.exceptions.BotoCoreError as exc:
        raise UsageError(f"--ecs needs AWS credentials: {exc}") from None
    if credentials is None:
        raise UsageError("--ecs needs AWS credentials (environment, profile or instance role); none were found")
    client: EcsTaskClient = session.client("ecs")
    return client


def _log_to_stderr() -> None:
    """The tick's warnings (what was not read, and why) go to stderr, so stdout holds only the result."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
    logger = logging.getLogger("prefect_backlog")
    logger.addHandler(handler)
    logger.propagate = False


def _table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    cells = [list(map(str, headers))] + [[_cell(v) for v in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = ["  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.2f}".rstrip("0").rstrip(".")
    return "-" if value is None else str(value)


def render(report: TickReport, running_note: str) -> str:
    queue_rows: list[list[Any]] = []
    for q in report.queues:
        b = q.backlog
        where = q.resolved.path if q.resolved else q.config.label
        if b is None:
            queue_rows.append([where, "", "", "", "", "", "", "", "", "", f"NOT READ: {q.error}"])
            continue
        notes = [f"{n} {what}" for n, what in ((b.cancelling, "cancelling"), (b.paused_runs, "paused"),
                                                (b.orphaned, "orphaned"), (b.stuck_pending, "stuck Pending")) if n]
        if b.concurrency_limited:
            notes.append("concurrency limit used up")
        cause = report.late_causes.get(q.config.index)
        if cause is not None:
            notes.append(f"Late: {cause.detail}")
        queue_rows.append([where, b.late, b.due, b.upcoming, b.pending, b.running, b.oldest_late_age_seconds,
                           "yes" if b.paused else "no", q.demand, cause.cause if cause else "", ", ".join(notes)])
    service_rows: list[list[Any]] = []
    for s in report.services:
        sig, protection = s.signal, s.protection
        notes = [f"{s.unmapped} in-flight runs on workers whose name holds no task ID"] if s.unmapped else []
        if protection is not None and (protection.protect or protection.release):
            notes.append(f"protects {len(protection.protect)}, releases {len(protection.release)} task(s)")
        notes += [f"task protection: {e}" for e in (protection.errors if protection else ())]
        protected = "" if protection is None or protection.protected is None else protection.protected
        if sig is None:
            service_rows.append([s.config.path, s.demand, "", "", "", "", protected,
                                 "; ".join([f"NOT PUBLISHED: {s.error}", *notes])])
        else:
            service_rows.append([s.config.path, sig.demand, sig.running_tasks, sig.desired_tasks,
                                 sig.backlog_per_task, sig.task_shortfall, protected, "; ".join(notes)])
    summary = report.summary()
    return "\n\n".join([
        _table(["queue", "Late", "Due", "Upcoming", "Pending", "Running", "OldestLate(s)", "paused", "demand",
                "Late cause", "note"], queue_rows),
        _table(["ECS service", "Demand", "Running", "Desired", "BacklogPerTask", "TaskShortfall", "Protected",
                "note"], service_rows),
        f"{running_note}\n{summary['queuesRead']} queues read, {summary['queueReadErrors']} failed, "
        f"{summary['prefectRequests']} Prefect requests, {summary['durationMs']} ms",
    ])


def _queue_json(report: TickReport, queue: QueueResult) -> dict[str, Any]:
    """One read queue: its Late runs and, when it has some, why (lateCause, lateCauseDetail)."""
    assert queue.backlog is not None and queue.resolved is not None
    cause = report.late_causes.get(queue.config.index)
    return {"queue": queue.resolved.path, "late": queue.backlog.late, "due": queue.backlog.due,
            "demand": queue.demand, "lateCause": cause.cause if cause else None,
            "lateCauseDetail": cause.detail if cause else None}


def as_json(report: TickReport, publisher: str, now: datetime) -> str:
    return json.dumps({
        "summary": report.summary(),
        "errors": [q.error for q in report.queues if q.error] + [s.error for s in report.services if s.error],
        "queues": [_queue_json(report, q) for q in report.queues if q.backlog is not None and q.resolved is not None],
        "metricData": [d.to_aws(now, 60) | {"Timestamp": now.isoformat()} for d in metric_data(report, publisher)],
    }, indent=2)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dry_run", description=__doc__.split("\n\n")[0])
    parser.add_argument("--context", type=Path, default=Path("cdk.json"),
                        help="a cdk.json whose context holds the configuration (default: ./cdk.json)")
    parser.add_argument("--api-url", help="override prefectApiUrl, e.g. http://127.0.0.1:4200/api")
    parser.add_argument("--queues", help="override queues with a JSON list, as `cdk -c queues=...` takes")
    parser.add_argument("--running-tasks", type=int, default=0,
                        help="running/desired tasks to assume for every ECS service (default 0)")
    parser.add_argument("--ecs", action="store_true", help="read task counts from ECS (needs AWS credentials)")
    parser.add_argument("--json", action="store_true", help="print JSON for scripts instead of tables")
    parser.add_argument("--timeout", type=float, default=40.0, help="seconds the whole read may take")
    args = parser.parse_args(argv)

    try:
        context = dict(json.loads(args.context.read_text()).get("context", {}))
    except (OSError, ValueError) as exc:
        print(f"cannot read {args.context}: {exc}", file=sys.stderr)
        return 2
    if args.api_url:
        context["prefectApiUrl"] = args.api_url
    if args.queues:
        context["queues"] = args.queues
    try:
        config = parse_config(context)
    except ConfigError as exc:
        print(f"Configuration error: {exc}", file=sys.stderr)
        return 2

    authorization = None
    if config.auth is not None:
        variable = CREDENTIAL_VARIABLES[config.auth.scheme]
        if not os.environ.get(variable):
            print(f"prefectAuth is configured: set {variable} to the credential", file=sys.stderr)
            return 2
        authorization = authorization_header(config.auth.scheme, os.environ[variable])

    ecs: EcsTaskClient
    if args.ecs:
        try:
            ecs = ecs_client()
        except UsageError as exc:
            print(exc, file=sys.stderr)
            return 2
        note = "Task counts and task protection read from ECS (nothing changed)."
    else:
        ecs = AssumedTaskCounts(args.running_tasks)
        note = f"Task counts assumed: {args.running_tasks} running and desired per service (no AWS call made)."

    _log_to_stderr()
    now = datetime.now(UTC)
    client = PrefectClient(config.api_url, authorization=authorization, deadline=time.monotonic() + args.timeout)
    report = run_tick(config, client, ecs=ecs, cloudwatch=None, now=now, protection="read" if args.ecs else "off",
                      writes=False)
    print(as_json(report, config.stack_name, now) if args.json else render(report, note))
    ecs_unread = args.ecs and report.services and all(
        s.signal is None and s.demand is not None for s in report.services)
    if ecs_unread:
        print("ECS could not be read for any service (see the notes above): no scaling signal was computed",
              file=sys.stderr)
    return 1 if report.whole_failure or ecs_unread else 0


if __name__ == "__main__":
    sys.exit(main())
