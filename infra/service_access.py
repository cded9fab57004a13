"""``ecs:DescribeServices`` on exactly the configured services, in managed policies IAM accepts.

The publisher's role names every service's ARN (about 60-80 characters each).
IAM caps a role's inline policies at 10,240 characters together and a managed
policy at 6,144, and attaches at most 10 managed policies to a role by
default (20 once the quota is raised). One statement naming 200 services is
already twice a managed policy's size, and CDK splits a role's policy only
between statements, by an estimate of the tokens in the ARNs that is several
times too high. So the services are packed here, in configuration order,
into managed policies of their own on the role, each sized for the longest
ARN a service can resolve to (any partition, region and account). The
scoping is unchanged: each service by its ARN, no wildcard.

Capacity: with 20-character ``cluster/service`` names, about 75 services per
policy, so about 750 services on the default quota and 1,500 at IAM's
maximum of 20; a configuration needing more is refused with the counts.
"""

from __future__ import annotations

from collections.abc import Sequence

from aws_cdk import Stack
from aws_cdk import aws_iam as iam
from constructs import Construct

from prefect_backlog.config import ConfigError, ServiceConfig

from .quotas import MANAGED_POLICY_CHARACTERS, MAX_MANAGED_POLICIES_PER_ROLE

# The document around the ARNs: Version, one statement's Effect and Action, brackets; with room to spare.
POLICY_OVERHEAD = 200
# The longest an ARN's fixed part can resolve to: the longest partition, a region longer than any today
# (ap-southeast-3 and the like have 14 characters) and a 12-digit account.
ARN_PREFIX = "arn:aws-us-gov:ecs:xx-xxxxxxxxx-xx:123456789012:service/"


def service_arn_characters(service: ServiceConfig) -> int:
    """The most characters a service's ARN takes in a policy document (with its quotes and comma)."""
    return len(ARN_PREFIX) + len(service.path) + 3


def pack_services(services: Sequence[ServiceConfig]) -> list[list[ServiceConfig]]:
    """The services in order, a new policy whenever the next ARN would pass a managed policy's size."""
    budget = MANAGED_POLICY_CHARACTERS - POLICY_OVERHEAD
    groups: list[list[ServiceConfig]] = [[]]
    used = 0
    for service in services:
        size = service_arn_characters(service)
        if groups[-1] and used + size > budget:
            groups.append([])
            used = 0
        groups[-1].append(service)
        used += size
    return groups if groups[0] else []


def allow_describe_services(scope: Construct, role: iam.IRole, services: Sequence[ServiceConfig]) -> None:
    groups = pack_services(services)
    if len(groups) > MAX_MANAGED_POLICIES_PER_ROLE:
        raise ConfigError([
            f"queues: {len(services)} ECS services need {len(groups)} managed policies of ecs:DescribeServices on "
            f"the publisher's role (each names its services' ARNs; IAM takes at most "
            f"{MANAGED_POLICY_CHARACTERS:,} characters per policy and {MAX_MANAGED_POLICIES_PER_ROLE} policies per "
            "role): split the queues across several stacks, each with its own stackName"])
    stack = Stack.of(scope)
    for number, group in enumerate(groups, start=1):
        iam.ManagedPolicy(
            scope, f"DescribeServices{number}", roles=[role],
            description=f"{stack.stack_name} publisher: ecs:DescribeServices on {len(group)} configured services",
            statements=[iam.PolicyStatement(actions=["ecs:DescribeServices"], resources=[
                stack.format_arn(service="ecs", resource="service", resource_name=s.path) for s in group])])
