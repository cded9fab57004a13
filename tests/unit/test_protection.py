"""The pure rules of task protection: which runs hold a task, which tasks to protect or release, what is orphaned."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from prefect_backlog.backlog import RunFacts
from prefect_backlog.protection import (
    Holding,
    ServiceTasks,
    holding_runs,
    holds_task,
    orphaned_in_a_row,
    plan_hold,
    plan_protection,
    still_orphaned,
    suspects,
    task_id_of,
)

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
A, B, C, D = ("a" * 32, "b" * 32, "c" * 32, "d" * 32)


def run(state_type: str, worker: str | None, *, name: str | None = None, run_id: str = "r", queue: str = "q",
        since_seconds: float = 300, labelled: bool = True) -> RunFacts:
    return RunFacts(id=run_id, queue_id=queue, state_type=state_type, state_name=name or state_type.title(),
                    scheduled_at=NOW, state_since=NOW - timedelta(seconds=since_seconds), worker_name=worker,
                    labelled=labelled)


@pytest.mark.parametrize(("worker", "task"), [
    (f"ecs-{A}", A),
    ("ecs-3f2b9c4e8d1a4b6e9f0c2a7d5e1b8c3f", "3f2b9c4e8d1a4b6e9f0c2a7d5e1b8c3f"),
    (f"prefect-worker {A} (eu-west-1)", None),  # merely contains 32 hex digits: a uuid4().hex, an md5
    (A, None),  # no "ecs-" prefix
    (f"ecs-{A} ", None),  # anything after it
    (f"my-ecs-{A}", None),  # anything before it
    ("ProcessWorker 3f2b9c4e-8d1a-4b6e-9f0c-2a7d5e1b8c3f", None),  # Prefect's default name: a uuid with dashes
    (f"ecs-{A}-{B}", None),  # two task ids: which one?
    ("ecs-" + "a" * 33, None),  # not a task id
    ("ecs-" + "a" * 31, None),
    ("ecs-" + "A" * 32, None),  # task ids are lowercase
    (None, None),
])
def test_the_task_id_a_worker_name_carries(worker: str | None, task: str | None) -> None:
    assert task_id_of(worker) == task


@pytest.mark.parametrize(("state_type", "name", "in_task", "holds"), [
    ("PENDING", "Pending", False, True),  # still being submitted by its worker
    ("PENDING", "Pending", True, True),
    ("RUNNING", "Running", False, False),  # runs as its own infrastructure: the worker is done with it
    ("RUNNING", "Running", True, True),
    ("CANCELLING", "Cancelling", True, True),
    ("PAUSED", "Paused", True, True),  # paused in its process
    ("PAUSED", "Suspended", True, False),  # has left its process
    ("SCHEDULED", "Resuming", True, False),  # carries the old worker's label, but no process
    ("COMPLETED", "Completed", True, False),
])
def test_which_runs_hold_their_workers_task(state_type: str, name: str, in_task: bool, holds: bool) -> None:
    assert holds_task(run(state_type, f"ecs-{A}", name=name), in_task) is holds


def test_holding_runs_by_task_and_those_that_cannot_be_mapped() -> None:
    runs = [run("RUNNING", f"ecs-{A}", run_id="1"), run("RUNNING", f"ecs-{A}", run_id="2"),
            run("PENDING", f"ecs-{B}", run_id="3"),
            run("RUNNING", "ProcessWorker 3f2b9c4e-8d1a-4b6e-9f0c-2a7d5e1b8c3f", run_id="4"),
            run("PENDING", None, run_id="5", since_seconds=3),  # just claimed: the label follows in a moment
            run("PENDING", None, run_id="6", since_seconds=600),  # no label after ten minutes: unmapped
            run("COMPLETED", f"ecs-{C}", run_id="7")]
    holding = holding_runs([(runs, True)], NOW)
    assert {task: [r.id for r in held] for task, held in holding.mapped.items()} == {A: ["1", "2"], B: ["3"]}
    assert [r.id for r in holding.unmapped] == ["4", "6"]
    assert not holding.unlabelled


def test_runs_that_carry_no_labels_at_all_are_prefect_2() -> None:
    holding = holding_runs([([run("RUNNING", None, labelled=False)], True)], NOW)
    assert holding.unlabelled and not holding.mapped and not holding.unmapped


def test_protect_the_busy_refresh_the_expiring_release_the_idle() -> None:
    holding = Holding({A: (run("RUNNING", f"ecs-{A}"),), B: (run("RUNNING", f"ecs-{B}"),),
                       C: (run("RUNNING", f"ecs-{C}"),)}, (), False)
    tasks = ServiceTasks(live=frozenset({A, B, C, D}),
                         protected={B: NOW + timedelta(minutes=4), C: NOW + timedelta(minutes=1),
                                    D: NOW + timedelta(minutes=4)})
    plan = plan_protection(holding, tasks, refresh_before=NOW + timedelta(minutes=3))
    assert plan.protect == (A, C)  # A is new, C expires before the next sample and margin; B is fine
    assert plan.release == (D,)  # protected, holding nothing
    assert plan.protected_after == {A, B, C}
    assert plan.orphaned == ()


def test_only_a_task_ecs_reports_gone_orphans_its_runs() -> None:
    gone_run, racing_run, other_service_run = (run("RUNNING", f"ecs-{t}", run_id=t[0]) for t in (A, B, C))
    holding = Holding({A: (gone_run,), B: (racing_run,), C: (other_service_run,)}, (), False)
    live = frozenset({D})
    assert suspects(holding, live) == {A, B, C}  # each one is asked about on its own
    # DescribeTasks: A is STOPPED; B started after the list was read (RUNNING); C runs in another service
    plan = plan_protection(holding, ServiceTasks(live=live, protected={}, stopped=frozenset({A})),
                           refresh_before=NOW)
    assert plan.orphaned == (gone_run,)
    assert plan.protect == () and plan.release == ()  # B and C are not this service's to protect


@pytest.mark.parametrize(("online", "orphaned"), [
    (frozenset({f"ecs-{A}"}), False),  # ECS does not know the task, but its worker heartbeats: alive
    (frozenset({f"ecs-{B}"}), True),  # its worker is gone from Prefect too
    (frozenset(), True),
    (None, False),  # worker health unread: unknown, so not orphaned
])
def test_a_task_ecs_does_not_know_orphans_its_runs_only_when_its_worker_is_gone(
        online: frozenset[str] | None, orphaned: bool) -> None:
    missing_run = run("RUNNING", f"ecs-{A}")
    holding = Holding({A: (missing_run,)}, (), False)
    tasks = ServiceTasks(live=frozenset(), protected={}, missing=frozenset({A}), online_workers=online)
    assert plan_protection(holding, tasks, refresh_before=NOW).orphaned == ((missing_run,) if orphaned else ())


def test_a_stopped_task_orphans_its_runs_even_if_a_worker_of_that_name_is_online() -> None:
    """STOPPED in this service is ECS's own word: a worker of the same name elsewhere does not revive it."""
    stopped_run = run("RUNNING", f"ecs-{A}")
    tasks = ServiceTasks(live=frozenset(), protected={}, stopped=frozenset({A}),
                         online_workers=frozenset({f"ecs-{A}"}))
    plan = plan_protection(Holding({A: (stopped_run,)}, (), False), tasks, refresh_before=NOW)
    assert plan.orphaned == (stopped_run,)


