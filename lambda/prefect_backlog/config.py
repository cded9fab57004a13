"""The configuration schema: parsed and validated once, used by the stack and the Lambda.

The CDK app parses the context with :func:`parse_config`; the stack writes the
canonical form (:meth:`Config.to_context`) into the Lambda package, and the
Lambda parses that same form back with the same function. A field is therefore
added, defaulted and validated in exactly one place.

Every problem is collected and raised together as one :class:`ConfigError`
whose lines name the entry and the field (``queues[2].maxCapacity: ...``), so a
user fixes their ``cdk.json`` in one pass instead of one error per synth.
"""

from __future__ import annotations

import difflib
import json
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar
from urllib.parse import urlparse

DEFAULT_NAMESPACE = "Prefect"
DEFAULT_SCHEDULE = "rate(1 minute)"
DEFAULT_LOG_RETENTION_DAYS = 30
DEFAULT_TARGET_BACKLOG_PER_TASK = 1.0
DEFAULT_STACK_NAME = "PrefectEcsAutoscaler"
# Fast mode samples every 10 s inside one invocation (EventBridge Scheduler's floor is 1 minute)
# and publishes high-resolution metrics, so scale-out alarms can use 10 s periods.
FAST_SAMPLE_SECONDS = 10
# A run Pending this long has almost surely lost its worker (a worker needs seconds to minutes to start one).
DEFAULT_STUCK_PENDING_SECONDS = 900
DEFAULT_MAX_RESCHEDULES_PER_RUN = 10
# The monitoring alarm fires when a queue's oldest Late run has waited this long.
DEFAULT_OLDEST_LATE_ALARM_SECONDS = 600
# Workers poll every 10 s (2.x agents every 15 s): five quiet minutes with runs due means none is polling.
DEFAULT_UNPOLLED_ALARM_SECONDS = 300

# CloudWatch Logs accepts only these retention periods.
LOG_RETENTION_DAYS = (1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731,
                      1096, 1827, 2192, 2557, 2922, 3288, 3653)

AuthScheme = Literal["bearer", "basic"]
AUTH_SCHEMES: tuple[AuthScheme, ...] = ("bearer", "basic")
# Alarms and dashboard rows per queue (the default), or per work pool for fleets too big for one stack
# or dashboard that way (about 80 queues).
MonitoringDetail = Literal["queue", "pool"]
MONITORING_DETAILS: tuple[MonitoringDetail, ...] = ("queue", "pool")

_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,254}$")  # ECS cluster/service names
_SCHEDULE_PATTERN = re.compile(r"^(rate\(\s*\d+\s+(minute|minutes|hour|hours|day|days)\s*\)|cron\(.+\))$")
_METRIC_NAMESPACE_PATTERN = re.compile(r"^[A-Za-z0-9.\-_/#:]{1,255}$")
_EMAIL_PATTERN = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")


class ConfigError(ValueError):
    """Invalid configuration. ``problems`` holds one line per problem, each naming its field."""

    def __init__(self, problems: Iterable[str]) -> None:
        self.problems = list(problems)
        super().__init__("invalid configuration:\n" + "\n".join(f"  - {p}" for p in self.problems))


@dataclass(frozen=True)
class AuthConfig:
    """Where the Prefect credential lives. The value itself never enters the config."""

    secret: str  # Secrets Manager secret name or full ARN
    scheme: AuthScheme  # bearer: Prefect Cloud API key; basic: a 3.x server's "user:pass"


@dataclass(frozen=True)
class NetworkConfig:
    """Subnets and security groups for reaching a Prefect server in private subnets."""

    subnet_ids: tuple[str, ...]
    security_group_ids: tuple[str, ...]


@dataclass(frozen=True)
class QueueConfig:
    """One configured work queue and the ECS service whose workers poll it."""

    index: int
    work_queue: str
    work_pool: str | None  # None: look the queue up by name in every pool
    cluster: str
    service: str
    runs_in_worker_task: bool  # Process worker: flow runs live inside the worker's task

    @property
    def label(self) -> str:
        """How errors and logs name this entry."""
        where = f"{self.work_pool}/{self.work_queue}" if self.work_pool else self.work_queue
        return f"queues[{self.index}] ({where})"

    @property
    def service_key(self) -> tuple[str, str]:
        return (self.cluster, self.service)


