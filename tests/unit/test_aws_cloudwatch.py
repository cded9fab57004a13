"""PutMetricData: batched by the API's limit, sent a few at a time, a failed chunk raised (moto and recorders)."""

from __future__ import annotations

import math
import threading
from typing import Any

import pytest
from botocore.exceptions import ClientError

from prefect_backlog.aws.cloudwatch import MAX_DATA_PER_PUT, MAX_PUTS_IN_FLIGHT, Datum, put_metric_data
from prefect_backlog.metrics import LATE_FLOW_RUNS
from tests.support.fake_prefect import NOW
from tests.support.moto_aws import published


def test_metric_data_is_batched_by_the_api_limit(aws: dict[str, Any]) -> None:
    calls: list[int] = []

    class Recorder:
        def put_metric_data(self, Namespace: str, MetricData: list[Any]) -> None:
            calls.append(len(MetricData))

    data = [Datum(LATE_FLOW_RUNS, {"WorkPool": "p", "WorkQueue": f"q{i}"}, i) for i in range(2 * MAX_DATA_PER_PUT + 1)]
    assert put_metric_data(Recorder(), "Prefect", data, NOW) == 3
    assert sorted(calls) == [1, 1000, 1000]  # sent concurrently: in any order


def _queue_data(count: int) -> list[Datum]:
    return [Datum(LATE_FLOW_RUNS, {"WorkPool": "p", "WorkQueue": f"q{i}"}, i) for i in range(count)]


def test_every_chunk_reaches_cloudwatch(aws: dict[str, Any]) -> None:
    data = _queue_data(2 * MAX_DATA_PER_PUT + 500)
    assert put_metric_data(aws["cloudwatch"], "Prefect", data, NOW) == 3
    pages = aws["cloudwatch"].get_paginator("list_metrics").paginate(Namespace="Prefect", MetricName="LateFlowRuns")
    queues = {d["Value"] for page in pages for m in page["Metrics"] for d in m["Dimensions"]
              if d["Name"] == "WorkQueue"}
    assert queues == {f"q{i}" for i in range(len(data))}
    for i in (0, *(edge + side for edge in (MAX_DATA_PER_PUT, 2 * MAX_DATA_PER_PUT) for side in (-1, 0)),
              len(data) - 1):  # both ends of every chunk
        assert published(aws["cloudwatch"], "LateFlowRuns", WorkPool="p", WorkQueue=f"q{i}") == i


def test_metric_data_chunks_are_sent_together_but_bounded() -> None:
    lock = threading.Lock()
    in_flight, peak = 0, 0
    received: list[tuple[str, float]] = []
    # Passes only once MAX_PUTS_IN_FLIGHT calls wait on it together: sent one by one, the first call
    # would break it after the timeout (BrokenBarrierError) instead of hanging the test.
    together = threading.Barrier(MAX_PUTS_IN_FLIGHT, timeout=10)

    class Recorder:
        def put_metric_data(self, Namespace: str, MetricData: list[Any]) -> None:
            nonlocal in_flight, peak
            with lock:
                in_flight += 1
                peak = max(peak, in_flight)
            try:
                together.wait()
            finally:
                with lock:
                    in_flight -= 1
                    received.extend((m["Dimensions"][1]["Value"], m["Value"]) for m in MetricData)

    data = _queue_data(2 * MAX_PUTS_IN_FLIGHT * MAX_DATA_PER_PUT)
    assert put_metric_data(Recorder(), "Prefect", data, NOW) == 2 * MAX_PUTS_IN_FLIGHT
    assert peak == MAX_PUTS_IN_FLIGHT
    assert sorted(received) == sorted((d.dimensions["WorkQueue"], float(d.value)) for d in data)


def test_a_failed_chunk_still_raises(aws: dict[str, Any]) -> None:
    data = _queue_data(3 * MAX_DATA_PER_PUT)
    data[MAX_DATA_PER_PUT + 7] = Datum(LATE_FLOW_RUNS, {"WorkPool": "p", "WorkQueue": "broken"}, math.nan)
    with pytest.raises(ClientError, match="NaN"):  # CloudWatch (and moto) reject the whole second chunk
        put_metric_data(aws["cloudwatch"], "Prefect", data, NOW)
    assert published(aws["cloudwatch"], "LateFlowRuns", WorkPool="p", WorkQueue="broken") is None
