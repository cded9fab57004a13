"""A whole tick and the Lambda handler, with `responses` for Prefect and moto for CloudWatch, ECS and
Secrets Manager (AWS has no local twin; moto stands in for it in process)."""

from __future__ import annotations

import json
import logging
import math
import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import boto3
import pytest
import responses
from botocore.exceptions import ClientError
from moto import mock_aws

from prefect_backlog import handler
from prefect_backlog.config import Config, parse_config
from prefect_backlog.metrics import LATE_FLOW_RUNS
from prefect_backlog.prefect_client import PAGE_SIZE, DepthMemory, PrefectAuthError, PrefectClient
from prefect_backlog.publishing import MAX_DATA_PER_PUT, MAX_PUTS_IN_FLIGHT, Datum, put_metric_data
from prefect_backlog.tick import run_samples, run_tick
from tests.fake_prefect import API, NOW, FakePrefect, failing

CONTEXT: dict[str, Any] = {
    "prefectApiUrl": API,
    "stackName": "TestPublisher",
    "queues": [
        {"workPool": "pool-a", "workQueue": "default", "cluster": "prefect", "service": "ecs-worker",
         "maxCapacity": 5, "targetBacklogPerTask": 2},
        {"workPool": "pool-b", "workQueue": "default", "cluster": "prefect", "service": "ecs-worker"},
        {"workPool": "pool-b", "workQueue": "gpu", "cluster": "prefect", "service": "process-worker",
         "maxCapacity": 4, "runsInWorkerTask": True},
    ],
}


@pytest.fixture
def prefect(aws: dict[str, Any]) -> Iterator[FakePrefect]:  # moto first: ours must sit on top of its mock
    fake = FakePrefect()
    fake.pool("pool-a")
    fake.pool("pool-b")
    fake.queue("pool-b", "gpu")
    with responses.RequestsMock(assert_all_requests_are_fired=False) as mock:
        fake.install(mock)
        mock.add_passthru("http://localhost")  # nothing else may leave the process
        yield fake


@pytest.fixture
def aws() -> Iterator[dict[str, Any]]:
    with mock_aws():
        ecs = boto3.client("ecs")
        ecs.create_cluster(clusterName="prefect")
        ecs.register_task_definition(family="w", containerDefinitions=[{"name": "w", "image": "x", "memory": 128}])
        for name, tasks in [("ecs-worker", 1), ("process-worker", 0)]:
            ecs.create_service(cluster="prefect", serviceName=name, taskDefinition="w", desiredCount=0)
            ecs.update_service(cluster="prefect", service=name, desiredCount=tasks)  # moto: running = desired
        yield {"ecs": ecs, "cloudwatch": boto3.client("cloudwatch"), "secrets": boto3.client("secretsmanager")}


def published(cloudwatch: Any, metric: str, **dimensions: str) -> float | None:
    """The value CloudWatch (moto) holds for one metric, or None when nothing was published."""
    stats = cloudwatch.get_metric_statistics(
        Namespace="Prefect", MetricName=metric, Statistics=["Maximum"], Period=60,
        StartTime=NOW - timedelta(minutes=5), EndTime=NOW + timedelta(minutes=5),
        Dimensions=[{"Name": k, "Value": v} for k, v in dimensions.items()])
    points = stats["Datapoints"]
    return points[0]["Maximum"] if points else None


def tick(config: Config, aws: dict[str, Any]) -> Any:
    client = PrefectClient(config.api_url, deadline=time.monotonic() + 20, sleep=lambda _: None)
    return run_tick(config, client, ecs=aws["ecs"], cloudwatch=aws["cloudwatch"], now=NOW)


