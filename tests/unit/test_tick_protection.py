"""A tick's task protection end to end: runs read from the fake API, tasks on the ECS stand-in, metrics on moto."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest

from harness.fake_ecs import FakeEcs
from prefect_backlog.config import Config, parse_config
from prefect_backlog.prefect_api import PrefectClient
from prefect_backlog.report import TickReport
from prefect_backlog.tick import WarmState, run_tick
from tests.support.fake_prefect import API, NOW, PUBLISHER_CONTEXT, FakePrefect
from tests.support.moto_aws import published

PROCESS = {"ClusterName": "prefect", "ServiceName": "process-worker"}
ECS_WORKER = {"ClusterName": "prefect", "ServiceName": "ecs-worker"}
GPU = {"WorkPool": "pool-b", "WorkQueue": "gpu"}


@pytest.fixture(autouse=True)
def gpu_queue(prefect: FakePrefect) -> None:
    prefect.queue("pool-b", "gpu")


@pytest.fixture
def ecs() -> FakeEcs:
    fake = FakeEcs(now=lambda: NOW)
    fake.service("prefect", "ecs-worker", tasks=1)
    return fake


def tick(config: Config, ecs: FakeEcs, aws: dict[str, Any], warm: WarmState) -> TickReport:
    client = PrefectClient(API, deadline=time.monotonic() + 20, sleep=lambda _: None, depth_memory=warm.depth)
    return run_tick(config, client, ecs=ecs, cloudwatch=aws["cloudwatch"], now=NOW, warm=warm)


def test_busy_tasks_are_protected_idle_ones_released(prefect: FakePrefect, ecs: FakeEcs,
                                                    aws: dict[str, Any]) -> None:
    running_task, pending_task, idle_task, paused_task = ecs.service("prefect", "process-worker", tasks=4)
    ecs.tasks[idle_task].protected_until = NOW.replace(hour=13)  # left protected by an earlier container
    prefect.add_runs("pool-b", "gpu", 2, "RUNNING", worker=f"ecs-{running_task}")
    prefect.add_runs("pool-b", "gpu", 1, "PENDING", worker=f"ecs-{pending_task}")
    prefect.add_runs("pool-b", "gpu", 1, "PAUSED", "Paused", worker=f"ecs-{paused_task}")
    prefect.add_runs("pool-b", "gpu", 1, "PAUSED", "Suspended", worker=f"ecs-{idle_task}")  # left its process
    prefect.add_runs("pool-b", "gpu", 1, "CANCELLING", worker=f"ecs-{running_task}")
    report = tick(parse_config(PUBLISHER_CONTEXT), ecs, aws, WarmState())
    assert ecs.protected("prefect", "process-worker") == {running_task, pending_task, paused_task}
    cw = aws["cloudwatch"]
    assert published(cw, "ProtectedTasks", **PROCESS) == 3
    assert published(cw, "DemandFlowRuns", **PROCESS) == 5  # 2 Running, 1 Pending, 1 Paused, 1 Cancelling
    assert published(cw, "OrphanedFlowRuns", **GPU) == 0  # checked: a true zero
    assert published(cw, "ProtectionErrors", Publisher="TestPublisher") == 0
    assert report.protection_errors == 0


def test_a_worker_that_submits_runs_as_tasks_holds_its_task_only_while_pending(
        prefect: FakePrefect, ecs: FakeEcs, aws: dict[str, Any]) -> None:
    (submitting,) = ecs.tasks
    ecs.service("prefect", "process-worker")
    launched = ecs.start_task("prefect", "ecs-worker")
    prefect.add_runs("pool-a", "default", 1, "PENDING", worker=f"ecs-{submitting}")
    prefect.add_runs("pool-a", "default", 3, "RUNNING", worker=f"ecs-{launched}")  # in their own tasks now
    tick(parse_config(PUBLISHER_CONTEXT), ecs, aws, WarmState())
    assert ecs.protected("prefect", "ecs-worker") == {submitting}


def test_orphaned_runs_are_reported_leave_demand_and_are_crashed_only_when_asked(
        prefect: FakePrefect, ecs: FakeEcs, aws: dict[str, Any], caplog: pytest.LogCaptureFixture) -> None:
    (alive,) = ecs.service("prefect", "process-worker", tasks=1)
    dead = ecs.start_task("prefect", "process-worker")
    ecs.stop_task(dead)
    prefect.add_runs("pool-b", "gpu", 1, "RUNNING", worker=f"ecs-{alive}")
    (orphan,) = prefect.add_runs("pool-b", "gpu", 1, "RUNNING", worker=f"ecs-{dead}")
    warm = WarmState()
    report = tick(parse_config(PUBLISHER_CONTEXT), ecs, aws, warm)
    cw = aws["cloudwatch"]
    assert published(cw, "OrphanedFlowRuns", **GPU) == 1
    assert published(cw, "OrphanedFlowRuns", Publisher="TestPublisher") == 1
    assert published(cw, "DemandFlowRuns", **PROCESS) == 1  # the orphan needs no task
    assert published(cw, "RunningFlowRuns", **GPU) == 2  # Prefect still says Running: reported as it is
    assert report.crashed == 0 and prefect.run(orphan)["state_type"] == "RUNNING"

    tick(parse_config(PUBLISHER_CONTEXT), ecs, aws, warm)  # orphaned twice, but not opted in
    assert prefect.run(orphan)["state_type"] == "RUNNING"
    caplog.set_level(logging.INFO, logger="prefect_backlog")
    logging.getLogger("prefect_backlog").addHandler(caplog.handler)
    try:
        opted_in = tick(parse_config({**PUBLISHER_CONTEXT, "crashOrphanedRuns": True}), ecs, aws, warm)
    finally:
        logging.getLogger("prefect_backlog").removeHandler(caplog.handler)
    assert opted_in.crashed == 1 and prefect.run(orphan)["state_type"] == "CRASHED"
    assert f"set orphaned run {orphan} of queues[2] pool-b/gpu to Crashed" in caplog.text


def test_an_orphan_is_crashed_only_after_two_samples_in_a_row(prefect: FakePrefect, ecs: FakeEcs,
                                                            aws: dict[str, Any]) -> None:
    dead = ecs.start_task("prefect", "process-worker")
    ecs.service("prefect", "process-worker")
    ecs.stop_task(dead)
    (orphan,) = prefect.add_runs("pool-b", "gpu", 1, "RUNNING", worker=f"ecs-{dead}")
    config = parse_config({**PUBLISHER_CONTEXT, "crashOrphanedRuns": True})
    warm = WarmState()
    assert tick(config, ecs, aws, warm).crashed == 0  # seen once
    assert tick(config, ecs, aws, warm).crashed == 1 and prefect.run(orphan)["state_type"] == "CRASHED"


def test_runs_whose_worker_names_no_task_are_counted_and_the_fix_is_logged(
        prefect: FakePrefect, ecs: FakeEcs, aws: dict[str, Any], caplog: pytest.LogCaptureFixture) -> None:
    ecs.service("prefect", "process-worker", tasks=1)
    prefect.add_runs("pool-b", "gpu", 2, "RUNNING", worker="ProcessWorker 3f2b9c4e-8d1a-4b6e-9f0c-2a7d5e1b8c3f")
    logging.getLogger("prefect_backlog").addHandler(caplog.handler)
    try:
        tick(parse_config(PUBLISHER_CONTEXT), ecs, aws, WarmState())
    finally:
        logging.getLogger("prefect_backlog").removeHandler(caplog.handler)
    assert published(aws["cloudwatch"], "UnmappedFlowRuns", **PROCESS) == 2
    assert published(aws["cloudwatch"], "DemandFlowRuns", **PROCESS) == 2  # still demand
    assert "2 in-flight run(s) of pool-b/gpu come from workers whose name holds no ECS task ID" in caplog.text
    assert "ECS_CONTAINER_METADATA_URI_V4" in caplog.text


def test_a_failed_task_read_keeps_protection_and_still_publishes_the_backlog(
        prefect: FakePrefect, ecs: FakeEcs, aws: dict[str, Any]) -> None:
    (task,) = ecs.service("prefect", "process-worker", tasks=1)
    ecs.tasks[task].protected_until = NOW.replace(hour=13)
    ecs.failures["ListTasks"] = RuntimeError("AccessDeniedException: not authorized to perform ecs:ListTasks")
    ecs.fail_always.add("ListTasks")
    report = tick(parse_config(PUBLISHER_CONTEXT), ecs, aws, WarmState())
    cw = aws["cloudwatch"]
    assert report.protection_errors == 2  # both services' task reads
    assert published(cw, "ProtectionErrors", Publisher="TestPublisher") == 2
    assert published(cw, "DemandFlowRuns", **PROCESS) == 0  # the backlog is published all the same
    assert published(cw, "OrphanedFlowRuns", **GPU) is None  # not checked: no false 0
    assert ecs.protected("prefect", "process-worker") == {task}  # nothing released


def test_a_service_whose_queue_was_not_read_is_left_exactly_as_it_is(
        prefect: FakePrefect, ecs: FakeEcs, aws: dict[str, Any]) -> None:
    (task,) = ecs.service("prefect", "process-worker", tasks=1)
    ecs.tasks[task].protected_until = NOW.replace(hour=13)
    gpu_id = prefect.queue_id("pool-b", "gpu")
    prefect.faults["/flow_runs/filter"] = lambda body: (
        (500, {}, "{}") if gpu_id in body["work_pool_queues"]["id"]["any_"] else None)
    tick(parse_config(PUBLISHER_CONTEXT), ecs, aws, WarmState())
    assert not [a for op, a in ecs.calls if op != "DescribeServices" and a.get("serviceName") == "process-worker"]
    assert ecs.protected("prefect", "process-worker") == {task}


def test_protection_can_be_switched_off_per_service(prefect: FakePrefect, ecs: FakeEcs,
                                                    aws: dict[str, Any]) -> None:
    (task,) = ecs.service("prefect", "process-worker", tasks=1)
    prefect.add_runs("pool-b", "gpu", 1, "RUNNING", worker=f"ecs-{task}")
    queues = [dict(q) for q in PUBLISHER_CONTEXT["queues"]]
    queues[2]["taskProtection"] = False
    tick(parse_config({**PUBLISHER_CONTEXT, "queues": queues}), ecs, aws, WarmState())
    assert ecs.protected("prefect", "process-worker") == set()
    assert published(aws["cloudwatch"], "ProtectedTasks", **PROCESS) is None
