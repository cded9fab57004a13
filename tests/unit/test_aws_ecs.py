"""ECS task counts: one DescribeServices per cluster and 10 services; a failure names the service (recorder, moto)."""

from __future__ import annotations

from typing import Any

from prefect_backlog.aws.ecs import MAX_SERVICES_PER_DESCRIBE, EcsReadError, TaskCounts, describe_services


class Recorder:
    def __init__(self, failing_cluster: str | None = None) -> None:
        self.calls: list[tuple[str, list[str]]] = []
        self.failing_cluster = failing_cluster

    def describe_services(self, *, cluster: str, services: list[str]) -> dict[str, Any]:
        self.calls.append((cluster, services))
        if cluster == self.failing_cluster:
            raise RuntimeError("AccessDeniedException: not authorized")
        return {"services": [{"serviceName": s, "status": "ACTIVE", "runningCount": 1, "desiredCount": 2}
                             for s in services if s != "gone"]}


def test_one_call_per_cluster_and_ten_services() -> None:
    ecs = Recorder()
    keys = [("a", f"s{i}") for i in range(MAX_SERVICES_PER_DESCRIBE + 1)] + [("b", "s0")]
    counts = describe_services(ecs, keys)
    assert [(cluster, len(names)) for cluster, names in ecs.calls] == [("a", 10), ("a", 1), ("b", 1)]
    assert set(counts.values()) == {TaskCounts(running=1, desired=2)}


def test_a_failed_call_or_a_missing_service_is_an_error_for_those_services_only() -> None:
    counts = describe_services(Recorder(failing_cluster="denied"), [("denied", "x"), ("ok", "gone"), ("ok", "y")])
    assert isinstance(counts[("denied", "x")], EcsReadError) and "not authorized" in str(counts[("denied", "x")])
    assert isinstance(counts[("ok", "gone")], EcsReadError) and "no ACTIVE service" in str(counts[("ok", "gone")])
    assert counts[("ok", "y")] == TaskCounts(running=1, desired=2)


def test_moto_services_are_read(aws: dict[str, Any]) -> None:
    counts = describe_services(aws["ecs"], [("prefect", "ecs-worker"), ("prefect", "process-worker")])
    assert counts == {("prefect", "ecs-worker"): TaskCounts(1, 1), ("prefect", "process-worker"): TaskCounts(0, 0)}
