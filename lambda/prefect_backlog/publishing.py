"""The AWS side of a tick: ECS task counts in, CloudWatch metric data out, in as few calls as allowed."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from prefect_backlog.metrics import MetricDef

MAX_DATA_PER_PUT = 1000  # PutMetricData's limit per request
MAX_SERVICES_PER_DESCRIBE = 10  # ECS DescribeServices' limit per request
# PutMetricData calls in flight at once (boto3 clients are thread-safe): 4000 data per round trip, and
# under botocore's default of 10 pooled connections per client, so no call waits for or drops a connection.
MAX_PUTS_IN_FLIGHT = 4


@dataclass(frozen=True)
class Datum:
    metric: MetricDef
    dimensions: dict[str, str]
    value: float

    def to_aws(self, timestamp: datetime, storage_resolution: int) -> dict[str, Any]:
        return {
            "MetricName": self.metric.name,
            "Dimensions": [{"Name": k, "Value": v} for k, v in self.dimensions.items()],
            "Timestamp": timestamp,
            "Value": float(self.value),
            "Unit": self.metric.unit.value,
            "StorageResolution": storage_resolution,
        }


def put_metric_data(cloudwatch: Any, namespace: str, data: Sequence[Datum], timestamp: datetime,
                    storage_resolution: int = 60) -> int:
    """Publish ``data`` in ceil(len/1000) PutMetricData calls, a few at a time; returns the number of calls.

    Each call carries its own timestamps, so the order they land in does not
    matter to CloudWatch, and sending them together keeps a thousand-queue
    publish from taking one round trip per thousand data. A failed call's
    error is raised (the lowest-numbered failing chunk's) once the calls in
    flight have finished; chunks not started by then are not sent, as the
    sequential loop this replaced stopped at a failure too.
    """
    chunks = [data[start:start + MAX_DATA_PER_PUT] for start in range(0, len(data), MAX_DATA_PER_PUT)]

    def send(chunk: Sequence[Datum]) -> None:
        cloudwatch.put_metric_data(Namespace=namespace,
                                   MetricData=[d.to_aws(timestamp, storage_resolution) for d in chunk])

    if len(chunks) <= 1:  # the usual case: no thread for a single call
        for chunk in chunks:
            send(chunk)
        return len(chunks)
    with ThreadPoolExecutor(max_workers=min(MAX_PUTS_IN_FLIGHT, len(chunks)),
                            thread_name_prefix="put-metric-data") as pool:
        sent = [pool.submit(send, chunk) for chunk in chunks]
        try:
            for call in sent:
                call.result()
        except BaseException:
            pool.shutdown(cancel_futures=True)
            raise
    return len(chunks)


@dataclass(frozen=True)
class TaskCounts:
    running: int
    desired: int


class EcsReadError(Exception):
    """DescribeServices could not report a service."""


ServiceKey = tuple[str, str]  # (cluster, service)


def describe_services(ecs: Any, services: Iterable[ServiceKey]) -> dict[ServiceKey, TaskCounts | EcsReadError]:
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
