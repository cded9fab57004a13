"""An ECS service: desired count vs its tasks, task start latency, scale-in victims, task scale-in protection.

Rules, with their sources:

* The service scheduler keeps the number of tasks at the desired count: it starts the missing ones, and
  on scale-in stops the surplus. Tasks protected from scale-in are skipped, so the service may stay above
  its desired count; a surplus task is stopped as soon as it is unprotected (its protection released, or
  expired). https://docs.aws.amazon.com/AmazonECS/latest/developerguide/task-scale-in-protection.html
* Protection lasts ``ExpiresInMinutes`` (1-2880, default 120); setting it again resets the expiry.
  https://docs.aws.amazon.com/AmazonECS/latest/APIReference/API_UpdateTaskProtection.html
* Which tasks stop: service tasks are spread over Availability Zones; on scale-in ECS picks tasks so as to
  keep the zones balanced, and at random within a zone.
  https://docs.aws.amazon.com/AmazonECS/latest/developerguide/task-placement-strategies.html
* A task takes time to run: placement, image pull and container start (Fargate: tens of seconds to minutes),
  drawn here from a distribution with a seeded RNG (``StartLatency``), not a constant; billing (task-minutes)
  runs from its creation to its stop.
* Stopping sends SIGTERM, then SIGKILL after stopTimeout: a Process worker's flow runs die with the task.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field

from harness.aws_model.clock import Clock

AZS = ("a", "b", "c")


@dataclass(frozen=True)
class StartLatency:
    """From the task's creation: ECS placement, then image pull and container start (RUNNING), then the
    worker's own boot until its first poll. Bounded, so ``maximum`` is a real upper bound."""

    placement: tuple[float, float] = (3.0, 12.0)  # uniform
    start_median: float = 40.0  # lognormal, clipped
    start_sigma: float = 0.35
    start_bounds: tuple[float, float] = (20.0, 120.0)
    boot: tuple[float, float] = (5.0, 15.0)  # uniform

    def draw(self, rng: random.Random) -> tuple[float, float]:
        """(seconds to RUNNING, seconds from RUNNING to the worker's first poll)."""
        start = min(max(rng.lognormvariate(math.log(self.start_median), self.start_sigma), self.start_bounds[0]),
                    self.start_bounds[1])
        return rng.uniform(*self.placement) + start, rng.uniform(*self.boot)

    @property
    def maximum(self) -> float:
        return self.placement[1] + self.start_bounds[1] + self.boot[1]


@dataclass
class Task:
    id: str  # 32 hex characters, as the last segment of a task ARN
    az: str
    created: float
    running_at: float
    ready_at: float  # the worker's first poll
    stopped: float | None = None
    protected_until: float | None = None

    @property
    def live(self) -> bool:
        return self.stopped is None

    def running(self, now: float) -> bool:
        return self.stopped is None and self.running_at <= now

    def protected(self, now: float) -> bool:
        return self.protected_until is not None and self.protected_until > now


@dataclass
class EcsService:
    clock: Clock
    rng: random.Random
    latency: StartLatency = field(default_factory=StartLatency)
    desired: int = 0
    scheduler: bool = True  # False: the caller starts and stops tasks itself (the lower bound)
    tasks: list[Task] = field(default_factory=list)
    on_started: Callable[[Task], None] = lambda task: None  # a task was created
    on_stopped: Callable[[Task], None] = lambda task: None
    _live: dict[str, Task] = field(default_factory=dict)  # by id, in creation order

    def live(self) -> list[Task]:
        return list(self._live.values())

    def running_count(self) -> int:
        return sum(1 for t in self._live.values() if t.running(self.clock.now))

    def set_desired(self, count: int) -> None:
        self.desired = count
        self.reconcile()

    def reconcile(self) -> None:
        """The service scheduler: start the missing tasks, stop the unprotected surplus."""
        if not self.scheduler:
            return
        live = self.live()
        if len(live) < self.desired:
            for _ in range(self.desired - len(live)):
                self.start_task()
        elif len(live) > self.desired:
            for task in choose_victims(live, len(live) - self.desired, self.clock.now, self.rng):
                self.stop_task(task)

    def start_task(self) -> Task:
        now = self.clock.now
        to_running, boot = self.latency.draw(self.rng)
        task = Task(id=f"{self.rng.getrandbits(128):032x}", az=spread_az(self.live(), self.rng), created=now,
                    running_at=now + to_running, ready_at=now + to_running + boot)
        self.tasks.append(task)
        self._live[task.id] = task
        self.on_started(task)
        return task

    def stop_task(self, task: Task) -> None:
        if task.live:
            task.stopped = self.clock.now
            del self._live[task.id]
            self.on_stopped(task)

    def protect(self, task_ids: Iterable[str], minutes: int) -> None:
        """UpdateTaskProtection(protectionEnabled=true, expiresInMinutes) on live tasks of the service."""
        minutes = max(1, min(2880, minutes))
        wanted = set(task_ids)
        until = self.clock.now + 60 * minutes
        for task in self._live.values():
            if task.id in wanted:
                task.protected_until = until
        self.clock.at(until, self.reconcile)  # a surplus task stops once its protection expires

    def release(self, task_ids: Iterable[str]) -> None:
        wanted = set(task_ids)
        for task in self._live.values():
            if task.id in wanted:
                task.protected_until = None
        self.reconcile()


def spread_az(live: Sequence[Task], rng: random.Random) -> str:
    """The zone with the fewest live tasks (ties at random): the service's default spread placement."""
    counts = {az: 0 for az in AZS}
    for task in live:
        counts[task.az] += 1
    fewest = min(counts.values())
    return rng.choice([az for az in AZS if counts[az] == fewest])


def choose_victims(live: Sequence[Task], count: int, now: float, rng: random.Random) -> list[Task]:
    """Up to ``count`` tasks to stop among the unprotected: each from the zone that holds the most live tasks
    (among zones with an unprotected one; ties at random), at random within it."""
    remaining = list(live)
    victims: list[Task] = []
    for _ in range(count):
        candidates = [t for t in remaining if not t.protected(now)]
        if not candidates:
            break
        per_zone = {az: sum(1 for t in remaining if t.az == az) for az in {t.az for t in candidates}}
        most = max(per_zone.values())
        zone = rng.choice(sorted(az for az, n in per_zone.items() if n == most))
        victim = rng.choice(sorted((t for t in candidates if t.az == zone), key=lambda t: t.id))
        victims.append(victim)
        remaining.remove(victim)
    return victims
