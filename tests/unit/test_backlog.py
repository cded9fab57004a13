"""The pure backlog model: what counts as due, demand and the per-service signal."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest

from prefect_backlog.backlog import QueueBacklog, RunFacts, queue_demand, service_signal, sum_demand, summarize_runs

NOW = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)


def run(state_type: str, state_name: str, minutes_ago: float = 1, queue: str = "q", run_id: str | None = None
        ) -> RunFacts:
    return RunFacts(id=run_id or f"{state_name}-{minutes_ago}-{queue}", queue_id=queue, state_type=state_type,
                    state_name=state_name, scheduled_at=NOW - timedelta(minutes=minutes_ago))


def test_summary_counts_due_late_pending_running_and_oldest_late() -> None:
    runs = [run("SCHEDULED", "Late", 10), run("SCHEDULED", "Late", 3), run("SCHEDULED", "Scheduled", 1),
            run("SCHEDULED", "Scheduled", -5),  # future: not due
            run("SCHEDULED", "AwaitingRetry", 2), run("SCHEDULED", "AwaitingConcurrencySlot", 2),
            run("PENDING", "Pending"), run("RUNNING", "Running"), run("RUNNING", "Running", 2)]
    counts = summarize_runs(runs, ["q", "empty"], NOW, 900)["q"].with_queue_state(NOW, paused=False, queue_limit=None)
    assert (counts.late, counts.due, counts.pending, counts.running) == (2, 4, 1, 2)
    assert counts.oldest_late_age_seconds == 600


def test_every_asked_queue_gets_a_true_zero_and_duplicates_count_once() -> None:
    twice = run("SCHEDULED", "Late", run_id="same")
    summary = summarize_runs([twice, twice], ["q", "idle"], NOW, 900)
    assert summary["q"].late == 1
    assert summary["idle"].with_queue_state(NOW, paused=False, queue_limit=None) == QueueBacklog(0, 0, 0, 0, 0.0, False)


@pytest.mark.parametrize(("paused", "in_task", "expected"), [
    (False, False, 5),     # due only
    (True, False, 0),      # paused: more workers cannot start these
    (False, True, 5 + 3),  # in-process runs keep their tasks busy
    (True, True, 3),       # ... even while the queue is paused
])
def test_queue_demand(paused: bool, in_task: bool, expected: int) -> None:
    backlog = QueueBacklog(late=2, due=5, pending=1, running=2, oldest_late_age_seconds=0, paused=paused)
    assert queue_demand(backlog, in_task) == expected


def test_signal_is_defined_at_zero_tasks_and_shortfall_counts_starting_tasks() -> None:
    at_zero = service_signal(demand=3, running_tasks=0, desired_tasks=0, target_backlog_per_task=2, max_capacity=10)
    assert at_zero.backlog_per_task == 3 and at_zero.task_shortfall == 2
    starting = service_signal(demand=3, running_tasks=0, desired_tasks=2, target_backlog_per_task=2, max_capacity=10)
    assert starting.task_shortfall == 0
    capped = service_signal(demand=100, running_tasks=4, desired_tasks=4, target_backlog_per_task=1, max_capacity=6)
    assert capped.backlog_per_task == 25 and capped.task_shortfall == 2
    idle = service_signal(demand=0, running_tasks=3, desired_tasks=3, target_backlog_per_task=1, max_capacity=6)
    assert idle.backlog_per_task == 0 and idle.task_shortfall == 0


@pytest.mark.parametrize(("running", "desired", "expected"), [
    (1, 4, 2.0),   # tasks still starting: per desired task, not 8 per the one running
    (6, 4, 2.0),   # protected tasks held above desired do not lower it
    (0, 1, 8.0),   # exactly one desired task
    (0, 0, 8.0),   # at zero the demand itself, so a scale-from-zero reads above target
])
def test_backlog_per_task_is_per_desired_task(running: int, desired: int, expected: float) -> None:
    signal = service_signal(demand=8, running_tasks=running, desired_tasks=desired, target_backlog_per_task=2,
                            max_capacity=10)
    assert signal.backlog_per_task == expected


@pytest.mark.parametrize("desired", [0, 1, 2, 3, 4, 5, 7, 10])
def test_target_tracking_proportional_answer_is_the_need_whatever_is_starting(desired: int) -> None:
    """AAS computes ceil(desired * metric / target); with the metric per desired task that is ceil(demand / target)."""
    demand, target = 7, 2.0
    signal = service_signal(demand=demand, running_tasks=0, desired_tasks=desired, target_backlog_per_task=target,
                            max_capacity=10)
    assert math.ceil(max(desired, 1) * signal.backlog_per_task / target) == math.ceil(demand / target)


def test_service_demand_is_unknown_when_any_queue_is_unknown() -> None:
    assert sum_demand({0: 2, 1: 3}, [0, 1]) == 5
    assert sum_demand({0: 2, 1: None}, [0, 1]) is None


def test_pending_runs_past_the_threshold_are_stuck() -> None:
    fresh = RunFacts("fresh", "q", "PENDING", "Pending", NOW, state_since=NOW - timedelta(minutes=2))
    stuck = RunFacts("stuck", "q", "PENDING", "Pending", NOW, state_since=NOW - timedelta(minutes=20))
    unknown = RunFacts("unknown", "q", "PENDING", "Pending", NOW, state_since=None)
    running = RunFacts("running", "q", "RUNNING", "Running", NOW, state_since=NOW - timedelta(hours=2))
    counts = summarize_runs([fresh, stuck, unknown, running], ["q"], NOW, stuck_after_seconds=900)["q"]
    assert counts.pending == 3 and counts.stuck_pending_ids == ("stuck",)


@pytest.mark.parametrize(("queue_limit", "pool_full", "limited", "demand"), [
    (None, False, False, 5),
    (4, False, True, 0),   # 1 Pending + 3 Running fill a limit of 4: due runs wait on the limit
    (5, False, False, 5),
    (None, True, True, 0),  # the pool's limit is used up
])
def test_a_used_up_concurrency_limit_holds_the_backlog_but_adds_no_demand(
        queue_limit: int | None, pool_full: bool, limited: bool, demand: int) -> None:
    counts = summarize_runs([run("SCHEDULED", "Late", 2, run_id=f"l{i}") for i in range(5)]
                            + [run("PENDING", "Pending", run_id="p")]
                            + [run("RUNNING", "Running", run_id=f"r{i}") for i in range(3)], ["q"], NOW, 900)["q"]
    backlog = counts.with_queue_state(NOW, paused=False, queue_limit=queue_limit, pool_limit_full=pool_full)
    assert backlog.concurrency_limited is limited and backlog.late == 5
    assert queue_demand(backlog, runs_in_worker_task=False) == demand


# --- a run waiting to retry (#23) -------------------------------------------------------------------


def retry(minutes_ago: float, *, worker: str | None = "ecs-" + "a" * 32, labelled: bool = True,
          name: str = "AwaitingRetry", run_id: str | None = None) -> RunFacts:
    return RunFacts(id=run_id or f"{name}-{minutes_ago}-{worker}-{labelled}", queue_id="q", state_type="SCHEDULED",
                    state_name=name, scheduled_at=NOW - timedelta(minutes=minutes_ago), worker_name=worker,
                    labelled=labelled)


@pytest.mark.parametrize(("run_", "retrying", "due"), [
    (retry(-1), 1, 0),  # a worker's run during its retry delay: in flight
    (retry(1), 1, 0),  # past its retry time (its engine is about to propose Running): in flight, not due
    (retry(2), 1, 0),  # exactly RETRY_START_GRACE_SECONDS past: still in flight
    (retry(2.01), 0, 1),  # more: no process proposed Running, a worker must claim it: due (never Late)
    (retry(2.01, worker=None, labelled=False), 0, 1),
    (retry(-1, worker=None, labelled=False), 1, 0),  # 2.x: no labels at all, an agent's run: in flight
    (retry(1, worker=None), 0, 1),  # labels exist but no worker's: created through the API, due as before
    (retry(-1, worker=None), 0, 0),  # ... and not yet due
    (retry(1, name="Scheduled"), 0, 1),  # Scheduled under a worker's label (e.g. rescheduled): due, not in flight
    (retry(-1, name="Scheduled"), 0, 0),
    (retry(1, name="AwaitingConcurrencySlot"), 0, 0),  # no process, waits on a limit
])
def test_a_workers_run_awaiting_retry_is_in_flight_never_due_nor_late(run_: RunFacts, retrying: int,
                                                                     due: int) -> None:
    counts = summarize_runs([run_], ["q"], NOW, 900)["q"]
    assert (counts.retrying, counts.due, counts.late, counts.upcoming) == (retrying, due, 0, 0)
    assert run_.in_flight is bool(retrying or run_.retrying)
    assert counts.in_flight_runs == ((run_,) if retrying else ())


@pytest.mark.parametrize(("in_task", "expected"), [(True, 2), (False, 0)])
def test_runs_waiting_to_retry_are_demand_only_where_runs_live_in_the_worker_task(in_task: bool,
                                                                                   expected: int) -> None:
    counts = summarize_runs([retry(-1, run_id="1"), retry(-2, run_id="2")], ["q"], NOW, 900, prewarm={"q": 600})["q"]
    backlog = counts.with_queue_state(NOW, paused=True, queue_limit=None)  # paused: in flight still needs its task
    assert backlog.in_flight == 2
    assert queue_demand(backlog, runs_in_worker_task=in_task) == expected
