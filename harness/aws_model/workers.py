"""Prefect workers inside the ECS tasks: each polls every ``poll_seconds`` from its own first poll (so the
phases are random: they follow the tasks' start latencies), and claims due runs into its free slots at that
moment, whenever it falls between two publisher samples. A claimed run holds its slot for its duration (a
Process worker runs it inside the task); a task stopped while it holds runs orphans them.

``protect_at_claim``: the worker launcher (``prefect-ecs-worker``, worker/) protects its own task when its
worker claims a run (``PUT $ECS_AGENT_URI/task-protection/v1/state``,
https://docs.aws.amazon.com/AmazonECS/latest/developerguide/task-scale-in-protection-endpoint.html), closing
the window between a claim and the publisher's next sample. As the launcher does: 5 minutes at the claim,
once more 5 s later, and every 60 s while the task holds a run; it never releases
(``prefect_ecs_worker.protector``; docs/task-protection.md).
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

from harness.aws_model.clock import Clock
from harness.aws_model.ecs import EcsService, Task
from harness.aws_model.runs import Run, RunBook

POLL_SECONDS = 10  # PREFECT_WORKER_QUERY_SECONDS' default
# prefect_ecs_worker's defaults (options.DEFAULT_MINUTES, protector.CONFIRM_AFTER_SECONDS / REFRESH_EVERY_SECONDS;
# tests/unit/aws_model/test_workers.py checks they agree)
LAUNCHER_MINUTES = 5
LAUNCHER_CONFIRM_SECONDS = 5.0
LAUNCHER_REFRESH_SECONDS = 60.0


@dataclass
class Workers:
    clock: Clock
    service: EcsService
    book: RunBook
    slots: int  # the worker's --limit
    poll_seconds: float = POLL_SECONDS
    protect_at_claim: bool = False
    protect_minutes: int = LAUNCHER_MINUTES
    holding: dict[str, list[Run]] = field(default_factory=dict)  # task id -> its runs
    busy_stopped: int = 0
    orphaned: list[Run] = field(default_factory=list)
    _refreshing: dict[str, bool] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.service.on_started = self.started
        self.service.on_stopped = self.stopped

    def started(self, task: Task) -> None:
        self.holding[task.id] = []
        self.clock.at(task.ready_at, lambda: self.poll(task))

    def poll(self, task: Task) -> None:
        if not task.live:
            return
        now = self.clock.now
        held = self.holding[task.id]
        claimed = False
        while len(held) < self.slots:
            run = self.book.claim(now)
            if run is None:
                break
            run.claimed, run.task_id, run.ends = now, task.id, now + run.seconds
            held.append(run)
            self.clock.at(run.ends, functools.partial(self.finish, task, run))
            claimed = True
        if claimed and self.protect_at_claim:
            self.service.protect([task.id], self.protect_minutes)
            self.clock.at(now + LAUNCHER_CONFIRM_SECONDS, lambda: self.refresh(task, again=False))
            if not self._refreshing.get(task.id):
                self._refreshing[task.id] = True
                self.clock.at(now + LAUNCHER_REFRESH_SECONDS, lambda: self.refresh(task, again=True))
        self.clock.at(now + self.poll_seconds, lambda: self.poll(task))

    def refresh(self, task: Task, again: bool) -> None:
        """The launcher's confirmation (``again`` False) or periodic refresh: only while the task holds runs."""
        if not task.live or not self.holding.get(task.id):
            if again:
                self._refreshing[task.id] = False
            return
        self.service.protect([task.id], self.protect_minutes)
        if again:
            self.clock.at(self.clock.now + LAUNCHER_REFRESH_SECONDS, lambda: self.refresh(task, again=True))

    def finish(self, task: Task, run: Run) -> None:
        if run.orphaned:
            return
        run.done = True
        self.book.in_flight -= 1
        self.holding[task.id].remove(run)

    def stopped(self, task: Task) -> None:
        held = self.holding.get(task.id, [])
        if held:
            self.busy_stopped += 1
        for run in held:
            run.orphaned = True
            self.book.in_flight -= 1
            self.orphaned.append(run)
        self.holding[task.id] = []

    def idle(self, task: Task) -> bool:
        return not self.holding.get(task.id)
