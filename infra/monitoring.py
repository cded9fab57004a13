"""The operators' view: one dashboard, alarms that say what is wrong and what to do, optional email.

Every metric comes from :mod:`prefect_backlog.metrics`, the same definitions the
publisher and the scaling policies use.

Queue metrics carry the *resolved* work pool as their ``WorkPool`` dimension. A
configured queue without ``workPool`` is looked up by name at run time, so its
pool is unknown here: the dashboard finds its series with a ``SEARCH``
expression (one line per pool found) and its alarms use Metrics Insights
queries (``MAX``/``MIN`` over every pool holding a queue of that name), which
unlike ``SEARCH`` are allowed in alarms. Metrics Insights cannot be combined
with metric math, so the paused-backlog condition for such a queue is a
composite alarm over two Metrics Insights alarms.

Missing data: the publisher sends nothing for what it could not read, so queue
and service alarms treat missing data as *missing* (INSUFFICIENT_DATA, no
notification, no false OK); the publisher alarms are the ones that report a
publisher that stopped publishing (missing data is *breaching* there).
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence

from aws_cdk import Aws, Duration
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_cloudwatch_actions as cw_actions
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from constructs import Construct

from infra.scaling import ServiceScaling
from prefect_backlog import metrics
from prefect_backlog.config import Config, QueueConfig, ServiceConfig

PERIOD = Duration.minutes(1)
# Queue paused with due runs, or service at its maximum with runs waiting: normal for a few minutes
# (a deliberate short pause, a burst being worked off), worth an operator's time when it lasts this long.
SUSTAINED_MINUTES = 10
# The publisher alarms look at its last runs: failing in 2 of the last 3, or silent for 3 in a row.
FAILING_RUNS, FAILING_WINDOW_RUNS = 2, 3
SILENT_RUNS = 3
# Workers not taking runs: unpolled with due runs, or runs stuck in Pending, for this many minutes in a row.
WORKER_MINUTES = 3
MAX_DESCRIPTION = 1024  # CloudWatch's limit for AlarmDescription
MAX_ALARM_NAME = 255
MAX_ALARMS_PER_STATUS_WIDGET = 100  # CloudWatch's limit for one alarm status widget
DAY = 86_400
WEEK = 7 * DAY

_RATE = re.compile(r"^rate\(\s*(\d+)\s+(minute|minutes|hour|hours|day|days)\s*\)$")
_CRON = re.compile(r"^cron\((.+)\)$")
_UNIT_SECONDS = {"minute": 60, "hour": 3600, "day": DAY}
_STEP = re.compile(r"^(\*|\d+)/(\d+)$")


def schedule_interval_seconds(schedule: str) -> int:
    """Seconds between publisher runs; for a cron expression a safe (never shorter) estimate."""
    rate = _RATE.match(schedule)
    if rate:
        return max(60, int(rate.group(1)) * _UNIT_SECONDS[rate.group(2).rstrip("s")])
    cron = _CRON.match(schedule)
    fields = cron.group(1).split() if cron else []
    if len(fields) != 6:
        return DAY
    minute, hour, day_of_month, _, day_of_week, _ = fields
    if day_of_month not in ("*", "?") or day_of_week not in ("*", "?"):
        return WEEK  # runs on some days only
    if hour == "*":
        if minute == "*":
            return 60
        step = _STEP.match(minute)
        return 60 * int(step.group(2)) if step else 3600
    step = _STEP.match(hour)
    return 3600 * int(step.group(2)) if step else DAY


def publisher_window(schedule: str, runs: int) -> tuple[int, int]:
    """(period seconds, evaluation periods) covering ``runs`` publisher runs, within CloudWatch's limits.

    One period per run, at most a day; the whole range at most a day for periods under an hour and a
    week otherwise (PutMetricAlarm's limits).
    """
    interval = schedule_interval_seconds(schedule)
    period = min(interval, DAY)
    periods = math.ceil(runs * interval / period)
    limit = DAY if period < 3600 else WEEK
    return period, max(1, min(periods, limit // period))


def _search_string(value: str) -> str:
    """A value inside SEARCH's single-quoted query, as an exact (double-quoted) term."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("'", "\\'") + '"'


def _insights_string(value: str) -> str:
    """A Metrics Insights string literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _insights_name(value: str) -> str:
    """A Metrics Insights identifier (namespace) in double quotes."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _construct_id(kind: str, *names: str | None) -> str:
    """Readable, and unique per identity (names that differ only in punctuation get different ids).

    Derived from the names, not the position in cdk.json: reordering the queues must not move an alarm
    with a fixed AlarmName to another logical id (CloudFormation would create the "new" one first and fail
    on the name still in use).
    """
    digest = hashlib.sha256(json.dumps(names).encode()).hexdigest()[:8]
    readable = re.sub(r"[^A-Za-z0-9-]", "-", "-".join(n or "any-pool" for n in names))
    return f"{kind}-{readable}-{digest}"


def _in_alarm(alarm: cloudwatch.IAlarm) -> cloudwatch.IAlarmRule:
    return cloudwatch.AlarmRule.from_alarm(alarm, cloudwatch.AlarmState.ALARM)


def _queue_name(queue: QueueConfig) -> str:
    return f"{queue.work_pool}/{queue.work_queue}" if queue.work_pool else f"{queue.work_queue} (any pool)"


class Monitoring(Construct):
    """Dashboard and alarms for one publisher and the ECS services it scales.

    ``scaling`` maps each service key to its :class:`ServiceScaling`; its scale-out alarms join
    the dashboard's alarm status so an operator sees scaling activity beside the problems.
    """

    def __init__(self, scope: Construct, construct_id: str, *, config: Config, function: lambda_.IFunction,
                 scaling: Mapping[tuple[str, str], ServiceScaling]) -> None:
        super().__init__(scope, construct_id)
        self.config = config
        self.function = function
        self.namespace = config.namespace
        self.alarms: list[cloudwatch.AlarmBase] = []  # those that notify (composite children do not)
        self.topic = self._topic(config.alarm_email) if config.alarm_email else None

        self._publisher_alarms()
        if config.monitoring_detail == "pool":
            for pool in config.work_pools:
                self._pool_alarms(pool)
        else:
            for queue in config.queues:
                self._queue_alarms(queue)
        for service in config.services:
            self._service_alarm(service)
        if self.topic is not None:
            action = cw_actions.SnsAction(self.topic)
            for alarm in self.alarms:
                alarm.add_alarm_action(action)
                alarm.add_ok_action(action)

        scale_out = [s.step_scaling.upper_alarm for s in scaling.values() if s.step_scaling.upper_alarm]
        self.widget_count = 0  # set by _dashboard: CloudWatch allows 500 per dashboard
        self.dashboard = self._dashboard(scale_out)

    # --- metrics -----------------------------------------------------------------------

    def _metric(self, definition: metrics.MetricDef, dimensions: dict[str, str], statistic: str,
                label: str | None = None, period: Duration = PERIOD) -> cloudwatch.Metric:
        return cloudwatch.Metric(namespace=self.namespace, metric_name=definition.name,
                                 dimensions_map=dimensions, statistic=statistic, period=period,
                                 label=label or definition.name)

    def _publisher_metric(self, definition: metrics.MetricDef, statistic: str,
                          period: Duration = PERIOD) -> cloudwatch.Metric:
        return self._metric(definition, metrics.publisher_dimensions(self.config.stack_name), statistic,
                            period=period)

    def _service_metric(self, service: ServiceConfig, definition: metrics.MetricDef,
                        statistic: str) -> cloudwatch.Metric:
        return self._metric(definition, metrics.service_dimensions(service.cluster, service.service), statistic)

    def _queue_graph_metric(self, queue: QueueConfig, definition: metrics.MetricDef,
                            statistic: str = "Maximum") -> cloudwatch.IMetric:
        """For the dashboard: the metric itself, or a SEARCH for it in whichever pool the queue is in."""
        if queue.work_pool is not None:
            return self._metric(definition, metrics.queue_dimensions(queue.work_pool, queue.work_queue), statistic)
        return self._queue_search(definition, statistic, "WorkQueue", queue.work_queue, label_by="WorkPool")

    def _queue_search(self, definition: metrics.MetricDef, statistic: str, dimension: str, value: str, *,
                      label_by: str) -> cloudwatch.SearchExpression:
        """Every queue series of ``definition`` whose ``dimension`` is ``value``, one line each."""
        query = (f'{{{_search_string(self.namespace)},WorkPool,WorkQueue}} '
                 f'MetricName={_search_string(definition.name)} {dimension}={_search_string(value)}')
        return cloudwatch.SearchExpression(
            expression=f"SEARCH('{query}', '{statistic}', {int(PERIOD.to_seconds())})",
            label=f"{definition.name} (${{PROP('Dim.{label_by}')}})", period=PERIOD)

    def _queue_alarm_metric(self, queue: QueueConfig, definition: metrics.MetricDef,
                            function: str) -> cloudwatch.IMetric:
        """For an alarm: the metric itself, or a Metrics Insights query over every pool holding the queue."""
        statistic = {"MAX": "Maximum", "MIN": "Minimum"}[function]
        if queue.work_pool is not None:
            return self._metric(definition, metrics.queue_dimensions(queue.work_pool, queue.work_queue), statistic)
        return self._queue_insights(definition, function, "WorkQueue", queue.work_queue, label=definition.name)

    def _queue_insights(self, definition: metrics.MetricDef, function: str, dimension: str, value: str, *,
                        label: str) -> cloudwatch.MathExpression:
        """A Metrics Insights query (allowed in alarms, unlike SEARCH): ``function`` over every queue series
        of ``definition`` whose ``dimension`` is ``value``."""
        return cloudwatch.MathExpression(
            expression=(f"SELECT {function}({definition.name}) "
                        f"FROM SCHEMA({_insights_name(self.namespace)}, WorkPool, WorkQueue) "
                        f"WHERE {dimension} = {_insights_string(value)}"),
            using_metrics={}, period=PERIOD, label=label)

    # --- alarms ------------------------------------------------------------------------

    def _alarm_name(self, what: str) -> str:
        # Any UTF-8 but control characters; a double quote would break a composite alarm's rule.
        return re.sub(r'[\x00-\x1f\x7f"]', "_", f"{self.config.stack_name} {what}")[:MAX_ALARM_NAME]

    @staticmethod
    def _description(text: str) -> str:
        text = " ".join(text.split())
        if len(text) > MAX_DESCRIPTION:
            raise ValueError(f"alarm description longer than {MAX_DESCRIPTION} characters: {text[:80]}...")
        return text

    def _alarm(self, construct_id: str, what: str, *, metric: cloudwatch.IMetric, description: str,
               threshold: float, comparison: cloudwatch.ComparisonOperator, evaluation_periods: int,
               datapoints: int, missing: cloudwatch.TreatMissingData, notify: bool = True) -> cloudwatch.Alarm:
        alarm = cloudwatch.Alarm(
            self, construct_id, alarm_name=self._alarm_name(what), alarm_description=self._description(description),
            metric=metric, threshold=threshold, comparison_operator=comparison,
            evaluation_periods=evaluation_periods, datapoints_to_alarm=datapoints, treat_missing_data=missing)
        if notify:
            self.alarms.append(alarm)
        return alarm

    def _publisher_alarms(self) -> None:
        stack_name = self.config.stack_name
        logs = f"the publisher's logs (Lambda function {self.function.function_name})"
        period_seconds, window = publisher_window(self.config.schedule, FAILING_WINDOW_RUNS)
        period = Duration.seconds(period_seconds)
        failing = cloudwatch.MathExpression(
            expression="FILL(lambdaErrors, 0) + FILL(queueReadErrors, 0) + FILL(serviceReadErrors, 0)",
            using_metrics={
                "lambdaErrors": self.function.metric_errors(statistic="Sum", period=period),
                "queueReadErrors": self._publisher_metric(metrics.QUEUE_READ_ERRORS, "Maximum", period),
                "serviceReadErrors": self._publisher_metric(metrics.SERVICE_READ_ERRORS, "Maximum", period),
            },
            period=period, label="Publisher errors")
        self.publisher_failing = self._alarm(
            "PublisherFailing", "publisher failing", metric=failing, threshold=0,
            comparison=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
            evaluation_periods=window, datapoints=min(FAILING_RUNS, window),
            missing=cloudwatch.TreatMissingData.NOT_BREACHING,
            description=f"""The backlog publisher of {stack_name} failed in {min(FAILING_RUNS, window)} of its last
            {window} runs: the Lambda raised (nothing could be read: Prefect API down or unreachable, credentials
            rejected) or some queues or ECS services could not be read (QueueReadErrors/ServiceReadErrors). Nothing
            is published for what was not read, so the affected services do not scale. What to do: read
            {logs}; warnings 'queue not read' and 'scaling signal not published' name the queue or service and the
            cause (queue renamed or deleted, wrong workPool, API errors, ECS permissions). Fix the Prefect side or
            the cdk.json queues and redeploy.""")

        period_seconds, window = publisher_window(self.config.schedule, SILENT_RUNS)
        self.publisher_silent = self._alarm(
            "PublisherSilent", "publisher silent",
            metric=self._publisher_metric(metrics.QUEUES_READ, "SampleCount", Duration.seconds(period_seconds)),
            threshold=1, comparison=cloudwatch.ComparisonOperator.LESS_THAN_THRESHOLD,
            evaluation_periods=window, datapoints=window, missing=cloudwatch.TreatMissingData.BREACHING,
            description=f"""The backlog publisher of {stack_name} has published nothing (no QueuesRead datapoint)
            for {window} periods of {period_seconds} s. Without its metrics no ECS service scales: target tracking
            and the step policy see no data and leave the desired count where it is. What to do: check that the
            EventBridge Scheduler schedule of {stack_name} is enabled and invokes the function, then the Lambda
            metrics (Invocations, Errors, Throttles) and {logs}: timeouts, a missing Powertools layer, no network
            route to the Prefect API or to CloudWatch (PutMetricData) from its subnets.""")

    def _queue_alarms(self, queue: QueueConfig) -> None:
        name = _queue_name(queue)
        service = self.config.service_for(queue)
        cid = _construct_id("Queue", queue.work_pool, queue.work_queue)
        threshold = self.config.oldest_late_alarm_seconds
        self._alarm(
            f"{cid}-OldestLate", f"oldest Late run {name}",
            metric=self._queue_alarm_metric(queue, metrics.OLDEST_LATE_RUN_AGE, "MAX"),
            threshold=threshold, comparison=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
            evaluation_periods=1, datapoints=1, missing=cloudwatch.TreatMissingData.MISSING,
            description=f"""A flow run of work queue {name} has been Late for more than {threshold} s: no
            agent/worker picked it up when it was due. Served by ECS service {service.cluster}/{service.service}
            (max {service.max_capacity} tasks). What to do: on the dashboard, check whether the service is at
            its maximum (raise maxCapacity), whether its running tasks poll this queue (SecondsSinceLastPolled;
            task logs, image, work pool and queue names), and whether the queue or its pool is paused or at a
            concurrency limit in Prefect.""")

        blocked_description = f"""Flow runs are due on work queue {name} but cannot start, and have not
            for {SUSTAINED_MINUTES} minutes: the queue or its work pool is paused in Prefect (QueuePaused), or its
            concurrency limit or its pool's is used up (ConcurrencyLimited). More tasks cannot help, so ECS service
            {service.cluster}/{service.service} is not scaled for these runs and they wait. What to do: if this is
            deliberate, nothing; otherwise resume the queue or pool (Prefect UI, `prefect work-queue resume`,
            `prefect work-pool resume`) or raise the concurrency limit, and check for runs that hold slots without
            running (StuckPendingFlowRuns)."""
        unpolled_seconds = self.config.unpolled_alarm_seconds
        where = f"{service.cluster}/{service.service}"
        workers_description = f"""Work queue {name}: no agent/worker has polled it for {unpolled_seconds} s
            while runs are due (SecondsSinceLastPolled), or runs have been Pending for more than
            {self.config.stuck_pending_seconds} s (StuckPendingFlowRuns, a worker died after claiming them), for
            {WORKER_MINUTES} minutes. What to do: check that the tasks of ECS service {where} are running and
            healthy (task logs, image, PREFECT_API_URL, credentials) and poll this pool and queue;
            for stuck runs, cancel or reschedule them in Prefect, or set rescheduleStuckPending in cdk.json."""
        if queue.work_pool is not None:
            def at(definition: metrics.MetricDef) -> cloudwatch.IMetric:
                return self._queue_alarm_metric(queue, definition, "MIN")

            self._alarm(f"{cid}-PausedBacklog", f"blocked backlog {name}", metric=cloudwatch.MathExpression(
                expression="IF((paused > 0 OR limited > 0) AND due > 0, 1, 0)",
                using_metrics={"paused": at(metrics.QUEUE_PAUSED), "limited": at(metrics.CONCURRENCY_LIMITED),
                               "due": at(metrics.DUE_FLOW_RUNS)},
                period=PERIOD, label="Due runs that cannot start"),
                threshold=1, comparison=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
                evaluation_periods=SUSTAINED_MINUTES, datapoints=SUSTAINED_MINUTES,
                missing=cloudwatch.TreatMissingData.MISSING, description=blocked_description)
            self._alarm(f"{cid}-Workers", f"workers not taking runs {name}", metric=cloudwatch.MathExpression(
                expression=f"IF((polled > {self.config.unpolled_alarm_seconds} AND due > 0) OR stuck > 0, 1, 0)",
                using_metrics={"polled": at(metrics.SECONDS_SINCE_LAST_POLLED), "due": at(metrics.DUE_FLOW_RUNS),
                               "stuck": at(metrics.STUCK_PENDING_FLOW_RUNS)},
                period=PERIOD, label="Unpolled with due runs, or stuck Pending"),
                threshold=1, comparison=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
                evaluation_periods=WORKER_MINUTES, datapoints=WORKER_MINUTES,
                missing=cloudwatch.TreatMissingData.MISSING, description=workers_description)
            return
        # Metrics Insights does not mix with metric math: one alarm per condition, combined by composite alarms.
        gt = cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD
        blocked = self._alarm_name(f"blocked backlog {name}")
        paused = self._part(queue, cid, "Paused", blocked, metrics.QUEUE_PAUSED, 0, gt, SUSTAINED_MINUTES)
        limited = self._part(queue, cid, "Limited", blocked, metrics.CONCURRENCY_LIMITED, 0, gt, SUSTAINED_MINUTES)
        due = self._part(queue, cid, "Due", blocked, metrics.DUE_FLOW_RUNS, 0, gt, SUSTAINED_MINUTES)
        self._composite(f"{cid}-PausedBacklog", blocked, blocked_description, cloudwatch.AlarmRule.all_of(
            cloudwatch.AlarmRule.any_of(_in_alarm(paused), _in_alarm(limited)), _in_alarm(due)))
        workers = self._alarm_name(f"workers not taking runs {name}")
        unpolled = self._part(queue, cid, "Unpolled", workers, metrics.SECONDS_SINCE_LAST_POLLED,
                              self.config.unpolled_alarm_seconds, gt, WORKER_MINUTES)
        due_now = self._part(queue, cid, "DueNow", workers, metrics.DUE_FLOW_RUNS, 0, gt, WORKER_MINUTES)
        stuck = self._part(queue, cid, "Stuck", workers, metrics.STUCK_PENDING_FLOW_RUNS, 0, gt, WORKER_MINUTES)
        self._composite(f"{cid}-Workers", workers, workers_description, cloudwatch.AlarmRule.any_of(
            cloudwatch.AlarmRule.all_of(_in_alarm(unpolled), _in_alarm(due_now)), _in_alarm(stuck)))

    def _pool_alarms(self, pool: str) -> None:
        """monitoringDetail "pool": each condition over all the pool's queues (Metrics Insights, MAX)."""
        cid = _construct_id("Pool", pool)
        threshold = self.config.oldest_late_alarm_seconds

        def worst(definition: metrics.MetricDef) -> cloudwatch.IMetric:
            return self._queue_insights(definition, "MAX", "WorkPool", pool,
                                        label=f"{definition.name}, worst queue of {pool}")

        self._alarm(
            f"{cid}-OldestLate", f"oldest Late run in pool {pool}", metric=worst(metrics.OLDEST_LATE_RUN_AGE),
            threshold=threshold, comparison=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
            evaluation_periods=1, datapoints=1, missing=cloudwatch.TreatMissingData.MISSING,
            description=f"""A flow run in a queue of work pool {pool} has been Late for more than {threshold} s:
            no agent/worker picked it up when it was due. Which queue: the pool's row on the dashboard. What to
            do: check whether its ECS service is at maxCapacity (at-max alarm), whether the queue or pool is
            paused or its concurrency limit used up (QueuePaused, ConcurrencyLimited), whether its workers poll
            (SecondsSinceLastPolled, OnlineWorkers) and the worker tasks' logs.""")
        self._alarm(
            f"{cid}-Stuck", f"runs stuck in Pending in pool {pool}", metric=worst(metrics.STUCK_PENDING_FLOW_RUNS),
            threshold=0, comparison=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
            evaluation_periods=WORKER_MINUTES, datapoints=WORKER_MINUTES, missing=cloudwatch.TreatMissingData.MISSING,
            description=f"""A queue of work pool {pool} has had flow runs Pending for more than
            {self.config.stuck_pending_seconds} s for {WORKER_MINUTES} minutes: a worker claimed them and most
            likely died. Which queue: StuckPendingFlowRuns in the pool's row on the dashboard. What to do: check
            the worker tasks' logs and stopped tasks, then cancel or reschedule those runs in Prefect, or set
            rescheduleStuckPending in cdk.json.""")

    def _part(self, queue: QueueConfig, cid: str, kind: str, composite_name: str, definition: metrics.MetricDef,
              threshold: float, comparison: cloudwatch.ComparisonOperator, minutes: int) -> cloudwatch.Alarm:
        """One Metrics Insights condition of a composite alarm; it notifies nobody itself."""
        return self._alarm(
            f"{cid}-{kind}", f"{kind.lower()} {_queue_name(queue)}",
            metric=self._queue_alarm_metric(queue, definition, "MIN"), threshold=threshold, comparison=comparison,
            evaluation_periods=minutes, datapoints=minutes, missing=cloudwatch.TreatMissingData.MISSING,
            notify=False, description=(f"Part of the composite alarm '{composite_name}'; it notifies nobody itself. "
                                       f"{definition.name} of work queue {_queue_name(queue)}: "
                                       f"{definition.description}."))

    def _composite(self, construct_id: str, name: str, description: str, rule: cloudwatch.IAlarmRule) -> None:
        self.alarms.append(cloudwatch.CompositeAlarm(
            self, construct_id, composite_alarm_name=name, alarm_description=self._description(description),
            alarm_rule=rule))

    def _service_alarm(self, service: ServiceConfig) -> None:
        in_task = any(self.config.queues[i].runs_in_worker_task for i in service.queue_indexes)
        # Where runs execute inside the worker tasks, demand counts the runs in flight too: runs wait only
        # when demand exceeds what the maximum number of tasks holds at the target.
        waiting_above = service.max_capacity * service.target_backlog_per_task if in_task else 0
        at_max = cloudwatch.MathExpression(
            expression=f"IF(desired >= {service.max_capacity} AND demand > {waiting_above:g}, 1, 0)",
            using_metrics={"desired": self._service_metric(service, metrics.DESIRED_TASKS, "Minimum"),
                           "demand": self._service_metric(service, metrics.DEMAND_FLOW_RUNS, "Minimum")},
            period=PERIOD, label="At maximum with runs waiting")
        waiting = (f"more flow runs than {service.max_capacity} tasks hold at {service.target_backlog_per_task:g} "
                   f"runs per task (DemandFlowRuns > {waiting_above:g}; runs execute inside the worker tasks)"
                   if in_task else "flow runs are due and waiting (DemandFlowRuns > 0)")
        self._alarm(
            _construct_id("Service", service.cluster, service.service) + "-AtMax",
            f"at max capacity {service.cluster}/{service.service}", metric=at_max, threshold=1,
            comparison=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
            evaluation_periods=SUSTAINED_MINUTES, datapoints=SUSTAINED_MINUTES,
            missing=cloudwatch.TreatMissingData.MISSING,
            description=f"""ECS service {service.cluster}/{service.service} has been at its maximum of
            {service.max_capacity} desired tasks for {SUSTAINED_MINUTES} minutes while {waiting}. Autoscaling
            cannot add tasks, so runs queue up and turn Late. What to do: if the backlog is expected, nothing;
            otherwise raise maxCapacity for this service in cdk.json and redeploy (check the cluster's capacity
            and the account's Fargate/EC2 limits first), or lower the demand (schedules, concurrency limits).""")

    # --- notifications -----------------------------------------------------------------

    def _topic(self, email: str) -> sns.Topic:
        # Not encrypted at rest: it carries alarm notifications only (names, states, thresholds; no secrets or
        # flow data), CloudWatch cannot publish to a topic under the AWS managed key alias/aws/sns, and a
        # customer managed key would cost a key and a key policy for nothing worth protecting.
        topic = sns.Topic(self, "AlarmTopic", display_name=f"{self.config.stack_name} alarms", enforce_ssl=True)
        # A topic policy replaces SNS's default one, so CloudWatch needs its own grant, scoped to this
        # account's alarms; without it every notification fails with "not authorized to perform SNS:Publish".
        topic.add_to_resource_policy(iam.PolicyStatement(
            sid="AllowCloudWatchAlarms", actions=["sns:Publish"], resources=[topic.topic_arn],
            principals=[iam.ServicePrincipal("cloudwatch.amazonaws.com")],
            conditions={"StringEquals": {"aws:SourceAccount": Aws.ACCOUNT_ID},
                        "ArnLike": {"aws:SourceArn": f"arn:{Aws.PARTITION}:cloudwatch:{Aws.REGION}:{Aws.ACCOUNT_ID}"
                                                     ":alarm:*"}}))
        topic.add_subscription(subscriptions.EmailSubscription(email))
        return topic

    # --- dashboard ---------------------------------------------------------------------

    def _dashboard(self, scale_out: Sequence[cloudwatch.IAlarm]) -> cloudwatch.Dashboard:
        config = self.config
        dashboard = cloudwatch.Dashboard(
            self, "Dashboard", dashboard_name=config.stack_name,
            default_interval=Duration.hours(3), period_override=cloudwatch.PeriodOverride.AUTO)
        dashboard.add_widgets(cloudwatch.TextWidget(width=24, height=2, markdown=(
            f"# {config.stack_name}: Prefect backlog and ECS scaling\n"
            f"Metrics in namespace `{config.namespace}`, published by Lambda `{self.function.function_name}` "
            f"({config.schedule}). Alarms: " + self._alarms_summary())))
        status = [*self.alarms, *scale_out]
        rows: list[list[cloudwatch.IWidget]] = [
            [cloudwatch.AlarmStatusWidget(title="Alarms (and the step policies' scale-out alarms)", width=24,
                                          height=3, alarms=status[start:start + MAX_ALARMS_PER_STATUS_WIDGET])]
            for start in range(0, len(status), MAX_ALARMS_PER_STATUS_WIDGET)]
        rows.append(self._publisher_widgets())
        if config.monitoring_detail == "pool":
            rows += [self._pool_queue_widgets(pool) for pool in config.work_pools]
        else:
            rows += [self._queue_widgets(queue) for queue in config.queues]
        rows += [self._service_widgets(service) for service in config.services]
        for row in rows:
            dashboard.add_widgets(*row)
        self.widget_count = 1 + sum(len(row) for row in rows)  # the title, then every row
        return dashboard

    def _alarms_summary(self) -> str:
        config = self.config
        if config.monitoring_detail == "pool":
            return (f"per work pool, a queue's oldest Late run over {config.oldest_late_alarm_seconds} s, or runs "
                    f"stuck in Pending; a service at its maximum with runs waiting for {SUSTAINED_MINUTES} min; "
                    "publisher failing or silent.")
        return (f"oldest Late run over {config.oldest_late_alarm_seconds} s; due runs that cannot start (queue or "
                f"pool paused, concurrency limit used up) or a service at its maximum with runs waiting, for "
                f"{SUSTAINED_MINUTES} min; workers not taking runs (unpolled over {config.unpolled_alarm_seconds} s "
                "with due runs, or runs stuck in Pending); publisher failing or silent.")

    def _publisher_widgets(self) -> list[cloudwatch.IWidget]:
        fn = self.function
        return [
            cloudwatch.TextWidget(width=24, height=1, markdown="## Publisher health"),
            cloudwatch.GraphWidget(
                title="Queue and service read errors", width=6,
                left=[self._publisher_metric(metrics.QUEUE_READ_ERRORS, "Maximum"),
                      self._publisher_metric(metrics.SERVICE_READ_ERRORS, "Maximum")],
                left_y_axis=cloudwatch.YAxisProps(min=0, show_units=False)),
            cloudwatch.GraphWidget(
                title="Queues read (missing = publisher silent)", width=6,
                left=[self._publisher_metric(metrics.QUEUES_READ, "Minimum")],
                left_y_axis=cloudwatch.YAxisProps(min=0, show_units=False)),
            cloudwatch.GraphWidget(
                title="Publisher run time", width=6,
                left=[self._publisher_metric(metrics.TICK_DURATION, "Maximum"),
                      fn.metric_duration(statistic="Maximum", period=PERIOD, label="Lambda Duration")],
                left_y_axis=cloudwatch.YAxisProps(min=0)),
            cloudwatch.GraphWidget(
                title="Publisher Lambda", width=6,
                left=[fn.metric_errors(statistic="Sum", period=PERIOD, label="Errors"),
                      fn.metric_throttles(statistic="Sum", period=PERIOD, label="Throttles"),
                      fn.metric_invocations(statistic="Sum", period=PERIOD, label="Invocations")],
                left_y_axis=cloudwatch.YAxisProps(min=0, show_units=False)),
        ]

    def _queue_widgets(self, queue: QueueConfig) -> list[cloudwatch.IWidget]:
        name = _queue_name(queue)
        service = self.config.service_for(queue)
        threshold = cloudwatch.HorizontalAnnotation(value=self.config.oldest_late_alarm_seconds, label="alarm",
                                                    color=cloudwatch.Color.RED)
        return [
            cloudwatch.TextWidget(width=24, height=1, markdown=(
                f"## Queue {name} → ECS {service.cluster}/{service.service}")),
            cloudwatch.GraphWidget(
                title=f"{name}: Late runs and due backlog", width=6,
                left=[self._queue_graph_metric(queue, metrics.LATE_FLOW_RUNS),
                      self._queue_graph_metric(queue, metrics.DUE_FLOW_RUNS)],
                left_y_axis=cloudwatch.YAxisProps(min=0, show_units=False)),
            cloudwatch.GraphWidget(
                title=f"{name}: Pending and Running", width=6,
                left=[self._queue_graph_metric(queue, metrics.PENDING_FLOW_RUNS),
                      self._queue_graph_metric(queue, metrics.RUNNING_FLOW_RUNS),
                      self._queue_graph_metric(queue, metrics.STUCK_PENDING_FLOW_RUNS)],
                left_y_axis=cloudwatch.YAxisProps(min=0, show_units=False)),
            cloudwatch.GraphWidget(
                title=f"{name}: oldest Late run age (s)", width=6,
                left=[self._queue_graph_metric(queue, metrics.OLDEST_LATE_RUN_AGE)],
                left_annotations=[threshold], left_y_axis=cloudwatch.YAxisProps(min=0, show_units=False)),
            cloudwatch.GraphWidget(
                title=f"{name}: paused or limited, seconds since last polled", width=6,
                left=[self._queue_graph_metric(queue, metrics.QUEUE_PAUSED),
                      self._queue_graph_metric(queue, metrics.CONCURRENCY_LIMITED)],
                right=[self._queue_graph_metric(queue, metrics.SECONDS_SINCE_LAST_POLLED)],
                left_y_axis=cloudwatch.YAxisProps(min=0, max=1, show_units=False),
                right_y_axis=cloudwatch.YAxisProps(min=0, show_units=False)),
        ]

    def _pool_queue_widgets(self, pool: str) -> list[cloudwatch.IWidget]:
        """monitoringDetail "pool": one row per work pool, one line per queue (SEARCH over the pool)."""
        def lines(*definitions: metrics.MetricDef) -> list[cloudwatch.IMetric]:
            return [self._queue_search(d, "Maximum", "WorkPool", pool, label_by="WorkQueue") for d in definitions]

        threshold = cloudwatch.HorizontalAnnotation(value=self.config.oldest_late_alarm_seconds, label="alarm",
                                                    color=cloudwatch.Color.RED)
        queues = sum(1 for q in self.config.queues if q.work_pool == pool)
        return [
            cloudwatch.TextWidget(width=24, height=1, markdown=f"## Work pool {pool}: {queues} queues, one line each"),
            cloudwatch.GraphWidget(title=f"{pool}: Late runs per queue", width=6, left=lines(metrics.LATE_FLOW_RUNS),
                                   left_y_axis=cloudwatch.YAxisProps(min=0, show_units=False)),
            cloudwatch.GraphWidget(title=f"{pool}: due runs per queue", width=6, left=lines(metrics.DUE_FLOW_RUNS),
                                   left_y_axis=cloudwatch.YAxisProps(min=0, show_units=False)),
            cloudwatch.GraphWidget(title=f"{pool}: oldest Late run age (s)", width=6,
                                   left=lines(metrics.OLDEST_LATE_RUN_AGE), left_annotations=[threshold],
                                   left_y_axis=cloudwatch.YAxisProps(min=0, show_units=False)),
            cloudwatch.GraphWidget(title=f"{pool}: stuck Pending, paused, limited", width=6,
                                   left=lines(metrics.STUCK_PENDING_FLOW_RUNS, metrics.QUEUE_PAUSED,
                                              metrics.CONCURRENCY_LIMITED),
                                   left_y_axis=cloudwatch.YAxisProps(min=0, show_units=False)),
        ]

    def _service_widgets(self, service: ServiceConfig) -> list[cloudwatch.IWidget]:
        where = f"{service.cluster}/{service.service}"
        return [
            cloudwatch.TextWidget(width=24, height=1, markdown=(
                f"## ECS service {where}: {service.min_capacity}..{service.max_capacity} tasks, target "
                f"{service.target_backlog_per_task:g} runs per task")),
            cloudwatch.GraphWidget(
                title=f"{where}: desired vs running tasks", width=8,
                left=[self._service_metric(service, metrics.DESIRED_TASKS, "Maximum"),
                      self._service_metric(service, metrics.RUNNING_TASKS, "Maximum")],
                left_annotations=[cloudwatch.HorizontalAnnotation(value=service.max_capacity, label="maxCapacity",
                                                                  color=cloudwatch.Color.RED)],
                left_y_axis=cloudwatch.YAxisProps(min=0, show_units=False)),
            cloudwatch.GraphWidget(
                title=f"{where}: BacklogPerTask (target tracking)", width=8,
                left=[self._service_metric(service, metrics.BACKLOG_PER_TASK, "Average")],
                left_annotations=[cloudwatch.HorizontalAnnotation(value=service.target_backlog_per_task,
                                                                  label="target")],
                left_y_axis=cloudwatch.YAxisProps(min=0, show_units=False)),
            cloudwatch.GraphWidget(
                title=f"{where}: TaskShortfall (step scale-out) and demand", width=8,
                left=[self._service_metric(service, metrics.TASK_SHORTFALL, "Maximum")],
                right=[self._service_metric(service, metrics.DEMAND_FLOW_RUNS, "Maximum")],
                left_y_axis=cloudwatch.YAxisProps(min=0, show_units=False),
                right_y_axis=cloudwatch.YAxisProps(min=0, show_units=False)),
        ]
