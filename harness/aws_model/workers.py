"""Prefect workers inside the ECS tasks: each polls every ``poll_seconds`` from its own first poll (so the
phases are random: they follow the tasks' start latencies), and claims due runs into its free slots at that
moment, whenever it falls between two publisher samples. A claimed run holds its slot for its duration (a
Process worker runs it inside the task); a task stopped while it holds runs orphans them.

``protect_at_claim``: the worker launcher protects its own task when its worker claims a run
(``PUT $ECS_AGENT_URI/task-protection/v1/state``, https://docs.aws.amazon.com/AmazonECS/latest/developerguide/task-scale-in-protection-endpoint.html),
closing the window between a claim and the publisher's next sample.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field

from harness.aws_model.clock import Clock
from harness.aws_model.ecs import EcsService, Task
from harness.aws_model.runs import Run, RunBook

POLL_SECONDS = 10  # PREFECT_WORKER_QUERY_SECONDS' default


@dataclass
class Workers:
    clock: Clock
    service: EcsService
    book: RunBook
    slots: int  # the worker's --limit
    poll_seconds: float = POLL_SECONDS
    protect_at_claim: bool = False
    protect_minutes: int = 5
    holding: dict[str, list[Run]] = field(default_factory=dict)  # task id -> its runs
    busy_stopped: int = 0
    orphaned: list[Run] = field(default_factory=list)

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
        self.clock.at(now + self.poll_seconds, lambda: self.poll(task))

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
