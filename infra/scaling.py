"""Application Auto Scaling for one existing ECS service, driven by the published backlog.

Two policies work together (when several fire, the larger capacity wins):

* target tracking on ``BacklogPerTask`` keeps demand / desired tasks at the
  target; it owns scale-in, which it only does after ~15 quiet minutes and
  never on missing data (the publisher sends nothing when a read fails);
* a step policy on ``TaskShortfall`` that only ever scales *out*: from 0
  tasks target tracking adds just 1 task (proportional math gives 0 * anything,
  so ECS scales out "by the minimum possible amount" on one datapoint: ECS
  developer guide, service-autoscaling-stepscaling) and otherwise needs 3
  datapoints, while the shortfall alarm fires on one datapoint and adds all the
  missing tasks (see :func:`shortfall_lower_bounds`). It has no lower alarm, so
  it never fights target tracking on scale-in.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import jsii
from aws_cdk import Aws, Duration, Token
from aws_cdk import aws_applicationautoscaling as appscaling
from aws_cdk import aws_ecs as ecs
from aws_cdk import aws_iam as iam
from aws_cdk.aws_cloudwatch import CfnAlarm
from constructs import Construct, IConstruct, IValidation

from prefect_backlog import metrics
from prefect_backlog.config import ConfigError, ServiceConfig

from .metric_queries import PERIOD, metric

ECS_SCALING_ROLE = ("role/aws-service-role/ecs.application-autoscaling.amazonaws.com/"
                    "AWSServiceRoleForApplicationAutoScaling_ECSService")
SCALE_OUT_COOLDOWN = Duration.seconds(60)
SCALE_IN_COOLDOWN = Duration.seconds(300)
# Application Auto Scaling's default quota of step adjustments per step policy: adjustable, but a template
# with more fails at deploy (PutScalingPolicy) in every account that has not raised it.
MAX_STEP_ADJUSTMENTS = 20
EXACT_STEPS = 12  # shortfalls added exactly; the rest of the quota spreads geometrically up to maxCapacity
# A policy's name is its identity within its scalable target: fixed names read well in the console and do not
# change (replacing the policy) when the construct moves, in the standalone stack or in someone's app.
TRACKING_POLICY_NAME = "prefect-backlog-per-task"
STEP_POLICY_NAME = "prefect-task-shortfall-scale-out"


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


@dataclass(frozen=True)
class WorkQueue:
    """A Prefect work queue whose backlog an ECS service works off (a ``queues`` entry in cdk.json)."""

    work_queue: str
    work_pool: str | None = None  # None: the queue of that name in any work pool
    runs_in_worker_task: bool | None = None  # flows run inside the worker's task (Process worker); default False


class WorkerServiceScaling(Construct):
    """Application Auto Scaling for one existing ECS worker service, on the backlog of its work queues.

    ``service`` is the service object from your app (``ecs.FargateService``, ``ecs.Ec2Service``, an
    imported ``IBaseService``) or its name, with ``cluster`` (an ``ICluster`` or a name) beside a name.
    Names must be known at synth time, because the publisher's Lambda reads the service by name: give a
    service you define its ``service_name`` (and its cluster a ``cluster_name``). The capacities and
    settings are the service settings of cdk.json's queue entries, with the same defaults and checks.

    Nothing is created until a :class:`~.autoscaler.PrefectBacklogPublisher` takes this construct in its
    ``services``: the policies follow metrics that publisher publishes, in its namespace and at its
    sampling period. A WorkerServiceScaling no publisher takes fails synth with an error saying so.
    """

    def __init__(self, scope: Construct, construct_id: str, *, service: ecs.IBaseService | str,
                 queues: Sequence[WorkQueue], max_capacity: int, cluster: ecs.ICluster | str | None = None,
                 min_capacity: int | None = None, target_backlog_per_task: float | None = None,
                 task_protection: bool | None = None, prewarm_seconds: int | None = None) -> None:
        super().__init__(scope, construct_id)
        self.cluster_name, self.service_name = self._names(service, cluster)
        self.queues = tuple(queues)
        if not self.queues:
            raise ConfigError([f"{self.node.path}: queues: must list at least one work queue"])
        # The service settings as cdk.json spells them; the publisher parses them with the rest.
        self.settings: dict[str, Any] = {key: value for key, value in (
            ("minCapacity", min_capacity), ("maxCapacity", max_capacity),
            ("targetBacklogPerTask", target_backlog_per_task), ("taskProtection", task_protection),
            ("prewarmSeconds", prewarm_seconds)) if value is not None}
        if isinstance(service, Construct):
            self.node.add_dependency(service)  # register the target once the service exists
        self.node.add_validation(_TakenByAPublisher(self))
        self.config: ServiceConfig | None = None

    @property
    def key(self) -> tuple[str, str]:
        return (self.cluster_name, self.service_name)

    def _names(self, service: ecs.IBaseService | str, cluster: ecs.ICluster | str | None) -> tuple[str, str]:
        if isinstance(service, str):
            if cluster is None:
                raise ConfigError([f"{self.node.path}: cluster is required when service is given by name"])
            service_name = service
        else:
            if cluster is not None:
                raise ConfigError([f"{self.node.path}: cluster comes from the service object; leave it out"])
            service_name = _literal_name(service.service_name, service, "service_name")
            cluster = service.cluster
        cluster_name = cluster if isinstance(cluster, str) else _literal_name(cluster.cluster_name, cluster,
                                                                              "cluster_name")
        unknown = [what for what, name in (("service", service_name), ("cluster", cluster_name))
                   if Token.is_unresolved(name)]
        if unknown:
            raise ConfigError([
                f"{self.node.path}: the ECS {' and '.join(unknown)} name is known only at deploy time "
                "(CloudFormation generates it), and the publisher's Lambda reads the service by name: set "
                "service_name on the service (and cluster_name on its cluster), or pass both as names"])
        return cluster_name, service_name

    def queue_entries(self) -> list[dict[str, Any]]:
        """This service's queue entries in cdk.json's form, each with the service settings."""
        return [{"workQueue": q.work_queue, "cluster": self.cluster_name, "service": self.service_name,
                 **({"workPool": q.work_pool} if q.work_pool is not None else {}),
                 **({"runsInWorkerTask": q.runs_in_worker_task} if q.runs_in_worker_task is not None else {}),
                 **self.settings} for q in self.queues]

    def scale(self, service: ServiceConfig, namespace: str, scale_out_period: Duration = PERIOD) -> None:
        """Create the scalable target and both policies (the publisher calls this with the parsed service).

        ``scale_out_period`` below a minute needs high-resolution metrics (fast mode).
        """
        if self.config is not None:
            raise ConfigError([f"{self.node.path}: is already scaled by a publisher; give it to one only"])
        self.config = service
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
            policy_name=TRACKING_POLICY_NAME,
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
        step_policy = self.step_scaling.upper_action
        assert step_policy is not None  # the steps start with a scale-out above 1
        cfn_step_policy = step_policy.node.default_child
        assert isinstance(cfn_step_policy, appscaling.CfnScalingPolicy)
        cfn_step_policy.policy_name = STEP_POLICY_NAME
        # A missing shortfall (a failed read, a late sample) must not act. With CloudWatch's default,
        # `missing`, the alarm evaluates the older datapoints it still has, and while it stays in ALARM
        # its Auto Scaling action repeats every minute: a stale shortfall would be added again and again.
        # https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/alarms-and-missing-data.html
        # https://docs.aws.amazon.com/AmazonCloudWatch/latest/monitoring/alarm-actions.html
        # CDK's step scaling takes no missing-data option, hence the CloudFormation property.
        step_alarm = self.step_scaling.upper_alarm
        assert step_alarm is not None
        cfn_step_alarm = step_alarm.node.default_child
        assert isinstance(cfn_step_alarm, CfnAlarm)
        cfn_step_alarm.treat_missing_data = "notBreaching"  # CloudFormation's spelling, not the jsii enum's


def _literal_name(name: str, resource: IConstruct, prop: str) -> str:
    """The name a service or cluster of this app was given: CDK's ``service_name`` and ``cluster_name`` are
    deploy-time references even then, but the CloudFormation resource underneath holds the name itself."""
    if not Token.is_unresolved(name):
        return name  # imported by name
    given = getattr(resource.node.default_child, prop, None)
    return given if isinstance(given, str) and not Token.is_unresolved(given) else name


@jsii.implements(IValidation)
class _TakenByAPublisher:
    def __init__(self, scaling: WorkerServiceScaling) -> None:
        self.scaling = scaling

    def validate(self) -> list[str]:
        if self.scaling.config is not None:
            return []
        return [f"WorkerServiceScaling {self.scaling.node.path} is not in any PrefectBacklogPublisher's services: "
                "nothing would publish the metrics it scales on"]
