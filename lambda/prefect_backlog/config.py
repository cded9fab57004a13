"""The configuration: declared once, parsed and validated once, used by the stack and the Lambda.

The CDK app parses the context with :func:`parse_config`; the stack writes the
canonical form (:meth:`Config.to_context`) into the Lambda package, and the
Lambda parses that same form back with the same function. Each field is
declared once below (key, type, default, checks, in :data:`TOP_LEVEL`,
:data:`QUEUE_ENTRY`, ...); parsing, the unknown-key check and the canonical
form all come from those declarations (:mod:`prefect_backlog.schema`).

Every problem is collected and raised together as one :class:`ConfigError`
whose lines name the entry and the field (``queues[2].maxCapacity: ...``), so a
user fixes their ``cdk.json`` in one pass instead of one error per synth.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import urlparse

from prefect_backlog.schema import (
    ConfigError,
    Problems,
    Setting,
    Shape,
    boolean,
    decode_json_string,
    describe,
    encode,
    integer,
    matching,
    one_of,
    parse_object,
    positive_number,
    prefect_name,
    string,
)

__all__ = ["ConfigError", "parse_config"]

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
DEFAULT_MAX_CRASHES_PER_RUN = 10
# Protected queues' in-flight runs are read by their changes, and in full every this many samples (1: always).
DEFAULT_FULL_READ_EVERY_SAMPLES = 5
# A Scheduled run starting within this many seconds is demand already, so its task is up when it is due:
# up to 60 s until the next sample sees it, up to 60 s until the 1-minute scale-out alarm fires, and
# about two minutes for a Fargate task to pull its image and start.
DEFAULT_PREWARM_SECONDS = 240
# Prefect's scheduler creates runs at least an hour ahead (PREFECT_SERVER_SERVICES_SCHEDULER_MIN_SCHEDULED_TIME),
# so a longer window would not see more runs, only keep tasks up for nothing.
MAX_PREWARM_SECONDS = 3600

# CloudWatch Logs accepts only these retention periods.
LOG_RETENTION_DAYS = (1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731,
                      1096, 1827, 2192, 2557, 2922, 3288, 3653)

AuthScheme = Literal["bearer", "basic"]
AUTH_SCHEMES: tuple[AuthScheme, ...] = ("bearer", "basic")
# Alarms and dashboard rows per queue, or per work pool; "auto" (the default) lets the stack choose from the
# fleet's size (infra/monitoring/plan.py says how and why).
MonitoringDetail = Literal["auto", "queue", "pool"]
MONITORING_DETAILS: tuple[MonitoringDetail, ...] = ("auto", "queue", "pool")
# What the publisher does with a run whose worker's ECS task has stopped (orphaned, found so in two samples in a
# row): report it only (OrphanedFlowRuns and its alarm), set it to Crashed, or set it back to Scheduled (now) so a
# live worker runs it again. crashOrphanedRuns: true is the older spelling of "crash".
OrphanedRuns = Literal["report", "crash", "reschedule"]
ORPHANED_RUNS: tuple[OrphanedRuns, ...] = ("report", "crash", "reschedule")

MINUTE = 60
HOUR = 3600
DAY = 86_400
WEEK = 7 * DAY
_RATE = re.compile(r"^rate\(\s*(\d+)\s+(minute|minutes|hour|hours|day|days)\s*\)$")
_CRON = re.compile(r"^cron\((.+)\)$")
_UNIT_SECONDS = {"minute": MINUTE, "hour": HOUR, "day": DAY}
_CRON_STEP = re.compile(r"^(\*|\d+)/(\d+)$")


def queue_path(work_pool: str | None, work_queue: str) -> str:
    """How logs, errors, alarms and the dry run name a queue: ``pool/queue``, or ``queue (any pool)``."""
    return f"{work_pool}/{work_queue}" if work_pool is not None else f"{work_queue} (any pool)"


def schedule_interval_seconds(schedule: str) -> int:
    """Seconds between scheduled runs; for a cron expression a safe (never shorter) estimate."""
    rate = _RATE.match(schedule)
    if rate:
        return max(MINUTE, int(rate.group(1)) * _UNIT_SECONDS[rate.group(2).rstrip("s")])
    cron = _CRON.match(schedule)
    fields = cron.group(1).split() if cron else []
    if len(fields) != 6:
        return DAY
    minute, hour, day_of_month, _, day_of_week, _ = fields
    if day_of_month not in ("*", "?") or day_of_week not in ("*", "?"):
        return WEEK  # runs on some days only
    if hour == "*":
        if minute == "*":
            return MINUTE
        step = _CRON_STEP.match(minute)
        return MINUTE * int(step.group(2)) if step else HOUR
    step = _CRON_STEP.match(hour)
    return HOUR * int(step.group(2)) if step else DAY


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
    def path(self) -> str:
        return queue_path(self.work_pool, self.work_queue)

    @property
    def label(self) -> str:
        """How errors and logs name this entry."""
        return f"queues[{self.index}] {self.path}"

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
    task_protection: bool = True  # protect the tasks whose workers hold a flow run from scale-in
    prewarm_seconds: int = DEFAULT_PREWARM_SECONDS  # Scheduled runs starting this soon are demand already

    @property
    def key(self) -> tuple[str, str]:
        return (self.cluster, self.service)

    @property
    def path(self) -> str:
        return f"{self.cluster}/{self.service}"

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
    monitoring_detail: MonitoringDetail = "auto"
    orphaned_runs: OrphanedRuns = "report"  # what to do with runs whose worker task is gone
    max_crashes_per_run: int = DEFAULT_MAX_CRASHES_PER_RUN  # the most orphaned runs one sample crashes or reschedules
    full_read_every_samples: int = DEFAULT_FULL_READ_EVERY_SAMPLES  # 1: never read by changes (#22)

    @property
    def crash_orphaned_runs(self) -> bool:
        """The older setting crashOrphanedRuns, now ``orphanedRuns: "crash"``."""
        return self.orphaned_runs == "crash"

    @property
    def work_pools(self) -> tuple[str, ...]:
        """The configured work pools (queues without workPool are found in any pool at run time)."""
        return tuple(sorted({q.work_pool for q in self.queues if q.work_pool is not None}))

    @property
    def schedule_interval_seconds(self) -> int:
        """Seconds between publisher invocations (for cron, a safe estimate)."""
        return schedule_interval_seconds(self.schedule)

    @property
    def sample_interval_seconds(self) -> int:
        """How often the backlog is sampled: once per scheduled invocation, or every 10 s in fast mode."""
        return FAST_SAMPLE_SECONDS if self.fast_mode else self.schedule_interval_seconds

    @property
    def samples_per_invocation(self) -> int:
        return MINUTE // FAST_SAMPLE_SECONDS if self.fast_mode else 1

    @property
    def storage_resolution(self) -> int:
        """CloudWatch StorageResolution: 1 (high resolution) lets alarms use 10 s periods."""
        return 1 if self.fast_mode else 60

    @property
    def scale_out_period_seconds(self) -> int:
        """Period of the step scale-out alarm; target tracking has no sub-minute period either way."""
        return FAST_SAMPLE_SECONDS if self.fast_mode else MINUTE

    def service_for(self, queue: QueueConfig) -> ServiceConfig:
        return next(s for s in self.services if s.key == queue.service_key)

    def to_context(self) -> dict[str, Any]:
        """The canonical context form: every default spelled out; parses back to an equal Config."""
        context = encode((s for s in TOP_LEVEL.settings if s.attr != "queues"), lambda s: getattr(self, s.attr))
        context["queues"] = [self._entry_context(queue) for queue in self.queues]
        return context

    def _entry_context(self, queue: QueueConfig) -> dict[str, Any]:
        """A queue entry with the values of its ECS service's settings, so each entry parses on its own."""
        service = self.service_for(queue)
        return encode(QUEUE_ENTRY.settings, lambda s: getattr(service if s.scope == "service" else queue, s.attr))


