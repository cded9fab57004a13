"""ECS: the running and desired task counts of the configured services, in as few calls as the API allows."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any, Protocol

MAX_SERVICES_PER_DESCRIBE = 10  # ECS DescribeServices' limit per request

ServiceKey = tuple[str, str]  # (cluster, service)


class EcsClient(Protocol):
    """The ECS calls the publisher makes (a boto3 client, or a stand-in such as the dry run's)."""

    def describe_services(self, *, cluster: str, services: list[str]) -> Any: ...


@dataclass(frozen=True)
class TaskCounts:
    running: int
    desired: int


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
                    running=int(described["runningCount"]), desired=int(described["desiredCount"]))
            for name in chunk:
                results.setdefault((cluster, name), EcsReadError(
                    f"DescribeServices {cluster}/{name}: no ACTIVE service by that name"))
    return results
