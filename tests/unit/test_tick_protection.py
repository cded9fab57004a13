"""A tick's task protection end to end: runs read from the fake API, tasks on the ECS stand-in, metrics on moto."""

from __future__ import annotations

import logging
import time
import uuid
from datetime import timedelta
from typing import Any

import pytest

from harness.fake_ecs import FakeEcs
from prefect_backlog.aws.task_protection import REFRESH_MARGIN
from prefect_backlog.config import Config, parse_config
from prefect_backlog.prefect_api import PrefectClient
from prefect_backlog.report import TickReport
from prefect_backlog.tick import WarmState, run_tick
from tests.support.fake_prefect import API, NOW, PUBLISHER_CONTEXT, FakePrefect, failing
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
    warm = WarmState()
    cold = tick(parse_config(PUBLISHER_CONTEXT), ecs, aws, warm)
    # a cold container read the idle task's protection after the runs: released only at the next sample
    assert ecs.protected("prefect", "process-worker") == {running_task, pending_task, paused_task, idle_task}
    assert cold.protection_errors == 0
    report = tick(parse_config(PUBLISHER_CONTEXT), ecs, aws, warm)
    assert ecs.protected("prefect", "process-worker") == {running_task, pending_task, paused_task}
    (process,) = [s.protection for s in report.services if s.protection and s.protection.release]
    assert process.release == (idle_task,) and process.protected == 3
    cw = aws["cloudwatch"]
    assert published(cw, "ProtectedTasks", **PROCESS) == 4  # the cold sample's (both samples are at NOW)
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


@pytest.mark.parametrize(("pending_minutes", "turns_running", "crashed"), [
    (20, False, 1),  # Pending for longer than stuckPendingSeconds under a stopped worker: stuck, crashed
    (20, True, 0),   # started in its own task between the sample and the re-read: healthy, left alone
    (1, False, 0),   # Pending for less than stuckPendingSeconds: it may still start in its own task
])
def test_a_submit_only_orphan_is_crashed_only_while_still_stuck_pending(
        prefect: FakePrefect, ecs: FakeEcs, aws: dict[str, Any], pending_minutes: float, turns_running: bool,
        crashed: int) -> None:
    dead = ecs.start_task("prefect", "ecs-worker")
    ecs.stop_task(dead)
    (run,) = prefect.add_runs("pool-a", "default", 1, "PENDING", worker=f"ecs-{dead}",
                              in_state_for_minutes=pending_minutes)
    config = parse_config({**PUBLISHER_CONTEXT, "crashOrphanedRuns": True})
    warm = WarmState()
    tick(config, ecs, aws, warm)  # seen orphaned once

    def starts_in_its_own_task(_: dict[str, Any]) -> None:
        if turns_running:
            prefect.run(run).update(state_type="RUNNING", state_name="Running",
                                    state={"type": "RUNNING", "name": "Running", "timestamp": NOW.isoformat()})

    prefect.faults["GET /flow_runs/{id}"] = starts_in_its_own_task
    report = tick(config, ecs, aws, warm)
    assert report.crashed == crashed
    assert prefect.run(run)["state_type"] == ("CRASHED" if crashed else "RUNNING" if turns_running else "PENDING")


def test_a_live_worker_whose_name_only_looks_like_a_task_is_not_orphaned(
        prefect: FakePrefect, ecs: FakeEcs, aws: dict[str, Any]) -> None:
    """A worker named with a uuid4().hex, alive and heartbeating: its runs stay demand, nothing is crashed."""
    ecs.service("prefect", "process-worker", tasks=1)
    name = f"worker-{uuid.uuid4().hex}"
    prefect.workers["pool-b"] = [{"name": name, "last_heartbeat_time": NOW.isoformat(), "status": "ONLINE"}]
    prefect.add_runs("pool-b", "gpu", 2, "RUNNING", worker=name)
    config = parse_config({**PUBLISHER_CONTEXT, "crashOrphanedRuns": True})
    warm = WarmState()
    for _ in range(3):
        report = tick(config, ecs, aws, warm)
        assert report.crashed == 0
    assert ecs.count("DescribeTasks") == 0  # never asked about: it names no task
    assert published(aws["cloudwatch"], "OrphanedFlowRuns", **GPU) == 0
    assert published(aws["cloudwatch"], "DemandFlowRuns", **PROCESS) == 2
    assert published(aws["cloudwatch"], "UnmappedFlowRuns", **PROCESS) == 2


