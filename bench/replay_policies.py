"""The policies the day replay compares, each a publisher (or controller) acting on one ``harness.aws_model``
world: what it reads from Prefect and ECS, what it publishes, what it protects.

Ours decides with the publisher's own pure functions (``prefect_backlog.backlog``: ``queue_demand``,
``service_signal``; ``prefect_backlog.protection``: ``holding_runs``, ``plan_protection``,
``orphaned_in_a_row``; the protection expiry of ``prefect_backlog.aws.task_protection``), and is scaled by
the policies of its synthesized template (``harness.aws_model.deployed``). What AWS does with that comes from the model.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta

from harness.aws_model.autoscaling import ScalableTarget
from harness.aws_model.deployed import Deployed
from harness.aws_model.runs import Run
from harness.aws_model.target_tracking import TargetTrackingSpec
from harness.aws_model.world import World
from prefect_backlog.aws.task_protection import REFRESH_MARGIN, protection_minutes
from prefect_backlog.backlog import QueueBacklog, RunFacts, queue_demand, service_signal
from prefect_backlog.protection import (
    ServiceTasks,
    check_releases,
    holding_runs,
    orphaned_in_a_row,
    plan_protection,
)

EPOCH = datetime(2026, 12, 1, tzinfo=UTC)
SAMPLE_SECONDS = 60  # rate(1 minute)
RECIPE_METRIC = "LateFlowRunsPerTask"


def when(seconds: float) -> datetime:
    return EPOCH + timedelta(seconds=seconds)


@dataclass
class OursPublisher:
    """One publisher sample per minute: read runs and tasks, publish BacklogPerTask and TaskShortfall, protect."""

    world: World
    deployed: Deployed
    prewarm_seconds: int
    task_protection: bool = True
    sample_seconds: int = SAMPLE_SECONDS
    _orphaned_before: set[str] = field(default_factory=set)
    _crashed: set[int] = field(default_factory=set)
    # What the publisher's ledger holds (prefect_backlog.aws.task_protection.ProtectionLedger): the expiries it
    # read or set at its last sample; None before its first.
    _known: dict[str, datetime] | None = None

    def sample(self) -> None:
        world, now = self.world, self.world.clock.now
        book, service = world.book, world.service
        held = [(run, task_id) for task_id, runs in world.workers.holding.items() for run in runs]
        held += [(run, run.task_id or "") for run in world.workers.orphaned if id(run) not in self._crashed]
        facts = [RunFacts(id=str(id(run)), queue_id="q", state_type="RUNNING", state_name="Running",
                          scheduled_at=when(run.due), state_since=when(run.claimed or now),
                          worker_name=f"ecs-{task_id}") for run, task_id in held]
        holding = holding_runs([(facts, True)], when(now))
        live = service.live()
        live_ids = frozenset(t.id for t in live)
        stopped = {t.id for t in service.tasks if not t.live}
        truth = {t.id: when(t.protected_until) for t in live if t.protected_until is not None and t.protected(now)}
        protected = dict(truth)  # GetTaskProtection, each sample, after the runs were read
        tasks = ServiceTasks(live=live_ids, protected=protected,
                             stopped=frozenset(holding.busy_tasks & stopped))  # STOPPED in this service
        plan = plan_protection(holding, tasks, refresh_before=when(now + self.sample_seconds) + REFRESH_MARGIN)
        release: tuple[str, ...] = ()
        if plan.release:  # the release rule shared with prefect-ecs-worker: read back, compare
            release = check_releases(plan.release, self._known, protected, runs_read_at=when(now)).release
        backlog = QueueBacklog(late=book.late_waiting(now), due=book.due_waiting(now), pending=0, running=len(held),
                               oldest_late_age_seconds=0, paused=False, orphaned=len(plan.orphaned),
                               upcoming=book.upcoming(now, self.prewarm_seconds))
        demand = queue_demand(backlog, runs_in_worker_task=True)
        desired = service.desired
        signal = service_signal(demand, service.running_count(), desired, self.deployed.tracking.target_value,
                                self.deployed.target.max_capacity)
        world.publish(self.deployed.tracking_metric, signal.backlog_per_task)
        world.publish(self.deployed.step_metric, signal.task_shortfall)
        if self.task_protection:
            if plan.protect:
                minutes = protection_minutes(self.sample_seconds)
                service.protect(plan.protect, minutes)
                protected |= {t: when(now + 60 * minutes) for t in plan.protect}
            if release:
                service.release(release)
                protected = {t: u for t, u in protected.items() if t not in release}
        self._known = protected
        crash = orphaned_in_a_row(self._orphaned_before, plan.orphaned)
        self._orphaned_before = {r.id for r in plan.orphaned}
        crashed_ids = {r.id for r in crash}
        self._crashed |= {id(run) for run, _ in held if str(id(run)) in crashed_ids}


@dataclass
class RecipePublisher:
    """The recipe: the queue's Late count per task, published each minute; no task protection."""

    world: World

    def sample(self) -> None:
        world = self.world
        world.publish(RECIPE_METRIC, world.book.late_waiting(world.clock.now) / max(world.service.desired, 1))


