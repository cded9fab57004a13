"""The alarms of the operators' view: each says what is wrong and what to do.

Missing data: the publisher sends nothing for what it could not read, so queue
and service alarms treat missing data as *missing* (INSUFFICIENT_DATA, no
notification, no false OK); the publisher alarms are the ones that report a
publisher that stopped publishing (missing data is *breaching* there).
Metrics Insights cannot be combined with metric math, so a condition over two
metrics of a queue without ``workPool`` is a composite alarm over two Metrics
Insights alarms.
"""

from __future__ import annotations

import math
import re

from aws_cdk import Aws, Duration
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_lambda as lambda_
from constructs import Construct

from prefect_backlog import metrics
from prefect_backlog.config import DAY, HOUR, WEEK, Config, QueueConfig, ServiceConfig, schedule_interval_seconds
from prefect_backlog.late_cause import ADVICE

from ..ids import construct_id
from ..metric_queries import PERIOD, MetricQueries
from ..scaling import WorkerServiceScaling

# Queue paused with due runs, or service at its maximum with runs waiting: normal for a few minutes
# (a deliberate short pause, a burst being worked off), worth an operator's time when it lasts this long.
SUSTAINED_MINUTES = 10
# The publisher alarms look at its last runs: failing in 2 of the last 3, or silent for 3 in a row.
FAILING_RUNS, FAILING_WINDOW_RUNS = 2, 3
SILENT_RUNS = 3
# Workers not taking runs: unpolled with due runs, or runs stuck in Pending, for this many minutes in a row.
WORKER_MINUTES = 3
# Runs orphaned this long are not a sample that raced a task's start: their task is gone.
ORPHAN_MINUTES = 5
MAX_DESCRIPTION = 1024  # CloudWatch's limit for AlarmDescription
MAX_ALARM_NAME = 255