def test_publishes_every_queue_and_service_in_one_put(prefect: FakePrefect, aws: dict[str, Any]) -> None:
    prefect.add_runs("pool-a", "default", 3, "SCHEDULED", "Late", minutes_ago=6)
    prefect.add_runs("pool-b", "default", 2, "SCHEDULED", "Scheduled", minutes_ago=1)
    prefect.add_runs("pool-b", "gpu", 1, "SCHEDULED", "Late", minutes_ago=2)
    prefect.add_runs("pool-b", "gpu", 2, "RUNNING")
    report = tick(parse_config(CONTEXT), aws)
    cw = aws["cloudwatch"]
    assert report.put_metric_data_calls == 1 and report.whole_failure is None
    assert published(cw, "LateFlowRuns", WorkPool="pool-a", WorkQueue="default") == 3
    assert published(cw, "DueFlowRuns", WorkPool="pool-b", WorkQueue="default") == 2
    assert published(cw, "LateFlowRuns", WorkPool="pool-b", WorkQueue="default") == 0  # a true zero
    assert published(cw, "OldestLateRunAgeSeconds", WorkPool="pool-a", WorkQueue="default") == 360
    assert published(cw, "RunningFlowRuns", WorkPool="pool-b", WorkQueue="gpu") == 2
    # ecs-worker: demand 3 + 2 over 1 running task; target 2 per task -> 3 tasks needed, 1 desired
    ecs_worker = {"ClusterName": "prefect", "ServiceName": "ecs-worker"}
    assert published(cw, "BacklogPerTask", **ecs_worker) == 5
    assert published(cw, "TaskShortfall", **ecs_worker) == 2
    # process-worker at 0 tasks: 1 Late + 2 running in-process = 3, divided by max(0, 1)
    process_worker = {"ClusterName": "prefect", "ServiceName": "process-worker"}
    assert published(cw, "DemandFlowRuns", **process_worker) == 3
    assert published(cw, "BacklogPerTask", **process_worker) == 3
    assert published(cw, "TaskShortfall", **process_worker) == 3
    assert published(cw, "QueueReadErrors", Publisher="TestPublisher") == 0
    assert published(cw, "QueuesRead", Publisher="TestPublisher") == 3


def test_paused_queue_reports_backlog_but_adds_no_demand(prefect: FakePrefect, aws: dict[str, Any]) -> None:
    prefect.queues[0]["is_paused"] = True  # pool-a/default
    prefect.add_runs("pool-a", "default", 4, "SCHEDULED", "Late")
    tick(parse_config(CONTEXT), aws)
    cw = aws["cloudwatch"]
    assert published(cw, "LateFlowRuns", WorkPool="pool-a", WorkQueue="default") == 4
    assert published(cw, "QueuePaused", WorkPool="pool-a", WorkQueue="default") == 1
    assert published(cw, "DemandFlowRuns", ClusterName="prefect", ServiceName="ecs-worker") == 0


def test_a_failed_queue_publishes_nothing_for_it_or_its_service(prefect: FakePrefect, aws: dict[str, Any]) -> None:
    prefect.add_runs("pool-b", "gpu", 1, "SCHEDULED", "Late")
    pool_a_ids = {prefect.queue_id("pool-a", "default")}
    prefect.faults["/flow_runs/filter"] = lambda body: (
        (502, {}, "bad gateway") if set(body["work_pool_queues"]["id"]["any_"]) & pool_a_ids else None)
    report = tick(parse_config(CONTEXT), aws)
    cw = aws["cloudwatch"]
    assert report.whole_failure is None
    assert published(cw, "LateFlowRuns", WorkPool="pool-a", WorkQueue="default") is None  # never a false 0
    assert published(cw, "BacklogPerTask", ClusterName="prefect", ServiceName="ecs-worker") is None
    assert published(cw, "LateFlowRuns", WorkPool="pool-b", WorkQueue="gpu") == 1  # the others go on
    assert published(cw, "BacklogPerTask", ClusterName="prefect", ServiceName="process-worker") == 1
    assert published(cw, "QueueReadErrors", Publisher="TestPublisher") == 1
    assert "HTTP 502" in (report.queues[0].error or "")


def test_unknown_queue_is_an_error_never_zero(prefect: FakePrefect, aws: dict[str, Any]) -> None:
    context = {**CONTEXT, "queues": CONTEXT["queues"] + [
        {"workPool": "pool-a", "workQueue": "typo", "cluster": "prefect", "service": "ecs-worker"}]}
    report = tick(parse_config(context), aws)
    assert "no work queue 'typo' in pool 'pool-a'" in (report.queues[3].error or "")
    cw = aws["cloudwatch"]
    assert published(cw, "LateFlowRuns", WorkPool="pool-a", WorkQueue="typo") is None
    assert published(cw, "QueueReadErrors", Publisher="TestPublisher") == 1