@dataclass
class LowerBound:
    """Sees each run the moment Prefect has it (created, due, or scheduled ahead), asks every second for exactly
    the tasks needed then (announced runs count from the longest start latency before their start), stops idle
    surplus tasks at once; its tasks still take their start latency and their workers still poll."""

    world: World
    max_tasks: int
    slots: int

    def act(self) -> None:
        world, now = self.world, self.world.clock.now
        book, service = world.book, world.service
        demand = book.due_waiting(now) + book.in_flight + book.upcoming(now, service.latency.maximum)
        needed = min(self.max_tasks, math.ceil(demand / self.slots))
        live = service.live()
        for _ in range(needed - len(live)):
            service.start_task()
        idle = sorted((t for t in live if world.workers.idle(t)), key=lambda t: -t.created)
        for task in idle[:max(0, len(live) - needed)]:
            service.stop_task(task)


@dataclass(frozen=True)
class Policy:
    name: str
    build: Callable[[list[Run] | tuple[Run, ...], float, int], World]  # runs, horizon, seed -> a world to run


def recipe(deployed: Deployed, min_capacity: int, slots: int) -> Policy:
    def build(runs: list[Run] | tuple[Run, ...], horizon: float, seed: int) -> World:
        world = World(runs, slots=slots, seed=seed, horizon=horizon,
                      target=ScalableTarget(min_capacity, deployed.target.max_capacity))
        assert world.autoscaling is not None
        world.autoscaling.add_target_tracking(TargetTrackingSpec(target_value=slots,
                                                                 scale_out_cooldown=deployed.tracking.scale_out_cooldown,
                                                                 scale_in_cooldown=deployed.tracking.scale_in_cooldown),
                                              world.series(RECIPE_METRIC))
        world.every(world.rng.uniform(0, SAMPLE_SECONDS), SAMPLE_SECONDS, RecipePublisher(world).sample)
        return world
    return Policy(f"recipe (min {min_capacity})", build)


def ours(deployed: Deployed, slots: int, prewarm_seconds: int, name: str, protect_at_claim: bool = False,
         sample_seconds: int = SAMPLE_SECONDS) -> Policy:
    """Ours; ``sample_seconds`` 10 with a fast-mode template (its step alarm's period is 10 s)."""
    def build(runs: list[Run] | tuple[Run, ...], horizon: float, seed: int) -> World:
        world = World(runs, slots=slots, seed=seed, horizon=horizon, target=deployed.target,
                      protect_at_claim=protect_at_claim)
        assert world.autoscaling is not None
        world.autoscaling.add_target_tracking(deployed.tracking, world.series(deployed.tracking_metric))
        world.autoscaling.add_step_scaling(deployed.step, deployed.step_alarm, world.series(deployed.step_metric))
        publisher = OursPublisher(world, deployed, prewarm_seconds, sample_seconds=sample_seconds)
        world.every(world.rng.uniform(0, sample_seconds), sample_seconds, publisher.sample)
        return world
    return Policy(name, build)


def lower_bound(max_tasks: int, slots: int) -> Policy:
    def build(runs: list[Run] | tuple[Run, ...], horizon: float, seed: int) -> World:
        world = World(runs, slots=slots, seed=seed, horizon=horizon, target=None)
        world.every(0, 1, LowerBound(world, max_tasks, slots).act)
        return world
    return Policy("causal lower bound", build)
