"""ECS: the configured services' task counts, their tasks, and the tasks' scale-in protection.

Every call is batched to its API maximum, so a tick adds as little as
possible to the ECS API limits that users' own workers (RunTask,
DescribeTasks) already press against in bursts.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Protocol

from prefect_backlog.late_cause import ServiceEvent

MAX_SERVICES_PER_DESCRIBE = 10  # ECS DescribeServices' limit per request
MAX_TASKS_PER_LIST = 100  # ListTasks' page
MAX_TASKS_PER_DESCRIBE = 100  # DescribeTasks' limit
MAX_TASKS_PER_PROTECTION_READ = 100  # GetTaskProtection's limit
MAX_TASKS_PER_PROTECTION_UPDATE = 10  # UpdateTaskProtection's limit
MAX_PROTECTION_MINUTES = 2880

ServiceKey = tuple[str, str]  # (cluster, service)


class EcsClient(Protocol):
    """The ECS calls the publisher makes (a boto3 client, or a stand-in such as the dry run's)."""

    def describe_services(self, *, cluster: str, services: list[str]) -> Any: ...


class EcsTaskClient(EcsClient, Protocol):
    """The task-level calls of task protection (moto implements none of them; tests use a stand-in)."""

    def list_tasks(self, *, cluster: str, serviceName: str, desiredStatus: str = ..., maxResults: int = ...,
                   nextToken: str = ...) -> Any: ...

    def describe_tasks(self, *, cluster: str, tasks: list[str]) -> Any: ...

    def get_task_protection(self, *, cluster: str, tasks: list[str]) -> Any: ...

    def update_task_protection(self, *, cluster: str, tasks: list[str], protectionEnabled: bool,
                               expiresInMinutes: int = ...) -> Any: ...


class CountingEcs:
    """An ECS client that counts the calls made through it, failed ones too: ECS rate-limits attempts."""

    def __init__(self, ecs: EcsTaskClient) -> None:
        self.ecs = ecs
        self.calls = 0

    def _call(self, name: str, kwargs: dict[str, Any]) -> Any:
        self.calls += 1
        return getattr(self.ecs, name)(**kwargs)

    def describe_services(self, **kwargs: Any) -> Any:
        return self._call("describe_services", kwargs)

    def list_tasks(self, **kwargs: Any) -> Any:
        return self._call("list_tasks", kwargs)

    def describe_tasks(self, **kwargs: Any) -> Any:
        return self._call("describe_tasks", kwargs)

    def get_task_protection(self, **kwargs: Any) -> Any:
        return self._call("get_task_protection", kwargs)

    def update_task_protection(self, **kwargs: Any) -> Any:
        return self._call("update_task_protection", kwargs)


@dataclass(frozen=True)
class TaskCounts:
    running: int
    desired: int
    # DescribeServices' availabilityZoneRebalancing is "ENABLED" (the default for services created since
    # 2025-06-30): ECS then stops tasks to rebalance zones, and its guide does not say it skips protected ones.
    az_rebalancing: bool = False
    # The newest service events (DescribeServices returns them newest first, in the same response): whether ECS
    # says it cannot place or start tasks (late_cause.py).
    events: tuple[ServiceEvent, ...] = field(default=(), compare=False)


class EcsReadError(Exception):
    """DescribeServices could not report a service."""


def describe_services(ecs: EcsClient, services: Iterable[ServiceKey]) -> dict[ServiceKey, TaskCounts | EcsReadError]:
    """Running and desired task counts, one DescribeServices call per cluster and 10 services."""
    by_cluster: dict[str, list[str]] = {}
    for cluster, service in services:
        by_cluster.setdefault(cluster, []).append(service)
    results: dict[ServiceKey, TaskCounts | EcsReadError] = {}
    for cluster, names in by_cluster.items():
        for start in range(0, len(names), MAX_SERVICES_PER_DESCRIBE):
            chunk = names[start:start + MAX_SERVICES_PER_DESCRIBE]
            try:
                response = ecs.describe_services(cluster=cluster, services=chunk)
            except Exception as exc:  # botocore's errors share no useful base beyond this
                for name in chunk:
                    results[(cluster, name)] = EcsReadError(f"DescribeServices {cluster}/{name}: {exc}")
                continue
            for described in response.get("services", []):
                if described.get("status") != "ACTIVE":
                    continue
                results[(cluster, described["serviceName"])] = TaskCounts(
                    running=int(described["runningCount"]), desired=int(described["desiredCount"]),
                    az_rebalancing=described.get("availabilityZoneRebalancing") == "ENABLED",
                    events=_events(described.get("events") or []))
            for name in chunk:
                results.setdefault((cluster, name), EcsReadError(
                    f"DescribeServices {cluster}/{name}: no ACTIVE service by that name"))
    return results


MAX_EVENTS_KEPT = 10  # the newest few are all the late-cause rule looks at


def _events(raw: list[dict[str, Any]]) -> tuple[ServiceEvent, ...]:
    """The newest service events with a time and a message (boto3 gives createdAt as an aware datetime)."""
    events = []
    for event in raw[:MAX_EVENTS_KEPT]:
        at, message = event.get("createdAt"), event.get("message")
        if isinstance(at, str):
            try:
                at = datetime.fromisoformat(at)
            except ValueError:
                continue
        if isinstance(at, datetime) and isinstance(message, str):
            events.append(ServiceEvent(at if at.tzinfo else at.replace(tzinfo=UTC), message))
    return tuple(events)


def task_id(arn: str) -> str:
    """The task ID: the last path segment of a task ARN (``arn:aws:ecs:...:task/<cluster>/<id>``)."""
    return arn.rsplit("/", 1)[-1]


def _chunks(items: Iterable[str], size: int) -> list[list[str]]:
    ordered = sorted(items)
    return [ordered[start:start + size] for start in range(0, len(ordered), size)]


def list_service_tasks(ecs: EcsTaskClient, cluster: str, service: str) -> frozenset[str]:
    """IDs of the service's tasks whose desired status is RUNNING (provisioning, pending or running)."""
    found: set[str] = set()
    token: str | None = None
    while True:
        page = ecs.list_tasks(cluster=cluster, serviceName=service, desiredStatus="RUNNING",
                              maxResults=MAX_TASKS_PER_LIST, **({"nextToken": token} if token else {}))
        found.update(task_id(arn) for arn in page.get("taskArns", []))
        token = page.get("nextToken")
        if not token:
            return frozenset(found)


@dataclass(frozen=True)
class GoneTasks:
    """What DescribeTasks said of tasks that runs name but the service's task list does not hold."""

    stopped: frozenset[str] = frozenset()  # STOPPED tasks of this very service (their group is "service:<name>")
    missing: frozenset[str] = frozenset()  # unknown to ECS: forgotten since they stopped, or never a task here


def gone_tasks(ecs: EcsTaskClient, cluster: str, service: str, task_ids: Iterable[str]) -> GoneTasks:
    """Of ``task_ids``, those ECS reports STOPPED in ``service``, and those it does not know (MISSING).

    A STOPPED task of another service or a standalone task is neither: it is not this service's, so what its
    runs do is not this service's to decide.
    """
    stopped: set[str] = set()
    missing: set[str] = set()
    for chunk in _chunks(task_ids, MAX_TASKS_PER_DESCRIBE):
        response = ecs.describe_tasks(cluster=cluster, tasks=chunk)
        stopped.update(task_id(t["taskArn"]) for t in response.get("tasks", [])
                       if t.get("lastStatus") == "STOPPED" and t.get("group") == f"service:{service}")
        missing.update(task_id(f.get("arn", "")) for f in response.get("failures", []) if f.get("reason") == "MISSING")
    return GoneTasks(frozenset(stopped), frozenset(missing))


def read_protection(ecs: EcsTaskClient, cluster: str, task_ids: Iterable[str]) -> dict[str, datetime]:
    """Which of ``task_ids`` are protected from scale-in, and until when."""
    protected: dict[str, datetime] = {}
    for chunk in _chunks(task_ids, MAX_TASKS_PER_PROTECTION_READ):
        response = ecs.get_task_protection(cluster=cluster, tasks=chunk)
        protected.update(_protected(response))
    return protected


@dataclass(frozen=True)
class ProtectionUpdate:
    """What UpdateTaskProtection did: the new expiry of each task it protected, and what it could not change."""

    protected: dict[str, datetime]
    released: frozenset[str]
    failures: tuple[str, ...]  # "<task>: <reason>", or a whole call's error


def update_protection(ecs: EcsTaskClient, cluster: str, *, protect: Iterable[str], release: Iterable[str],
                      minutes: int) -> ProtectionUpdate:
    """Protect ``protect`` for ``minutes`` (1-2880; calling again resets the expiry) and release ``release``,
    10 tasks per call. A failed call leaves its tasks as they were and is reported, not raised."""
    protected: dict[str, datetime] = {}
    released: set[str] = set()
    failures: list[str] = []
    for enabled, tasks in ((True, protect), (False, release)):
        for chunk in _chunks(tasks, MAX_TASKS_PER_PROTECTION_UPDATE):
            arguments: dict[str, Any] = {"cluster": cluster, "tasks": chunk, "protectionEnabled": enabled}
            if enabled:
                arguments["expiresInMinutes"] = max(1, min(MAX_PROTECTION_MINUTES, minutes))
            try:
                response = ecs.update_task_protection(**arguments)
            except Exception as exc:  # botocore's errors share no useful base beyond this
                failures.append(f"UpdateTaskProtection {cluster} {', '.join(chunk)}: {exc}")
                continue
            failures += [f"{task_id(f.get('arn', ''))}: {f.get('reason')} {f.get('detail') or ''}".strip()
                         for f in response.get("failures", [])]
            changed = {task_id(t["taskArn"]) for t in response.get("protectedTasks", [])}
            if enabled:
                protected.update(_protected(response))
            else:
                released.update(changed)
    return ProtectionUpdate(protected, frozenset(released), tuple(failures))


def _protected(response: dict[str, Any]) -> dict[str, datetime]:
    return {task_id(t["taskArn"]): t.get("expirationDate") or datetime.max.replace(tzinfo=UTC)
            for t in response.get("protectedTasks", []) if t.get("protectionEnabled")}