@pytest.mark.parametrize(("status", "orphaned"), [("ONLINE", 0), ("OFFLINE", 1)])
def test_a_task_ecs_does_not_know_orphans_its_runs_only_if_its_worker_is_gone_too(
        prefect: FakePrefect, ecs: FakeEcs, aws: dict[str, Any], status: str, orphaned: int) -> None:
    ecs.service("prefect", "process-worker", tasks=1)
    unknown = uuid.uuid4().hex  # ECS answers MISSING: forgotten, or never a task of this account
    prefect.workers["pool-b"] = [{"name": f"ecs-{unknown}", "last_heartbeat_time": NOW.isoformat(), "status": status}]
    prefect.add_runs("pool-b", "gpu", 1, "RUNNING", worker=f"ecs-{unknown}")
    tick(parse_config(PUBLISHER_CONTEXT), ecs, aws, WarmState())
    assert ecs.count("DescribeTasks") == 1
    assert published(aws["cloudwatch"], "OrphanedFlowRuns", **GPU) == orphaned
    assert published(aws["cloudwatch"], "DemandFlowRuns", **PROCESS) == 1 - orphaned


def test_a_task_stopped_in_another_service_orphans_nothing_here(
        prefect: FakePrefect, ecs: FakeEcs, aws: dict[str, Any]) -> None:
    ecs.service("prefect", "process-worker", tasks=1)
    elsewhere = ecs.start_task("prefect", "ecs-worker")
    ecs.stop_task(elsewhere)
    prefect.add_runs("pool-b", "gpu", 1, "RUNNING", worker=f"ecs-{elsewhere}")
    tick(parse_config(PUBLISHER_CONTEXT), ecs, aws, WarmState())
    assert published(aws["cloudwatch"], "OrphanedFlowRuns", **GPU) == 0
    assert published(aws["cloudwatch"], "DemandFlowRuns", **PROCESS) == 1


@pytest.mark.parametrize(("version", "says"), [
    ("2.18.3", "Prefect 2.18.3 has no flow-run labels: 2.x agents and workers label nothing"),
    ("3.1.5", "Prefect server 3.1.5 is older than 3.1.6 and stores no flow-run labels; upgrade the server to "
              "3.1.6+ and the workers to 3.1.9+"),
    ("3.1.6", "Prefect 3.1.6 answered without flow-run labels"),
])
def test_runs_without_any_labels_are_explained_once_by_the_servers_version(
        prefect: FakePrefect, ecs: FakeEcs, aws: dict[str, Any], caplog: pytest.LogCaptureFixture, version: str,
        says: str) -> None:
    ecs.service("prefect", "process-worker", tasks=1)
    prefect.version = version
    prefect.add_runs("pool-b", "gpu", 1, "RUNNING")  # no labels at all
    warm = WarmState()
    caplog.set_level(logging.INFO, logger="prefect_backlog")
    logging.getLogger("prefect_backlog").addHandler(caplog.handler)
    try:
        for _ in range(2):
            tick(parse_config(PUBLISHER_CONTEXT), ecs, aws, warm)
    finally:
        logging.getLogger("prefect_backlog").removeHandler(caplog.handler)
    assert caplog.text.count(says) == 1  # once per container
    assert prefect.requests_to("GET /admin/version") == 1
    assert published(aws["cloudwatch"], "DemandFlowRuns", **PROCESS) == 1


