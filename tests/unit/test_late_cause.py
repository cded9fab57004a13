"""Why a queue is Late: one cause per queue, in the documented precedence, each pinned at its edge."""

from __future__ import annotations

import json
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from prefect_backlog import dry_run
from prefect_backlog.aws.ecs import describe_services
from prefect_backlog.late_cause import (
    ECS_EVENT_WINDOW_SECONDS,
    TASK_START_SECONDS,
    LateFacts,
    ServiceEvent,
    cannot_start_event,
    late_cause,
)
from tests.support.fake_prefect import API, NOW, FakePrefect

T0 = datetime(2026, 12, 4, 12, 0, tzinfo=UTC)
PLACE = "(service worker) was unable to place a task because no container instance met all of its requirements."
NO_IP = ("(service worker) failed to launch a task with (error ENI provisioning failed: no free IP addresses in "
         "subnet subnet-1).")

# A queue with Late runs whose every other fact is healthy: workers poll, tasks asked for are up, none missing.
HEALTHY = LateFacts(late=3, paused=False, concurrency_limited=False, seconds_since_polled=5.0,
                    health_window_seconds=300, max_capacity=4, running_tasks=2, desired_tasks=2, task_shortfall=0)


def cause(facts: LateFacts, now: datetime = T0) -> str | None:
    found = late_cause(facts, now)
    return None if found is None else found.cause


def ago(seconds: float, message: str) -> ServiceEvent:
    return ServiceEvent(T0 - timedelta(seconds=seconds), message)


def test_no_late_run_has_no_cause() -> None:
    assert late_cause(replace(HEALTHY, late=0, paused=True), T0) is None


def test_each_cause_alone() -> None:
    assert cause(replace(HEALTHY, paused=True)) == "paused"
    assert cause(replace(HEALTHY, concurrency_limited=True)) == "concurrency-limit"
    assert cause(replace(HEALTHY, seconds_since_polled=None)) == "no-worker"
    assert cause(replace(HEALTHY, desired_tasks=4, running_tasks=4)) == "at-max-capacity"
    assert cause(replace(HEALTHY, events=(ago(30, PLACE),))) == "tasks-not-starting"
    assert cause(replace(HEALTHY, desired_tasks=3, short_for_seconds=60)) == "scaling-out"
    assert cause(replace(HEALTHY, task_shortfall=1)) == "scaling-out"  # the policy has yet to raise desired
    assert cause(HEALTHY) == "unknown"
    assert cause(replace(HEALTHY, running_tasks=None, desired_tasks=None, max_capacity=None)) == "unknown"


def test_precedence_each_cause_wins_over_every_later_one() -> None:
    everything = replace(HEALTHY, paused=True, concurrency_limited=True, seconds_since_polled=None, desired_tasks=4,
                         running_tasks=1, short_for_seconds=TASK_START_SECONDS + 1, task_shortfall=2,
                         events=(ago(30, PLACE),))
    assert cause(everything) == "paused"
    assert cause(replace(everything, paused=False)) == "concurrency-limit"
    assert cause(replace(everything, paused=False, concurrency_limited=False)) == "no-worker"
    at_max = replace(everything, paused=False, concurrency_limited=False, seconds_since_polled=1.0)
    assert cause(at_max) == "at-max-capacity"
    assert cause(replace(at_max, desired_tasks=3)) == "tasks-not-starting"
    assert cause(replace(at_max, desired_tasks=3, events=())) == "tasks-not-starting"  # from its duration alone
    assert cause(replace(at_max, desired_tasks=3, events=(), short_for_seconds=10)) == "scaling-out"


def test_no_worker_past_the_health_window_only() -> None:
    assert cause(replace(HEALTHY, seconds_since_polled=300)) == "unknown"
    assert cause(replace(HEALTHY, seconds_since_polled=300.5)) == "no-worker"


def test_at_max_capacity_from_the_desired_count_at_the_maximum() -> None:
    assert cause(replace(HEALTHY, desired_tasks=3, running_tasks=3)) == "unknown"
    assert cause(replace(HEALTHY, desired_tasks=4, running_tasks=0)) == "at-max-capacity"


def test_tasks_not_starting_after_the_task_start_time_exactly() -> None:
    short = replace(HEALTHY, desired_tasks=3, running_tasks=2)
    assert cause(replace(short, short_for_seconds=TASK_START_SECONDS)) == "scaling-out"
    assert cause(replace(short, short_for_seconds=TASK_START_SECONDS + 0.5)) == "tasks-not-starting"
    assert cause(replace(short, short_for_seconds=None)) == "scaling-out"  # not known for how long: benign


