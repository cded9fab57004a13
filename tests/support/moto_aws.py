"""What the publisher put into CloudWatch on moto, read back (AWS has no local twin; moto stands in for it)."""

from __future__ import annotations

from datetime import timedelta
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
