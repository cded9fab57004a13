"""Application Auto Scaling for one ECS service: a scalable target, its policies, and their alarms evaluated on
CloudWatch's schedule.

Rules, with their sources:

* Each evaluation that finds a policy's alarm in ALARM invokes the policy again (Auto Scaling actions repeat
  while the alarm stays in ALARM: ``alarms``).
* Several policies on one target: Application Auto Scaling scales on the policy that gives the largest capacity,
  for scale-out and scale-in alike; with several target tracking policies it scales out if any wants to, and in
  only if all do.
  https://docs.aws.amazon.com/autoscaling/application/userguide/application-auto-scaling-target-tracking.html
* The new capacity is clamped to the target's MinCapacity and MaxCapacity.
  https://docs.aws.amazon.com/autoscaling/application/APIReference/API_RegisterScalableTarget.html
* Scale-in is turned off while an ECS deployment is in progress (``deployment_in_progress``).
  https://docs.aws.amazon.com/AmazonECS/latest/developerguide/service-autoscaling-targettracking.html
"""

from __future__ import annotations

from dataclasses import dataclass, field

from harness.aws_model.alarms import Alarm, AlarmSpec, AlarmState, MetricSeries
from harness.aws_model.clock import Clock
from harness.aws_model.ecs import EcsService
from harness.aws_model.step_scaling import StepScaling, StepScalingSpec
from harness.aws_model.target_tracking import TargetTracking, TargetTrackingSpec


@dataclass(frozen=True)
class ScalableTarget:
    min_capacity: int
    max_capacity: int

    def clamp(self, capacity: int) -> int:
        return max(self.min_capacity, min(self.max_capacity, capacity))


@dataclass
class _Tracking:
    policy: TargetTracking
    high: Alarm
    low: Alarm


@dataclass
class _Step:
    policy: StepScaling
    alarm: Alarm


@dataclass
class ServiceAutoScaling:
    clock: Clock
    service: EcsService
    target: ScalableTarget
    deployment_in_progress: bool = False
    tracking: list[_Tracking] = field(default_factory=list)
    steps: list[_Step] = field(default_factory=list)
    scale_outs: int = 0
    scale_ins: int = 0
    phase: float = 0.0  # the offset of CloudWatch's evaluations within the minute

    def add_target_tracking(self, spec: TargetTrackingSpec, series: MetricSeries) -> None:
        self.tracking.append(_Tracking(TargetTracking(spec), Alarm(spec.high_alarm(), series),
                                       Alarm(spec.low_alarm(), series)))

    def add_step_scaling(self, spec: StepScalingSpec, alarm: AlarmSpec, series: MetricSeries) -> None:
        self.steps.append(_Step(StepScaling(spec), Alarm(alarm, series)))

    def start(self, phase: float, until: float) -> None:
        """Register the target (desired brought into [min, max]) and evaluate the alarms from ``phase`` on,
        every 10 s when one of them is high resolution, else every minute (each alarm on its own interval)."""
        self.phase = phase
        self.service.set_desired(self.target.clamp(self.service.desired))
        alarms = [a for t in self.tracking for a in (t.high, t.low)] + [s.alarm for s in self.steps]
        interval = min((a.spec.evaluation_interval for a in alarms), default=60)
        self.clock.every(phase, interval, self.evaluate, until)

    def evaluate(self) -> None:
        now = self.clock.now
        desired = self.service.desired
        outs: list[tuple[int, TargetTracking | StepScaling]] = []
        ins: list[tuple[int, TargetTracking]] = []
        all_in = bool(self.tracking)
        for t in self.tracking:
            if not self._evaluating(t.high, now):
                all_in = False
                continue
            high, low = t.high.evaluate_at(now), t.low.evaluate_at(now)
            wanted_in = None
            from_zero = t.policy.scale_out_from_zero(t.high.range_at(now)[-1], desired)
            if from_zero is not None:
                outs.append((from_zero, t.policy))
            elif high is AlarmState.ALARM and t.high.last_value is not None:
                wanted = t.policy.scale_out(t.high.last_value, desired, now)
                if wanted is not None:
                    outs.append((wanted, t.policy))
            if low is AlarmState.ALARM and t.low.last_value is not None:
                wanted_in = t.policy.scale_in(t.low.last_value, desired, now)
            if wanted_in is None:
                all_in = False
            else:
                ins.append((wanted_in, t.policy))
        for s in self.steps:
            if not self._evaluating(s.alarm, now):
                continue
            if s.alarm.evaluate_at(now) is AlarmState.ALARM and s.alarm.last_value is not None:
                wanted = s.policy.scale_out(s.alarm.last_value, desired, now)
                if wanted is not None:
                    outs.append((wanted, s.policy))
        if outs:
            capacity, winner = max(outs, key=lambda o: o[0])
            new = self.target.clamp(capacity)
            if new > desired:
                winner.scaled(desired, new, now)
                self.scale_outs += 1
                self.service.set_desired(new)
        elif ins and all_in and not self.deployment_in_progress:
            capacity, winner = max(ins, key=lambda o: o[0])
            new = self.target.clamp(capacity)
            if new < desired:
                winner.scaled(desired, new, now)
                self.scale_ins += 1
                self.service.set_desired(new)

    def _evaluating(self, alarm: Alarm, now: float) -> bool:
        """Whether this evaluation tick is one of ``alarm``'s (a one-minute alarm: one tick in six)."""
        return alarm.spec.evaluation_interval < 60 or round(now - self.phase) % 60 == 0
