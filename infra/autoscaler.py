"""The autoscaler as a construct for your own CDK app: the publisher, its monitoring, and the services it scales.

    from prefect_ecs_autoscaler import PrefectBacklogPublisher, WorkerServiceScaling, WorkQueue

    workers = WorkerServiceScaling(self, "WorkerScaling", service=worker_service, max_capacity=10,
                                   queues=[WorkQueue("default", work_pool="process-pool", runs_in_worker_task=True)])
    PrefectBacklogPublisher(self, "Autoscaler", prefect_api_url="https://prefect.example.com/api",
                            prefect_auth=PrefectAuth("prefect/api-key", "bearer"), services=[workers])

Every keyword is a setting of cdk.json's context under its snake_case name
(``prefectApiUrl`` is ``prefect_api_url``): one schema,
:mod:`prefect_backlog.config`, owns their defaults and checks, for both
ways in. The construct writes its keywords in cdk.json's form and parses them
with :func:`~prefect_backlog.config.parse_config`, so errors are the context
path's, naming the setting; a queue's problems name the WorkerServiceScaling
it belongs to. The standalone app (infra/stack.py) goes the other way: it
parses the context, then builds these constructs from the parsed
configuration with :func:`publisher_settings` and :func:`scaling_settings`.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aws_cdk import Duration, Stack, Token
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_secretsmanager as secretsmanager
from constructs import Construct

from prefect_backlog.config import (
    QUEUE_ENTRY,
    SERVICE_SETTINGS,
    TOP_LEVEL,
    AuthScheme,
    Config,
    ConfigError,
    MonitoringDetail,
    OrphanedRuns,
    parse_config,
)

from .layout import NestedStacks
from .monitoring import Monitoring
from .monitoring.plan import plan_monitoring
from .packaging import build_package
from .publisher import Publisher
from .scaling import WorkerServiceScaling, WorkQueue


def snake(key: str) -> str:
    """A context key's Python name: ``prefectApiUrl`` -> ``prefect_api_url``."""
    return re.sub(r"(?<!^)(?=[A-Z])", "_", key).lower()


@dataclass(frozen=True)
class PrefectAuth:
    """``prefectAuth``: the Secrets Manager secret holding the Prefect API key (or ``user:password``).

    ``secret`` is its name, its ARN, or an imported ``ISecret`` (``Secret.from_secret_name_v2``...):
    the Lambda fetches it by that name at run time, so it must be known at synth.
    """

    secret: str | secretsmanager.ISecret
    scheme: AuthScheme  # "bearer": a Prefect Cloud API key; "basic": a 3.x server's "user:password"


@dataclass(frozen=True)
class PublisherNetwork:
    """``network``: subnets and security groups for the publisher's Lambda (a Prefect server inside a VPC).

    IDs, or subnet and security group objects whose IDs are known at synth (looked up or imported).
    """

    subnet_ids: Sequence[str | ec2.ISubnet]
    security_group_ids: Sequence[str | ec2.ISecurityGroup]


