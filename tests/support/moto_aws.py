"""What the publisher put into CloudWatch on moto, read back (AWS has no local twin; moto stands in for it)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from tests.support.fake_prefect import NOW


def published(cloudwatch: Any, metric: str, **dimensions: str) -> float | None:
    """The value CloudWatch (moto) holds for one metric of the sample at NOW, or None when nothing was published."""
    stats = cloudwatch.get_metric_statistics(
        Namespace="Prefect", MetricName=metric, Statistics=["Maximum"], Period=60,
        StartTime=NOW - timedelta(minutes=5), EndTime=NOW + timedelta(minutes=5),
        Dimensions=[{"Name": k, "Value": v} for k, v in dimensions.items()])
    points = stats["Datapoints"]
    return points[0]["Maximum"] if points else None


PUBLISHER = "IntegrationPublisher"  # stackName in the test configs: the Publisher dimension
QUEUE_METRIC_NAMES = ("LateFlowRuns", "DueFlowRuns", "PendingFlowRuns", "RunningFlowRuns",
                      "OldestLateRunAgeSeconds", "QueuePaused")
SERVICE_METRIC_NAMES = ("BacklogPerTask", "DemandFlowRuns", "TaskShortfall", "RunningTasks", "DesiredTasks")


class MotoAws:
    """CloudWatch, ECS and Secrets Manager clients on moto, and read-back helpers for what was published."""

    def __init__(self, ecs: Any, cloudwatch: Any, secrets: Any, namespace: str = "Prefect") -> None:
        self.ecs, self.cloudwatch, self.secrets, self.namespace = ecs, cloudwatch, secrets, namespace
        self._clusters: set[str] = set()

    def service(self, cluster: str, name: str, tasks: int) -> None:
        """An ACTIVE ECS service with ``tasks`` running and desired (moto: running = desired)."""
        if cluster not in self._clusters:
            self.ecs.create_cluster(clusterName=cluster)
            self.ecs.register_task_definition(
                family="worker", containerDefinitions=[{"name": "w", "image": "x", "memory": 128}])
            self._clusters.add(cluster)
        self.ecs.create_service(cluster=cluster, serviceName=name, taskDefinition="worker", desiredCount=0)
        if tasks:
            self.ecs.update_service(cluster=cluster, service=name, desiredCount=tasks)

    def value(self, metric: str, **dimensions: str) -> float | None:
        """The one value published for this metric and these dimensions, or None when nothing was.

        Fails if more than one datum arrived (a run must publish each figure once).
        """
        now = datetime.now(UTC)
        stats = self.cloudwatch.get_metric_statistics(
            Namespace=self.namespace, MetricName=metric, Statistics=["Maximum", "Minimum", "SampleCount"],
            Period=3600, StartTime=now - timedelta(minutes=20), EndTime=now + timedelta(minutes=20),
            Dimensions=[{"Name": k, "Value": v} for k, v in dimensions.items()])
        points = stats["Datapoints"]
        if not points:
            return None
        assert len(points) == 1 and points[0]["SampleCount"] == 1, (metric, dimensions, points)
        return float(points[0]["Maximum"])

    def queue(self, pool: str, queue: str) -> dict[str, float | None]:
        return {m: self.value(m, WorkPool=pool, WorkQueue=queue) for m in QUEUE_METRIC_NAMES}

    def service_values(self, cluster: str, service: str) -> dict[str, float | None]:
        return {m: self.value(m, ClusterName=cluster, ServiceName=service) for m in SERVICE_METRIC_NAMES}

    def health(self, publisher: str = PUBLISHER) -> dict[str, float | None]:
        return {m: self.value(m, Publisher=publisher)
                for m in ("QueuesRead", "QueueReadErrors", "ServiceReadErrors", "PublisherDuration")}

    def metrics_with(self, **dimensions: str) -> list[str]:
        """Names of every metric CloudWatch holds with these dimension values (any data at all)."""
        found = self.cloudwatch.list_metrics(
            Namespace=self.namespace, Dimensions=[{"Name": k, "Value": v} for k, v in dimensions.items()])
        return sorted(m["MetricName"] for m in found["Metrics"])

    def nothing_for_queue(self, pool: str, queue: str) -> bool:
        return self.metrics_with(WorkPool=pool, WorkQueue=queue) == []