# --- the declarations ---------------------------------------------------------------------------


def _resource_name(value: Any) -> str:
    name = string(value)
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,254}", name):  # ECS cluster/service names
        raise ValueError("must be a name (letters, digits, '-', '_', '.'), not an ARN or a path")
    return name


def _api_url(value: Any) -> str:
    url = string(value)
    parsed = urlparse(url)
    if parsed.scheme not in ("http", "https") or not parsed.netloc:
        raise ValueError("must be an http(s) URL such as https://prefect.example.com/api")
    if parsed.query or parsed.fragment:
        raise ValueError("must not carry a query string or fragment")
    if not parsed.path.rstrip("/").endswith("/api") and "/api/accounts/" not in parsed.path:
        raise ValueError("must be the API root, ending in /api (or a Prefect Cloud workspace URL)")
    return url.rstrip("/")


def _namespace(value: Any) -> str:
    text = string(value)
    if text.startswith("AWS/") or not re.fullmatch(r"[A-Za-z0-9.\-_/#:]{1,255}", text):
        raise ValueError("must be a custom CloudWatch namespace (not AWS/...)")
    return text


def _retention(value: Any) -> int:
    days = integer(1)(value)
    if days not in LOG_RETENTION_DAYS:
        raise ValueError(f"must be one of CloudWatch Logs' retention periods {LOG_RETENTION_DAYS}")
    return days


