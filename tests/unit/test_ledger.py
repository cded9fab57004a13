"""Reading protected queues' in-flight runs by their changes (#22), against the fake API.

Each transition into or out of the kept Running set is made between two
samples, and the warm sample, read by changes, must equal a full read of the
same server: every count, every in-flight run with its state and worker. The
transitions include those that set no time a filter could see (a retry back
to AwaitingRetry, Paused, Suspended, Cancelling, a state forced by hand, a
deleted run, a retry that runs again with its old start time).
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest

from prefect_backlog.backlog import QueueCounts, RunFacts
from prefect_backlog.config import parse_config
from prefect_backlog.prefect_api import PrefectClient, RunLedger
from prefect_backlog.prefect_api.ledger import RESYNC_EVERY_SAMPLES
from prefect_backlog.prefect_api.runs import in_flight_stream
from prefect_backlog.report import TickReport
from prefect_backlog.tick import WarmState, run_tick
from tests.support.clients import client, queue, resolved
from tests.support.fake_prefect import NOW, PUBLISHER_CONTEXT, FakePrefect, failing

WORKER_A, WORKER_B = "ecs-" + "a" * 32, "ecs-" + "b" * 32
Read = dict[str, tuple[QueueCounts, tuple[RunFacts, ...]]]


@pytest.fixture(autouse=True)
def gpu_queue(prefect: FakePrefect) -> None:
    prefect.queue("pool-a", "gpu")


def sample(ledger: RunLedger | None) -> tuple[Read, PrefectClient]:
    """One read of pool-a's two queues as a protected service's: their in-flight runs listed."""
    c = client(ledger=ledger)
    queues = resolved(c, queue(0, "default", "pool-a"), queue(1, "gpu", "pool-a"))
    counts = c.read_counts(queues, NOW, 900, listed={q.id for q in queues})
    read: Read = {}
    for q in queues:
        got = counts[q.id]
        assert isinstance(got, QueueCounts), got
        assert got.in_flight_runs is not None
        read[q.id] = (got, tuple(sorted(got.in_flight_runs, key=lambda r: r.id)))
    return read, c


def world(prefect: FakePrefect) -> dict[str, list[str]]:
    """Running runs on two workers, and one run in each other state a run can come from or go to."""
    return {
        "running": prefect.add_runs("pool-a", "default", 6, "RUNNING", worker=WORKER_A)
        + prefect.add_runs("pool-a", "gpu", 3, "RUNNING", worker=WORKER_B),
        "pending": prefect.add_runs("pool-a", "gpu", 1, "PENDING", worker=WORKER_B, in_state_for_minutes=20),
        "paused": prefect.add_runs("pool-a", "default", 1, "PAUSED", "Paused", worker=WORKER_A),
        "retrying": prefect.add_runs("pool-a", "default", 1, "SCHEDULED", "AwaitingRetry", minutes_ago=1,
                                     worker=WORKER_A),
        "completed": prefect.add_runs("pool-a", "gpu", 1, "COMPLETED", worker=WORKER_B),
        "late": prefect.add_runs("pool-a", "default", 2, "SCHEDULED", "Late"),
    }


def move(prefect: FakePrefect, run_id: str, state_type: str, state_name: str | None = None, *,
         worker: str | None = None) -> None:
    """What a real set_state does to the fields the client reads (no start or end time is looked at)."""
    run = prefect.run(run_id)
    name = state_name or state_type.title()
    when = (NOW + timedelta(seconds=30)).isoformat()
    run.update(state_type=state_type, state_name=name, state={"type": state_type, "name": name, "timestamp": when},
               next_scheduled_start_time=when if state_type == "SCHEDULED" else None)
    if worker is not None:
        run["labels"] = {"prefect.worker.name": worker}


Change = Callable[[FakePrefect, dict[str, list[str]]], None]


def _both(first: Callable[[], object], second: Callable[[], object]) -> None:
    first()
    second()


# Out of Running: every one of them moves a kept run without a new start time; the end time is set only by
# the terminal ones, and nothing at all marks the deleted run.
LEAVING: dict[str, Change] = {
    "ends Completed": lambda p, w: move(p, w["running"][0], "COMPLETED"),
    "crashes": lambda p, w: move(p, w["running"][0], "CRASHED"),
    "fails into a retry (AwaitingRetry)": lambda p, w: move(p, w["running"][0], "SCHEDULED", "AwaitingRetry"),
    "is set back to Scheduled by hand": lambda p, w: move(p, w["running"][0], "SCHEDULED", "Scheduled"),
    "pauses in its process": lambda p, w: move(p, w["running"][0], "PAUSED", "Paused"),
    "suspends (leaves its process)": lambda p, w: move(p, w["running"][0], "PAUSED", "Suspended"),
    "is cancelling": lambda p, w: move(p, w["running"][0], "CANCELLING"),
    "is forced back to Pending": lambda p, w: move(p, w["running"][0], "PENDING"),
    "is deleted": lambda p, w: p.runs.remove(p.run(w["running"][0])),
    "two leave, one of them deleted": lambda p, w: _both(lambda: move(p, w["running"][1], "COMPLETED"),
                                                         lambda: p.runs.remove(p.run(w["running"][0]))),
}
# Into Running: the retry's and the forced runs' start time was set long ago, and a resumed run may be on
# another worker now.
ENTERING: dict[str, Change] = {
    "starts (Pending -> Running)": lambda p, w: move(p, w["pending"][0], "RUNNING"),
    "runs again after a retry, its start time old": lambda p, w: move(p, w["retrying"][0], "RUNNING"),
    "resumes from Paused": lambda p, w: move(p, w["paused"][0], "RUNNING"),
    "is forced Running from Completed": lambda p, w: move(p, w["completed"][0], "RUNNING"),
    "was Late, then claimed and Running on another worker": lambda p, w: move(p, w["late"][0], "RUNNING",
                                                                              worker=WORKER_B),
    "is new, Running by the next sample": lambda p, w: _both(
        lambda: p.add_runs("pool-a", "gpu", 1, "RUNNING", worker=WORKER_A), lambda: None),
    "one in, one out (the counts stay equal)": lambda p, w: _both(
        lambda: move(p, w["running"][0], "COMPLETED"), lambda: move(p, w["late"][0], "RUNNING", worker=WORKER_B)),
    "one in, one deleted (the counts stay equal)": lambda p, w: _both(
        lambda: p.runs.remove(p.run(w["running"][0])), lambda: move(p, w["late"][0], "RUNNING")),
}


@pytest.mark.parametrize("change", [*LEAVING.values(), *ENTERING.values()], ids=[*LEAVING, *ENTERING])
def test_a_warm_sample_by_changes_equals_a_full_read_after_each_transition(prefect: FakePrefect,
                                                                          change: Change) -> None:
    runs = world(prefect)
    ledger = RunLedger()
    cold, _ = sample(ledger)
    assert cold == sample(None)[0] and ledger.stats.full == {"cold": 1}
    change(prefect, runs)
    warm, _ = sample(ledger)
    full, _ = sample(None)
    assert warm == full  # every count, and every in-flight run with its state, time in state and worker
    # A deleted run is caught by the count (it cannot be read); the rest are read by their changes.
    deleted = not set(runs["running"]) <= {r["id"] for r in prefect.runs}
    assert (ledger.stats.changes, ledger.stats.full.get("counts differ", 0)) == ((0, 1) if deleted else (1, 0))

def test_nothing_changed_costs_a_count_and_one_empty_list_whatever_is_running(prefect: FakePrefect) -> None:
    prefect.add_runs("pool-a", "default", 450, "RUNNING", worker=WORKER_A)
    ledger = RunLedger()
    _, cold = sample(ledger)
    assert cold.requests_sent == 2 + 1 + 1 + 3  # resolution, due page, in-flight: page, count, 2 more pages
    before = len(prefect.calls)
    read, warm = sample(ledger)
    calls = prefect.calls[before:]
    assert warm.requests_sent == 2 + 1 + 2  # resolution, due page, in flight: Running count, rest
    (rest,) = [body for path, body in calls if path == "/flow_runs/filter" and "id" in body.get("flow_runs", {})]
    stream = in_flight_stream(listed=True).flow_runs  # whatever the model counts as in flight
    assert rest["flow_runs"] == {**stream, "id": {"not_any_": sorted(rest["flow_runs"]["id"]["not_any_"])}}
    assert len(rest["flow_runs"]["id"]["not_any_"]) == 450
    counts = [body for path, body in calls if path == "/flow_runs/count"]
    running = {"flow_runs": {"state": {"type": {"any_": ["RUNNING"]}}}, "work_pool_queues": rest["work_pool_queues"]}
    assert running in counts
    default = next(iter(read.values()))
    assert default[0].running == 450 and len(default[1]) == 450  # every run still there, with its worker
    assert {r.worker_name for r in default[1]} == {WORKER_A}


def test_a_run_that_left_costs_two_more_lists_of_few_runs(prefect: FakePrefect) -> None:
    runs = prefect.add_runs("pool-a", "default", 300, "RUNNING", worker=WORKER_A)
    ledger = RunLedger()
    sample(ledger)
    move(prefect, runs[0], "PAUSED", "Paused")
    before = len(prefect.calls)
    read, warm = sample(ledger)
    assert warm.requests_sent == 2 + 1 + 2 + 2  # and: the kept runs that left, those of them still in flight
    listed = [body["flow_runs"]["id"] for path, body in prefect.calls[before:] if path == "/flow_runs/filter"
              and "id" in body.get("flow_runs", {})]
    assert sorted(len(ids.get("any_") or ids.get("not_any_")) for ids in listed) == [1, 300, 300]
    default = next(iter(read.values()))
    assert (default[0].running, default[0].paused_runs) == (299, 1) and ledger.stats.changes == 1


def test_a_full_read_every_few_samples_even_when_the_counts_agree(prefect: FakePrefect) -> None:
    world(prefect)
    ledger = RunLedger()
    full_at = []
    for i in range(1, 2 * RESYNC_EVERY_SAMPLES + 2):
        before = sum(ledger.stats.full.values())
        sample(ledger)
        if sum(ledger.stats.full.values()) > before:
            full_at.append(i)
    assert full_at == [1, 1 + RESYNC_EVERY_SAMPLES, 1 + 2 * RESYNC_EVERY_SAMPLES]
    assert ledger.stats.full == {"cold": 1, "resync": 2}


def test_a_worker_label_rewritten_while_running_is_seen_at_the_resync_not_before(prefect: FakePrefect) -> None:
    """The one change no filter sees (no filter on labels or ``updated``): pinned to its documented bound."""
    runs = world(prefect)
    ledger = RunLedger()
    sample(ledger)
    prefect.run(runs["running"][0])["labels"] = {"prefect.worker.name": WORKER_B}
    stale = 0
    for _ in range(RESYNC_EVERY_SAMPLES):
        warm, _ = sample(ledger)
        if warm != sample(None)[0]:
            stale += 1
    assert stale == RESYNC_EVERY_SAMPLES - 1  # then the resync reads it
    assert sample(ledger)[0] == sample(None)[0]


def test_runs_without_labels_are_always_read_in_full_as_before(prefect: FakePrefect) -> None:
    """Prefect 2.x and 3.x servers before 3.1.6: no labels, no task protection; and no not_any_ on 2.18."""
    prefect.add_runs("pool-a", "default", 5, "RUNNING")
    ledger = RunLedger()
    requests = [sample(ledger)[1].requests_sent for _ in range(3)]
    assert requests == [sample(None)[1].requests_sent] * 3
    assert not any("not_any_" in str(body) for _, body in prefect.calls)
    assert ledger.stats.changes == 0 and ledger.stats.full == {"cold": 1, "no labels seen": 2}


def test_a_failed_read_of_the_changes_falls_back_to_a_full_read(prefect: FakePrefect) -> None:
    runs = world(prefect)
    ledger = RunLedger()
    sample(ledger)
    move(prefect, runs["running"][0], "COMPLETED")
    prefect.faults["/flow_runs/count"] = failing(422, times=1)
    warm, _ = sample(ledger)
    assert warm == sample(None)[0]
    assert ledger.stats.full.get("failed: PrefectError") == 1


def test_forget_reads_in_full_next(prefect: FakePrefect) -> None:
    world(prefect)
    ledger = RunLedger()
    sample(ledger)
    ledger.forget()
    sample(ledger)
    assert ledger.stats.full == {"cold": 2} and ledger.stats.changes == 0


def test_more_runs_than_it_keeps_are_read_in_full(prefect: FakePrefect) -> None:
    prefect.add_runs("pool-a", "default", 4, "RUNNING", worker=WORKER_A)
    ledger = RunLedger(max_kept=3)
    for _ in range(2):
        sample(ledger)
    assert ledger.stats.changes == 0 and ledger.stats.full == {"cold": 2}



def test_a_sample_that_moves_runs_itself_drops_the_ledger(prefect: FakePrefect, aws: dict[str, Any]) -> None:
    """Rescheduling (or crashing) runs is a change the publisher makes after its read: read in full next."""
    prefect.queue("pool-b", "gpu")
    prefect.add_runs("pool-b", "gpu", 2, "RUNNING", worker=WORKER_A)
    prefect.add_runs("pool-b", "gpu", 1, "PENDING", worker=WORKER_A, in_state_for_minutes=20)
    config = parse_config({**PUBLISHER_CONTEXT, "rescheduleStuckPending": True})
    warm = WarmState()

    def tick() -> TickReport:
        c = PrefectClient(config.api_url, deadline=time.monotonic() + 20, sleep=lambda _: None,
                          depth_memory=warm.depth, ledger=warm.ledger)
        return run_tick(config, c, ecs=aws["ecs"], cloudwatch=None, now=NOW, warm=warm, protection="off")

    assert tick().rescheduled == 1
    assert tick().rescheduled == 0
    # Both pools' streams (both services are protected) read in full twice: without the drop, the second
    # sample would read them by changes.
    assert sum(warm.ledger.stats.full.values()) == 4 and warm.ledger.stats.changes == 0
    tick()
    assert warm.ledger.stats.changes >= 1


def test_full_read_every_sample_of_one_never_reads_by_changes(prefect: FakePrefect) -> None:
    world(prefect)
    ledger = RunLedger(resync_every=parse_config({**PUBLISHER_CONTEXT, "fullReadEverySamples": 1})
                       .full_read_every_samples)
    for _ in range(3):
        sample(ledger)
    assert ledger.stats.changes == 0 and ledger.stats.full == {"cold": 1, "resync": 2}
    assert parse_config(PUBLISHER_CONTEXT).full_read_every_samples == RESYNC_EVERY_SAMPLES == 5
