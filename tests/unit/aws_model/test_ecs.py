"""The ECS service, rule by rule (harness/aws_model/ecs.py cites the pages)."""

from __future__ import annotations

import random
from collections import Counter

from harness.aws_model.clock import Clock
from harness.aws_model.ecs import EcsService, StartLatency, Task, choose_victims


def task(n: int, az: str, protected_until: float | None = None) -> Task:
    return Task(id=f"{n:032x}", az=az, created=0, running_at=0, ready_at=0, protected_until=protected_until)


def test_victims_keep_the_zones_balanced_then_are_random_within_one() -> None:
    tasks = [task(1, "a"), task(2, "a"), task(3, "a"), task(4, "b"), task(5, "c")]
    picked = Counter(choose_victims(tasks, 1, now=0, rng=random.Random(seed))[0].id for seed in range(60))
    assert set(picked) == {f"{n:032x}" for n in (1, 2, 3)}  # only from zone a, each of its tasks sometimes
    two = choose_victims(tasks, 2, now=0, rng=random.Random(1))
    assert [t.az for t in two] == ["a", "a"]  # a still holds the most after one: 2 against 1 and 1
    three = choose_victims(tasks, 3, now=0, rng=random.Random(1))
    left = [t for t in tasks if t not in three]
    assert len({t.az for t in left}) == 2  # level at 1, 1, 1 after two: the third from any zone


def test_protected_tasks_are_skipped_even_in_the_fullest_zone() -> None:
    tasks = [task(1, "a", protected_until=100), task(2, "a", protected_until=100), task(3, "b")]
    assert [t.id for t in choose_victims(tasks, 2, now=50, rng=random.Random(0))] == [f"{3:032x}"]
    assert len(choose_victims(tasks, 2, now=100, rng=random.Random(0))) == 2  # expired at 100


def service() -> EcsService:
    return EcsService(Clock(), random.Random(3))


def test_the_surplus_stops_as_soon_as_it_is_unprotected_released_or_expired() -> None:
    ecs = service()
    ecs.set_desired(3)
    first, second, third = ecs.live()
    ecs.protect([first.id, second.id], minutes=1)
    ecs.protect([third.id], minutes=5)
    ecs.set_desired(1)
    assert len(ecs.live()) == 3  # all protected: the service stays above its desired count
    ecs.release([first.id])
    assert not first.live and len(ecs.live()) == 2
    ecs.clock.run_until(59)
    assert second.live
    ecs.clock.run_until(60)  # second's protection lapses at 60 s
    assert not second.live and second.stopped == 60 and third.live


def test_protecting_again_resets_the_expiry() -> None:
    ecs = service()
    ecs.set_desired(2)
    kept, _ = ecs.live()
    ecs.protect([kept.id], minutes=1)
    ecs.clock.run_until(50)
    ecs.protect([kept.id], minutes=1)
    ecs.set_desired(0)
    ecs.clock.run_until(100)
    assert kept.live
    ecs.clock.run_until(110)
    assert not kept.live


def test_start_latency_is_drawn_not_constant_and_bounded() -> None:
    ecs = service()
    ecs.set_desired(50)
    starts = [t.running_at for t in ecs.live()]
    readies = [t.ready_at - t.running_at for t in ecs.live()]
    assert len(set(starts)) == 50 and len(set(readies)) == 50
    assert max(t.ready_at for t in ecs.live()) <= StartLatency().maximum
    zones = Counter(t.az for t in ecs.live()).values()
    assert max(zones) - min(zones) <= 1  # spread over the zones


def test_running_is_after_the_start_latency() -> None:
    ecs = service()
    ecs.set_desired(1)
    (only,) = ecs.live()
    assert ecs.running_count() == 0
    ecs.clock.run_until(only.running_at)
    assert ecs.running_count() == 1