def test_missing_ecs_service_withholds_only_its_signal(prefect: FakePrefect, aws: dict[str, Any]) -> None:
    aws["ecs"].delete_service(cluster="prefect", service="process-worker", force=True)
    report = tick(parse_config(CONTEXT), aws)
    cw = aws["cloudwatch"]
    assert published(cw, "BacklogPerTask", ClusterName="prefect", ServiceName="process-worker") is None
    assert published(cw, "BacklogPerTask", ClusterName="prefect", ServiceName="ecs-worker") == 0
    assert published(cw, "ServiceReadErrors", Publisher="TestPublisher") == 1
    assert "process-worker" in (report.services[1].error or "")


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


def test_a_failed_publish_fails_the_tick(prefect: FakePrefect, aws: dict[str, Any]) -> None:
    def throttled(**_: Any) -> None:
        raise ClientError({"Error": {"Code": "Throttling", "Message": "Rate exceeded"}}, "PutMetricData")

    aws["cloudwatch"].put_metric_data = throttled
    with pytest.raises(ClientError, match="Rate exceeded"):
        tick(parse_config(CONTEXT), aws)


# --- what a tick reads at the same time -----------------------------------------------------
# Each test blocks one read until the other has been asked for: read one after the other, the wait
# gives up after its timeout and the test fails instead of hanging.


def test_ecs_is_asked_while_prefect_is_still_being_read(prefect: FakePrefect, aws: dict[str, Any]) -> None:
    ecs_asked = threading.Event()
    real_describe = aws["ecs"].describe_services

    def describe(**kwargs: Any) -> Any:
        ecs_asked.set()
        return real_describe(**kwargs)

    aws["ecs"].describe_services = describe
    waits: list[bool] = []

    def queue_lookup_waits_for_ecs(_: dict[str, Any]) -> None:  # the first Prefect request of the tick
        waits.append(ecs_asked.wait(timeout=10))

    prefect.faults["/work_queues/filter"] = queue_lookup_waits_for_ecs
    report = tick(parse_config(CONTEXT), aws)
    assert waits == [True]
    assert report.whole_failure is None and all(s.signal is not None for s in report.services)


def test_workers_are_read_while_the_runs_are(prefect: FakePrefect, aws: dict[str, Any]) -> None:
    workers_asked = threading.Event()
    waits: list[bool] = []

    def runs_wait_for_workers(_: dict[str, Any]) -> None:
        waits.append(workers_asked.wait(timeout=10))

    def workers(_: dict[str, Any]) -> None:
        workers_asked.set()

    prefect.faults["/flow_runs/filter"] = runs_wait_for_workers
    prefect.faults["/work_pools/{pool}/workers/filter"] = workers
    prefect.worker("pool-a", seconds_ago=5)
    prefect.add_runs("pool-a", "default", 2, "SCHEDULED", "Late")
    report = tick(parse_config(CONTEXT), aws)
    assert waits and all(waits)
    assert published(aws["cloudwatch"], "LateFlowRuns", WorkPool="pool-a", WorkQueue="default") == 2
    assert published(aws["cloudwatch"], "OnlineWorkers", WorkPool="pool-a") == 1
    assert report.prefect_requests == len(prefect.calls)  # the concurrent requests are all counted


def test_a_whole_failure_reports_no_worker_health_even_though_it_was_read(
        prefect: FakePrefect, aws: dict[str, Any]) -> None:
    prefect.faults["/flow_runs/filter"] = failing(401)
    prefect.faults["/work_pools/{pool}/workers/filter"] = failing(401)  # raised in the background: dropped
    prefect.worker("pool-a", seconds_ago=5)
    report = tick(parse_config(CONTEXT), aws)
    assert report.whole_failure is not None and "rejected the credentials" in report.whole_failure
    assert report.pools == {}
    assert published(aws["cloudwatch"], "OnlineWorkers", WorkPool="pool-a") is None
    assert published(aws["cloudwatch"], "QueueReadErrors", Publisher="TestPublisher") == 3


def test_a_credential_rejected_by_the_worker_read_still_fails_the_tick(
        prefect: FakePrefect, aws: dict[str, Any]) -> None:
    prefect.faults["/work_pools/{pool}/workers/filter"] = failing(401)
    with pytest.raises(PrefectAuthError, match="rejected the credentials"):
        tick(parse_config(CONTEXT), aws)
    assert published(aws["cloudwatch"], "QueuesRead", Publisher="TestPublisher") is None


# --- the Lambda handler -------------------------------------------------------------


class FakeContext:
    function_name = "publisher"
    memory_limit_in_mb = 256
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:publisher"
    aws_request_id = "req-1"

    def get_remaining_time_in_millis(self) -> int:
        return 50_000


