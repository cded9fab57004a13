"""One Application Auto Scaling target tracking policy: its managed alarms, the capacity it asks for, its cooldowns.

Rules, with their sources:

* The capacity is the scalable target's: for ECS, the service's DesiredCount (``ecs:service:DesiredCount``),
  not the running count. The metric must change in inverse proportion to that capacity, and the new capacity
  is proportional: ``ceil(capacity * metric / target)``, rounded conservatively (up), so it never removes too
  much. https://docs.aws.amazon.com/autoscaling/application/userguide/target-tracking-scaling-policy-overview.html
  https://docs.aws.amazon.com/AmazonECS/latest/developerguide/service-autoscaling-targettracking.html
  At capacity 0 the product is 0; instead, when the metric shows demand (above 0), ECS Service Auto Scaling
  waits for one datapoint and scales out by the minimum possible amount (1 task), then resumes proportional
  scaling. https://docs.aws.amazon.com/AmazonECS/latest/developerguide/service-autoscaling-stepscaling.html
  (quoted in aws/copilot-cli#3054).
* The alarms are created and managed by Application Auto Scaling and cannot be edited; their shape is not in
  the guide. Observed, and in /work/shared/reference/aws-scaling.md: the high alarm fires on 3 of 3 one-minute
  datapoints above the target, the low alarm on 15 of 15 below 90 % of it (observed in the alarms AAS creates,
  issue #20; not in AWS's guide). Both treat missing data as missing: no data, no scaling either way
  (ECS page above).
* Cooldowns (TargetTrackingScalingPolicyConfiguration, ScaleOutCooldown / ScaleInCooldown; ours: 60 s / 300 s,
  infra/scaling.py): during a scale-out cooldown the capacity added counts as desired, and the policy scales
  out again only for a larger capacity than that scale-out set; scale-in waits for the scale-in cooldown
  after a scale-in, and here also for the scale-out cooldown; a scale-out during a scale-in cooldown acts at
  once. https://docs.aws.amazon.com/autoscaling/application/APIReference/API_TargetTrackingScalingPolicyConfiguration.html
* DisableScaleIn defaults to false.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from harness.aws_model.alarms import AlarmSpec, Comparison, TreatMissing

HIGH_DATAPOINTS = 3
LOW_DATAPOINTS = 15
LOW_RATIO = 0.9


@dataclass(frozen=True)
class TargetTrackingSpec:
    target_value: float
    scale_out_cooldown: float = 60
    scale_in_cooldown: float = 300
    disable_scale_in: bool = False

    def high_alarm(self) -> AlarmSpec:
        return AlarmSpec(threshold=self.target_value, comparison=Comparison.GT, period=60,
                         evaluation_periods=HIGH_DATAPOINTS, datapoints_to_alarm=HIGH_DATAPOINTS,
                         treat_missing=TreatMissing.MISSING, statistic="Average")

    def low_alarm(self) -> AlarmSpec:
        return AlarmSpec(threshold=self.target_value * LOW_RATIO, comparison=Comparison.LT, period=60,
                         evaluation_periods=LOW_DATAPOINTS, datapoints_to_alarm=LOW_DATAPOINTS,
                         treat_missing=TreatMissing.MISSING, statistic="Average")


def proportional_capacity(capacity: int, metric: float, target: float) -> int:
    """``ceil(capacity * metric / target)``; the rounding to 6 places keeps 3 * (7/3) at 7."""
    return math.ceil(round(capacity * metric / target, 6))


@dataclass
class TargetTracking:
    """One policy's cooldown state; ``scale_out``/``scale_in`` answer what it asks for now (None: nothing)."""

    spec: TargetTrackingSpec
    out_until: float = -math.inf  # scale-out cooldown
    out_capacity: int = 0  # what the scale-out that started it set
    in_until: float = -math.inf  # scale-in cooldown

    def scale_out(self, metric: float, desired: int, now: float) -> int | None:
        wanted = proportional_capacity(desired, metric, self.spec.target_value)
        floor = max(desired, self.out_capacity) if now < self.out_until else desired
        return wanted if wanted > floor else None

    def scale_out_from_zero(self, newest: float | None, desired: int) -> int | None:
        """At capacity 0, one datapoint above 0 (``newest``, the last complete period) asks for 1 task."""
        return 1 if desired == 0 and newest is not None and newest > 0 else None

    def scale_in(self, metric: float, desired: int, now: float) -> int | None:
        if self.spec.disable_scale_in or now < self.in_until or now < self.out_until:
            return None
        wanted = proportional_capacity(desired, metric, self.spec.target_value)
        return wanted if wanted < desired else None

    def scaled(self, before: int, after: int, now: float) -> None:
        """Record a change this policy made (its cooldowns start when its scaling activity does)."""
        if after > before:
            self.out_until, self.out_capacity = now + self.spec.scale_out_cooldown, after
            self.in_until = -math.inf  # a scale-out ends a scale-in cooldown
        elif after < before:
            self.in_until = now + self.spec.scale_in_cooldown