def _id_list(prefix: str) -> Any:
    """A non-empty list of EC2 ids such as subnet-0123abcd or sg-0123456789abcdef0."""
    pattern = re.compile(rf"^{prefix}-([0-9a-f]{{8}}|[0-9a-f]{{17}})$")

    def convert(value: Any) -> tuple[str, ...]:
        value = decode_json_string(value, f"a list of ids like {prefix}-0123abcd")
        if not isinstance(value, list) or not value:
            raise TypeError(f"must be a non-empty list of ids like {prefix}-0123abcd")
        for item in value:
            if not isinstance(item, str) or not pattern.match(item):
                raise ValueError(f"must hold ids like {prefix}-0123abcd, not {describe(item)}")
        return tuple(value)

    return convert


def _queue_list(value: Any) -> list[Any]:
    value = decode_json_string(value, "a list of queue entries")
    if not isinstance(value, list):
        raise TypeError("must be a list of queue entries")
    if not value:
        raise ValueError("must list at least one queue")
    return value


AUTH = Shape(build=AuthConfig, settings=(
    Setting("secret", "secret", string),
    Setting("scheme", "scheme", one_of(*AUTH_SCHEMES)),
))
NETWORK = Shape(build=NetworkConfig, settings=(
    Setting("subnetIds", "subnet_ids", _id_list("subnet")),
    Setting("securityGroupIds", "security_group_ids", _id_list("sg")),
))


@dataclass(frozen=True)
class _QueueEntry:
    """A parsed queue entry before its service is merged: the queue, and the service settings it gave."""

    queue: QueueConfig
    service_settings: dict[str, Any]
    invalid: frozenset[str]  # service settings it gave with a bad value (already reported)


# A queue entry: its queue, and the settings of the ECS service it scales ("service" scope: the entries
# of one service must agree on them, and each entry's canonical form spells out the service's values).
QUEUE_ENTRY = Shape(build=dict, settings=(
    Setting("workQueue", "work_queue", prefect_name),
    Setting("workPool", "work_pool", prefect_name, default=None),
    Setting("cluster", "cluster", _resource_name),
    Setting("service", "service", _resource_name),
    Setting("minCapacity", "min_capacity", integer(0), default=0, scope="service"),
    Setting("maxCapacity", "max_capacity", integer(1), scope="service"),
    Setting("targetBacklogPerTask", "target_backlog_per_task", positive_number,
            default=DEFAULT_TARGET_BACKLOG_PER_TASK, scope="service"),
    Setting("runsInWorkerTask", "runs_in_worker_task", boolean, default=False),
    Setting("taskProtection", "task_protection", boolean, default=True, scope="service"),
    Setting("prewarmSeconds", "prewarm_seconds", integer(0, MAX_PREWARM_SECONDS), default=DEFAULT_PREWARM_SECONDS,
            scope="service"),
))

