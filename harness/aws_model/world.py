"""One ECS worker service put together: runs (Prefect), tasks (ECS), workers, metrics and alarms (CloudWatch)
and its scaling (Application Auto Scaling), on one clock, with what came of it.

A caller adds a publisher (``every``: e.g. the publisher's sample each minute) that reads this world as the
publisher would read Prefect and ECS, and publishes datapoints (``publish``) and calls the ECS protection API
(``service.protect`` / ``service.release``).
"""

from __future__ import annotations

import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from harness.aws_model.alarms import MetricSeries
from harness.aws_model.autoscaling import ScalableTarget, ServiceAutoScaling
from harness.aws_model.clock import Clock
from harness.aws_model.ecs import EcsService, StartLatency
from harness.aws_model.runs import LATE_AFTER_SECONDS, Run, RunBook
from harness.aws_model.workers import POLL_SECONDS, Workers


@dataclass(frozen=True)
class Outcome:
    late_run_seconds: float  # the seconds runs spent Late (waiting past LATE_AFTER_SECONDS for a worker)
    late_runs: int
    worst_wait_seconds: float
    task_minutes: float  # from each task's creation to its stop: what Fargate bills, roughly
    peak_tasks: int  # live tasks at once, at most
    scale_ins: int  # Application Auto Scaling lowered the desired count
    busy_tasks_stopped: int  # tasks stopped while their worker held a run
    orphaned_runs: int  # runs whose process died with their task
    never_claimed: int


class World:
    def __init__(self, runs: Sequence[Run], *, slots: int, seed: int, horizon: float,
                 target: ScalableTarget | None, latency: StartLatency | None = None, protect_at_claim: bool = False,
                 poll_seconds: float = POLL_SECONDS) -> None:
        self.horizon = horizon
        self.clock = Clock()
        self.rng = random.Random(seed)
        self.book = RunBook([Run(r.due, r.seconds, r.announced) for r in runs])
        self.service = EcsService(self.clock, random.Random(self.rng.random()), latency or StartLatency(),
                                  desired=target.min_capacity if target else 0, scheduler=target is not None)
        self.workers = Workers(self.clock, self.service, self.book, slots, poll_seconds=poll_seconds,
                               protect_at_claim=protect_at_claim)
        self.autoscaling = ServiceAutoScaling(self.clock, self.service, target) if target else None
        self.metrics: dict[str, MetricSeries] = {}

    def series(self, name: str) -> MetricSeries:
        return self.metrics.setdefault(name, MetricSeries())

    def publish(self, name: str, value: float) -> None:
        self.series(name).put(self.clock.now, value)

    def every(self, first: float, interval: float, action: Callable[[], None]) -> None:
        self.clock.every(first, interval, action, self.horizon)

    def run(self) -> Outcome:
        if self.autoscaling is not None:
            self.autoscaling.start(phase=self.rng.uniform(0, 60), until=self.horizon)
        self.clock.run_until(self.horizon)
        return self.outcome()

    def outcome(self) -> Outcome:
        end = self.horizon
        waits = [(r.claimed if r.claimed is not None else end) - r.due for r in self.book.runs]
        lateness = [max(0.0, w - LATE_AFTER_SECONDS) for w in waits]
        tasks = self.service.tasks
        changes = sorted([(t.created, 1) for t in tasks] + [(t.stopped, -1) for t in tasks if t.stopped is not None])
        live = peak = 0
        for _, delta in changes:
            live += delta
            peak = max(peak, live)
        return Outcome(
            late_run_seconds=sum(lateness), late_runs=sum(1 for x in lateness if x > 0),
            worst_wait_seconds=max(waits, default=0.0),
            task_minutes=sum((t.stopped if t.stopped is not None else end) - t.created for t in tasks) / 60,
            peak_tasks=peak, scale_ins=self.autoscaling.scale_ins if self.autoscaling else 0,
            busy_tasks_stopped=self.workers.busy_stopped, orphaned_runs=len(self.workers.orphaned),
            never_claimed=sum(1 for r in self.book.runs if r.claimed is None))
