"""The release rule the publisher shares with prefect-ecs-worker, and its interleavings (docs/task-protection.md).

The worker only enables protection (PUT at the claim, a confirmation 5 s later, refreshes while it holds
runs); the publisher releases a task only when the expiry it reads after this sample's runs were read is the
one it knew before, or was set well before the runs were read. The worker's PUTs are played on the ECS
stand-in at the moments each interleaving puts them: before the runs read, between the read and the
release, after an expiry.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from harness.fake_ecs import FakeEcs
from prefect_backlog.aws.task_protection import ProtectionLedger, reconcile
from prefect_backlog.backlog import RunFacts
from prefect_backlog.protection import CLAIM_LABEL_SECONDS, WORKER_MINUTES_FLOOR, Holding, check_releases
from prefect_ecs_worker.options import DEFAULT_MINUTES, MIN_MINUTES
from prefect_ecs_worker.protector import RefreshSchedule

NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
SERVICE = ("prefect", "process-worker")
WORKER_MINUTES = DEFAULT_MINUTES


# --- the pure rule ---------------------------------------------------------------------------------

def test_release_what_nobody_protected_since_the_publisher_looked_or_since_well_before_the_runs_read() -> None:
    minutes = timedelta(minutes=WORKER_MINUTES_FLOOR)
    known = {"same": NOW + minutes, "moved": NOW, "moved-early": NOW - timedelta(minutes=2)}
    read_back = {
        "same": NOW + minutes,  # nobody PUT since the last look (whenever that was)
        "moved": NOW + minutes,  # a PUT at the runs read: a claim the read may have missed
        "moved-early": NOW + minutes - timedelta(seconds=11),  # a PUT 11 s before the read: labelled by then
        "unknown-recent": NOW + minutes - timedelta(seconds=9),  # cold, PUT 9 s before: perhaps not labelled
        "unknown-old": NOW + minutes - timedelta(minutes=3),
    }
    check = check_releases(["same", "moved", "moved-early", "unknown-recent", "unknown-old", "gone"], known,
                           read_back, runs_read_at=NOW)
    assert check.release == ("moved-early", "same", "unknown-old")
    assert dict(check.kept) == {"moved": read_back["moved"], "unknown-recent": read_back["unknown-recent"]}
    assert check.lapsed == frozenset({"gone"})
    # the edge: a PUT exactly CLAIM_LABEL_SECONDS before the read is kept; one microsecond earlier is released
    edge = NOW - timedelta(seconds=CLAIM_LABEL_SECONDS) + minutes
    assert check_releases(["t"], None, {"t": edge}, runs_read_at=NOW).release == ()
    assert check_releases(["t"], None, {"t": edge - timedelta(microseconds=1)}, runs_read_at=NOW).release == ("t",)


def test_an_earlier_expiry_than_known_is_a_put_too() -> None:
    """A worker with fewer minutes than the publisher, PUT after it: the expiry moves *earlier*, and that is
    a PUT since the last look as much as a later one."""
    known = {"t": NOW + timedelta(minutes=9)}  # the publisher's, at a 5-minute schedule
    check = check_releases(["t"], known, {"t": NOW + timedelta(minutes=WORKER_MINUTES_FLOOR)}, runs_read_at=NOW)
    assert check.release == ()


def test_the_launchers_minutes_floor_is_the_one_the_publisher_assumes() -> None:
    assert MIN_MINUTES == WORKER_MINUTES_FLOOR and DEFAULT_MINUTES >= MIN_MINUTES


# --- the interleavings, on the ECS stand-in ---------------------------------------------------------

def busy(*task_ids: str) -> Holding:
    return Holding({t: (RunFacts(f"run-{t}", "q", "RUNNING", "Running", NOW, worker_name=f"ecs-{t}"),)
                    for t in task_ids}, (), False)


class Clocked(FakeEcs):
    """The stand-in with a settable clock and a hook that runs inside a call, before ECS applies it."""

    def __init__(self) -> None:
        self.at = NOW
        super().__init__(now=lambda: self.at)
        self.during: dict[str, Any] = {}

    def worker_put(self, task: str, minutes: int = WORKER_MINUTES, seconds_before: float = 0) -> None:
        """What ``PUT $ECS_AGENT_URI/task-protection/v1/state`` does to the task (the agent calls ECS),
        ``seconds_before`` the next sample's runs read."""
        self.tasks[task].protected_until = self.at - timedelta(seconds=seconds_before) + timedelta(minutes=minutes)

    def get_task_protection(self, *, cluster: str, tasks: list[str]) -> dict[str, Any]:
        answer = super().get_task_protection(cluster=cluster, tasks=tasks)
        hook = self.during.pop("after GetTaskProtection", None)
        if hook:
            hook()
        return answer

    def update_task_protection(self, **kwargs: Any) -> dict[str, Any]:
        hook = self.during.pop("before release", None) if not kwargs["protectionEnabled"] else None
        if hook:
            hook()
        return super().update_task_protection(**kwargs)


@pytest.fixture
def world() -> tuple[Clocked, str, ProtectionLedger]:
    ecs = Clocked()
    (task,) = ecs.service(*SERVICE, tasks=1)
    ledger = ProtectionLedger()
    reconcile(ecs, SERVICE, busy(task), ledger, now=NOW, sample_interval_seconds=60)  # busy: the publisher protects
    assert ecs.protected(*SERVICE) == {task}
    ecs.at = NOW + timedelta(minutes=1)
    return ecs, task, ledger


