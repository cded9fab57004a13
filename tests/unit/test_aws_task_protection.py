"""Task protection applied to ECS: calls batched to their limits, nothing done twice, failures leave things be.

moto does not implement the task-level calls (see harness.fake_ecs.py),
so these use a stand-in with the API's shapes and limits; the throttling test
runs a real botocore ECS client against a loopback server.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import boto3
import pytest
from botocore.exceptions import ClientError

from harness.fake_ecs import FakeEcs
from prefect_backlog.aws.task_protection import ProtectionLedger, protection_minutes, reconcile
from prefect_backlog.backlog import RunFacts
from prefect_backlog.handler import ECS_CLIENT_CONFIG
from prefect_backlog.protection import Holding

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
SERVICE = ("prefect", "process-worker")


def busy(*task_ids: str) -> Holding:
    return Holding({t: (RunFacts(f"run-{t}", "q", "RUNNING", "Running", NOW, worker_name=f"ecs-{t}"),)
                    for t in task_ids}, (), False)


@pytest.fixture
def ecs() -> FakeEcs:
    return FakeEcs(now=lambda: NOW)


def test_busy_tasks_are_protected_in_calls_of_ten_and_idle_ones_released(ecs: FakeEcs) -> None:
    tasks = ecs.service(*SERVICE, tasks=30)
    ledger = ProtectionLedger()
    first = reconcile(ecs, SERVICE, busy(*tasks[:25]), ledger, now=NOW, sample_interval_seconds=60)
    assert ecs.protected(*SERVICE) == set(tasks[:25]) and first.protected == 25
    updates = [a for op, a in ecs.calls if op == "UpdateTaskProtection"]
    assert sorted(len(a["tasks"]) for a in updates) == [5, 10, 10]
    assert {a["expiresInMinutes"] for a in updates} == {protection_minutes(60)} == {5}
    assert ecs.count("GetTaskProtection") == 1  # the first look at this service from this container

    ecs.calls.clear()
    second = reconcile(ecs, SERVICE, busy(*tasks[:5]), ledger, now=NOW + timedelta(minutes=1),
                       sample_interval_seconds=60)
    assert second.release == tuple(sorted(tasks[5:25])) and ecs.protected(*SERVICE) == set(tasks[:5])
    assert second.protect == ()  # still protected for 4 minutes: no refresh yet
    # protection is read every sample (workers protect their own tasks), after the runs: the release rule's look
    assert [op for op, _ in ecs.calls] == ["ListTasks", "GetTaskProtection", "UpdateTaskProtection",
                                           "UpdateTaskProtection"]
    (read,) = [a["tasks"] for op, a in ecs.calls if op == "GetTaskProtection"]
    assert sorted(read) == sorted(tasks)

    ecs.calls.clear()
    reconcile(ecs, SERVICE, busy(*tasks[:5]), ledger, now=NOW + timedelta(minutes=3), sample_interval_seconds=60)
    refreshed = [a for op, a in ecs.calls if op == "UpdateTaskProtection"]
    assert len(refreshed) == 1 and sorted(refreshed[0]["tasks"]) == sorted(tasks[:5])  # 2 minutes left: refresh


def test_the_calls_it_reports_are_the_calls_ecs_received(ecs: FakeEcs) -> None:
    tasks = ecs.service(*SERVICE, tasks=130)  # ListTasks and GetTaskProtection page at 100, updates go by 10
    outcome = reconcile(ecs, SERVICE, busy(*tasks[:25], "stopped-task"), ProtectionLedger(), now=NOW,
                        sample_interval_seconds=60)
    assert outcome.calls == len(ecs.calls) == 2 + 2 + 1 + 3  # list, read, describe the missing task, protect


def test_an_idle_service_with_nothing_protected_costs_no_call(ecs: FakeEcs) -> None:
    ecs.service(*SERVICE, tasks=3)
    ledger = ProtectionLedger()
    reconcile(ecs, SERVICE, busy(), ledger, now=NOW, sample_interval_seconds=60)  # cold: look once
    ecs.calls.clear()
    for minute in range(1, 4):
        outcome = reconcile(ecs, SERVICE, busy(), ledger, now=NOW + timedelta(minutes=minute),
                            sample_interval_seconds=60)
        assert outcome.protected == 0 and outcome.orphans_known  # no run names a task: none is orphaned
    assert ecs.calls == []


def test_a_cold_container_releases_what_an_earlier_one_left_protected(ecs: FakeEcs) -> None:
    tasks = ecs.service(*SERVICE, tasks=2)
    ecs.tasks[tasks[0]].protected_until = NOW + timedelta(minutes=4)  # set a minute ago, at the latest
    outcome = reconcile(ecs, SERVICE, busy(), ProtectionLedger(), now=NOW, sample_interval_seconds=60)
    assert outcome.release == (tasks[0],) and ecs.protected(*SERVICE) == set()


def test_a_cold_container_keeps_a_protection_set_just_before_its_read(ecs: FakeEcs) -> None:
    tasks = ecs.service(*SERVICE, tasks=1)
    ecs.tasks[tasks[0]].protected_until = NOW + timedelta(minutes=5, seconds=-5)  # a worker's PUT 5 s ago
    ledger = ProtectionLedger()
    first = reconcile(ecs, SERVICE, busy(), ledger, now=NOW, sample_interval_seconds=60)
    assert first.release == () and ecs.protected(*SERVICE) == {tasks[0]} and first.protected == 1
    second = reconcile(ecs, SERVICE, busy(), ledger, now=NOW + timedelta(minutes=1), sample_interval_seconds=60)
    assert second.release == (tasks[0],)  # no PUT since the first look


def test_listing_many_tasks_pages_by_100_and_asks_only_about_missing_ones(ecs: FakeEcs) -> None:
    tasks = ecs.service(*SERVICE, tasks=150)
    stopped = ecs.start_task(*SERVICE)
    ecs.stop_task(stopped)
    other = ecs.start_task("prefect", "another-service")
    outcome = reconcile(ecs, SERVICE, busy(tasks[0], stopped, other), ProtectionLedger(), now=NOW,
                        sample_interval_seconds=60)
    assert ecs.count("ListTasks") == 2
    (described,) = [a["tasks"] for op, a in ecs.calls if op == "DescribeTasks"]
    assert sorted(described) == sorted([stopped, other])
    assert [r.id for r in outcome.orphaned] == [f"run-{stopped}"]  # the other service's task is alive
    assert ecs.protected(*SERVICE) == {tasks[0]} and ecs.protected("prefect", "another-service") == set()


def test_a_failed_task_read_changes_nothing(ecs: FakeEcs) -> None:
    tasks = ecs.service(*SERVICE, tasks=2)
    ledger = ProtectionLedger()
    reconcile(ecs, SERVICE, busy(tasks[0]), ledger, now=NOW, sample_interval_seconds=60)
    ecs.failures["ListTasks"] = ClientError({"Error": {"Code": "AccessDeniedException", "Message": "denied"}},
                                            "ListTasks")
    outcome = reconcile(ecs, SERVICE, busy(), ledger, now=NOW + timedelta(minutes=1), sample_interval_seconds=60)
    assert outcome.errors and "denied" in outcome.errors[0] and outcome.protected is None
    assert ecs.protected(*SERVICE) == {tasks[0]}  # not released on a failed read: the expiry bounds it
    assert ecs.count("UpdateTaskProtection") == 1


def test_a_failed_protection_call_is_reported_and_tried_again_next_sample(ecs: FakeEcs) -> None:
    tasks = ecs.service(*SERVICE, tasks=1)
    ledger = ProtectionLedger()
    ecs.failures["UpdateTaskProtection"] = ClientError(
        {"Error": {"Code": "ThrottlingException", "Message": "Rate exceeded"}}, "UpdateTaskProtection")
    failed = reconcile(ecs, SERVICE, busy(tasks[0]), ledger, now=NOW, sample_interval_seconds=60)
    assert failed.errors and "Rate exceeded" in failed.errors[0] and failed.protected == 0
    retried = reconcile(ecs, SERVICE, busy(tasks[0]), ledger, now=NOW + timedelta(minutes=1),
                        sample_interval_seconds=60)
    assert retried.protect == (tasks[0],) and ecs.protected(*SERVICE) == {tasks[0]}


def test_a_dry_run_reads_and_changes_nothing(ecs: FakeEcs) -> None:
    tasks = ecs.service(*SERVICE, tasks=2)
    outcome = reconcile(ecs, SERVICE, busy(tasks[1]), ProtectionLedger(), now=NOW, sample_interval_seconds=60,
                        apply=False)
    assert outcome.protect == (tasks[1],) and ecs.count("UpdateTaskProtection") == 0


# --- throttling: botocore's adaptive retries, as the handler configures the ECS client -------------


@pytest.fixture
def throttling_ecs_endpoint() -> Iterator[tuple[str, list[str]]]:
    """A loopback endpoint answering ListTasks with ThrottlingException twice, then a page."""
    answers = [400, 400, 200]
    seen: list[str] = []

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers["Content-Length"]))
            seen.append(self.headers["X-Amz-Target"])
            status = answers.pop(0) if answers else 200
            body: dict[str, Any] = ({"__type": "ThrottlingException", "message": "Rate exceeded"} if status == 400
                                    else {"taskArns": []})
            payload = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/x-amz-json-1.1")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *_: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{server.server_port}", seen
    finally:
        server.shutdown()


def test_the_ecs_client_backs_off_and_retries_throttling(throttling_ecs_endpoint: tuple[str, list[str]]) -> None:
    endpoint, seen = throttling_ecs_endpoint
    client = boto3.client("ecs", endpoint_url=endpoint, config=ECS_CLIENT_CONFIG)
    assert client.list_tasks(cluster="prefect", serviceName="w", desiredStatus="RUNNING") ["taskArns"] == []
    assert seen == ["AmazonEC2ContainerServiceV20141113.ListTasks"] * 3
