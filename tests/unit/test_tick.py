"""One tick, read to publish, against the fake Prefect API and moto: values, failures, concurrency, samples."""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta
from typing import Any

import pytest
from botocore.exceptions import ClientError

from prefect_backlog.config import Config, parse_config
from prefect_backlog.prefect_api import PrefectAuthError, PrefectClient
from prefect_backlog.tick import run_samples, run_tick
from tests.support.fake_prefect import API, NOW, PUBLISHER_CONTEXT, FakePrefect, failing
from tests.support.moto_aws import published

CONTEXT = PUBLISHER_CONTEXT


@pytest.fixture(autouse=True)
def gpu_queue(prefect: FakePrefect) -> None:
    prefect.queue("pool-b", "gpu")


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
    # ecs-worker: demand 3 + 2 over 1 desired task; target 2 per task -> 3 tasks needed, 1 desired
    ecs_worker = {"ClusterName": "prefect", "ServiceName": "ecs-worker"}
    assert published(cw, "BacklogPerTask", **ecs_worker) == 5
    assert published(cw, "TaskShortfall", **ecs_worker) == 2
    # process-worker at 0 desired: 1 Late + 2 running in-process = 3, divided by max(0, 1)
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


def test_a_failed_publish_fails_the_tick(prefect: FakePrefect, aws: dict[str, Any]) -> None:
    def throttled(**_: Any) -> None:
        raise ClientError({"Error": {"Code": "Throttling", "Message": "Rate exceeded"}}, "PutMetricData")

    aws["cloudwatch"].put_metric_data = throttled
    with pytest.raises(ClientError, match="Rate exceeded"):
        tick(parse_config(CONTEXT), aws)


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
    assert report.whole_failure is not None and "HTTP 401 from prefect.test" in report.whole_failure
    assert report.pools == {}
    assert published(aws["cloudwatch"], "OnlineWorkers", WorkPool="pool-a") is None
    assert published(aws["cloudwatch"], "QueueReadErrors", Publisher="TestPublisher") == 3


def test_a_credential_rejected_by_the_worker_read_still_fails_the_tick(
        prefect: FakePrefect, aws: dict[str, Any]) -> None:
    prefect.faults["/work_pools/{pool}/workers/filter"] = failing(401)
    with pytest.raises(PrefectAuthError, match=r"HTTP 401 from prefect\.test, the API wants credentials"):
        tick(parse_config(CONTEXT), aws)
    assert published(aws["cloudwatch"], "QueuesRead", Publisher="TestPublisher") is None


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
    caplog.set_level(logging.INFO, logger="prefect_backlog")
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
    messages = {r.getMessage() for r in caplog.records}  # (the handler may see a record twice: once per route)
    assert len([m for m in messages if m.startswith("rescheduled stuck Pending run")]) == 2
    assert "more stuck Pending runs than one run may reschedule" in messages


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


def test_a_prefect_2_pool_at_its_limit_holds_its_backlog_though_it_reports_no_active_slots(
        prefect: FakePrefect, aws: dict[str, Any]) -> None:
    prefect.pools["pool-a"]["concurrency_limit"] = 2  # no active_slots: as Prefect 2.x answers
    prefect.queue("pool-a", "unconfigured")
    prefect.add_runs("pool-a", "unconfigured", 1, "RUNNING")  # counts against the pool's limit too
    prefect.add_runs("pool-a", "unconfigured", 1, "PENDING")
    prefect.add_runs("pool-a", "default", 3, "SCHEDULED", "Late")
    tick(parse_config(CONTEXT), aws)
    cw = aws["cloudwatch"]
    assert published(cw, "ConcurrencyLimited", WorkPool="pool-a", WorkQueue="default") == 1
    assert published(cw, "LateFlowRuns", WorkPool="pool-a", WorkQueue="default") == 3
    assert published(cw, "DemandFlowRuns", ClusterName="prefect", ServiceName="ecs-worker") == 0
    pool_counts = [body for path, body in prefect.calls if path == "/flow_runs/count" and "work_pools" in body]
    assert len(pool_counts) == 1  # one count for the pool, not one per queue


def test_a_pool_below_its_limit_lets_its_backlog_be_demand(prefect: FakePrefect, aws: dict[str, Any]) -> None:
    prefect.pools["pool-a"]["concurrency_limit"] = 5
    prefect.add_runs("pool-a", "default", 1, "RUNNING")
    prefect.add_runs("pool-a", "default", 3, "SCHEDULED", "Late")
    tick(parse_config(CONTEXT), aws)
    assert published(aws["cloudwatch"], "ConcurrencyLimited", WorkPool="pool-a", WorkQueue="default") == 0
    assert published(aws["cloudwatch"], "DemandFlowRuns", ClusterName="prefect", ServiceName="ecs-worker") == 3
