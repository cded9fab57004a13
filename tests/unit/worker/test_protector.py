"""When the launcher PUTs: at the claim (retried once), a confirmation 5 s later, refreshes while it holds runs."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from prefect_ecs_worker.ecs import ProtectionResult
from prefect_ecs_worker.protector import Protector, RefreshSchedule


def test_a_claim_is_confirmed_after_5_s_then_refreshed_every_period_while_held() -> None:
    s = RefreshSchedule(confirm_after=5, refresh_every=60, retry_after=5)
    assert s.next_due() is None and not s.take_due(1000)  # nothing held: nothing due
    s.claim("a", 100)
    s.record(100, ok=True)
    assert s.next_due() == 105
    assert not s.take_due(104.9)
    assert s.take_due(105)
    s.record(105, ok=True)
    assert s.next_due() == 165  # the refresh, from the last PUT that worked
    assert not s.take_due(164.9) and s.take_due(165)


def test_a_failed_put_is_retried_after_retry_after_while_held() -> None:
    s = RefreshSchedule(confirm_after=5, refresh_every=60, retry_after=5)
    s.claim("a", 0)
    s.record(0, ok=False)
    s.take_due(5)  # the confirmation is consumed with it
    s.record(5, ok=False)
    assert s.next_due() == 10


def test_when_nothing_is_held_nothing_is_ever_due_so_the_worker_never_releases_nor_refreshes() -> None:
    s = RefreshSchedule()
    s.claim("a", 0)
    s.record(0, ok=True)
    s.release("a")
    assert not s.holding and s.next_due() is None and not s.take_due(10_000)


def test_holds_of_one_run_are_counted_so_the_first_release_does_not_drop_it() -> None:
    s = RefreshSchedule()
    s.claim("a", 0)  # the claim's hold
    s.hold("a")  # the Process worker's run hold, taken before the claim's ends
    s.release("a")
    assert s.held == frozenset({"a"})
    s.release("a")
    assert s.held == frozenset()


class FakeAgent:
    def __init__(self, answers: list[bool]) -> None:
        self.answers = answers
        self.puts: list[tuple[float, int]] = []

    def protect(self, minutes: int) -> ProtectionResult:
        self.puts.append((time.monotonic(), minutes))
        ok = self.answers.pop(0) if self.answers else True
        return ProtectionResult(True, expiration="2026-12-04T21:00:00Z") if ok else ProtectionResult(
            False, problem="HTTP 500, error ServerException")


def test_at_the_claim_a_failed_put_is_retried_once_at_once_then_warned_and_the_claim_returns(
        caplog: pytest.LogCaptureFixture) -> None:
    agent = FakeAgent([False, False])
    protector = Protector(agent, minutes=15, logger=logging.getLogger("test.protector"))  # type: ignore[arg-type]
    with caplog.at_level(logging.INFO, "test.protector"):
        result = protector.claim("run-1")
    assert not result.ok and len(agent.puts) == 2 and all(m == 15 for _, m in agent.puts)
    assert "retrying now" in caplog.text and "NOT protected by this worker yet" in caplog.text
    assert "the run proceeds" in caplog.text


def test_at_the_claim_one_put_that_works_is_enough() -> None:
    agent = FakeAgent([True])
    protector = Protector(agent)  # type: ignore[arg-type]
    assert protector.claim("run-1").ok and len(agent.puts) == 1


def test_the_thread_confirms_and_refreshes_while_held_and_stops_when_nothing_is() -> None:
    agent = FakeAgent([])
    schedule = RefreshSchedule(confirm_after=0.2, refresh_every=0.3, retry_after=0.1)
    protector = Protector(agent, schedule=schedule).start()  # type: ignore[arg-type]
    try:
        protector.claim("run-1")
        time.sleep(1.0)
        while_held = len(agent.puts)
        assert while_held >= 3  # claim, confirmation, refreshes
        protector.release("run-1")
        time.sleep(0.2)
        settled = len(agent.puts)
        time.sleep(0.8)
        assert len(agent.puts) == settled  # nothing held: no PUT at all, and never a release
    finally:
        protector.stop()
    assert not any(t.name == "prefect-ecs-worker-protection" and t.is_alive() for t in threading.enumerate())
