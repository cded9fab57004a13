"""The baseline: the recipe users copy today to get a Prefect backlog metric into CloudWatch.

Every minute, for each configured queue, one after the other: count that
pool+queue's Late runs with ``POST /flow_runs/count`` and publish the count as
``LateFlowRuns`` with one ``PutMetricData`` call. Nothing else: no queue
lookup (a mistyped queue counts 0), no retries, no batching, no ECS read, no
other metric. Scaling then uses target tracking on ``LateFlowRuns``.

Written as the recipe is written (a loop over ``requests`` and ``boto3``), so
its cost is measured, not modelled. The metric name and dimensions are the
ones the publisher uses, so the published values compare one to one.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import requests

LATE_RUNS = {"state": {"type": {"any_": ["SCHEDULED"]}, "name": {"any_": ["Late"]}}}


@dataclass
class BaselineReport:
    late: dict[tuple[str, str], int] = field(default_factory=dict)  # (pool, queue) -> Late runs
    prefect_requests: int = 0
    put_metric_data_calls: int = 0
    prefect_seconds: float = 0.0  # time spent in /flow_runs/count
    publish_seconds: float = 0.0  # time spent in PutMetricData


def baseline_tick(api_url: str, queues: Sequence[tuple[str, str]], cloudwatch: Any, *,
                  namespace: str = "Prefect", session: requests.Session | None = None) -> BaselineReport:
    """One scheduled run of the recipe over ``queues`` ((pool, queue) pairs)."""
    session = session or requests.Session()
    report = BaselineReport()
    for pool, queue in queues:
        began = time.perf_counter()
        response = session.post(f"{api_url}/flow_runs/count", timeout=10, json={
            "flow_runs": LATE_RUNS,
            "work_pools": {"name": {"any_": [pool]}},
            "work_pool_queues": {"name": {"any_": [queue]}},
        })
        response.raise_for_status()
        late = int(response.json())
        report.prefect_requests += 1
        published = time.perf_counter()
        cloudwatch.put_metric_data(Namespace=namespace, MetricData=[{
            "MetricName": "LateFlowRuns",
            "Dimensions": [{"Name": "WorkPool", "Value": pool}, {"Name": "WorkQueue", "Value": queue}],
            "Value": late,
            "Unit": "Count",
        }])
        report.put_metric_data_calls += 1
        report.late[(pool, queue)] = late
        report.prefect_seconds += published - began
        report.publish_seconds += time.perf_counter() - published
    return report
