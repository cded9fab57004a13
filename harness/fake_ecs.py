"""A stand-in for the ECS API the publisher uses (services, tasks, protection), with the API's shapes and limits.

moto 5.2 implements none of ListTasks-for-a-service (its services start no
tasks), DescribeTasks for them, GetTaskProtection or UpdateTaskProtection, so
tests use this instead: services hold tasks with a status and a protection
expiry; every call is recorded; limits (10 tasks per UpdateTaskProtection, 100
per DescribeTasks and GetTaskProtection, pages of 100 for ListTasks) are
enforced as ECS enforces them; a call can be made to fail.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

REGION_ACCOUNT = "us-east-1:123456789012"


@dataclass
class FakeTask:
    id: str
    cluster: str
    service: str
    last_status: str = "RUNNING"
    protected_until: datetime | None = None

    @property
    def arn(self) -> str:
        return f"arn:aws:ecs:{REGION_ACCOUNT}:task/{self.cluster}/{self.id}"


@dataclass
class FakeEcs:
    now: Callable[[], datetime] = lambda: datetime.now(UTC)
    tasks: dict[str, FakeTask] = field(default_factory=dict)
    desired: dict[tuple[str, str], int] = field(default_factory=dict)
    # Services with Availability Zone rebalancing ENABLED (AWS's default since 2025-06-30; off here unless asked)
    rebalancing: set[tuple[str, str]] = field(default_factory=set)
    calls: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    # operation name -> exception to raise (once, or always when ``fail_always``)
    failures: dict[str, Exception] = field(default_factory=dict)
    fail_always: set[str] = field(default_factory=set)

    # --- building the world ---------------------------------------------------------

    def service(self, cluster: str, service: str, tasks: int = 0) -> list[str]:
        self.desired[(cluster, service)] = tasks
        return [self.start_task(cluster, service) for _ in range(tasks)]

    def start_task(self, cluster: str, service: str, task_id: str | None = None) -> str:
        task = FakeTask(task_id or uuid.uuid4().hex, cluster, service)
        self.tasks[task.id] = task
        return task.id

    def stop_task(self, task_id: str) -> None:
        task = self.tasks[task_id]
        task.last_status, task.protected_until = "STOPPED", None

    def live(self, cluster: str, service: str) -> list[str]:
        """IDs of the service's tasks that have not stopped, oldest first."""
        return [t.id for t in self._live(cluster, service)]

    def protected(self, cluster: str, service: str) -> set[str]:
        now = self.now()
        return {t.id for t in self._live(cluster, service) if t.protected_until and t.protected_until > now}

    def count(self, operation: str) -> int:
        return sum(1 for name, _ in self.calls if name == operation)

    # --- the API ----------------------------------------------------------------------

    def _call(self, operation: str, arguments: dict[str, Any]) -> None:
        self.calls.append((operation, arguments))
        if operation in self.fail_always and operation in self.failures:
            raise self.failures[operation]
        if operation in self.failures:
            raise self.failures.pop(operation)

    def _live(self, cluster: str, service: str) -> list[FakeTask]:
        return [t for t in self.tasks.values() if (t.cluster, t.service) == (cluster, service)
                and t.last_status != "STOPPED"]

    def describe_services(self, *, cluster: str, services: list[str]) -> dict[str, Any]:
        self._call("DescribeServices", {"cluster": cluster, "services": services})
        assert len(services) <= 10
        return {"services": [{"serviceName": s, "status": "ACTIVE", "desiredCount": self.desired[(cluster, s)],
                              "runningCount": len(self._live(cluster, s)),
                              "availabilityZoneRebalancing": "ENABLED" if (cluster, s) in self.rebalancing
                              else "DISABLED"}
                             for s in services if (cluster, s) in self.desired], "failures": []}

    def list_tasks(self, *, cluster: str, serviceName: str, desiredStatus: str = "RUNNING",
                   maxResults: int = 100, nextToken: str | None = None) -> dict[str, Any]:
        self._call("ListTasks", {"cluster": cluster, "serviceName": serviceName, "nextToken": nextToken})
        assert desiredStatus == "RUNNING" and maxResults <= 100
        arns = sorted(t.arn for t in self._live(cluster, serviceName))
        start = int(nextToken or 0)
        page = arns[start:start + maxResults]
        more = start + maxResults < len(arns)
        return {"taskArns": page, **({"nextToken": str(start + maxResults)} if more else {})}

    def describe_tasks(self, *, cluster: str, tasks: list[str]) -> dict[str, Any]:
        self._call("DescribeTasks", {"cluster": cluster, "tasks": tasks})
        assert len(tasks) <= 100
        found = [self.tasks[t] for t in tasks if t in self.tasks and self.tasks[t].cluster == cluster]
        return {"tasks": [{"taskArn": t.arn, "lastStatus": t.last_status, "group": f"service:{t.service}"}
                          for t in found],
                "failures": [{"arn": f"arn:aws:ecs:{REGION_ACCOUNT}:task/{cluster}/{t}", "reason": "MISSING"}
                             for t in tasks if t not in {f.id for f in found}]}

    def get_task_protection(self, *, cluster: str, tasks: list[str]) -> dict[str, Any]:
        self._call("GetTaskProtection", {"cluster": cluster, "tasks": tasks})
        assert len(tasks) <= 100
        now = self.now()
        return {"protectedTasks": [_protection(self.tasks[t], now) for t in tasks if t in self.tasks], "failures": []}

    def update_task_protection(self, *, cluster: str, tasks: list[str], protectionEnabled: bool,
                               expiresInMinutes: int = 120) -> dict[str, Any]:
        self._call("UpdateTaskProtection", {"cluster": cluster, "tasks": tasks, "protectionEnabled": protectionEnabled,
                                            "expiresInMinutes": expiresInMinutes})
        assert 1 <= len(tasks) <= 10 and 1 <= expiresInMinutes <= 2880
        changed, failures = [], []
        for task_id in tasks:
            task = self.tasks.get(task_id)
            if task is None or task.last_status == "STOPPED":
                failures.append({"arn": f"arn:aws:ecs:{REGION_ACCOUNT}:task/{cluster}/{task_id}",
                                 "reason": "TASK_NOT_VALID", "detail": "The task is not in a valid state"})
                continue
            task.protected_until = self.now() + timedelta(minutes=expiresInMinutes) if protectionEnabled else None
            changed.append({"taskArn": task.arn, "protectionEnabled": protectionEnabled,
                            **({"expirationDate": task.protected_until} if protectionEnabled else {})})
        return {"protectedTasks": changed, "failures": failures}


def _protection(task: FakeTask, now: datetime) -> dict[str, Any]:
    """GetTaskProtection's entry for one task."""
    until = task.protected_until
    return {"taskArn": task.arn, "protectionEnabled": until is not None and until > now,
            **({"expirationDate": until} if until else {})}
