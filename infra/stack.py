"""The stack: one publisher for all configured queues, scaling for each ECS service, and monitoring."""

from __future__ import annotations

import re
from typing import Any

from aws_cdk import Duration, Stack
from constructs import Construct

from infra.monitoring import Monitoring
from infra.packaging import build_package
from infra.publisher import Publisher
from infra.scaling import ServiceScaling
from prefect_backlog.config import Config


def _construct_id(cluster: str, service: str) -> str:
    return "Scaling-" + re.sub(r"[^A-Za-z0-9-]", "-", f"{cluster}-{service}")


class PrefectAutoscalerStack(Stack):
    def __init__(self, scope: Construct, construct_id: str, *, config: Config, **kwargs: Any) -> None:
        super().__init__(scope, construct_id,
                         description="Scales ECS-hosted Prefect agents/workers on their work-queue backlog",
                         **kwargs)
        self.config = config
        self.publisher = Publisher(self, "Publisher", config=config, package_dir=build_package(config))
        self.scaling = {
            service.key: ServiceScaling(self, _construct_id(*service.key), service=service,
                                        namespace=config.namespace,
                                        scale_out_period=Duration.seconds(config.scale_out_period_seconds))
            for service in config.services
        }
        self.monitoring = Monitoring(self, "Monitoring", config=config, function=self.publisher.function,
                                     scaling=self.scaling)
