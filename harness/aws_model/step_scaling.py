"""One Application Auto Scaling step scaling policy (ChangeInCapacity) and its cooldown.

Rules, with their sources
(https://docs.aws.amazon.com/autoscaling/application/userguide/step-scaling-policy-overview.html,
https://docs.aws.amazon.com/autoscaling/application/APIReference/API_StepScalingPolicyConfiguration.html):

* Step bounds are relative to the alarm's threshold: a step matches when ``lower <= metric - threshold <
  upper`` (a missing bound is infinite).
* ChangeInCapacity adds the step's adjustment to the current capacity (for ECS, DesiredCount); the result is
  clamped to the scalable target's minimum and maximum.
* The adjustments continue for further alarm breaches (the alarm's action repeats each minute in ALARM) until
  the alarm returns to OK.
* Cooldown: after a scale-out, while the cooldown lasts, the capacity it added counts as part of the current
  capacity: a second trigger at a larger step adds only what exceeds the first (+2 then +3 adds 1), a smaller
  or equal one adds nothing.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class StepAdjustment:
    lower: float | None  # inclusive, relative to the threshold; None: minus infinity
    upper: float | None  # exclusive; None: plus infinity
    change: int

    def matches(self, breach: float) -> bool:
        return (self.lower is None or breach >= self.lower) and (self.upper is None or breach < self.upper)


@dataclass(frozen=True)
class StepScalingSpec:
    threshold: float  # the alarm's
    adjustments: Sequence[StepAdjustment]
    cooldown: float = 60

    def adjustment(self, metric: float) -> int | None:
        breach = metric - self.threshold
        return next((s.change for s in self.adjustments if s.matches(breach)), None)


@dataclass
class StepScaling:
    spec: StepScalingSpec
    cooldown_until: float = -math.inf
    base: int = 0  # the capacity before the scale-out that started the cooldown

    def scale_out(self, metric: float, desired: int, now: float) -> int | None:
        """The capacity this trigger asks for (unclamped), or None when it adds nothing."""
        change = self.spec.adjustment(metric)
        if change is None or change <= 0:
            return None
        if now < self.cooldown_until:
            wanted = self.base + change
            return wanted if wanted > desired else None
        return desired + change

    def scaled(self, before: int, after: int, now: float) -> None:
        if after > before and now >= self.cooldown_until:
            self.cooldown_until, self.base = now + self.spec.cooldown, before