@dataclass(frozen=True)
class ServiceConfig:
    """An ECS service that scales on the summed demand of its queues."""

    cluster: str
    service: str
    min_capacity: int
    max_capacity: int
    target_backlog_per_task: float
    queue_indexes: tuple[int, ...]

    @property
    def key(self) -> tuple[str, str]:
        return (self.cluster, self.service)

    @property
    def resource_id(self) -> str:
        """Application Auto Scaling's name for the service."""
        return f"service/{self.cluster}/{self.service}"


@dataclass(frozen=True)
class Config:
    api_url: str
    queues: tuple[QueueConfig, ...]
    services: tuple[ServiceConfig, ...]
    auth: AuthConfig | None = None
    network: NetworkConfig | None = None
    namespace: str = DEFAULT_NAMESPACE
    schedule: str = DEFAULT_SCHEDULE
    log_retention_days: int = DEFAULT_LOG_RETENTION_DAYS
    stack_name: str = DEFAULT_STACK_NAME
    fast_mode: bool = False
    stuck_pending_seconds: int = DEFAULT_STUCK_PENDING_SECONDS
    reschedule_stuck_pending: bool = False  # opt-in: set stuck Pending runs back to Scheduled
    max_reschedules_per_run: int = DEFAULT_MAX_RESCHEDULES_PER_RUN
    oldest_late_alarm_seconds: int = DEFAULT_OLDEST_LATE_ALARM_SECONDS
    unpolled_alarm_seconds: int = DEFAULT_UNPOLLED_ALARM_SECONDS
    alarm_email: str | None = None  # None: the alarms notify nobody (no SNS topic)
    monitoring_detail: MonitoringDetail = "queue"

    @property
    def work_pools(self) -> tuple[str, ...]:
        """The configured work pools (queues without workPool are found in any pool at run time)."""
        return tuple(sorted({q.work_pool for q in self.queues if q.work_pool is not None}))

    @property
    def sample_interval_seconds(self) -> int:
        """How often the backlog is sampled: once per scheduled invocation, or every 10 s in fast mode."""
        return FAST_SAMPLE_SECONDS if self.fast_mode else 60

    @property
    def samples_per_invocation(self) -> int:
        return 60 // self.sample_interval_seconds

    @property
    def storage_resolution(self) -> int:
        """CloudWatch StorageResolution: 1 (high resolution) lets alarms use 10 s periods."""
        return 1 if self.fast_mode else 60

    @property
    def scale_out_period_seconds(self) -> int:
        """Period of the step scale-out alarm; target tracking has no sub-minute period either way."""
        return self.sample_interval_seconds

    def service_for(self, queue: QueueConfig) -> ServiceConfig:
        return next(s for s in self.services if s.key == queue.service_key)

    def to_context(self) -> dict[str, Any]:
        """The canonical context form: every default spelled out; parses back to an equal Config."""
        context: dict[str, Any] = {
            "prefectApiUrl": self.api_url,
            "metricNamespace": self.namespace,
            "schedule": self.schedule,
            "logRetentionDays": self.log_retention_days,
            "stackName": self.stack_name,
            "fastMode": self.fast_mode,
            "stuckPendingSeconds": self.stuck_pending_seconds,
            "rescheduleStuckPending": self.reschedule_stuck_pending,
            "maxReschedulesPerRun": self.max_reschedules_per_run,
            "oldestLateAlarmSeconds": self.oldest_late_alarm_seconds,
            "unpolledAlarmSeconds": self.unpolled_alarm_seconds,
            "monitoringDetail": self.monitoring_detail,
            "queues": [],
        }
        for queue in self.queues:
            service = self.service_for(queue)
            entry: dict[str, Any] = {"workQueue": queue.work_queue}
            if queue.work_pool is not None:
                entry["workPool"] = queue.work_pool
            entry.update(
                cluster=queue.cluster,
                service=queue.service,
                minCapacity=service.min_capacity,
                maxCapacity=service.max_capacity,
                targetBacklogPerTask=service.target_backlog_per_task,
                runsInWorkerTask=queue.runs_in_worker_task,
            )
            context["queues"].append(entry)
        if self.auth is not None:
            context["prefectAuth"] = {"secret": self.auth.secret, "scheme": self.auth.scheme}
        if self.network is not None:
            context["network"] = {
                "subnetIds": list(self.network.subnet_ids),
                "securityGroupIds": list(self.network.security_group_ids),
            }
        if self.alarm_email is not None:
            context["alarmEmail"] = self.alarm_email
        return context