class PrefectBacklogPublisher(Construct):
    """Publishes the Prefect backlog of the given services' queues and scales those services on it.

    Creates the publisher (a Lambda on an EventBridge schedule with a least-privilege role), each
    service's scalable target and policies (in its :class:`~.scaling.WorkerServiceScaling`) and, unless
    ``monitoring`` is False, the alarms, dashboards and optional email topic of cdk.json's stack. Queue,
    pool and service alarms are spread over nested stacks under this construct (infra/layout.py).

    Settings (cdk.json key in brackets; README, "Configuration", says what each does and its default):
    ``prefect_api_url`` [prefectApiUrl], ``prefect_auth`` [prefectAuth], ``network`` [network],
    ``metric_namespace`` [metricNamespace], ``schedule``, ``log_retention_days``, ``stack_name`` (the
    prefix of alarm and dashboard names; default: the enclosing stack's name), ``fast_mode``,
    ``stuck_pending_seconds``, ``reschedule_stuck_pending``, ``max_reschedules_per_run``,
    ``oldest_late_alarm_seconds``, ``unpolled_alarm_seconds``, ``alarm_email``, ``monitoring_detail``,
    ``crash_orphaned_runs`` (older spelling of ``orphaned_runs="crash"``), ``orphaned_runs``,
    ``max_crashes_per_run``, ``full_read_every_samples``. ``nested_stacks`` is where alarms (and, in the
    standalone stack, scaling) are placed, and ``parsed`` the standalone stack's parsed cdk.json, used as it
    is so that the packaged configuration keeps cdk.json's queue order (rebuilt from the services, the queues
    would come service by service); leave both out.
    """

    def __init__(self, scope: Construct, construct_id: str, *, prefect_api_url: str,
                 services: Sequence[WorkerServiceScaling], prefect_auth: PrefectAuth | None = None,
                 network: PublisherNetwork | None = None, metric_namespace: str | None = None,
                 schedule: str | None = None, log_retention_days: int | None = None, stack_name: str | None = None,
                 fast_mode: bool | None = None, stuck_pending_seconds: int | None = None,
                 reschedule_stuck_pending: bool | None = None, max_reschedules_per_run: int | None = None,
                 oldest_late_alarm_seconds: int | None = None, unpolled_alarm_seconds: int | None = None,
                 alarm_email: str | None = None, monitoring_detail: MonitoringDetail | None = None,
                 crash_orphaned_runs: bool | None = None, orphaned_runs: OrphanedRuns | None = None,
                 max_crashes_per_run: int | None = None, full_read_every_samples: int | None = None,
                 monitoring: bool = True, nested_stacks: NestedStacks | None = None,
                 parsed: Config | None = None) -> None:
        super().__init__(scope, construct_id)
        given = {name: value for name, value in locals().items() if name in PUBLISHER_SETTINGS}
        if stack_name is None:
            given["stack_name"] = Stack.of(self).stack_name
        if not monitoring and alarm_email is not None:
            raise ConfigError([f"{self.node.path}: alarmEmail needs the monitoring (monitoring=False has no alarms)"])
        keys = [scaling.key for scaling in services]
        if duplicated := sorted({key for key in keys if keys.count(key) > 1}):
            raise ConfigError([f"{self.node.path}: services: ECS service {cluster}/{service} has more than one "
                               "WorkerServiceScaling; give all its queues to one" for cluster, service in duplicated])
        self.config = config = parsed if parsed is not None else self._parse(given, services)
        self.plan = plan_monitoring(config)
        self.nested_stacks = nested_stacks if nested_stacks is not None else NestedStacks(self, config.stack_name)
        self.publisher = Publisher(self, "Publisher", config=config, package_dir=build_package(config))
        period = Duration.seconds(config.scale_out_period_seconds)
        self.scaling = {scaling.key: scaling for scaling in services}
        for service in config.services:
            self.scaling[service.key].scale(service, config.namespace, period)
        self.monitoring = Monitoring(
            self, "Monitoring", config=config, plan=self.plan, function=self.publisher.function,
            log_group=self.publisher.log_group, scaling=self.scaling, nested=self.nested_stacks) if monitoring else None

    def _parse(self, given: Mapping[str, Any], services: Sequence[WorkerServiceScaling]) -> Config:
        context = {PUBLISHER_SETTINGS[name]: _plain(self, value) for name, value in given.items() if value is not None}
        owners: list[tuple[WorkerServiceScaling, int]] = []
        context["queues"] = []
        for scaling in services:
            entries = scaling.queue_entries()
            context["queues"] += entries
            owners += [(scaling, position) for position in range(len(entries))]
        try:
            return parse_config(context)
        except ConfigError as error:
            raise ConfigError([_name_owner(problem, owners) for problem in error.problems]) from None


