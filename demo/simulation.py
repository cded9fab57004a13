"""What Application Auto Scaling, ECS and the workers would do with the published signal, one cycle at a time.

The demo publishes real metrics; AWS is not there to act on them, so this
module plays its part. The parameters (capacity bounds, target value, step
adjustments) are read from the synthesized CloudFormation template, so the
simulation follows what would be deployed, not a copy of it.

One *cycle* stands for one publisher sample, i.e. one CloudWatch period
(60 s in production), compressed to a few seconds. The rules modelled:

* target tracking: ``capacity = ceil(desired * BacklogPerTask / target)``,
  clamped to [min, max]. AWS acts only once its managed alarms fire: the high
  alarm after 3 datapoints above the target, the low alarm after 15 below 90 %
  of it (compressed here to a few cycles). Proportional math gives 0 at 0
  desired (AWS then adds 1 task; this compressed model leaves that to the step
  policy, which adds all of them);
* step scale-out: one datapoint of ``TaskShortfall`` at or above the alarm
  threshold adds the adjustment of the matching step (bounds are relative to
  the threshold, as in ``StepScalingPolicyConfiguration``). It never scales in;
* when several policies act, the largest capacity wins; when none acts, the
  desired count stays. Missing data (nothing published) is no action;
* ECS: the desired count set after one cycle's sample is acted on at the
  start of the next cycle, before its sample: missing tasks start (and are
  running, so the publisher sees them and their workers claim runs in that
  cycle); on scale-in, ECS stops the excess tasks chosen at random among the
  *unprotected* ones. Protected tasks are skipped, so a service may stay above
  its desired count while its tasks are protected, as ECS does;
* workers: each running task hosts one worker. A worker holds at most its
  slots of runs at once and claims due runs (oldest first) into free slots.
  A run that lives in its worker's task (Process worker) holds a slot while
  Pending or Running; a worker that submits each run as its own ECS task holds
  it only while Pending. A run still held by a task dies with it when ECS
  stops the task: its process is gone, and Prefect shows it in flight forever.
  Each worker claims either before or after the cycle's sample (its own poll
  phase, drawn per task in demo/run.py), so a run claimed after a sample is not
  protected until the next one, and a scale-in landing first stops its task
  busy: the race that prefect-ecs-worker, protecting at the claim, closes
  (the demo's default; ``--no-launcher`` shows the race). Scale-in victims are chosen as
  ``harness.aws_model.ecs`` chooses them (``ecs_scale``).

Cooldowns are left out: the step policy's 60 s is one cycle, and the target
tracking scale-in cooldown only matters after a first scale-in, which here
already goes to what the backlog needs.
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass

from harness.aws_model import ecs as aws_ecs
from harness.aws_model.deployed import Deployed
from harness.aws_model.target_tracking import proportional_capacity

TRACKING_SCALE_OUT_DATAPOINTS = 3  # AWS: 3 one-minute datapoints above the target
AWS_SCALE_IN_DATAPOINTS = 15  # AWS: the managed low alarm wants 15 one-minute datapoints
TRACKING_SCALE_IN_DATAPOINTS = 5  # compressed so the demo stays short
TRACKING_SCALE_IN_RATIO = 0.9  # AWS's low alarm fires below 90 % of the target


# --- the policies -----------------------------------------------------------------------------
# The deployed parameters are the AWS model's (``harness.aws_model.deployed``, read from the synthesized
# template); so are the proportional capacity, the clamp and the step that matches. What is the demo's own is
# the compressed alarm count below.


@dataclass(frozen=True)
class TrackingAlarms:
    """How many datapoints in a row the target-tracking high and low alarms have seen breaching."""

    high: int = 0
    low: int = 0


def next_alarms(alarms: TrackingAlarms, backlog_per_task: float | None, target_value: float) -> TrackingAlarms:
    """The alarms after one more datapoint; a missing datapoint breaches neither."""
    if backlog_per_task is None:
        return TrackingAlarms()
    above = backlog_per_task > target_value
    below = backlog_per_task < target_value * TRACKING_SCALE_IN_RATIO
    return TrackingAlarms(high=alarms.high + 1 if above else 0, low=alarms.low + 1 if below else 0)


def tracking_ask(policies: Deployed, alarms: TrackingAlarms, backlog_per_task: float | None,
                 desired: int, scale_in_datapoints: int = TRACKING_SCALE_IN_DATAPOINTS) -> int | None:
    """The capacity target tracking sets this cycle, or None when it does not act.

    It scales out once the high alarm has fired, in once the low alarm has
    (``scale_in_datapoints`` in a row: AWS's 15, or the demo's compressed 5),
    and only in that alarm's direction.
    """
    if backlog_per_task is None:
        return None
    capacity = policies.target.clamp(proportional_capacity(desired, backlog_per_task, policies.tracking.target_value))
    if alarms.high >= TRACKING_SCALE_OUT_DATAPOINTS and capacity > desired:
        return capacity
    if alarms.low >= scale_in_datapoints and capacity < desired:
        return capacity
    return None


def step_ask(policies: Deployed, task_shortfall: float | None, desired: int) -> int | None:
    """The capacity the step policy sets this cycle (desired + its adjustment), or None when its alarm does not
    fire on this ``TaskShortfall`` datapoint (or no step matches)."""
    if task_shortfall is None or not policies.step_alarm.breaches(task_shortfall):
        return None
    change = policies.step.adjustment(task_shortfall)
    return None if change is None else policies.target.clamp(desired + change)


def next_desired(desired: int, asks: Iterable[int | None]) -> int:
    """Largest capacity among the policies that act; unchanged when none does."""
    acting = [a for a in asks if a is not None]
    return max(acting) if acting else desired


# --- ECS ---------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ScaleAction:
    """What ECS does to one service at the start of a cycle: start new tasks, or stop some."""

    start: int = 0
    stop: tuple[str, ...] = ()


def ecs_scale(live: Sequence[aws_ecs.Task], desired: int, rng: random.Random) -> ScaleAction:
    """Bring ``live`` tasks towards ``desired`` as the ECS service scheduler does.

    Scale-out starts the missing tasks. Scale-in stops the excess as ``harness.aws_model.ecs`` picks it:
    Availability Zones balanced, at random (``rng``) within one, among the tasks not protected from scale-in;
    protected tasks are skipped, so fewer (or none) may stop and the service stays above ``desired`` until
    they are released.
    """
    if desired >= len(live):
        return ScaleAction(start=desired - len(live))
    return ScaleAction(stop=tuple(sorted(t.id for t in aws_ecs.choose_victims(live, len(live) - desired, 0, rng))))


def split_stopped(stopped: Iterable[str], busy: Collection[str]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The stopped tasks as (idle, busy): busy ones held a flow run when they were stopped."""
    ordered = sorted(stopped)
    return tuple(t for t in ordered if t not in busy), tuple(t for t in ordered if t in busy)