def publisher_window(schedule: str, runs: int) -> tuple[int, int]:
    """(period seconds, evaluation periods) covering ``runs`` publisher runs, within CloudWatch's limits.

    One period per run, at most a day; the whole range at most a day for periods under an hour and a
    week otherwise (PutMetricAlarm's limits).
    """
    interval = schedule_interval_seconds(schedule)
    period = min(interval, DAY)
    periods = math.ceil(runs * interval / period)
    limit = DAY if period < HOUR else WEEK
    return period, max(1, min(periods, limit // period))


def _in_alarm(alarm: cloudwatch.IAlarm) -> cloudwatch.IAlarmRule:
    return cloudwatch.AlarmRule.from_alarm(alarm, cloudwatch.AlarmState.ALARM)


def alarm_name(stack_name: str, what: str) -> str:
    """An alarm's fixed name: the stack's name, then what it watches. The overview finds every alarm by it."""
    # Any UTF-8 but control characters; a double quote would break a composite alarm's rule.
    return re.sub(r'[\x00-\x1f\x7f"]', "_", f"{stack_name} {what}")[:MAX_ALARM_NAME]


class Alarms:
    """Creates each alarm in the scope it is given (the root stack, or the nested stack its queue, pool or service
    is placed in: infra/layout.py); the construct path keeps its logical id, so its fixed name stays put.

    ``notifying`` lists those that notify (the parts of a composite do not); ``shown`` the names of every alarm
    the overview's alarm status shows: the notifying ones and the step policies' scale-out alarms.
    """

    def __init__(self, config: Config, queries: MetricQueries, function: lambda_.IFunction) -> None:
        self.config = config
        self.queries = queries
        self.function = function
        self.notifying: list[cloudwatch.AlarmBase] = []
        self.shown: list[str] = []

    def _alarm_name(self, what: str) -> str:
        return alarm_name(self.config.stack_name, what)

    @staticmethod
    def _description(text: str) -> str:
        text = " ".join(text.split())
        if len(text) > MAX_DESCRIPTION:
            raise ValueError(f"alarm description longer than {MAX_DESCRIPTION} characters: {text[:80]}...")
        return text

    def _alarm(self, scope: Construct, cid: str, what: str, *, metric: cloudwatch.IMetric, description: str,
               threshold: float, comparison: cloudwatch.ComparisonOperator, evaluation_periods: int,
               datapoints: int, missing: cloudwatch.TreatMissingData, notify: bool = True) -> cloudwatch.Alarm:
        name = self._alarm_name(what)
        alarm = cloudwatch.Alarm(
            scope, cid, alarm_name=name, alarm_description=self._description(description),
            metric=metric, threshold=threshold, comparison_operator=comparison,
            evaluation_periods=evaluation_periods, datapoints_to_alarm=datapoints, treat_missing_data=missing)
        if notify:
            self.notifying.append(alarm)
            self.shown.append(name)
        return alarm

    def _with_late_advice(self, text: str) -> str:
        """An oldest-Late alarm's description: what fired, then where the cause is (it changes between samples; a
        description cannot) and what to do for each cause; the list alone gives way when long names leave it no
        room (the dashboard's "What to do, by cause" widget holds it too)."""
        overview = (f"https://console.aws.amazon.com/cloudwatch/home?region={Aws.REGION}"
                    f"#dashboards:name={self.config.stack_name}")
        where = f'Why: the "Why runs are Late" widgets on {overview} name the cause per queue.'
        causes = "; ".join(f"{cause}: {advice}" for cause, advice in ADVICE.items())
        full = f"{text} {where} What to do: by cause, {causes}."
        if len(" ".join(full.split())) <= MAX_DESCRIPTION:
            return full
        return f"{text} {where} What to do: see the dashboard's list by cause."

    def scale_out(self, service: ServiceConfig, scaling: WorkerServiceScaling) -> None:
        """Name the step policy's alarm (CDK leaves it to CloudFormation), so the overview can show it by name."""
        upper = scaling.step_scaling.upper_alarm
        if upper is None:
            return
        cfn_alarm = upper.node.default_child
        assert isinstance(cfn_alarm, cloudwatch.CfnAlarm)
        cfn_alarm.alarm_name = self._alarm_name(f"scale-out {service.path}")
        self.shown.append(cfn_alarm.alarm_name)

    def publisher(self, scope: Construct) -> None:
        stack_name = self.config.stack_name
        logs = f"the publisher's logs (Lambda function {self.function.function_name})"
        period_seconds, window = publisher_window(self.config.schedule, FAILING_WINDOW_RUNS)
        period = Duration.seconds(period_seconds)
        failing = cloudwatch.MathExpression(
            expression=("FILL(lambdaErrors, 0) + FILL(queueReadErrors, 0) + FILL(serviceReadErrors, 0) "
                        "+ FILL(protectionErrors, 0)"),
            using_metrics={
                "lambdaErrors": self.function.metric_errors(statistic="Sum", period=period),
                "queueReadErrors": self.queries.publisher(metrics.QUEUE_READ_ERRORS, "Maximum", period),
                "serviceReadErrors": self.queries.publisher(metrics.SERVICE_READ_ERRORS, "Maximum", period),
                "protectionErrors": self.queries.publisher(metrics.PROTECTION_ERRORS, "Maximum", period),
            },
            period=period, label="Publisher errors")
        self.publisher_failing = self._alarm(
            scope, "PublisherFailing", "publisher failing", metric=failing, threshold=0,
            comparison=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
            evaluation_periods=window, datapoints=min(FAILING_RUNS, window),
            missing=cloudwatch.TreatMissingData.NOT_BREACHING,
            description=f"""The backlog publisher of {stack_name} failed in {min(FAILING_RUNS, window)} of its last
            {window} runs: the Lambda raised (nothing could be read: Prefect API down or unreachable, credentials
            rejected), some queues or ECS services could not be read (QueueReadErrors/ServiceReadErrors), or ECS
            task reads or task-protection calls failed (ProtectionErrors: protection was left as it was). Nothing
            is published for what was not read, so the affected services do not scale. What to do: read
            {logs}; warnings name the queue or service and the cause (queue renamed or deleted, wrong workPool, API
            errors, ECS permissions or throttling). Fix the Prefect side or the cdk.json queues and redeploy.""")
        self.orphaned_runs(scope)

        period_seconds, window = publisher_window(self.config.schedule, SILENT_RUNS)
        self.publisher_silent = self._alarm(
            scope, "PublisherSilent", "publisher silent",
            metric=self.queries.publisher(metrics.QUEUES_READ, "SampleCount", Duration.seconds(period_seconds)),
            threshold=1, comparison=cloudwatch.ComparisonOperator.LESS_THAN_THRESHOLD,
            evaluation_periods=window, datapoints=window, missing=cloudwatch.TreatMissingData.BREACHING,
            description=f"""The backlog publisher of {stack_name} has published nothing (no QueuesRead datapoint)
            for {window} periods of {period_seconds} s. Without its metrics no ECS service scales: target tracking
            and the step policy see no data and leave the desired count where it is. What to do: check that the
            EventBridge Scheduler schedule of {stack_name} is enabled and invokes the function, then the Lambda
            metrics (Invocations, Errors, Throttles) and {logs}: timeouts, a missing Powertools layer, no network
            route to the Prefect API or to CloudWatch (PutMetricData) from its subnets.""")

    def orphaned_runs(self, scope: Construct) -> None:
        """One alarm for the stack: runs whose worker's task has stopped stay orphaned (their process is gone)."""
        crash = {
            "crash": "they are set to Crashed after two samples (crashOrphanedRuns is on): if this persists, check "
                     "the publisher's logs for rejected changes",
            "reschedule": "they are set back to Scheduled after two samples (orphanedRuns is reschedule) for a live "
                          "worker to run again: if this persists, check the publisher's logs for rejected changes",
        }.get(self.config.orphaned_runs,
              "cancel or mark them Crashed in Prefect (or set crashOrphanedRuns in cdk.json so the publisher "
              "does it, or orphanedRuns reschedule to have them run again); retries and automations then take over "
              "and their concurrency slots are freed")
        self._alarm(
            scope, "OrphanedRuns", "orphaned flow runs",
            metric=self.queries.publisher(metrics.ORPHANED_FLOW_RUNS, "Minimum"), threshold=0,
            comparison=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
            evaluation_periods=ORPHAN_MINUTES, datapoints=ORPHAN_MINUTES, missing=cloudwatch.TreatMissingData.MISSING,
            description=f"""For {ORPHAN_MINUTES} minutes, flow runs have been in flight (Running, Pending,
            Cancelling or Paused) on workers whose ECS task has stopped: their process died with the task, and
            Prefect will show them as running forever, holding concurrency slots. They are left out of the
            scaling demand. Which queue: OrphanedFlowRuns on the dashboard. What to do: find why the tasks stopped
            (ECS stopped-task reasons: scale-in of an unprotected task, a deployment, out of memory); {crash}.""")

    def queue(self, scope: Construct, queue: QueueConfig) -> None:
        name = queue.path
        service = self.config.service_for(queue)
        cid = construct_id("Queue", queue.work_pool, queue.work_queue)
        threshold = self.config.oldest_late_alarm_seconds
        self._alarm(
            scope, f"{cid}-OldestLate", f"oldest Late run {name}",
            metric=self.queries.queue_alarm(queue, metrics.OLDEST_LATE_RUN_AGE, "MAX"),
            threshold=threshold, comparison=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
            evaluation_periods=1, datapoints=1, missing=cloudwatch.TreatMissingData.MISSING,
            description=self._with_late_advice(f"""A flow run of work queue {name} has been Late for more than
            {threshold} s: no agent/worker picked it up when it was due. Served by ECS service
            {service.cluster}/{service.service} (max {service.max_capacity} tasks)."""))

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
                return self.queries.queue_alarm(queue, definition, "MIN")

            self._alarm(scope, f"{cid}-PausedBacklog", f"blocked backlog {name}", metric=cloudwatch.MathExpression(
                expression="IF((paused > 0 OR limited > 0) AND due > 0, 1, 0)",
                using_metrics={"paused": at(metrics.QUEUE_PAUSED), "limited": at(metrics.CONCURRENCY_LIMITED),
                               "due": at(metrics.DUE_FLOW_RUNS)},
                period=PERIOD, label="Due runs that cannot start"),
                threshold=1, comparison=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
                evaluation_periods=SUSTAINED_MINUTES, datapoints=SUSTAINED_MINUTES,
                missing=cloudwatch.TreatMissingData.MISSING, description=blocked_description)
            self._alarm(scope, f"{cid}-Workers", f"workers not taking runs {name}", metric=cloudwatch.MathExpression(
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
        paused = self._part(scope, queue, cid, "Paused", blocked, metrics.QUEUE_PAUSED, 0, gt, SUSTAINED_MINUTES)
        limited = self._part(scope, queue, cid, "Limited", blocked, metrics.CONCURRENCY_LIMITED, 0, gt,
                             SUSTAINED_MINUTES)
        due = self._part(scope, queue, cid, "Due", blocked, metrics.DUE_FLOW_RUNS, 0, gt, SUSTAINED_MINUTES)
        self._composite(scope, f"{cid}-PausedBacklog", blocked, blocked_description, cloudwatch.AlarmRule.all_of(
            cloudwatch.AlarmRule.any_of(_in_alarm(paused), _in_alarm(limited)), _in_alarm(due)))
        workers = self._alarm_name(f"workers not taking runs {name}")
        unpolled = self._part(scope, queue, cid, "Unpolled", workers, metrics.SECONDS_SINCE_LAST_POLLED,
                              self.config.unpolled_alarm_seconds, gt, WORKER_MINUTES)
        due_now = self._part(scope, queue, cid, "DueNow", workers, metrics.DUE_FLOW_RUNS, 0, gt, WORKER_MINUTES)
        stuck = self._part(scope, queue, cid, "Stuck", workers, metrics.STUCK_PENDING_FLOW_RUNS, 0, gt, WORKER_MINUTES)
        self._composite(scope, f"{cid}-Workers", workers, workers_description, cloudwatch.AlarmRule.any_of(
            cloudwatch.AlarmRule.all_of(_in_alarm(unpolled), _in_alarm(due_now)), _in_alarm(stuck)))

    def pool(self, scope: Construct, pool: str) -> None:
        """monitoringDetail "pool": each condition over all the pool's queues (Metrics Insights, MAX)."""
        cid = construct_id("Pool", pool)
        threshold = self.config.oldest_late_alarm_seconds

        def worst(definition: metrics.MetricDef) -> cloudwatch.IMetric:
            return self.queries.insights(definition, "MAX", "WorkPool", pool,
                                        label=f"{definition.name}, worst queue of {pool}")

        self._alarm(
            scope, f"{cid}-OldestLate", f"oldest Late run in pool {pool}", metric=worst(metrics.OLDEST_LATE_RUN_AGE),
            threshold=threshold, comparison=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
            evaluation_periods=1, datapoints=1, missing=cloudwatch.TreatMissingData.MISSING,
            description=self._with_late_advice(f"""A flow run in a queue of work pool {pool} has been Late for
            more than {threshold} s: no agent/worker picked it up when it was due. Which queue: the pool's row on
            the dashboard."""))
        self._alarm(
            scope, f"{cid}-Stuck", f"runs stuck in Pending in pool {pool}",
            metric=worst(metrics.STUCK_PENDING_FLOW_RUNS),
            threshold=0, comparison=cloudwatch.ComparisonOperator.GREATER_THAN_THRESHOLD,
            evaluation_periods=WORKER_MINUTES, datapoints=WORKER_MINUTES, missing=cloudwatch.TreatMissingData.MISSING,
            description=f"""A queue of work pool {pool} has had flow runs Pending for more than
            {self.config.stuck_pending_seconds} s for {WORKER_MINUTES} minutes: a worker claimed them and most
            likely died. Which queue: StuckPendingFlowRuns in the pool's row on the dashboard. What to do: check
            the worker tasks' logs and stopped tasks, then cancel or reschedule those runs in Prefect, or set
            rescheduleStuckPending in cdk.json.""")

    def _part(self, scope: Construct, queue: QueueConfig, cid: str, kind: str, composite_name: str,
              definition: metrics.MetricDef, threshold: float, comparison: cloudwatch.ComparisonOperator,
              minutes: int) -> cloudwatch.Alarm:
        """One Metrics Insights condition of a composite alarm; it notifies nobody itself."""
        return self._alarm(
            scope, f"{cid}-{kind}", f"{kind.lower()} {queue.path}",
            metric=self.queries.queue_alarm(queue, definition, "MIN"), threshold=threshold, comparison=comparison,
            evaluation_periods=minutes, datapoints=minutes, missing=cloudwatch.TreatMissingData.MISSING,
            notify=False, description=(f"Part of the composite alarm '{composite_name}'; it notifies nobody itself. "
                                       f"{definition.name} of work queue {queue.path}: "
                                       f"{definition.description}."))

    def _composite(self, scope: Construct, cid: str, name: str, description: str,
                   rule: cloudwatch.IAlarmRule) -> None:
        self.notifying.append(cloudwatch.CompositeAlarm(
            scope, cid, composite_alarm_name=name, alarm_description=self._description(description),
            alarm_rule=rule))
        self.shown.append(name)

    def service(self, scope: Construct, service: ServiceConfig) -> None:
        in_task = any(self.config.queues[i].runs_in_worker_task for i in service.queue_indexes)
        # Where runs execute inside the worker tasks, demand counts the runs in flight too: runs wait only
        # when demand exceeds what the maximum number of tasks holds at the target.
        waiting_above = service.max_capacity * service.target_backlog_per_task if in_task else 0
        at_max = cloudwatch.MathExpression(
            expression=f"IF(desired >= {service.max_capacity} AND demand > {waiting_above:g}, 1, 0)",
            using_metrics={"desired": self.queries.service(service, metrics.DESIRED_TASKS, "Minimum"),
                           "demand": self.queries.service(service, metrics.DEMAND_FLOW_RUNS, "Minimum")},
            period=PERIOD, label="At maximum with runs waiting")
        waiting = (f"more flow runs than {service.max_capacity} tasks hold at {service.target_backlog_per_task:g} "
                   f"runs per task (DemandFlowRuns > {waiting_above:g}; runs execute inside the worker tasks)"
                   if in_task else "flow runs are due and waiting (DemandFlowRuns > 0)")
        self._alarm(
            scope, construct_id("Service", service.cluster, service.service) + "-AtMax",
            f"at max capacity {service.cluster}/{service.service}", metric=at_max, threshold=1,
            comparison=cloudwatch.ComparisonOperator.GREATER_THAN_OR_EQUAL_TO_THRESHOLD,
            evaluation_periods=SUSTAINED_MINUTES, datapoints=SUSTAINED_MINUTES,
            missing=cloudwatch.TreatMissingData.MISSING,
            description=f"""ECS service {service.cluster}/{service.service} has been at its maximum of
            {service.max_capacity} desired tasks for {SUSTAINED_MINUTES} minutes while {waiting}. Autoscaling
            cannot add tasks, so runs queue up and turn Late. What to do: if the backlog is expected, nothing;
            otherwise raise maxCapacity for this service in cdk.json and redeploy (check the cluster's capacity
            and the account's Fargate/EC2 limits first), or lower the demand (schedules, concurrency limits).""")