def test_az_rebalancing_on_a_protected_service_is_logged_once_per_container(
        prefect: FakePrefect, ecs: FakeEcs, aws: dict[str, Any], caplog: pytest.LogCaptureFixture) -> None:
    ecs.service("prefect", "process-worker", tasks=1)
    ecs.rebalancing |= {("prefect", "process-worker"), ("prefect", "ecs-worker")}
    queues = [dict(q) for q in PUBLISHER_CONTEXT["queues"]]
    for q in queues[:2]:
        q["taskProtection"] = False  # ecs-worker is not protected: rebalancing cannot undo what is not done
    config = parse_config({**PUBLISHER_CONTEXT, "queues": queues})
    warm = WarmState()
    logging.getLogger("prefect_backlog").addHandler(caplog.handler)
    try:
        for _ in range(2):
            tick(config, ecs, aws, warm)
    finally:
        logging.getLogger("prefect_backlog").removeHandler(caplog.handler)
    assert caplog.text.count("has Availability Zone rebalancing ENABLED") == 1
    assert "ECS service prefect/process-worker has Availability Zone rebalancing ENABLED" in caplog.text
    assert "--availability-zone-rebalancing DISABLED" in caplog.text


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


def test_a_service_whose_queue_was_not_read_keeps_its_protection_and_releases_nothing(
        prefect: FakePrefect, ecs: FakeEcs, aws: dict[str, Any]) -> None:
    expiring, later, idle = ecs.service("prefect", "process-worker", tasks=3)
    # The edge: protection that ends exactly at the next sample's refresh point is not yet refreshed.
    refresh_point = NOW + timedelta(seconds=60) + REFRESH_MARGIN
    ecs.tasks[expiring].protected_until = refresh_point - timedelta(seconds=1)
    ecs.tasks[later].protected_until = refresh_point
    gpu_id = prefect.queue_id("pool-b", "gpu")
    prefect.faults["/flow_runs/filter"] = lambda body: (
        (500, {}, "{}") if gpu_id in body["work_pool_queues"]["id"]["any_"] else None)
    report = tick(parse_config(PUBLISHER_CONTEXT), ecs, aws, WarmState())
    updates = [a for op, a in ecs.calls if op == "UpdateTaskProtection"]
    assert updates == [{"cluster": "prefect", "tasks": [expiring], "protectionEnabled": True,
                        "expiresInMinutes": 5}]  # refreshed; nothing released, nothing newly protected
    assert ecs.protected("prefect", "process-worker") == {expiring, later}
    assert idle not in ecs.protected("prefect", "process-worker")
    assert published(aws["cloudwatch"], "OrphanedFlowRuns", **GPU) is None  # runs unread: orphans unknown
    assert published(aws["cloudwatch"], "ProtectedTasks", **PROCESS) is None  # an unread service publishes nothing
    assert report.services[1].protection is not None and report.services[1].protection.held


def test_protection_outlasts_a_prefect_outage(prefect: FakePrefect, aws: dict[str, Any]) -> None:
    """Prefect down for 15 minutes: the busy task stays protected at every minute, though protection lasts 5."""
    clock = [NOW]
    ecs = FakeEcs(now=lambda: clock[0])
    ecs.service("prefect", "ecs-worker", tasks=1)
    busy, idle = ecs.service("prefect", "process-worker", tasks=2)
    prefect.add_runs("pool-b", "gpu", 1, "RUNNING", worker=f"ecs-{busy}")
    warm = WarmState()
    config = parse_config(PUBLISHER_CONTEXT)

    def sample() -> TickReport:
        client = PrefectClient(API, deadline=time.monotonic() + 20, sleep=lambda _: None, depth_memory=warm.depth)
        return run_tick(config, client, ecs=ecs, cloudwatch=aws["cloudwatch"], now=clock[0], warm=warm)

    sample()
    assert ecs.protected("prefect", "process-worker") == {busy}
    prefect.faults["/work_queues/filter"] = failing(503)  # the server is down: nothing can be read
    for minute in range(1, 16):
        clock[0] = NOW + timedelta(minutes=minute)
        report = sample()
        assert report.whole_failure is not None
        assert ecs.protected("prefect", "process-worker") == {busy}, minute  # and idle stays unprotected
    assert idle not in ecs.protected("prefect", "process-worker")
    assert not [a for op, a in ecs.calls if op == "UpdateTaskProtection" and not a["protectionEnabled"]]