def tasks_up_from(running: Sequence[int], needed: int, due_cycle: int) -> int | None:
    """From which cycle ``needed`` tasks were running for runs due at ``due_cycle``.

    When they were up at ``due_cycle``: the first cycle of the unbroken stretch
    leading to it (negative lead: they were early). Otherwise the first cycle
    after it with ``needed`` tasks running; None if that never came.
    """
    if due_cycle < len(running) and running[due_cycle] >= needed:
        first = due_cycle
        while first > 0 and running[first - 1] >= needed:
            first -= 1
        return first
    return next((c for c in range(due_cycle + 1, len(running)) if running[c] >= needed), None)


def cycle_position(moment: float, cycle_starts: Sequence[float], interval: float) -> float:
    """Where ``moment`` falls on a time axis counted in cycles, from when each cycle started.

    Between two starts, it is interpolated; before the first or after the
    last, extrapolated at ``interval`` seconds per cycle.
    """
    if not cycle_starts:
        return moment / interval
    if moment < cycle_starts[0]:
        return (moment - cycle_starts[0]) / interval
    for cycle, (start, end) in enumerate(itertools.pairwise(cycle_starts)):
        if start <= moment < end:
            return cycle + (moment - start) / (end - start)
    return len(cycle_starts) - 1 + (moment - cycle_starts[-1]) / interval


def cycles_for(production_seconds: float, sample_seconds: float = 60.0) -> int:
    """How many demo cycles stand for ``production_seconds``: one cycle is one sample (a minute)."""
    return round(production_seconds / sample_seconds)


# --- the work ---------------------------------------------------------------------------------


def holds_task(state: str, runs_in_worker_task: bool) -> bool:
    """Whether a claimed run still needs its worker's task (and dies with it).

    A run that executes inside the worker task (Process worker) needs it while
    Pending or Running; a run the worker submits as its own ECS task, only
    while Pending (the worker is still submitting it).
    """
    return state == "PENDING" or (runs_in_worker_task and state == "RUNNING")


def assign_claims(free_slots: Sequence[tuple[str, int]], waiting: int) -> list[str]:
    """Which task's worker claims each of ``waiting`` due runs (oldest first), in order.

    The tasks' workers take runs in turn of ``free_slots`` (task, free slots),
    each filling its free slots before the next: what workers polling one
    after another do. Runs beyond the free slots stay waiting.
    """
    claimed: list[str] = []
    for task, free in free_slots:
        take = max(0, min(free, waiting - len(claimed)))
        claimed += [task] * take
    return claimed


def next_run_state(state: str, cycles_in_state: int, run_cycles: int) -> str:
    """A claimed run's lifecycle: PENDING for one cycle, RUNNING for ``run_cycles``, then COMPLETED."""
    if state == "PENDING" and cycles_in_state >= 1:
        return "RUNNING"
    if state == "RUNNING" and cycles_in_state >= run_cycles:
        return "COMPLETED"
    return state