def sample(ecs: Clocked, ledger: ProtectionLedger, holding: Holding) -> tuple[str, ...]:
    outcome = reconcile(ecs, SERVICE, holding, ledger, now=ecs.at, sample_interval_seconds=60)
    assert not outcome.errors
    ecs.at += timedelta(minutes=1)
    return outcome.release


def test_idle_with_no_claim_since_it_is_released(world: tuple[Clocked, str, ProtectionLedger]) -> None:
    ecs, task, ledger = world
    assert sample(ecs, ledger, busy()) == (task,) and ecs.protected(*SERVICE) == set()


def test_a_claim_before_the_runs_read_whose_run_is_not_labelled_yet_keeps_its_protection(
        world: tuple[Clocked, str, ProtectionLedger]) -> None:
    """Claimed (Pending, PUT done) just before the read, labelled just after: the read shows an idle task."""
    ecs, task, ledger = world
    ecs.worker_put(task, seconds_before=3)
    assert sample(ecs, ledger, busy()) == ()  # an expiry set since the last look, 3 s before the read: kept
    assert ecs.protected(*SERVICE) == {task}
    assert sample(ecs, ledger, busy(task)) == ()  # next sample the run is labelled: busy, and stays protected
    assert ecs.protected(*SERVICE) == {task}


def test_after_a_kept_task_goes_idle_the_next_sample_without_a_put_releases_it(
        world: tuple[Clocked, str, ProtectionLedger]) -> None:
    ecs, task, ledger = world
    ecs.worker_put(task)
    assert sample(ecs, ledger, busy()) == ()  # kept, its new expiry now known
    assert sample(ecs, ledger, busy()) == (task,)  # idle again, no PUT since: the run was short and is over
    assert ecs.protected(*SERVICE) == set()


def test_a_worker_that_keeps_refreshing_is_never_released(world: tuple[Clocked, str, ProtectionLedger]) -> None:
    """A run the publisher cannot see (not labelled) but whose worker holds it: each refresh moves the expiry."""
    ecs, task, ledger = world
    for _ in range(5):
        ecs.worker_put(task, seconds_before=2)
        assert sample(ecs, ledger, busy()) == ()
        assert ecs.protected(*SERVICE) == {task}


def test_a_claim_after_the_read_back_lands_before_the_release_and_the_confirmation_put_restores_it(
        world: tuple[Clocked, str, ProtectionLedger]) -> None:
    """The one window no read can close (ECS has no conditional update): the release lands after the claim's
    PUT. The worker's confirmation PUT, due 5 s after the claim, protects the task again; the publisher then
    knows nothing of it and releases nothing until it sees the task busy."""
    ecs, task, ledger = world
    schedule = RefreshSchedule()
    claimed_at = 100.0

    def claim() -> None:
        schedule.claim("run-1", claimed_at)
        ecs.worker_put(task)
        schedule.record(claimed_at, ok=True)

    ecs.during["before release"] = claim
    assert sample(ecs, ledger, busy()) == (task,)
    assert ecs.protected(*SERVICE) == set()  # undone: the release was already on its way
    assert schedule.next_due() == claimed_at + schedule.confirm_after == 105.0
    assert schedule.take_due(105.0)
    ecs.worker_put(task)  # the confirmation
    assert ecs.protected(*SERVICE) == {task}
    assert sample(ecs, ledger, busy()) == ()  # unknown to the publisher's ledger: not released
    assert ecs.protected(*SERVICE) == {task}


def test_a_claim_between_the_read_back_and_the_release_call_is_the_same_window(
        world: tuple[Clocked, str, ProtectionLedger]) -> None:
    ecs, task, ledger = world
    ecs.during["after GetTaskProtection"] = lambda: ecs.worker_put(task)
    assert sample(ecs, ledger, busy()) == (task,)  # the read-back was before the PUT: it cannot see it
    assert ecs.protected(*SERVICE) == set()  # bounded by the worker's confirmation PUT (above)


def test_protection_that_expired_is_not_released_and_is_forgotten(
        world: tuple[Clocked, str, ProtectionLedger]) -> None:
    ecs, task, ledger = world
    ecs.at = NOW + timedelta(minutes=10)  # the publisher stopped; its 5 minutes ran out
    calls = len(ecs.calls)
    assert sample(ecs, ledger, busy()) == ()
    assert [op for op, _ in ecs.calls[calls:]] == ["ListTasks", "GetTaskProtection"]  # no release call
    assert ledger.known(SERVICE) == {}
    ecs.worker_put(task)  # a later claim: the publisher knows nothing of it now, so it never releases it
    assert sample(ecs, ledger, busy()) == () and ecs.protected(*SERVICE) == {task}


def test_a_worker_restarted_in_its_task_is_the_same_worker_to_the_publisher(
        world: tuple[Clocked, str, ProtectionLedger]) -> None:
    """Same task, same name ``ecs-<task id>``: the runs the old process left Running still hold the task."""
    ecs, task, ledger = world
    assert sample(ecs, ledger, busy(task)) == () and ecs.protected(*SERVICE) == {task}
    ecs.worker_put(task)  # the new process's first claim
    assert sample(ecs, ledger, busy(task)) == () and ecs.protected(*SERVICE) == {task}


def test_a_cold_container_releases_nothing_in_its_first_sample(world: tuple[Clocked, str, ProtectionLedger]) -> None:
    ecs, task, _ = world
    ecs.worker_put(task)  # a claim just before the new container read the runs
    cold = ProtectionLedger()
    assert sample(ecs, cold, busy()) == ()
    assert ecs.protected(*SERVICE) == {task}