def _plain(scope: Construct, value: Any) -> Any:
    """A keyword's value as cdk.json holds it: the settings objects as objects, CDK objects by their names."""
    if isinstance(value, PrefectAuth):
        return {"secret": _secret_id(scope, value.secret), "scheme": value.scheme}
    if isinstance(value, PublisherNetwork):
        return {"subnetIds": [_known(scope, "network.subnetIds", s if isinstance(s, str) else s.subnet_id)
                              for s in value.subnet_ids],
                "securityGroupIds": [_known(scope, "network.securityGroupIds",
                                            g if isinstance(g, str) else g.security_group_id)
                                     for g in value.security_group_ids]}
    return value


def _secret_id(scope: Construct, secret: str | secretsmanager.ISecret) -> str:
    if isinstance(secret, str):
        return secret
    for candidate in (secret.secret_full_arn, secret.secret_arn, secret.secret_name):
        if candidate is not None and not Token.is_unresolved(candidate):
            return candidate
    return _known(scope, "prefectAuth.secret", secret.secret_arn)


def _known(scope: Construct, key: str, value: str) -> str:
    if Token.is_unresolved(value):
        raise ConfigError([f"{scope.node.path}: {key} is known only at deploy time (a resource this app creates), "
                           "and the publisher's Lambda needs it at run time from its packaged configuration: "
                           "pass the ID or name itself, or an imported or looked-up object"])
    return value


def _name_owner(problem: str, owners: Sequence[tuple[WorkerServiceScaling, int]]) -> str:
    """``queues[3].maxCapacity: ...`` -> ``WorkerServiceScaling App/Workers maxCapacity: ...``."""
    match = re.match(r"queues\[(\d+)\](\.(\w+))?", problem)
    if match is None or int(match.group(1)) >= len(owners):
        return problem
    scaling, position = owners[int(match.group(1))]
    key = match.group(3)
    where = f"WorkerServiceScaling {scaling.node.path}"
    where += f" {key}" if key in SCALING_SETTINGS.values() else f" queues[{position}]" + (f".{key}" if key else "")
    return where + problem[match.end():]


# The construct keywords and the context keys they stand for, derived from the schema's declarations.
PUBLISHER_SETTINGS = {snake(s.key): s.key for s in TOP_LEVEL.settings if s.key != "queues"}
SCALING_SETTINGS = {snake(s.key): s.key for s in (*SERVICE_SETTINGS, *(
    s for s in QUEUE_ENTRY.settings if s.key in ("cluster", "service")))}
WORK_QUEUE_SETTINGS = {snake(s.key): s.key for s in QUEUE_ENTRY.settings if s.key not in SCALING_SETTINGS.values()}


def publisher_settings(config: Config) -> dict[str, Any]:
    """The :class:`PrefectBacklogPublisher` keywords of a parsed configuration (the standalone stack's way in)."""
    context = config.to_context()
    settings: dict[str, Any] = {name: context[key] for name, key in PUBLISHER_SETTINGS.items()
                                if context.get(key) is not None}
    if "prefect_auth" in settings:
        settings["prefect_auth"] = PrefectAuth(**{snake(k): v for k, v in settings["prefect_auth"].items()})
    if "network" in settings:
        settings["network"] = PublisherNetwork(**{snake(k): v for k, v in settings["network"].items()})
    return settings


def scaling_settings(config: Config) -> dict[tuple[str, str], dict[str, Any]]:
    """Per service key, the :class:`WorkerServiceScaling` keywords of a parsed configuration, queues included."""
    by_service: dict[tuple[str, str], list[Any]] = {}  # cdk.json entries
    for entry in config.to_context()["queues"]:
        by_service.setdefault((entry["cluster"], entry["service"]), []).append(entry)
    settings: dict[tuple[str, str], dict[str, Any]] = {}
    for key, entries in by_service.items():
        settings[key] = {name: entries[0][k] for name, k in SCALING_SETTINGS.items()}
        settings[key]["queues"] = [WorkQueue(**{name: entry.get(k) for name, k in WORK_QUEUE_SETTINGS.items()})
                                   for entry in entries]
    return settings