# --- parsing -----------------------------------------------------------------------

TOP_LEVEL_KEYS = ("prefectApiUrl", "queues", "prefectAuth", "network", "metricNamespace",
                  "schedule", "logRetentionDays", "stackName", "fastMode", "stuckPendingSeconds",
                  "rescheduleStuckPending", "maxReschedulesPerRun", "oldestLateAlarmSeconds", "unpolledAlarmSeconds",
                  "alarmEmail", "monitoringDetail")
QUEUE_KEYS = ("workQueue", "workPool", "cluster", "service", "minCapacity", "maxCapacity",
              "targetBacklogPerTask", "runsInWorkerTask")
SERVICE_SETTINGS = ("minCapacity", "maxCapacity", "targetBacklogPerTask")

T = TypeVar("T")


@dataclass
class _Problems:
    lines: list[str] = field(default_factory=list)

    def add(self, where: str, message: str) -> None:
        self.lines.append(f"{where}: {message}")


def _unknown_keys(problems: _Problems, where: str, given: Iterable[str], known: tuple[str, ...]) -> None:
    for key in given:
        if key not in known:
            close = difflib.get_close_matches(key, known, n=1)
            hint = f" (did you mean '{close[0]}'?)" if close else f" (known keys: {', '.join(known)})"
            problems.add(f"{where}{key}", f"unknown key{hint}")


def _describe(value: object) -> str:
    text = json.dumps(value) if isinstance(value, (str, int, float, bool, type(None))) else type(value).__name__
    return text if len(text) <= 60 else text[:57] + "..."


def _get(problems: _Problems, source: Mapping[str, Any], key: str, where: str,
         convert: Callable[[Any], T], required: bool, default: T) -> T:
    """Read one field; on a bad value record a problem naming ``where`` and return ``default``."""
    if key not in source or source[key] is None:
        if required:
            problems.add(where, "is required")
        return default
    try:
        return convert(source[key])
    except (TypeError, ValueError) as exc:
        problems.add(where, f"{exc}, got {_describe(source[key])}")
        return default


def _string(value: Any) -> str:
    if not isinstance(value, str):
        raise TypeError("must be a string")
    if not value.strip():
        raise ValueError("must not be empty")
    if value != value.strip():
        raise ValueError("must not start or end with white space")
    return value


def _resource_name(value: Any) -> str:
    name = _string(value)
    if not _NAME_PATTERN.match(name):
        raise ValueError("must be a name (letters, digits, '-', '_', '.'), not an ARN or a path")
    return name


def _one_of(choices: tuple[T, ...]) -> Callable[[Any], T]:
    def parse(value: Any) -> T:
        for known in choices:
            if value == known:
                return known
        raise ValueError(f"must be one of {', '.join(map(str, choices))}")
    return parse


def _boolean(value: Any) -> bool:
    # `cdk -c key=true` delivers strings; cdk.json delivers real booleans.
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise TypeError("must be true or false")


def _integer(minimum: int) -> Callable[[Any], int]:
    def convert(value: Any) -> int:
        if isinstance(value, str) and re.fullmatch(r"-?\d+", value.strip()):
            value = int(value)
        if isinstance(value, bool) or not isinstance(value, int):
            raise TypeError("must be a whole number")
        if value < minimum:
            raise ValueError(f"must be at least {minimum}")
        return value

    return convert


