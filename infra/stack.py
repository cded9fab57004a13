"""The stack: one publisher for all configured queues, scaling for each ECS service, and monitoring."""

from __future__ import annotations

from typing import Any

from aws_cdk import CfnResource, Duration, Stack
from constructs import Construct

from infra import ids
from infra.monitoring import Monitoring
from infra.packaging import build_package
from infra.publisher import Publisher
from infra.scaling import ServiceScaling
from prefect_backlog.config import Config, ConfigError

# CloudFormation's limit per stack, and CloudWatch's per dashboard: past them a deploy fails late and
# obscurely, so the stack refuses such a configuration with the reason and the way out.
MAX_RESOURCES_PER_STACK = 500
MAX_WIDGETS_PER_DASHBOARD = 500


class PrefectAutoscalerStack(Stack):
    def __init__(self, scope: Construct, construct_id: str, *, config: Config, **kwargs: Any) -> None:
        super().__init__(scope, construct_id,
                         description="Scales ECS-hosted Prefect agents/workers on their work-queue backlog",
                         **kwargs)
        self.config = config
        self.publisher = Publisher(self, "Publisher", config=config, package_dir=build_package(config))
        self.scaling = {
            service.key: ServiceScaling(self, ids.construct_id("Scaling", *service.key), service=service,
                                        namespace=config.namespace,
                                        scale_out_period=Duration.seconds(config.scale_out_period_seconds))
            for service in config.services
        }
        self.monitoring = Monitoring(self, "Monitoring", config=config, function=self.publisher.function,
                                     scaling=self.scaling)
        self._check_limits()

    def _check_limits(self) -> None:
        config = self.config
        resources = [c for c in self.node.find_all() if isinstance(c, CfnResource)]
        alarms = sum(1 for r in resources
                     if r.cfn_resource_type in ("AWS::CloudWatch::Alarm", "AWS::CloudWatch::CompositeAlarm"))
        size = f"{len(config.queues)} queues on {len(config.services)} ECS services"
        way_out = ("split the queues across several stacks, each with its own stackName (one cdk.json "
                   "context or -c set per stack; every stack gets its own publisher)")
        if config.monitoring_detail == "queue":
            way_out = ('set monitoringDetail to "pool" (alarms and dashboard rows per work pool), or '
                       + way_out)
        problems = []
        if len(resources) > MAX_RESOURCES_PER_STACK:
            problems.append(f"queues: {size} need {len(resources)} CloudFormation resources ({alarms} of them "
                            f"alarms), more than the {MAX_RESOURCES_PER_STACK} one stack may hold: {way_out}")
        if self.monitoring.widget_count > MAX_WIDGETS_PER_DASHBOARD:
            problems.append(f"queues: {size} need {self.monitoring.widget_count} dashboard widgets, more than the "
                            f"{MAX_WIDGETS_PER_DASHBOARD} a CloudWatch dashboard may hold: {way_out}")
        if problems:
            raise ConfigError(problems)
