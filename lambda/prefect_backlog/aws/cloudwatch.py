"""CloudWatch: everything one sample publishes, in ceil(data / 1000) PutMetricData calls sent a few at a time."""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from prefect_backlog.fanout import Fanout
from prefect_backlog.metrics import MetricDef

MAX_DATA_PER_PUT = 1000  # PutMetricData's limit per request
# PutMetricData calls in flight at once (boto3 clients are thread-safe): 4000 data per round trip, and
# under botocore's default of 10 pooled connections per client, so no call waits for or drops a connection.
MAX_PUTS_IN_FLIGHT = 4


class CloudWatchClient(Protocol):
    """The one CloudWatch call the publisher makes (a boto3 client, or a stand-in)."""

    def put_metric_data(self, *, Namespace: str, MetricData: list[dict[str, Any]]) -> Any: ...


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


def put_metric_data(cloudwatch: CloudWatchClient, namespace: str, data: Sequence[Datum], timestamp: datetime,
                    storage_resolution: int = 60, fanout: Fanout | None = None) -> int:
    """Publish ``data`` in ceil(len/1000) PutMetricData calls, up to 4 at a time; returns the number of calls.

    Each call carries its own timestamps, so the order they land in does not
    matter to CloudWatch, and sending them together keeps a thousand-queue
    publish from taking one round trip per thousand data. A failed call's
    error is raised (the lowest-numbered failing chunk's) once the calls in
    flight have finished; chunks not started by then are not sent.
    """
    chunks = [data[start:start + MAX_DATA_PER_PUT] for start in range(0, len(data), MAX_DATA_PER_PUT)]
    failures: dict[int, Exception] = {}
    failed = threading.Event()

    def send_lane(lane: int) -> None:
        for number in range(lane, len(chunks), MAX_PUTS_IN_FLIGHT):
            if failed.is_set():
                return
            try:
                cloudwatch.put_metric_data(Namespace=namespace, MetricData=[
                    d.to_aws(timestamp, storage_resolution) for d in chunks[number]])
            except Exception as exc:  # botocore's errors share no useful base beyond this
                failures[number] = exc
                failed.set()
                return

    lanes = range(min(MAX_PUTS_IN_FLIGHT, len(chunks)))
    if fanout is not None:
        fanout.map(send_lane, lanes)  # one lane (the usual single call) runs in this thread
    else:
        with Fanout(MAX_PUTS_IN_FLIGHT, name="put-metric-data") as own:
            own.map(send_lane, lanes)
    if failures:
        raise failures[min(failures)]
    return len(chunks)