def _positive_number(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError("must be a number")
    try:
        number = float(value)
    except OverflowError:  # a whole number too large for a float
        raise ValueError("must be a number greater than 0 and below 1e308") from None
    if not math.isfinite(number) or number <= 0:
        raise ValueError("must be a number greater than 0")
    return number


def _api_url(value: Any) -> str:
    url = _string(value)
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError("must be an http(s) URL such as https://prefect.example.com/api")
    if parsed.query or parsed.fragment:
        raise ValueError("must not carry a query string or fragment")
    if not parsed.path.rstrip("/").endswith("/api") and "/api/accounts/" not in parsed.path:
        raise ValueError("must be the API root, ending in /api (or a Prefect Cloud workspace URL)")
    return url.rstrip("/")


def _schedule(value: Any) -> str:
    text = _string(value)
    if not _SCHEDULE_PATTERN.match(text):
        raise ValueError("must be an EventBridge Scheduler expression like rate(1 minute) or cron(...)")
    return text


def _namespace(value: Any) -> str:
    text = _string(value)
    if text.startswith("AWS/") or not _METRIC_NAMESPACE_PATTERN.match(text):
        raise ValueError("must be a custom CloudWatch namespace (not AWS/...)")
    return text


def _email(value: Any) -> str:
    text = _string(value)
    if not _EMAIL_PATTERN.match(text):
        raise ValueError("must be one email address such as ops@example.com")
    return text


def _retention(value: Any) -> int:
    days = _integer(1)(value)
    if days not in LOG_RETENTION_DAYS:
        raise ValueError(f"must be one of CloudWatch Logs' retention periods {LOG_RETENTION_DAYS}")
    return days


def _id_list(prefix: str) -> Callable[[Any], tuple[str, ...]]:
    """A non-empty list of EC2 ids such as subnet-0123abcd or sg-0123456789abcdef0."""
    pattern = re.compile(rf"^{prefix}-([0-9a-f]{{8}}|[0-9a-f]{{17}})$")

    def convert(value: Any) -> tuple[str, ...]:
        if not isinstance(value, list) or not value:
            raise TypeError(f"must be a non-empty list of ids like {prefix}-0123abcd")
        for item in value:
            if not isinstance(item, str) or not pattern.match(item):
                raise ValueError(f"must hold ids like {prefix}-0123abcd, not {_describe(item)}")
        return tuple(value)

    return convert


def _mapping(problems: _Problems, value: Any, where: str) -> Mapping[str, Any] | None:
    if not isinstance(value, Mapping):
        problems.add(where, f"must be an object, got {_describe(value)}")
        return None
    return value


def _queue_list(value: Any) -> list[Any]:
    # `cdk -c queues='[...]'` delivers a JSON string; cdk.json delivers a list.
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as exc:
            raise ValueError(f"is a string that is not valid JSON ({exc.msg} at position {exc.pos})") from None
        except RecursionError:
            raise ValueError("is a string nested too deeply to be a list of queue entries") from None
    if not isinstance(value, list):
        raise TypeError("must be a list of queue entries")
    if not value:
        raise ValueError("must list at least one queue")
    return value


def _parse_auth(problems: _Problems, value: Any) -> AuthConfig | None:
    source = _mapping(problems, value, "prefectAuth")
    if source is None:
        return None
    _unknown_keys(problems, "prefectAuth.", source, ("secret", "scheme"))
    secret = _get(problems, source, "secret", "prefectAuth.secret", _string, True, "")

    chosen: AuthScheme = _get(problems, source, "scheme", "prefectAuth.scheme", _one_of(AUTH_SCHEMES), True,
                              "bearer")
    return AuthConfig(secret=secret, scheme=chosen)


def _parse_network(problems: _Problems, value: Any) -> NetworkConfig | None:
    source = _mapping(problems, value, "network")
    if source is None:
        return None
    _unknown_keys(problems, "network.", source, ("subnetIds", "securityGroupIds"))
    no_ids: tuple[str, ...] = ()
    subnets = _get(problems, source, "subnetIds", "network.subnetIds", _id_list("subnet"), True, no_ids)
    groups = _get(problems, source, "securityGroupIds", "network.securityGroupIds", _id_list("sg"), True, no_ids)
    return NetworkConfig(subnet_ids=subnets, security_group_ids=groups)


@dataclass
class _QueueEntry:
    queue: QueueConfig
    settings: dict[str, Any]  # the service settings this entry gave explicitly


def _parse_queue(problems: _Problems, index: int, value: Any) -> _QueueEntry | None:
    where = f"queues[{index}]"
    source = _mapping(problems, value, where)
    if source is None:
        return None
    _unknown_keys(problems, f"{where}.", source, QUEUE_KEYS)
    work_queue = _get(problems, source, "workQueue", f"{where}.workQueue", _string, True, "")
    work_pool = _get(problems, source, "workPool", f"{where}.workPool", _string, False, None)
    cluster = _get(problems, source, "cluster", f"{where}.cluster", _resource_name, True, "")
    service = _get(problems, source, "service", f"{where}.service", _resource_name, True, "")
    in_task = _get(problems, source, "runsInWorkerTask", f"{where}.runsInWorkerTask", _boolean, False, False)
    converters: dict[str, Callable[[Any], Any]] = {
        "minCapacity": _integer(0),
        "maxCapacity": _integer(1),
        "targetBacklogPerTask": _positive_number,
    }
    settings: dict[str, Any] = {}
    for key, convert in converters.items():
        parsed = _get(problems, source, key, f"{where}.{key}", convert, False, None)
        if parsed is not None:
            settings[key] = parsed
    if "minCapacity" in settings and "maxCapacity" in settings and settings["maxCapacity"] < settings["minCapacity"]:
        problems.add(f"{where}.maxCapacity",
                     f"must be at least minCapacity ({settings['minCapacity']}), got {settings['maxCapacity']}")
    queue = QueueConfig(index=index, work_queue=work_queue, work_pool=work_pool, cluster=cluster,
                        service=service, runs_in_worker_task=in_task)
    return _QueueEntry(queue=queue, settings=settings)


def _merge_services(problems: _Problems, entries: list[_QueueEntry]) -> tuple[ServiceConfig, ...]:
    """Group entries by ECS service; the entries of one service must agree on its settings."""
    by_service: dict[tuple[str, str], list[_QueueEntry]] = {}
    for entry in entries:
        by_service.setdefault(entry.queue.service_key, []).append(entry)
    services = []
    for (cluster, service), group in by_service.items():
        chosen: dict[str, Any] = {}
        for key in SERVICE_SETTINGS:
            given = {e.queue.index: e.settings[key] for e in group if key in e.settings}
            if len(set(given.values())) > 1:
                listed = ", ".join(f"queues[{i}] says {v}" for i, v in given.items())
                problems.add(f"queues[{min(given)}].{key}",
                             f"entries for ECS service {cluster}/{service} disagree ({listed}); give one value")
            if given:
                chosen[key] = given[min(given)]
        indexes = tuple(e.queue.index for e in group)
        if "maxCapacity" not in chosen:
            problems.add(f"queues[{indexes[0]}].maxCapacity",
                         f"is required (at least one entry for ECS service {cluster}/{service} must give it)")
        min_capacity = chosen.get("minCapacity", 0)
        max_capacity = chosen.get("maxCapacity", max(min_capacity, 1))
        if max_capacity < min_capacity:
            problems.add(f"queues[{indexes[0]}].maxCapacity",
                         f"ECS service {cluster}/{service}: maxCapacity {max_capacity} is below minCapacity "
                         f"{min_capacity}")
        services.append(ServiceConfig(
            cluster=cluster, service=service, min_capacity=min_capacity, max_capacity=max_capacity,
            target_backlog_per_task=chosen.get("targetBacklogPerTask", DEFAULT_TARGET_BACKLOG_PER_TASK),
            queue_indexes=indexes,
        ))
    return tuple(services)


def _check_duplicates(problems: _Problems, queues: list[QueueConfig]) -> None:
    seen: dict[tuple[str | None, str], int] = {}
    for queue in queues:
        key = (queue.work_pool, queue.work_queue)
        where = f"{queue.work_pool}/{queue.work_queue}" if queue.work_pool else queue.work_queue
        if key in seen:
            problems.add(f"queues[{queue.index}]", f"duplicates queues[{seen[key]}] ({where})")
        else:
            seen[key] = queue.index


def parse_config(context: Mapping[str, Any], *, known_extra_keys: Iterable[str] = ()) -> Config:
    """Validate the whole configuration; raise one ConfigError listing every problem.

    ``context`` is the CDK context (or the canonical form the Lambda reads back).
    Keys other than ours are CDK's own (feature flags and the like) and are left
    alone, except ones close enough to ours to be a typo.
    """
    problems = _Problems()
    if not isinstance(context, Mapping):
        raise ConfigError([f"configuration: must be an object, got {_describe(context)}"])
    for key in context:
        if key in TOP_LEVEL_KEYS or key in known_extra_keys or not isinstance(key, str):
            continue
        close = difflib.get_close_matches(key, TOP_LEVEL_KEYS, n=1, cutoff=0.8)
        if close:
            problems.add(key, f"unknown key (did you mean '{close[0]}'?)")

    api_url = _get(problems, context, "prefectApiUrl", "prefectApiUrl", _api_url, True, "")
    no_queues: list[Any] = []
    raw_queues = _get(problems, context, "queues", "queues", _queue_list, True, no_queues)
    entries = [e for i, item in enumerate(raw_queues) if (e := _parse_queue(problems, i, item)) is not None]
    queues = [e.queue for e in entries]
    _check_duplicates(problems, queues)
    services = _merge_services(problems, entries)

    auth = _parse_auth(problems, context["prefectAuth"]) if context.get("prefectAuth") is not None else None
    network = _parse_network(problems, context["network"]) if context.get("network") is not None else None
    namespace = _get(problems, context, "metricNamespace", "metricNamespace", _namespace, False, DEFAULT_NAMESPACE)
    schedule = _get(problems, context, "schedule", "schedule", _schedule, False, DEFAULT_SCHEDULE)
    retention = _get(problems, context, "logRetentionDays", "logRetentionDays", _retention, False,
                     DEFAULT_LOG_RETENTION_DAYS)
    stack_name = _get(problems, context, "stackName", "stackName", _stack_name, False, DEFAULT_STACK_NAME)
    fast_mode = _get(problems, context, "fastMode", "fastMode", _boolean, False, False)
    stuck_pending = _get(problems, context, "stuckPendingSeconds", "stuckPendingSeconds", _integer(60), False,
                         DEFAULT_STUCK_PENDING_SECONDS)
    reschedule = _get(problems, context, "rescheduleStuckPending", "rescheduleStuckPending", _boolean, False, False)
    max_reschedules = _get(problems, context, "maxReschedulesPerRun", "maxReschedulesPerRun", _integer(1), False,
                           DEFAULT_MAX_RESCHEDULES_PER_RUN)
    oldest_late_alarm = _get(problems, context, "oldestLateAlarmSeconds", "oldestLateAlarmSeconds", _integer(60),
                             False, DEFAULT_OLDEST_LATE_ALARM_SECONDS)
    unpolled_alarm = _get(problems, context, "unpolledAlarmSeconds", "unpolledAlarmSeconds", _integer(60), False,
                          DEFAULT_UNPOLLED_ALARM_SECONDS)
    alarm_email = _get(problems, context, "alarmEmail", "alarmEmail", _email, False, None)
    detail: MonitoringDetail = _get(problems, context, "monitoringDetail", "monitoringDetail",
                                    _one_of(MONITORING_DETAILS), False, "queue")
    if detail == "pool":
        for queue in queues:
            if queue.work_pool is None:
                problems.add(f"queues[{queue.index}].workPool",
                             'is required with monitoringDetail "pool" (alarms and dashboard rows per work pool)')
    if fast_mode and schedule != DEFAULT_SCHEDULE:
        problems.add("schedule", f"must be {DEFAULT_SCHEDULE} (or left out) with fastMode, which samples every "
                                 f"{FAST_SAMPLE_SECONDS} s inside each 1-minute invocation")

    if problems.lines:
        raise ConfigError(problems.lines)
    return Config(api_url=api_url, queues=tuple(queues), services=services, auth=auth, network=network,
                  namespace=namespace, schedule=schedule, log_retention_days=retention, stack_name=stack_name,
                  fast_mode=fast_mode, stuck_pending_seconds=stuck_pending, reschedule_stuck_pending=reschedule,
                  max_reschedules_per_run=max_reschedules, oldest_late_alarm_seconds=oldest_late_alarm,
                  unpolled_alarm_seconds=unpolled_alarm, alarm_email=alarm_email, monitoring_detail=detail)


def _stack_name(value: Any) -> str:
    name = _string(value)
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9-]{0,127}", name):
        raise ValueError("must be a CloudFormation stack name (letters, digits, '-', starting with a letter)")
    return name