def test_a_look_alike_worker_name_is_demand_not_an_orphan() -> None:
    """A worker named with a uuid4().hex holds its runs unmapped: never asked about, never orphaned."""
    look_alike = run("RUNNING", f"worker-{A}")
    holding = holding_runs([([look_alike], True)], NOW)
    assert holding.unmapped == (look_alike,) and not holding.mapped
    assert suspects(holding, frozenset()) == frozenset()


def test_hold_keeps_and_refreshes_what_is_protected_and_releases_nothing() -> None:
    refresh_before = NOW + timedelta(minutes=3)
    tasks = ServiceTasks(live=frozenset({A, B, C}),
                         protected={A: refresh_before - timedelta(seconds=1), B: refresh_before,
                                    D: NOW + timedelta(minutes=1)})  # D is no longer live
    plan = plan_hold(tasks, refresh_before=refresh_before)
    assert plan.protect == (A,)  # B expires exactly at the refresh point: not yet
    assert plan.release == () and plan.orphaned == ()
    assert plan.protected_after == {A, B}


def test_only_runs_orphaned_twice_in_a_row_may_be_crashed() -> None:
    first, second = run("RUNNING", f"ecs-{A}", run_id="1"), run("RUNNING", f"ecs-{A}", run_id="2")
    assert orphaned_in_a_row(set(), [first, second]) == ()
    assert orphaned_in_a_row({"1"}, [first, second]) == (first,)


@pytest.mark.parametrize(("state_type", "in_task", "pending_seconds", "worker", "still"), [
    ("RUNNING", True, 0, f"ecs-{A}", True),  # its process lived in the dead task
    ("PAUSED", True, 0, f"ecs-{A}", True),
    ("COMPLETED", True, 0, f"ecs-{A}", False),  # finished after all
    ("RUNNING", True, 0, f"ecs-{B}", False),  # another worker picked it up
    ("RUNNING", False, 900, f"ecs-{A}", False),  # started in its own task: healthy
    ("PENDING", False, 900, f"ecs-{A}", True),  # Pending exactly stuckPendingSeconds: stuck
    ("PENDING", False, 899, f"ecs-{A}", False),  # a second less: it may still start
    ("PENDING", True, 0, f"ecs-{A}", True),  # a Process worker's Pending run dies with its task
])
def test_a_run_is_still_orphaned_only_while_its_dead_task_holds_it(
        state_type: str, in_task: bool, pending_seconds: float, worker: str, still: bool) -> None:
    seen = run("PENDING" if not in_task else "RUNNING", f"ecs-{A}")
    current = run(state_type, worker, since_seconds=pending_seconds)
    assert still_orphaned(current, seen, in_task, NOW, stuck_after_seconds=900) is still


def test_a_run_waiting_to_retry_holds_a_process_workers_task_and_is_never_an_orphan() -> None:
    waiting = RunFacts(id="w", queue_id="q", state_type="SCHEDULED", state_name="AwaitingRetry",
                       scheduled_at=NOW + timedelta(seconds=40), worker_name=f"ecs-{A}")
    assert holds_task(waiting, runs_in_worker_task=True)
    assert not holds_task(waiting, runs_in_worker_task=False)  # retries inside its own task
    unlabelled = RunFacts(id="u", queue_id="q", state_type="SCHEDULED", state_name="AwaitingRetry",
                          scheduled_at=NOW, worker_name=None, labelled=True)
    assert not holds_task(unlabelled, runs_in_worker_task=True)  # no worker's: not in flight at all
    holding = holding_runs([([waiting], True)], NOW)
    assert holding.busy_tasks == {A}
    plan = plan_protection(holding, ServiceTasks(live=frozenset({A}), protected={}), refresh_before=NOW)
    assert plan.protect == (A,)
    gone = plan_protection(holding, ServiceTasks(live=frozenset(), protected={}, stopped=frozenset({A})),
                           refresh_before=NOW)
    assert gone.orphaned == ()  # Scheduled-type: any live worker claims it once due
    assert not still_orphaned(waiting, waiting, True, NOW, stuck_after_seconds=900)