def test_a_cold_container_in_an_outage_keeps_what_ecs_reports_protected(
        prefect: FakePrefect, aws: dict[str, Any]) -> None:
    ecs = FakeEcs(now=lambda: NOW)
    ecs.service("prefect", "ecs-worker", tasks=1)
    protected, unprotected = ecs.service("prefect", "process-worker", tasks=2)
    ecs.tasks[protected].protected_until = NOW + timedelta(minutes=1)  # set by an earlier container
    prefect.faults["/work_queues/filter"] = failing(503)
    tick(parse_config(PUBLISHER_CONTEXT), ecs, aws, WarmState())
    # one GetTaskProtection per protected service (both are): what ECS reports protected is kept
    assert ecs.count("GetTaskProtection") == 2
    assert ecs.protected("prefect", "process-worker") == {protected}
    assert ecs.tasks[protected].protected_until == NOW + timedelta(minutes=5)
    assert ecs.tasks[unprotected].protected_until is None  # nothing newly protected: its runs are unknown


def test_protection_can_be_switched_off_per_service(prefect: FakePrefect, ecs: FakeEcs,
                                                    aws: dict[str, Any]) -> None:
    (task,) = ecs.service("prefect", "process-worker", tasks=1)
    prefect.add_runs("pool-b", "gpu", 1, "RUNNING", worker=f"ecs-{task}")
    queues = [dict(q) for q in PUBLISHER_CONTEXT["queues"]]
    queues[2]["taskProtection"] = False
    tick(parse_config({**PUBLISHER_CONTEXT, "queues": queues}), ecs, aws, WarmState())
    assert ecs.protected("prefect", "process-worker") == set()
    assert published(aws["cloudwatch"], "ProtectedTasks", **PROCESS) is None


def test_a_run_waiting_to_retry_keeps_its_process_workers_task_protected_and_is_its_demand(
        prefect: FakePrefect, ecs: FakeEcs, aws: dict[str, Any]) -> None:
    """#23: Prefect retries a failed flow in the same process; during the delay the run is AwaitingRetry."""
    (retrying_task, idle_task) = ecs.service("prefect", "process-worker", tasks=2)
    (submitter,) = ecs.tasks.keys() - {retrying_task, idle_task}
    ecs.tasks[idle_task].protected_until = NOW + timedelta(minutes=2)  # protected while its run was Running
    prefect.add_runs("pool-b", "gpu", 1, "SCHEDULED", "AwaitingRetry", minutes_ago=-1, worker=f"ecs-{retrying_task}")
    prefect.add_runs("pool-b", "gpu", 1, "SCHEDULED", "Scheduled", minutes_ago=-120, worker=f"ecs-{idle_task}")
    # a submit-only worker's run retries inside its own task: not the worker service's demand, nor its task's
    prefect.add_runs("pool-a", "default", 1, "SCHEDULED", "AwaitingRetry", minutes_ago=1, worker=f"ecs-{submitter}")
    report = tick(parse_config(PUBLISHER_CONTEXT), ecs, aws, WarmState())
    assert ecs.protected("prefect", "process-worker") == {retrying_task}  # the Scheduled one's task is released
    assert ecs.protected("prefect", "ecs-worker") == set()
    cw = aws["cloudwatch"]
    assert published(cw, "DemandFlowRuns", **PROCESS) == 1
    assert published(cw, "DemandFlowRuns", **ECS_WORKER) == 0
    assert published(cw, "DueFlowRuns", WorkPool="pool-a", WorkQueue="default") == 0  # not due, not Late
    assert published(cw, "LateFlowRuns", **GPU) == 0
    assert report.orphaned == 0
    (in_flight,) = [body for path, body in prefect.calls if path == "/flow_runs/filter"
                    and "operator" in body["flow_runs"]["state"]
                    and prefect.queue_id("pool-b", "gpu") in body["work_pool_queues"]["id"]["any_"]]
    assert in_flight["flow_runs"]["state"]["name"] == {"any_": ["AwaitingRetry"]}
    assert all("AwaitingRetry" not in body["flow_runs"]["state"].get("name", {}).get("any_", [])
               for path, body in prefect.calls if path == "/flow_runs/filter" and "operator" not in
               body["flow_runs"]["state"])  # the due stream leaves them out: no double count


