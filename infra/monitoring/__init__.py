"""The operators' view: one dashboard, alarms that say what is wrong and what to do, optional email.

The pieces have a module each: how metrics are found (:mod:`infra.metric_queries`),
the alarms and their text (:mod:`.alarms`), the dashboard (:mod:`.dashboard`).
This construct puts them together; alarms and dashboard are created directly in
it, so their logical ids (and the fixed alarm names CloudFormation keys on)
stay where they were.
"""

from __future__ import annotations

from collections.abc import Mapping

from aws_cdk import Aws
from aws_cdk import aws_cloudwatch_actions as cw_actions
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from constructs import Construct

from infra.metric_queries import MetricQueries
from infra.monitoring.alarms import Alarms
from infra.monitoring.dashboard import OperatorsDashboard
from infra.scaling import ServiceScaling
from prefect_backlog.config import Config


class Monitoring(Construct):
    """Dashboard and alarms for one publisher and the ECS services it scales.

    ``scaling`` maps each service key to its :class:`ServiceScaling`; its scale-out alarms join
    the dashboard's alarm status so an operator sees scaling activity beside the problems.
    """

    def __init__(self, scope: Construct, construct_id: str, *, config: Config, function: lambda_.IFunction,
                 scaling: Mapping[tuple[str, str], ServiceScaling]) -> None:
        super().__init__(scope, construct_id)
        self.config = config
        queries = MetricQueries(config)
        self.alarms = Alarms(self, config, queries, function)
        self.alarms.publisher()
        if config.monitoring_detail == "pool":
            for pool in config.work_pools:
                self.alarms.pool(pool)
        else:
            for queue in config.queues:
                self.alarms.queue(queue)
        for service in config.services:
            self.alarms.service(service)
        self.topic = self._topic(config.alarm_email) if config.alarm_email else None
        if self.topic is not None:
            action = cw_actions.SnsAction(self.topic)
            for alarm in self.alarms.notifying:
                alarm.add_alarm_action(action)
                alarm.add_ok_action(action)

        scale_out = [s.step_scaling.upper_alarm for s in scaling.values() if s.step_scaling.upper_alarm]
        dashboard = OperatorsDashboard(self, config, queries, function)
        self.dashboard = dashboard.build([*self.alarms.notifying, *scale_out])
        self.widget_count = dashboard.widget_count

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
