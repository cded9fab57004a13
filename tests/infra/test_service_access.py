"""The publisher may describe exactly the configured ECS services, in managed policies IAM accepts."""

from __future__ import annotations

import aws_cdk as cdk
import pytest
from aws_cdk import aws_iam as iam

from infra import service_access
from infra.quotas import MANAGED_POLICY_CHARACTERS
from infra.service_access import allow_describe_services, pack_services, service_arn_characters
from prefect_backlog.config import ConfigError, ServiceConfig


def services(count: int, name_length: int = 20) -> list[ServiceConfig]:
    return [ServiceConfig(cluster="c" * (name_length - 10), service=f"s{i:08d}", min_capacity=0, max_capacity=2,
                          target_backlog_per_task=1, queue_indexes=(i,)) for i in range(count)]


@pytest.mark.parametrize(("count", "name_length"), [(1, 20), (200, 20), (1_000, 20), (300, 400)])
def test_every_service_in_order_in_policies_iam_accepts(count: int, name_length: int) -> None:
    given = services(count, name_length)
    groups = pack_services(given)
    assert [s for group in groups for s in group] == given  # each service once, in configuration order
    for group in groups:
        # The document's own text (Version, Effect, Action, brackets) is well inside the 200 kept for it.
        assert sum(service_arn_characters(s) for s in group) + 200 <= MANAGED_POLICY_CHARACTERS


def test_capacity_matches_what_the_readme_says() -> None:
    """About 75 services of 20-character names per policy: ~750 on IAM's default quota (10), ~1,500 on 20."""
    assert len(pack_services(services(750))) == 10
    assert len(pack_services(services(1_500))) == 20


def test_a_fleet_needing_more_policies_than_iam_attaches_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service_access, "MAX_MANAGED_POLICIES_PER_ROLE", 2)
    stack = cdk.Stack(cdk.App(), "Bound")
    role = iam.Role(stack, "Role", assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"))
    allow_describe_services(stack, role, services(150))  # 2 policies: fine
    with pytest.raises(ConfigError, match=r"queues: 300 ECS services need 4 managed policies of "
                                          r"ecs:DescribeServices on the publisher's role"):
        allow_describe_services(stack, role, services(300))