# The CDK context (cdk.json "context" or -c): lenient about keys, which also hold CDK's own settings.
TOP_LEVEL = Shape(build=dict, strict=False, settings=(
    Setting("prefectApiUrl", "api_url", _api_url),
    Setting("queues", "queues", _queue_list),
    Setting("prefectAuth", "auth", AUTH, default=None),
    Setting("network", "network", NETWORK, default=None),
    Setting("metricNamespace", "namespace", _namespace, default=DEFAULT_NAMESPACE),
    Setting("schedule", "schedule", matching(
        r"rate\(\s*\d+\s+(minute|minutes|hour|hours|day|days)\s*\)|cron\(.+\)",
        "must be an EventBridge Scheduler expression like rate(1 minute) or cron(...)"), default=DEFAULT_SCHEDULE),
    Setting("logRetentionDays", "log_retention_days", _retention, default=DEFAULT_LOG_RETENTION_DAYS),
    Setting("stackName", "stack_name", matching(
        r"[A-Za-z][A-Za-z0-9-]{0,127}", "must be a CloudFormation stack name (letters, digits, '-', starting with a "
                                        "letter)"), default=DEFAULT_STACK_NAME),
    Setting("fastMode", "fast_mode", boolean, default=False),
    Setting("stuckPendingSeconds", "stuck_pending_seconds", integer(60), default=DEFAULT_STUCK_PENDING_SECONDS),
    Setting("rescheduleStuckPending", "reschedule_stuck_pending", boolean, default=False),
    Setting("maxReschedulesPerRun", "max_reschedules_per_run", integer(1), default=DEFAULT_MAX_RESCHEDULES_PER_RUN),
    Setting("oldestLateAlarmSeconds", "oldest_late_alarm_seconds", integer(60),
            default=DEFAULT_OLDEST_LATE_ALARM_SECONDS),
    Setting("unpolledAlarmSeconds", "unpolled_alarm_seconds", integer(60), default=DEFAULT_UNPOLLED_ALARM_SECONDS),
    Setting("alarmEmail", "alarm_email", matching(r"[^@\s]+@[^@\s]+\.[^@\s]+",
                                                  "must be one email address such as ops@example.com"), default=None),
    Setting("monitoringDetail", "monitoring_detail", one_of(*MONITORING_DETAILS), default="auto"),
    Setting("crashOrphanedRuns", "crash_orphaned_runs", boolean, default=False),
    Setting("orphanedRuns", "orphaned_runs", one_of(*ORPHANED_RUNS), default="report"),
    Setting("maxCrashesPerRun", "max_crashes_per_run", integer(1), default=DEFAULT_MAX_CRASHES_PER_RUN),
    Setting("fullReadEverySamples", "full_read_every_samples", integer(1), default=DEFAULT_FULL_READ_EVERY_SAMPLES),
))

TOP_LEVEL_KEYS = TOP_LEVEL.keys
QUEUE_KEYS = QUEUE_ENTRY.keys
SERVICE_SETTINGS = tuple(s for s in QUEUE_ENTRY.settings if s.scope == "service")


# --- parsing --------------------------------------------------------------------------------------


def parse_config(context: Mapping[str, Any]) -> Config:
    """Validate the whole configuration; raise one ConfigError listing every problem.

    ``context`` is the CDK context (or the canonical form the Lambda reads back).
    Keys other than ours are CDK's own (feature flags and the like) and are left
    alone, except ones close enough to ours to be a typo.
    """
    if not isinstance(context, Mapping):
        raise ConfigError([f"configuration: must be an object, got {describe(context)}"])
    problems = Problems()
    top = parse_object(problems, "", context, TOP_LEVEL)
    assert top is not None  # a Mapping always parses as an object
    values = top.values
    entries = [entry for index, item in enumerate(values.pop("queues") or [])
               if (entry := _parse_entry(problems, index, item)) is not None]
    queues = tuple(entry.queue for entry in entries)
    _check_duplicates(problems, queues)
    services = _merge_services(problems, entries)
    if values["monitoring_detail"] == "pool":
        for queue in queues:
            if queue.work_pool is None:
                problems.add(f"queues[{queue.index}].workPool",
                             'is required with monitoringDetail "pool" (alarms and dashboard rows per work pool)')
    if values["fast_mode"] and values["schedule"] != DEFAULT_SCHEDULE:
        problems.add("schedule", f"must be {DEFAULT_SCHEDULE} (or left out) with fastMode, which samples every "
                                 f"{FAST_SAMPLE_SECONDS} s inside each 1-minute invocation")
    _orphaned_runs(problems, values, top.given)
    problems.raise_any()
    return Config(queues=queues, services=services, **values)