@pytest.fixture
def packaged_config(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Writes the canonical configuration the way the stack packages it, and points the handler at it."""
    def write(context: dict[str, Any]) -> Path:
        path = tmp_path / "publisher_config.json"
        path.write_text(json.dumps(parse_config(context).to_context()))
        monkeypatch.setattr(handler, "CONFIG_FILE", path)
        return path
    monkeypatch.setattr(handler, "datetime", _FrozenDatetime)
    yield write  # type: ignore[misc]


class _FrozenDatetime:
    @staticmethod
    def now(tz: Any = None) -> Any:
        return NOW


def test_handler_publishes_and_returns_a_summary(prefect: FakePrefect, aws: dict[str, Any],
                                                 packaged_config: Any) -> None:
    packaged_config(CONTEXT)
    prefect.add_runs("pool-a", "default", 2, "SCHEDULED", "Late")
    summary = handler.lambda_handler({}, FakeContext())
    assert summary["queuesRead"] == 3 and summary["queueReadErrors"] == 0
    assert published(aws["cloudwatch"], "LateFlowRuns", WorkPool="pool-a", WorkQueue="default") == 2


def test_a_warm_handler_remembers_a_deep_backlog_between_invocations(
        prefect: FakePrefect, aws: dict[str, Any], packaged_config: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(handler, "DEPTH_MEMORY", DepthMemory())  # a fresh container
    packaged_config(CONTEXT)
    prefect.add_runs("pool-a", "default", 600, "SCHEDULED", "Late")

    deep_queue = prefect.queue_id("pool-a", "default")

    def invoke() -> tuple[dict[str, Any], int]:
        prefect.calls.clear()
        summary = handler.lambda_handler({}, FakeContext())
        due_pages = [body for path, body in prefect.calls if path == "/flow_runs/filter"
                     and body.get("limit") == PAGE_SIZE and "Late" in json.dumps(body["flow_runs"])
                     and body["work_pool_queues"]["id"]["any_"] == [deep_queue]]
        return summary, len(due_pages)

    cold, cold_pages = invoke()
    warm, warm_pages = invoke()
    assert (cold_pages, warm_pages) == (1, 0)  # the cold one fetched a page of due runs, then counted
    assert warm["prefectRequests"] < cold["prefectRequests"] and warm["queuesRead"] == cold["queuesRead"] == 3


def test_handler_sends_the_secret_as_basic_auth_and_never_logs_it(
        prefect: FakePrefect, aws: dict[str, Any], packaged_config: Any, caplog: pytest.LogCaptureFixture) -> None:
    aws["secrets"].create_secret(Name="prefect/auth", SecretString="admin:s3cret-value")
    packaged_config({**CONTEXT, "prefectAuth": {"secret": "prefect/auth", "scheme": "basic"},
                     "queues": [*CONTEXT["queues"], {"workQueue": "typo", "cluster": "prefect", "service": "x",
                                                      "maxCapacity": 1}]})
    loggers = [logging.getLogger(name) for name in ("prefect_backlog", handler.logger.name)]
    for logger in loggers:  # Powertools' handlers write to the stdout of import time and do not propagate
        logger.addHandler(caplog.handler)
    try:
        handler.lambda_handler({}, FakeContext())
    finally:
        for logger in loggers:
            logger.removeHandler(caplog.handler)
    assert set(prefect.authorizations) == {"Basic YWRtaW46czNjcmV0LXZhbHVl"}
    logged = "\n".join(str(record.__dict__) for record in caplog.records)  # messages with their extra fields
    assert "published" in logged and "no work queue 'typo'" in logged  # the logs were captured
    assert "s3cret" not in logged and "YWRtaW46czNjcmV0LXZhbHVl" not in logged


def test_handler_fails_visibly_when_nothing_can_be_read(prefect: FakePrefect, aws: dict[str, Any],
                                                        packaged_config: Any) -> None:
    packaged_config(CONTEXT)
    prefect.faults["/work_queues/filter"] = failing(401)
    with pytest.raises(handler.PublisherFailed, match="rejected the credentials"):
        handler.lambda_handler({}, FakeContext())
    cw = aws["cloudwatch"]
    assert published(cw, "QueueReadErrors", Publisher="TestPublisher") == 3  # health still reported
    assert published(cw, "LateFlowRuns", WorkPool="pool-a", WorkQueue="default") is None


# --- fast mode: several samples per invocation ---------------------------------------------


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def test_fast_mode_samples_every_10_s_with_high_resolution(prefect: FakePrefect, aws: dict[str, Any]) -> None:
    config = parse_config({**CONTEXT, "fastMode": True})
    clock = FakeClock()
    deadlines: list[float] = []
    resolutions: list[int] = []
    real_put = aws["cloudwatch"].put_metric_data

    def recording_put(**kwargs: Any) -> Any:
        resolutions.extend(d["StorageResolution"] for d in kwargs["MetricData"])
        return real_put(**kwargs)

    aws["cloudwatch"].put_metric_data = recording_put

    def new_client(read_deadline: float) -> PrefectClient:
        deadlines.append(read_deadline - clock.now)
        clock.now += 1.5  # each sample takes 1.5 s
        return PrefectClient(API, deadline=time.monotonic() + 10, sleep=lambda _: None)

    reports = run_samples(config, new_client, ecs=aws["ecs"], cloudwatch=aws["cloudwatch"],
                          deadline=clock.now + 58, wall_clock=lambda: NOW, clock=clock, sleep=clock.sleep)
    assert len(reports) == 6
    assert clock.sleeps == [8.5] * 5  # samples start 10 s apart
    assert deadlines == [7.0] * 5 + [5.0]  # done reading 3 s before the next sample / the timeout
    assert set(resolutions) == {1}


def test_default_mode_samples_once_and_stops_reading_before_the_timeout(
        prefect: FakePrefect, aws: dict[str, Any]) -> None:
    config = parse_config(CONTEXT)
    clock = FakeClock()
    deadlines: list[float] = []

    def new_client(read_deadline: float) -> PrefectClient:
        deadlines.append(read_deadline - clock.now)
        return PrefectClient(API, deadline=time.monotonic() + 10, sleep=lambda _: None)

    reports = run_samples(config, new_client, ecs=aws["ecs"], cloudwatch=aws["cloudwatch"],
                          deadline=clock.now + 50, wall_clock=lambda: NOW, clock=clock, sleep=clock.sleep)
    assert len(reports) == 1 and deadlines == [47.0]


def test_fast_mode_skips_samples_that_no_longer_fit(prefect: FakePrefect, aws: dict[str, Any]) -> None:
    config = parse_config({**CONTEXT, "fastMode": True})
    clock = FakeClock()

    started: list[float] = []

    def new_client(read_deadline: float) -> PrefectClient:
        started.append(clock.now - 1000)
        clock.now = read_deadline + 15  # a hung call: the read overruns its budget by 15 s
        return PrefectClient(API, deadline=time.monotonic() + 10, sleep=lambda _: None)

    reports = run_samples(config, new_client, ecs=aws["ecs"], cloudwatch=aws["cloudwatch"],
                          deadline=clock.now + 58, wall_clock=lambda: NOW, clock=clock, sleep=clock.sleep)
    assert started == [0, 22, 42]  # passed slots are skipped, never run back to back to catch up
    assert len(reports) == 3


def test_worker_health_per_queue_and_pool(prefect: FakePrefect, aws: dict[str, Any]) -> None:
    prefect.queues[0]["last_polled"] = (NOW - timedelta(seconds=42)).isoformat()  # pool-a/default
    prefect.worker("pool-a", seconds_ago=8)
    prefect.worker("pool-a", seconds_ago=400, online=False)
    report = tick(parse_config(CONTEXT), aws)
    cw = aws["cloudwatch"]
    assert published(cw, "SecondsSinceLastPolled", WorkPool="pool-a", WorkQueue="default") == 42
    assert published(cw, "SecondsSinceLastPolled", WorkPool="pool-b", WorkQueue="gpu") == 3600  # never polled
    assert published(cw, "OnlineWorkers", WorkPool="pool-a") == 1
    assert published(cw, "SecondsSinceWorkerHeartbeat", WorkPool="pool-a") == 8
    assert published(cw, "OnlineWorkers", WorkPool="pool-b") == 0
    assert published(cw, "SecondsSinceWorkerHeartbeat", WorkPool="pool-b") is None  # no worker, no age
    assert prefect.requests_to("/work_pools/{pool}/workers/filter") == 2  # one per pool
    assert report.whole_failure is None


def test_worker_health_failure_does_not_touch_the_backlog(prefect: FakePrefect, aws: dict[str, Any]) -> None:
    prefect.faults["/work_pools/{pool}/workers/filter"] = failing(500)
    prefect.add_runs("pool-a", "default", 1, "SCHEDULED", "Late")
    report = tick(parse_config(CONTEXT), aws)
    cw = aws["cloudwatch"]
    assert published(cw, "OnlineWorkers", WorkPool="pool-a") is None
    assert published(cw, "LateFlowRuns", WorkPool="pool-a", WorkQueue="default") == 1
    assert report.queue_errors == 0


def test_stuck_pending_runs_are_counted_and_left_alone_by_default(prefect: FakePrefect, aws: dict[str, Any]) -> None:
    stuck = prefect.add_runs("pool-a", "default", 2, "PENDING", in_state_for_minutes=20)
    report = tick(parse_config(CONTEXT), aws)
    assert published(aws["cloudwatch"], "StuckPendingFlowRuns", WorkPool="pool-a", WorkQueue="default") == 2
    assert report.rescheduled == 0 and prefect.requests_to("/flow_runs/{id}/set_state") == 0
    assert {prefect.run(r)["state_type"] for r in stuck} == {"PENDING"}


def test_opt_in_reschedules_stuck_runs_up_to_the_cap(prefect: FakePrefect, aws: dict[str, Any],
                                                     caplog: pytest.LogCaptureFixture) -> None:
    logging.getLogger("prefect_backlog").addHandler(caplog.handler)  # Powertools' copy does not propagate
    stuck = prefect.add_runs("pool-a", "default", 3, "PENDING", in_state_for_minutes=20)
    fresh = prefect.add_runs("pool-a", "default", 1, "PENDING", in_state_for_minutes=1)
    config = parse_config({**CONTEXT, "rescheduleStuckPending": True, "maxReschedulesPerRun": 2})
    report = tick(config, aws)
    states = [prefect.run(r)["state_type"] for r in stuck]
    assert sorted(states) == ["PENDING", "SCHEDULED", "SCHEDULED"] and report.rescheduled == 2
    assert prefect.run(fresh[0])["state_type"] == "PENDING"
    assert published(aws["cloudwatch"], "RescheduledFlowRuns", Publisher="TestPublisher") == 2
    logging.getLogger("prefect_backlog").removeHandler(caplog.handler)
    logs = caplog.text
    assert logs.count("rescheduled a stuck Pending run") == 2
    assert "more stuck Pending runs than one run may reschedule" in logs


def test_a_run_that_started_since_the_read_is_not_rescheduled(prefect: FakePrefect, aws: dict[str, Any]) -> None:
    (run_id,) = prefect.add_runs("pool-a", "default", 1, "PENDING", in_state_for_minutes=20)

    def worker_starts_it(_: dict[str, Any]) -> None:  # the worker wakes up between our read and our write
        prefect.run(run_id).update(state_type="RUNNING", state={"type": "RUNNING", "timestamp": NOW.isoformat()})

    prefect.faults["/work_pools/{pool}/workers/filter"] = worker_starts_it
    report = tick(parse_config({**CONTEXT, "rescheduleStuckPending": True}), aws)
    assert report.rescheduled == 0 and prefect.run(run_id)["state_type"] == "RUNNING"
    assert prefect.requests_to("/flow_runs/{id}/set_state") == 0


def test_concurrency_limited_queue_is_reported_and_adds_no_demand(prefect: FakePrefect, aws: dict[str, Any]) -> None:
    prefect.queues[0]["concurrency_limit"] = 1  # pool-a/default
    prefect.add_runs("pool-a", "default", 1, "RUNNING")
    prefect.add_runs("pool-a", "default", 3, "SCHEDULED", "Late")
    prefect.pools["pool-b"].update(concurrency_limit=2, active_slots=2)  # 3.x reports the pool's slots in use
    prefect.add_runs("pool-b", "default", 2, "SCHEDULED", "Late")
    tick(parse_config(CONTEXT), aws)
    cw = aws["cloudwatch"]
    assert published(cw, "ConcurrencyLimited", WorkPool="pool-a", WorkQueue="default") == 1
    assert published(cw, "ConcurrencyLimited", WorkPool="pool-b", WorkQueue="default") == 1
    assert published(cw, "LateFlowRuns", WorkPool="pool-a", WorkQueue="default") == 3
    assert published(cw, "DemandFlowRuns", ClusterName="prefect", ServiceName="ecs-worker") == 0