# --- orphanedRuns "reschedule" (#23) --------------------------------------------------------------------


def orphan_setup(prefect: FakePrefect, ecs: FakeEcs, orphans: int = 1) -> tuple[str, str, list[str], str]:
    (alive,) = ecs.service("prefect", "process-worker", tasks=1)
    dead = ecs.start_task("prefect", "process-worker")
    ecs.stop_task(dead)
    (live_run,) = prefect.add_runs("pool-b", "gpu", 1, "RUNNING", worker=f"ecs-{alive}")
    orphaned = prefect.add_runs("pool-b", "gpu", orphans, "RUNNING", worker=f"ecs-{dead}")
    return alive, dead, orphaned, live_run


def test_an_orphan_is_rescheduled_after_two_samples_and_is_demand_at_once(
        prefect: FakePrefect, ecs: FakeEcs, aws: dict[str, Any], caplog: pytest.LogCaptureFixture) -> None:
    _, dead, (orphan,), live_run = orphan_setup(prefect, ecs)
    config = parse_config({**PUBLISHER_CONTEXT, "orphanedRuns": "reschedule"})
    warm = WarmState()
    once = tick(config, ecs, aws, warm)
    assert once.rescheduled_orphans == 0 and prefect.run(orphan)["state_type"] == "RUNNING"  # seen once only
    assert published(aws["cloudwatch"], "DemandFlowRuns", **PROCESS) == 1  # the orphan is not demand
    caplog.set_level(logging.INFO, logger="prefect_backlog")
    logging.getLogger("prefect_backlog").addHandler(caplog.handler)
    try:
        twice = tick(config, ecs, aws, warm)
    finally:
        logging.getLogger("prefect_backlog").removeHandler(caplog.handler)
    assert twice.rescheduled_orphans == 1 and twice.crashed == 0
    state = prefect.run(orphan)["state"]
    assert (state["type"], state["name"], state["forced"]) == ("SCHEDULED", "Scheduled", True)
    assert f"ECS task {dead}" in state["message"]
    assert prefect.run(orphan)["next_scheduled_start_time"] == NOW.isoformat()  # due now
    assert prefect.run(live_run)["state_type"] == "RUNNING"  # a live task's run: untouched
    cw = aws["cloudwatch"]
    assert published(cw, "DemandFlowRuns", **PROCESS) == 2  # the live run, and the rescheduled one at once
    assert published(cw, "RescheduledOrphanedFlowRuns", Publisher="TestPublisher") == 1
    assert f"set orphaned run {orphan} of queues[2] pool-b/gpu back to Scheduled (ECS task {dead}" in caplog.text
    after = tick(config, ecs, aws, warm)
    assert after.orphaned == 0 and after.rescheduled_orphans == 0
    assert after.queues[2].backlog is not None and after.queues[2].backlog.due == 1  # due, for a live worker


def test_rescheduling_is_capped_per_sample(prefect: FakePrefect, ecs: FakeEcs, aws: dict[str, Any]) -> None:
    _, _, orphans, _ = orphan_setup(prefect, ecs, orphans=3)
    config = parse_config({**PUBLISHER_CONTEXT, "orphanedRuns": "reschedule", "maxCrashesPerRun": 2})
    warm = WarmState()
    tick(config, ecs, aws, warm)
    assert tick(config, ecs, aws, warm).rescheduled_orphans == 2
    assert sorted(prefect.run(r)["state_type"] for r in orphans) == ["RUNNING", "SCHEDULED", "SCHEDULED"]
    assert tick(config, ecs, aws, warm).rescheduled_orphans == 1  # the third, in the next sample


