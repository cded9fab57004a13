"""Where each resource lives: the root stack, or one of a fixed number of nested stacks ("shards").

CloudFormation allows 500 resources per stack, so a fleet's scaling and
monitoring is spread over nested stacks, all deployed by one ``cdk deploy``.

Placement is a pure function of the item's own names: SHA-256 (not Python's
salted ``hash()``) of what identifies it, modulo a **fixed** shard count.
It never depends on the rest of the configuration, so adding, removing or
reordering other queues and services never moves a resource to another
stack. A move would be a create in one stack and a delete in another: a
ScalableTarget created anew only updates the service's registration, and the
old one's deletion then deregisters it, policies included; an alarm with a
fixed name would be created twice and then deleted.

What goes where:

* the root stack: the publisher (Lambda, schedule, role, log group), its
  alarms, the alarm topic and the overview dashboard;
* ``service_shard``: an ECS service's scalable target, both policies, the
  step policy's alarm and the at-max alarm; they live and move together;
* ``queue_shard``: the alarms of a queue monitored on its own. They follow the
  queue, not its service: a queue moved to another service keeps its alarms
  where they are, and a service with hundreds of queues does not overfill
  its service's shard;
* ``pool_shard``: a work pool's alarms (monitored per pool);
* a nested stack of its own (``page_id``) for each of the fleet's dashboards
  past the overview: a dashboard of 450 widgets is about 270 KB of template,
  and CloudFormation takes at most 1 MB per template.

A shard nothing is placed in creates no nested stack. Capacity: an ECS service
takes 5 resources, a queue with its own alarms 3 (9 without ``workPool``: its
conditions are Metrics Insights alarms combined by composite alarms), a pool
2. 32 shards keep the worst one well under CloudFormation's 500: 1,000 queues
on 200 services in 20 pools put 16-72 resources in a shard monitored per pool
(the default at that size) and 93-160 per queue. The spread of names puts about
94 of 2,500 services (470 resources) in the fullest shard, 112 of 3,000: the
shards hold about 2,500 services (the publisher's role holds fewer, about
1,500: infra/service_access.py), and the stack refuses (infra/stack.py), with
the counts, a configuration that would put more than 500 resources in one stack.
"""

from __future__ import annotations

import hashlib
import json

from aws_cdk import NestedStack
from constructs import Construct

from prefect_backlog.config import QueueConfig, ServiceConfig

# Fixed for good: changing it moves almost every resource to another nested stack.
SHARD_COUNT = 32


def shard_of(kind: str, *names: str | int | None) -> int:
    """The shard of one item, from its kind and names alone."""
    digest = hashlib.sha256(json.dumps([kind, *names]).encode()).digest()
    return int.from_bytes(digest[:8], "big") % SHARD_COUNT


def service_shard(service: ServiceConfig) -> int:
    return shard_of("service", service.cluster, service.service)


def queue_shard(queue: QueueConfig) -> int:
    return shard_of("queue", queue.work_pool, queue.work_queue)


def pool_shard(pool: str) -> int:
    return shard_of("pool", pool)


def shard_id(index: int) -> str:
    """A shard's construct id: it names its logical id in the root and its template file."""
    return f"Shard{index:02d}"


def page_id(number: int) -> str:
    """The nested stack of the fleet's dashboard number ``number`` (infra/monitoring/dashboard.py)."""
    return f"Dashboard{number:02d}"


class NestedStacks:
    """The nested stacks under ``scope`` by construct id, each created when something is first placed in it.

    ``scope`` is the standalone stack itself, or a PrefectBacklogPublisher in someone's stack; ``name`` (the
    stackName setting) goes into their descriptions.
    """

    def __init__(self, scope: Construct, name: str) -> None:
        self.parent = scope
        self.name = name
        self.stacks: dict[str, NestedStack] = {}
        self._children: dict[tuple[str, str], Construct] = {}

    def stack(self, stack_id: str) -> NestedStack:
        if stack_id not in self.stacks:
            self.stacks[stack_id] = NestedStack(
                self.parent, stack_id, description=f"{self.name}: scaling and monitoring ({stack_id})",
                suppress_template_indentation=True)
        return self.stacks[stack_id]

    def shard(self, index: int) -> NestedStack:
        return self.stack(shard_id(index))

    def scope(self, stack_id: str, name: str) -> Construct:
        """A construct named ``name`` in a nested stack (for example "Monitoring"), so logical ids read well."""
        key = (stack_id, name)
        if key not in self._children:
            self._children[key] = Construct(self.stack(stack_id), name)
        return self._children[key]

    def ordered(self) -> list[tuple[str, NestedStack]]:
        return sorted(self.stacks.items())
