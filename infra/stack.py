"""The stack: one publisher for all configured queues, scaling for each ECS service, and monitoring.

The publisher stays in the root stack; scaling and the queue, pool and service
alarms are spread over nested stacks (infra/layout.py), so one ``cdk deploy``
holds any fleet this account's quotas allow. The root template's metadata
(:data:`infra.assembly.METADATA_KEY`) records the layout for ``make synth``'s
summary and for whoever reads the templates back.
"""

from __future__ import annotations

from typing import Any

from aws_cdk import CfnResource, Duration, Stack
from constructs import Construct

from infra import ids, layout
from infra.assembly import METADATA_KEY, StackTemplates
from infra.layout import SHARD_COUNT, NestedStacks
from infra.monitoring import Monitoring
from infra.monitoring.plan import plan_monitoring
from infra.packaging import build_package
from infra.publisher import Publisher
from infra.scaling import ServiceScaling
from prefect_backlog.config import Config, ConfigError

# CloudFormation's limit per stack (root or nested), and CloudWatch's per dashboard: past them a deploy fails
# late and obscurely, so the stack refuses a configuration beyond what the layout holds, with the counts.
MAX_RESOURCES_PER_STACK = 500
MAX_WIDGETS_PER_DASHBOARD = 500
MAX_TEMPLATE_BYTES = 1_000_000  # per template file (root or nested) uploaded to S3; cfn-lint's E1002 says the same
CDK_METADATA_RESOURCES = 1  # the CLI adds an AWS::CDK::Metadata resource to every stack, nested ones included


class PrefectAutoscalerStack(Stack):
    def __init__(self, scope: Construct, construct_id: str, *, config: Config, **kwargs: Any) -> None:
        # Compact JSON: CloudFormation takes templates of at most 1 MB, and a big fleet's overview (every alarm's
        # ARN) and dashboards would spend about 40 % of that on indentation.
        super().__init__(scope, construct_id,
                         description="Scales ECS-hosted Prefect agents/workers on their work-queue backlog",
                         suppress_template_indentation=True, **kwargs)
        self.config = config
        self.plan = plan_monitoring(config)
        self.nested_stacks = NestedStacks(self)
        self.publisher = Publisher(self, "Publisher", config=config, package_dir=build_package(config))
        self.scaling = {
            service.key: ServiceScaling(self.nested_stacks.shard(layout.service_shard(service)),
                                        ids.construct_id("Scaling", *service.key), service=service,
                                        namespace=config.namespace,
                                        scale_out_period=Duration.seconds(config.scale_out_period_seconds))
            for service in config.services
        }
        self.monitoring = Monitoring(self, "Monitoring", config=config, plan=self.plan,
                                     function=self.publisher.function, scaling=self.scaling, nested=self.nested_stacks)
        self.resource_counts = self._resource_counts()
        self._check_limits()
        self.add_metadata(METADATA_KEY, self._layout_metadata())

    def _resource_counts(self) -> dict[str, int]:
        """CloudFormation resources per stack: "root", then each nested stack by its id.

        A nested stack's subtree is its own; the root's tree holds them all (and the nested stack resources).
        """
        nested = {stack_id: _cfn_resources(stack) for stack_id, stack in self.nested_stacks.ordered()}
        return {"root": _cfn_resources(self) - sum(nested.values()), **nested}

    def _check_limits(self) -> None:
        config = self.config
        size = f"{len(config.queues)} queues on {len(config.services)} ECS services"
        way_out = ("split the queues across several stacks, each with its own stackName (one cdk.json context or -c "
                   "set per stack; every stack gets its own publisher)")
        problems = [f"queues: {size} put {count + CDK_METADATA_RESOURCES} CloudFormation resources in "
                    f"{'the root stack' if stack == 'root' else 'nested stack ' + stack}, more than the "
                    f"{MAX_RESOURCES_PER_STACK} one stack may hold (the layout spreads scaling and alarms over "
                    f"{SHARD_COUNT} nested stacks by name): {way_out}"
                    for stack, count in self.resource_counts.items()
                    if count + CDK_METADATA_RESOURCES > MAX_RESOURCES_PER_STACK]
        problems += [f"queues: {size} need {d.widgets} widgets on dashboard {d.name}, more than the "
                     f"{MAX_WIDGETS_PER_DASHBOARD} a CloudWatch dashboard may hold: {way_out}"
                     for d in self.monitoring.dashboards.built if d.widgets > MAX_WIDGETS_PER_DASHBOARD]
        if problems:
            raise ConfigError(problems)

    def _layout_metadata(self) -> dict[str, Any]:
        config, plan = self.config, self.plan
        return {
            "queues": len(config.queues), "services": len(config.services), "workPools": len(config.work_pools),
            "monitoring": {"setting": plan.setting, "detail": plan.detail, "reason": plan.reason,
                           "queuesOnTheirOwn": len(plan.queues), "pools": len(plan.pools)},
            "resources": self.resource_counts,
            "nestedStacks": {stack_id: stack.template_file for stack_id, stack in self.nested_stacks.ordered()},
            "dashboards": [{"name": d.name, "widgets": d.widgets, "stack": d.stack}
                           for d in self.monitoring.dashboards.built],
        }


def _cfn_resources(scope: Construct) -> int:
    return sum(1 for construct in scope.node.find_all() if isinstance(construct, CfnResource))


def check_template_sizes(templates: StackTemplates) -> None:
    """After synth (a template's size is known only once written): refuse one CloudFormation would not take."""
    layout = templates.layout
    problems = [f"queues: {layout.get('queues')} queues on {layout.get('services')} ECS services make the "
                f"{'root' if name == 'root' else name} template {size:,} bytes, more than the {MAX_TEMPLATE_BYTES:,} "
                "CloudFormation accepts (the overview lists every alarm: with per-queue alarms, 3 per queue): set "
                'monitoringDetail to "auto" or "pool", or split the queues across several stacks, each with its '
                "own stackName"
                for name, size in templates.sizes.items() if size > MAX_TEMPLATE_BYTES]
    if problems:
        raise ConfigError(problems)