def test_ecs_events_that_say_tasks_cannot_start() -> None:
    found = late_cause(replace(HEALTHY, events=(ago(30, NO_IP),)), T0)
    assert found is not None and found.cause == "tasks-not-starting" and "no free IP addresses" in found.detail
    for message in (PLACE, NO_IP, "(service worker) is unable to consistently start tasks successfully.",
                    "(service worker) operations are being throttled. Will try again later."):
        assert cannot_start_event([ago(1, message)], T0) is not None, message
    assert cannot_start_event([ago(1, "(service worker) has reached a steady state.")], T0) is None


def test_an_ecs_event_counts_within_its_window_and_until_tasks_start() -> None:
    assert cannot_start_event([ago(ECS_EVENT_WINDOW_SECONDS, PLACE)], T0) is not None
    assert cannot_start_event([ago(ECS_EVENT_WINDOW_SECONDS + 1, PLACE)], T0) is None
    started = ago(10, "(service worker) has started 1 tasks: (task 0123).")
    assert cannot_start_event([ago(60, PLACE), started], T0) is None
    assert cannot_start_event([started, ago(5, PLACE)], T0) is not None


def test_describe_services_keeps_the_events_it_already_returned() -> None:
    class Ecs:
        calls = 0

        def describe_services(self, *, cluster: str, services: list[str]) -> dict[str, Any]:
            Ecs.calls += 1
            return {"services": [{"serviceName": "worker", "status": "ACTIVE", "runningCount": 0, "desiredCount": 1,
                                  "events": [{"id": "1", "createdAt": T0, "message": PLACE},
                                             {"id": "2", "createdAt": "2026-12-04T11:00:00+00:00", "message": "x"},
                                             {"id": "3", "message": "no time"}]}]}

    counts = describe_services(Ecs(), [("c", "worker")])[("c", "worker")]
    assert not isinstance(counts, Exception) and Ecs.calls == 1
    assert counts.events == (ServiceEvent(T0, PLACE), ServiceEvent(T0 - timedelta(hours=1), "x"))


QUEUES = [{"workPool": "pool-a", "workQueue": "default", "cluster": "c", "service": "worker", "maxCapacity": 3},
          {"workPool": "pool-a", "workQueue": "gpu", "cluster": "c", "service": "worker"}]


@pytest.fixture
def context_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    class Frozen:
        @staticmethod
        def now(tz: Any = None) -> Any:
            return NOW
    monkeypatch.setattr(dry_run, "datetime", Frozen)
    path = tmp_path / "cdk.json"
    path.write_text(json.dumps({"app": "python3 app.py", "context": {"prefectApiUrl": API, "queues": QUEUES}}))
    return path


def test_the_dry_run_names_each_late_queues_cause(prefect: FakePrefect, context_file: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    prefect.queue("pool-a", "gpu", paused=True)
    prefect.add_runs("pool-a", "default", 2, "SCHEDULED", "Late", minutes_ago=3)
    prefect.add_runs("pool-a", "gpu", 1, "SCHEDULED", "Late", minutes_ago=3)
    assert dry_run.main(["--context", str(context_file), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert [(q["queue"], q["late"], q["lateCause"]) for q in out["queues"]] == [
        ("pool-a/default", 2, "no-worker"), ("pool-a/gpu", 1, "paused")]
    assert {"summary", "errors", "metricData"} <= set(out)
    by_cause = {d["Dimensions"][2]["Value"]: d["Value"] for d in out["metricData"]
                if d["MetricName"] == "LateFlowRuns" and len(d["Dimensions"]) == 3}
    assert by_cause == {"no-worker": 2, "paused": 1}  # per service and cause, only the causes that have runs

    assert dry_run.main(["--context", str(context_file)]) == 0
    table = capsys.readouterr().out
    assert "Late cause" in table and "no-worker" in table and "paused" in table


def test_a_warm_container_remembers_since_when_a_service_is_short_of_tasks() -> None:
    from prefect_backlog.aws.ecs import TaskCounts
    from prefect_backlog.tick import WarmState, _short_for

    warm, key = WarmState(), ("c", "worker")
    assert _short_for({key: TaskCounts(running=1, desired=2)}, warm, T0) == {key: 0.0}
    later = T0 + timedelta(seconds=TASK_START_SECONDS + 1)
    assert _short_for({key: TaskCounts(running=1, desired=2)}, warm, later) == {key: TASK_START_SECONDS + 1}
    assert _short_for({key: TaskCounts(running=2, desired=2)}, warm, later) == {}  # caught up: the wait ends
