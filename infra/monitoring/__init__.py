"""The operators' view: an overview dashboard, alarms that say what is wrong and what to do, optional email.

The pieces have a module each: how metrics are found (:mod:`infra.metric_queries`),
whether queues or pools are monitored (:mod:`.plan`), the alarms and their text
(:mod:`.alarms`), the dashboards' rows (:mod:`.rows`) and the dashboards
(:mod:`.dashboard`). This construct puts them together and places each piece
(infra/layout.py): the publisher's alarms, the topic and the overview stay in
the root stack under this construct, whose path keeps their logical ids (and
the fixed names CloudFormation keys on) where they were; every queue, pool
and service alarm goes to a "Monitoring" construct in its nested stack.
"""

from __future__ import annotations

from collections.abc import Mapping

from aws_cdk import Aws
from aws_cdk import aws_cloudwatch_actions as cw_actions
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from constructs import Construct

from prefect_backlog.config import Config

from .. import layout
from ..layout import NestedStacks, page_id, shard_id
from ..metric_queries import MetricQueries
from ..scaling import WorkerServiceScaling
from .alarms import Alarms
from .dashboard import Dashboards
from .plan import MonitoringPlan
from .rows import WidgetRows

NESTED_SCOPE = "Monitoring"  # the construct under which alarms and dashboards sit in a nested stack


class Monitoring(Construct):
    """Dashboards and alarms for one publisher and the ECS services it scales.

    ``scaling`` maps each service key to its :class:`WorkerServiceScaling`; its scale-out alarms join
    the overview's alarm status so an operator sees scaling activity beside the problems.
    """

    def __init__(self, scope: Construct, construct_id: str, *, config: Config, plan: MonitoringPlan,
                 function: lambda_.IFunction, log_group: logs.ILogGroup,
                 scaling: Mapping[tuple[str, str], WorkerServiceScaling],
                 nested: NestedStacks) -> None:
        super().__init__(scope, construct_id)
        self.config = config
        queries = MetricQueries(config)
        self.alarms = Alarms(config, queries, function)
        self.alarms.publisher(self)

        def in_shard(index: int) -> Construct:
            return nested.scope(shard_id(index), NESTED_SCOPE)

        for pool in plan.pools:
            self.alarms.pool(in_shard(layout.pool_shard(pool)), pool)
        for queue in plan.queues:
            self.alarms.queue(in_shard(layout.queue_shard(queue)), queue)
        for service in config.services:
            self.alarms.service(in_shard(layout.service_shard(service)), service)
            self.alarms.scale_out(service, scaling[service.key])
        self.topic = self._topic(config.alarm_email) if config.alarm_email else None
        if self.topic is not None:
            action = cw_actions.SnsAction(self.topic)
            for alarm in self.alarms.notifying:
                alarm.add_alarm_action(action)
                alarm.add_ok_action(action)

        def page_scope(number: int) -> tuple[Construct, str]:
            return nested.scope(page_id(number), NESTED_SCOPE), page_id(number)

        self.dashboards = Dashboards(config, plan, WidgetRows(config, plan, queries, function, log_group))
        self.dashboard = self.dashboards.build(self, self.alarms.shown, page_scope)
        # The overview names alarms that nested stacks create: deploy it once they exist.
        for _, stack in nested.ordered():
            self.dashboard.node.add_dependency(stack)

    def _topic(self, email: str) -> sns.Topic:
        # Not encrypted at rest: it carries alarm notifications only (names, states, thresholds; no secrets or
        # flow data), CloudWatch cannot publish to a topic under the AWS managed key alias/aws/sns, and a
        # customer managed key would cost a key and a key policy for nothing worth protecting.
        topic = sns.Topic(self, "AlarmTopic", display_name=f"{self.config.stack_name} alarms", enforce_ssl=True)
        # A topic policy replaces SNS's default one, so CloudWatch needs its own grant, scoped to this
        # account's alarms; without it every notification fails with "not authorized to perform SNS:Publish".
        topic.add_to_resource_policy(iam.PolicyStatement(
            sid="AllowCloudWatchAlarms", actions=["sns:Publish"], resources=[topic.topic_arn],
            principals=[iam.ServicePrincipal("cloudwatch.amazonaws.com")],
            conditions={"StringEquals": {"aws:SourceAccount": Aws.ACCOUNT_ID},
                        "ArnLike": {"aws:SourceArn": f"arn:{Aws.PARTITION}:cloudwatch:{Aws.REGION}:{Aws.ACCOUNT_ID}"
                                                     ":alarm:*"}}))
        topic.add_subscription(subscriptions.EmailSubscription(email))
        return topic