@pytest.mark.parametrize(("moved_on", "touched"), [
    ({}, True),
    ({"state_type": "COMPLETED", "state_name": "Completed"}, False),  # finished after all
    ({"labels": {"prefect.worker.name": "ecs-" + "f" * 32}}, False),  # another worker holds it now
    ({"state_type": "PAUSED", "state_name": "Paused"}, False),  # moved on in its own process: something is alive
    ({"state_type": "SCHEDULED", "state_name": "AwaitingRetry"}, False),  # waiting to retry: a worker claims it
])
def test_an_orphan_is_rescheduled_only_if_read_again_it_still_holds_its_dead_task(
        prefect: FakePrefect, ecs: FakeEcs, aws: dict[str, Any], moved_on: dict[str, Any], touched: bool) -> None:
    _, _, (orphan,), _ = orphan_setup(prefect, ecs)
    config = parse_config({**PUBLISHER_CONTEXT, "orphanedRuns": "reschedule"})
    warm = WarmState()
    tick(config, ecs, aws, warm)

    def move_on(_: dict[str, Any]) -> None:  # between the sample's read and the re-read before the write
        run = prefect.run(orphan)
        run.update(moved_on)
        run["state"] = {**run["state"], "type": run["state_type"], "name": run["state_name"]}

    prefect.faults["GET /flow_runs/{id}"] = move_on
    report = tick(config, ecs, aws, warm)
    assert report.rescheduled_orphans == int(touched)
    assert (prefect.run(orphan)["state_name"] == "Scheduled") is touched
    assert prefect.requests_to("/flow_runs/{id}/set_state") == int(touched)


def test_orphaned_runs_crash_is_what_crash_orphaned_runs_did(prefect: FakePrefect, ecs: FakeEcs,
                                                             aws: dict[str, Any]) -> None:
    _, _, (orphan,), _ = orphan_setup(prefect, ecs)
    config = parse_config({**PUBLISHER_CONTEXT, "orphanedRuns": "crash"})
    warm = WarmState()
    tick(config, ecs, aws, warm)
    report = tick(config, ecs, aws, warm)
    assert (report.crashed, report.rescheduled_orphans) == (1, 0)
    assert prefect.run(orphan)["state_type"] == "CRASHED"


def test_an_orphan_makes_the_next_sample_read_in_full(prefect: FakePrefect, ecs: FakeEcs,
                                                       aws: dict[str, Any]) -> None:
    """A run whose task died may be claimed again under another worker, which reads by changes cannot see."""
    dead = ecs.start_task("prefect", "process-worker")
    ecs.service("prefect", "process-worker")
    prefect.add_runs("pool-b", "gpu", 1, "RUNNING", worker=f"ecs-{dead}")
    config, warm = parse_config(PUBLISHER_CONTEXT), WarmState()

    def sample() -> TickReport:
        client = PrefectClient(API, deadline=time.monotonic() + 20, sleep=lambda _: None, depth_memory=warm.depth,
                               ledger=warm.ledger)
        return run_tick(config, client, ecs=ecs, cloudwatch=None, now=NOW, warm=warm)

    sample()
    sample()
    assert warm.ledger.stats.changes >= 1  # the task is alive: the second sample read by changes
    ecs.stop_task(dead)
    full = sum(warm.ledger.stats.full.values())
    (gpu,) = [q for q in sample().queues if q.config.work_queue == "gpu"]
    assert gpu.backlog is not None and gpu.backlog.orphaned == 1
    changes = warm.ledger.stats.changes
    sample()
    assert warm.ledger.stats.changes == changes and sum(warm.ledger.stats.full.values()) > full
