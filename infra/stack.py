"""The stack: one publisher for all configured queues, scaling for each ECS service, and monitoring.

The publisher stays in the root stack; scaling and the queue, pool and service
alarms are spread over nested stacks (infra/layout.py), so one ``cdk deploy``
holds any fleet this account's quotas allow. The root template's metadata
(:data:`infra.assembly.METADATA_KEY`) records the layout for ``make synth``'s
summary and for whoever reads the templates back.
"""

from __future__ import annotations

from typing import Any

from aws_cdk import CfnResource, Stack
from constructs import Construct

from prefect_backlog.config import Config, ConfigError

from . import ids, layout
from .assembly import METADATA_KEY, ROOT, StackTemplates
from .autoscaler import PrefectBacklogPublisher, publisher_settings, scaling_settings
from .layout import SHARD_COUNT, NestedStacks
from .monitoring.dashboard import BuiltDashboard
from .quotas import MAX_RESOURCES_PER_STACK, MAX_TEMPLATE_BYTES, MAX_WIDGETS_PER_DASHBOARD
from .scaling import WorkerServiceScaling

CDK_METADATA_RESOURCES = 1  # the CLI adds an AWS::CDK::Metadata resource to every stack, nested ones included


class PrefectAutoscalerStack(Stack):
    """The standalone app's stack: the library's constructs built from cdk.json's parsed context.

    Each service's scaling goes to its nested stack (infra/layout.py) and the publisher, with its alarms
    spread over the same nested stacks, to the root.
    """

    def __init__(self, scope: Construct, construct_id: str, *, config: Config, **kwargs: Any) -> None:
        # Compact JSON: CloudFormation takes templates of at most 1 MB, and a big fleet's overview (every alarm's
        # ARN) and dashboards would spend about 40 % of that on indentation.
        super().__init__(scope, construct_id,
                         description="Scales ECS-hosted Prefect agents/workers on their work-queue backlog",
                         suppress_template_indentation=True, **kwargs)
        self.config = config
        self.nested_stacks = NestedStacks(self, config.stack_name)
        settings = scaling_settings(config)
        services = [WorkerServiceScaling(self.nested_stacks.shard(layout.service_shard(service)),
                                         ids.construct_id("Scaling", *service.key), **settings[service.key])
                    for service in config.services]
        self.autoscaler = PrefectBacklogPublisher(self, "Autoscaler", **publisher_settings(config), services=services,
                                                  nested_stacks=self.nested_stacks, parsed=config)
        self.resource_counts = self._resource_counts()
        self._check_limits()
        self.add_metadata(METADATA_KEY, self._layout_metadata())

    def _resource_counts(self) -> dict[str, int]:
        """CloudFormation resources per stack: "root", then each nested stack by its id.

        A nested stack's subtree is its own; the root's tree holds them all (and the nested stack resources).
        """
        nested = {stack_id: _cfn_resources(stack) for stack_id, stack in self.nested_stacks.ordered()}
        return {ROOT: _cfn_resources(self) - sum(nested.values()), **nested}

    def _check_limits(self) -> None:
        config = self.config
        size = f"{len(config.queues)} queues on {len(config.services)} ECS services"
        way_out = ("split the queues across several stacks, each with its own stackName (one cdk.json context or -c "
                   "set per stack; every stack gets its own publisher)")
        problems = [f"queues: {size} put {count + CDK_METADATA_RESOURCES} CloudFormation resources in "
                    f"{'the root stack' if stack == ROOT else 'nested stack ' + stack}, more than the "
                    f"{MAX_RESOURCES_PER_STACK} one stack may hold (the layout spreads scaling and alarms over "
                    f"{SHARD_COUNT} nested stacks by name): {way_out}"
                    for stack, count in self.resource_counts.items()
                    if count + CDK_METADATA_RESOURCES > MAX_RESOURCES_PER_STACK]
        problems += [f"queues: {size} need {d.widgets} widgets on dashboard {d.name}, more than the "
                     f"{MAX_WIDGETS_PER_DASHBOARD} a CloudWatch dashboard may hold: {way_out}"
                     for d in self._dashboards() if d.widgets > MAX_WIDGETS_PER_DASHBOARD]
        if problems:
            raise ConfigError(problems)

    def _layout_metadata(self) -> dict[str, Any]:
        config, plan = self.config, self.autoscaler.plan
        return {
            "queues": len(config.queues), "services": len(config.services), "workPools": len(config.work_pools),
            "monitoring": {"setting": plan.setting, "detail": plan.detail, "reason": plan.reason,
                           "queuesOnTheirOwn": len(plan.queues), "pools": len(plan.pools)},
            "resources": self.resource_counts,
            "nestedStacks": {stack_id: stack.template_file for stack_id, stack in self.nested_stacks.ordered()},
            "dashboards": [{"name": d.name, "widgets": d.widgets, "stack": d.stack}
                           for d in self._dashboards()],
        }


    def _dashboards(self) -> list[BuiltDashboard]:
        monitoring = self.autoscaler.monitoring
        return monitoring.dashboards.built if monitoring is not None else []


def _cfn_resources(scope: Construct) -> int:
    return sum(1 for construct in scope.node.find_all() if isinstance(construct, CfnResource))


def check_template_sizes(templates: StackTemplates) -> None:
    """After synth (a template's size is known only once written): refuse one CloudFormation would not take."""
    layout = templates.layout
    problems = [f"queues: {layout.get('queues')} queues on {layout.get('services')} ECS services make the "
                f"{name} template {size:,} bytes, more than the {MAX_TEMPLATE_BYTES:,} "
                "CloudFormation accepts (the overview lists every alarm: with per-queue alarms, 3 per queue): set "
                'monitoringDetail to "auto" or "pool", or split the queues across several stacks, each with its '
                "own stackName"
                for name, size in templates.sizes.items() if size > MAX_TEMPLATE_BYTES]
    if problems:
        raise ConfigError(problems)