def _orphaned_runs(problems: Problems, values: dict[str, Any], given: frozenset[str]) -> None:
    """crashOrphanedRuns (older) into orphanedRuns: true means "crash"; given both, they must agree."""
    crash = values.pop("crash_orphaned_runs")
    if "crash_orphaned_runs" not in given:
        return
    if "orphaned_runs" not in given:
        if crash:
            values["orphaned_runs"] = "crash"
    elif crash != (values["orphaned_runs"] == "crash"):
        problems.add("crashOrphanedRuns", f'is {str(crash).lower()} but orphanedRuns is "{values["orphaned_runs"]}": '
                                          'give orphanedRuns alone (crashOrphanedRuns: true is orphanedRuns "crash")')


def _parse_entry(problems: Problems, index: int, item: Any) -> _QueueEntry | None:
    where = f"queues[{index}]"
    parsed = parse_object(problems, where, item, QUEUE_ENTRY)
    if parsed is None:
        return None
    given = {s.attr: parsed.values[s.attr] for s in SERVICE_SETTINGS if s.attr in parsed.given}
    if given.get("min_capacity", 0) > given.get("max_capacity", float("inf")):
        problems.add(f"{where}.maxCapacity",
                     f"must be at least minCapacity ({given['min_capacity']}), got {given['max_capacity']}")
    # A required name that was missing or bad: the parse fails anyway, and "" lets the other checks run.
    fields: dict[str, Any] = {s.attr: "" if parsed.values[s.attr] is None and s.required else parsed.values[s.attr]
                              for s in QUEUE_ENTRY.settings if s.scope == "entry"}
    queue = QueueConfig(index=index, **fields)
    return _QueueEntry(queue=queue, service_settings=given, invalid=parsed.invalid)


def _merge_services(problems: Problems, entries: Iterable[_QueueEntry]) -> tuple[ServiceConfig, ...]:
    """Group entries by ECS service; the entries of one service must agree on its settings."""
    by_service: dict[tuple[str, str], list[_QueueEntry]] = {}
    for entry in entries:
        by_service.setdefault(entry.queue.service_key, []).append(entry)
    services = []
    for (cluster, service), group in by_service.items():
        chosen: dict[str, Any] = {}
        for setting in SERVICE_SETTINGS:
            given = {e.queue.index: e.service_settings[setting.attr] for e in group
                     if setting.attr in e.service_settings}
            if len(set(given.values())) > 1:
                listed = ", ".join(f"queues[{i}] says {v}" for i, v in given.items())
                problems.add(f"queues[{min(given)}].{setting.key}",
                             f"entries for ECS service {cluster}/{service} disagree ({listed}); give one value")
            if given:
                chosen[setting.attr] = given[min(given)]
            elif not setting.required:
                chosen[setting.attr] = setting.default
            elif not any(setting.attr in e.invalid for e in group):  # a bad value was reported already
                problems.add(f"queues[{group[0].queue.index}].{setting.key}",
                             f"is required (at least one entry for ECS service {cluster}/{service} must give it)")
        chosen.setdefault("max_capacity", max(chosen["min_capacity"], 1))  # missing: already reported
        # One entry giving both was reported already (its own check); this is for values from different entries.
        one_entry = any(e.service_settings.get("min_capacity", 0) > e.service_settings.get("max_capacity", math.inf)
                        for e in group)
        if chosen["max_capacity"] < chosen["min_capacity"] and not one_entry:
            problems.add(f"queues[{group[0].queue.index}].maxCapacity",
                         f"ECS service {cluster}/{service}: maxCapacity {chosen['max_capacity']} is below "
                         f"minCapacity {chosen['min_capacity']}")
        services.append(ServiceConfig(cluster=cluster, service=service,
                                      queue_indexes=tuple(e.queue.index for e in group), **chosen))
    return tuple(services)


def _check_duplicates(problems: Problems, queues: Iterable[QueueConfig]) -> None:
    seen: dict[tuple[str | None, str], int] = {}
    for queue in queues:
        key = (queue.work_pool, queue.work_queue)
        if key in seen:
            problems.add(f"queues[{queue.index}]", f"duplicates queues[{seen[key]}] ({queue.path})")
        else:
            seen[key] = queue.index
