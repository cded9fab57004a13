"""Application Auto Scaling for one existing ECS service, driven by the published backlog.

Two policies work together (when several fire, the larger capacity wins):

* target tracking on ``BacklogPerTask`` keeps demand / running tasks at the
  target; it owns scale-in, which it only does after ~15 quiet minutes and
  never on missing data (the publisher sends nothing when a read fails);
* a step policy on ``TaskShortfall`` that only ever scales *out*: target
  tracking cannot leave 0 tasks (its proportional math gives 0 * anything)
  and needs 3 datapoints, while the shortfall alarm fires on one datapoint and
  adds exactly the missing tasks. It has no lower alarm, so it never fights
  target tracking on scale-in.
"""

from __future__ import annotations

from itertools import pairwise

from aws_cdk import Aws, Duration
from aws_cdk import aws_applicationautoscaling as appscaling
from aws_cdk import aws_iam as iam
from constructs import Construct

from infra.metric_queries import metric
from prefect_backlog import metrics
from prefect_backlog.config import ServiceConfig

ECS_SCALING_ROLE = ("role/aws-service-role/ecs.application-autoscaling.amazonaws.com/"
                    "AWSServiceRoleForApplicationAutoScaling_ECSService")
SCALE_OUT_COOLDOWN = Duration.seconds(60)
SCALE_IN_COOLDOWN = Duration.seconds(300)
# Application Auto Scaling's default quota of step adjustments per step policy: adjustable, but a template
# with more fails at deploy (PutScalingPolicy) in every account that has not raised it.
MAX_STEP_ADJUSTMENTS = 20
EXACT_STEPS = 12  # shortfalls added exactly; the rest of the quota spreads geometrically up to maxCapacity
PERIOD = Duration.minutes(1)


def shortfall_lower_bounds(max_capacity: int) -> list[int]:
    """Each step's lowest shortfall, which is also what the step adds: never more tasks than are missing.

    Up to ``MAX_STEP_ADJUSTMENTS`` the steps are +1, +2, ... +maxCapacity, exactly the shortfall. A bigger
    service gets exact steps up to ``EXACT_STEPS`` and then bounds spaced by a constant ratio up to
    ``maxCapacity`` (at 100: ... +12, +16, +20, +27, +35, +45, +59, +77, +100), so one datapoint adds at least
    1/ratio of a large shortfall and the next minute's datapoint adds the rest.
    """
    if max_capacity <= MAX_STEP_ADJUSTMENTS:
        return list(range(1, max_capacity + 1))
    spread = MAX_STEP_ADJUSTMENTS - EXACT_STEPS
    ratio = (max_capacity / EXACT_STEPS) ** (1 / spread)
    bounds = list(range(1, EXACT_STEPS + 1))
    for i in range(1, spread + 1):
        bounds.append(max(bounds[-1] + 1, round(EXACT_STEPS * ratio ** i)))
    bounds[-1] = max_capacity
    return bounds


def shortfall_steps(max_capacity: int) -> list[appscaling.ScalingInterval]:
    """The step policy's intervals: a shortfall in [lower, next lower) adds ``lower`` tasks.

    The first interval (change 0 below 1) makes CDK create no lower alarm.
    """
    bounds = shortfall_lower_bounds(max_capacity)
    steps = [appscaling.ScalingInterval(upper=1, change=0)]
    for lower, upper in pairwise(bounds):
        steps.append(appscaling.ScalingInterval(lower=lower, upper=upper, change=lower))
    steps.append(appscaling.ScalingInterval(lower=bounds[-1], change=bounds[-1]))
    return steps


class ServiceScaling(Construct):
    def __init__(self, scope: Construct, construct_id: str, *, service: ServiceConfig, namespace: str,
                 scale_out_period: Duration = PERIOD) -> None:
        """``scale_out_period`` below a minute needs high-resolution metrics (fast mode)."""
        super().__init__(scope, construct_id)
        dimensions = metrics.service_dimensions(*service.key)
        self.target = appscaling.ScalableTarget(
            self, "Target",
            service_namespace=appscaling.ServiceNamespace.ECS,
            resource_id=service.resource_id,
            scalable_dimension="ecs:service:DesiredCount",
            min_capacity=service.min_capacity,
            max_capacity=service.max_capacity,
            # The service-linked role exists in every account that uses ECS scaling;
            # without this CDK would create a new, broader role.
            role=iam.Role.from_role_arn(self, "ServiceLinkedRole",
                                        f"arn:{Aws.PARTITION}:iam::{Aws.ACCOUNT_ID}:{ECS_SCALING_ROLE}",
                                        mutable=False),
        )
        self.target_tracking = self.target.scale_to_track_metric(
            "BacklogPerTaskTracking",
            target_value=service.target_backlog_per_task,
            custom_metric=metric(namespace, metrics.BACKLOG_PER_TASK, dimensions, "Average"),
            scale_out_cooldown=SCALE_OUT_COOLDOWN,
            scale_in_cooldown=SCALE_IN_COOLDOWN,
        )
        self.step_scaling = self.target.scale_on_metric(
            "ShortfallScaleOut",
            metric=metric(namespace, metrics.TASK_SHORTFALL, dimensions, "Maximum", period=scale_out_period),
            scaling_steps=shortfall_steps(service.max_capacity),
            adjustment_type=appscaling.AdjustmentType.CHANGE_IN_CAPACITY,
            cooldown=SCALE_OUT_COOLDOWN,
            evaluation_periods=1,
            datapoints_to_alarm=1,
        )
