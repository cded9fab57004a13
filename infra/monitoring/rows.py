"""The dashboard rows of the operators' view: one row of widgets per queue, work pool, ECS service, the publisher.

Each row starts with a title (a text widget) and shows metrics only, found by
name (:mod:`infra.metric_queries`); none refers to a resource, so a row may go on
any dashboard in any stack (infra/monitoring/dashboard.py decides which).
"""

from __future__ import annotations

from collections.abc import Sequence

from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs

from prefect_backlog import metrics
from prefect_backlog.config import Config, QueueConfig, ServiceConfig
from prefect_backlog.late_cause import ADVICE, FIELD_CAUSE, FIELD_DETAIL, FIELD_LATE, FIELD_QUEUE

from ..metric_queries import PERIOD, MetricQueries
from .alarms import SUSTAINED_MINUTES
from .plan import MonitoringPlan

Row = list[cloudwatch.IWidget]


class WidgetRows:
    """Builds rows for one configuration; the publisher's row also needs its function (Lambda metrics), the
    Late causes' row its log group (the line it writes per Late queue)."""

    def __init__(self, config: Config, plan: MonitoringPlan, queries: MetricQueries,
                 function: lambda_.IFunction, log_group: logs.ILogGroup) -> None:
        self.config = config
        self.plan = plan
        self.queries = queries
        self.function = function
        self.log_group = log_group

    def alarms_summary(self) -> str:
        config = self.config
        if self.plan.detail == "pool":
            own = "; queues without workPool have the per-queue alarms" if self.plan.queues else ""
            return (f"per work pool, a queue's oldest Late run over {config.oldest_late_alarm_seconds} s, or runs "
                    f"stuck in Pending{own}; a service at its maximum with runs waiting for {SUSTAINED_MINUTES} min; "
                    "publisher failing or silent.")
        return (f"oldest Late run over {config.oldest_late_alarm_seconds} s; due runs that cannot start (queue or "
                f"pool paused, concurrency limit used up) or a service at its maximum with runs waiting, for "
                f"{SUSTAINED_MINUTES} min; workers not taking runs (unpolled over {config.unpolled_alarm_seconds} s "
                "with due runs, or runs stuck in Pending); publisher failing or silent.")

    def publisher(self) -> Row:
        fn = self.function
        return [
            cloudwatch.TextWidget(width=24, height=1, markdown="## Publisher health"),
            cloudwatch.GraphWidget(
                title="Read and task-protection errors; orphaned runs", width=6,
                left=[self.queries.publisher(metrics.QUEUE_READ_ERRORS, "Maximum"),
                      self.queries.publisher(metrics.SERVICE_READ_ERRORS, "Maximum"),
                      self.queries.publisher(metrics.PROTECTION_ERRORS, "Maximum"),
                      self.queries.publisher(metrics.ORPHANED_FLOW_RUNS, "Maximum")],
                left_y_axis=cloudwatch.YAxisProps(min=0, show_units=False)),
            cloudwatch.GraphWidget(
                title="Queues read (missing = publisher silent)", width=6,
                left=[self.queries.publisher(metrics.QUEUES_READ, "Minimum")],
                left_y_axis=cloudwatch.YAxisProps(min=0, show_units=False)),
            cloudwatch.GraphWidget(
                title="Publisher run time", width=6,
                left=[self.queries.publisher(metrics.TICK_DURATION, "Maximum"),
                      fn.metric_duration(statistic="Maximum", period=PERIOD, label="Lambda Duration")],
                left_y_axis=cloudwatch.YAxisProps(min=0)),
            cloudwatch.GraphWidget(
                title="Publisher Lambda", width=6,
                left=[fn.metric_errors(statistic="Sum", period=PERIOD, label="Errors"),
                      fn.metric_throttles(statistic="Sum", period=PERIOD, label="Throttles"),
                      fn.metric_invocations(statistic="Sum", period=PERIOD, label="Invocations")],
                left_y_axis=cloudwatch.YAxisProps(min=0, show_units=False)),
        ]

    def late_causes(self) -> Row:
        """Why runs are Late (late_cause.py): by ECS service and cause, per queue with its detail, what to do."""
        advice = "\n".join(f"- `{cause}`: {text}" for cause, text in ADVICE.items())
        return [
            cloudwatch.TextWidget(width=24, height=1, markdown=(
                "## Why runs are Late: one cause per queue with Late runs, from what the publisher read")),
            cloudwatch.GraphWidget(
                title="Late runs by ECS service and cause", width=8, height=7, stacked=True,
                left=[self.queries.late_by_cause()], left_y_axis=cloudwatch.YAxisProps(min=0, show_units=False)),
            cloudwatch.LogQueryWidget(
                title="Queues with Late runs: latest cause and what was seen", width=10, height=7,
                log_group_names=[self.log_group.log_group_name], view=cloudwatch.LogQueryVisualizationType.TABLE,
                query_lines=[
                    f"filter ispresent({FIELD_CAUSE})",
                    f"stats latest({FIELD_LATE}) as lateRuns, latest({FIELD_CAUSE}) as cause, "
                    f"latest({FIELD_DETAIL}) as detail, max(@timestamp) as seen by {FIELD_QUEUE}",
                    "sort seen desc",
                    "limit 100"]),
            cloudwatch.TextWidget(width=6, height=7, markdown="### What to do, by cause\n" + advice),
        ]

    def queue(self, queue: QueueConfig) -> Row:
        name = queue.path
        service = self.config.service_for(queue)
        threshold = cloudwatch.HorizontalAnnotation(value=self.config.oldest_late_alarm_seconds, label="alarm",
                                                    color=cloudwatch.Color.RED)
        return [
            cloudwatch.TextWidget(width=24, height=1, markdown=(
                f"## Queue {name} → ECS {service.cluster}/{service.service}")),
            cloudwatch.GraphWidget(
                title=f"{name}: Late, due and upcoming runs", width=6,
                left=[self.queries.queue_graph(queue, metrics.LATE_FLOW_RUNS),
                      self.queries.queue_graph(queue, metrics.DUE_FLOW_RUNS),
                      self.queries.queue_graph(queue, metrics.UPCOMING_FLOW_RUNS)],
                left_y_axis=cloudwatch.YAxisProps(min=0, show_units=False)),
            cloudwatch.GraphWidget(
                title=f"{name}: Pending, Running, stuck and orphaned", width=6,
                left=[self.queries.queue_graph(queue, metrics.PENDING_FLOW_RUNS),
                      self.queries.queue_graph(queue, metrics.RUNNING_FLOW_RUNS),
                      self.queries.queue_graph(queue, metrics.STUCK_PENDING_FLOW_RUNS),
                      self.queries.queue_graph(queue, metrics.ORPHANED_FLOW_RUNS)],
                left_y_axis=cloudwatch.YAxisProps(min=0, show_units=False)),
            cloudwatch.GraphWidget(
                title=f"{name}: oldest Late run age (s)", width=6,
                left=[self.queries.queue_graph(queue, metrics.OLDEST_LATE_RUN_AGE)],
                left_annotations=[threshold], left_y_axis=cloudwatch.YAxisProps(min=0, show_units=False)),
            cloudwatch.GraphWidget(
                title=f"{name}: paused or limited, seconds since last polled", width=6,
                left=[self.queries.queue_graph(queue, metrics.QUEUE_PAUSED),
                      self.queries.queue_graph(queue, metrics.CONCURRENCY_LIMITED)],
                right=[self.queries.queue_graph(queue, metrics.SECONDS_SINCE_LAST_POLLED)],
                left_y_axis=cloudwatch.YAxisProps(min=0, max=1, show_units=False),
                right_y_axis=cloudwatch.YAxisProps(min=0, show_units=False)),
        ]

    def pool(self, pool: str) -> Row:
        """monitoringDetail "pool": one row per work pool, one line per queue (SEARCH over the pool)."""
        def lines(*definitions: metrics.MetricDef) -> list[cloudwatch.IMetric]:
            return [self.queries.search(d, "Maximum", "WorkPool", pool, label_by="WorkQueue") for d in definitions]

        threshold = cloudwatch.HorizontalAnnotation(value=self.config.oldest_late_alarm_seconds, label="alarm",
                                                    color=cloudwatch.Color.RED)
        queues = sum(1 for q in self.config.queues if q.work_pool == pool)
        return [
            cloudwatch.TextWidget(width=24, height=1, markdown=f"## Work pool {pool}: {queues} queues, one line each"),
            cloudwatch.GraphWidget(title=f"{pool}: Late runs per queue", width=6, left=lines(metrics.LATE_FLOW_RUNS),
                                   left_y_axis=cloudwatch.YAxisProps(min=0, show_units=False)),
            cloudwatch.GraphWidget(title=f"{pool}: due and upcoming runs per queue", width=6,
                                   left=lines(metrics.DUE_FLOW_RUNS, metrics.UPCOMING_FLOW_RUNS),
                                   left_y_axis=cloudwatch.YAxisProps(min=0, show_units=False)),
            cloudwatch.GraphWidget(title=f"{pool}: oldest Late run age (s)", width=6,
                                   left=lines(metrics.OLDEST_LATE_RUN_AGE), left_annotations=[threshold],
                                   left_y_axis=cloudwatch.YAxisProps(min=0, show_units=False)),
            cloudwatch.GraphWidget(title=f"{pool}: stuck Pending, orphaned, paused, limited", width=6,
                                   left=lines(metrics.STUCK_PENDING_FLOW_RUNS, metrics.ORPHANED_FLOW_RUNS,
                                              metrics.QUEUE_PAUSED, metrics.CONCURRENCY_LIMITED),
                                   left_y_axis=cloudwatch.YAxisProps(min=0, show_units=False)),
        ]

    def service(self, service: ServiceConfig) -> Row:
        where = f"{service.cluster}/{service.service}"
        return [
            cloudwatch.TextWidget(width=24, height=1, markdown=(
                f"## ECS service {where}: {service.min_capacity}..{service.max_capacity} tasks, target "
                f"{service.target_backlog_per_task:g} runs per task")),
            cloudwatch.GraphWidget(
                title=f"{where}: desired, running and protected tasks", width=8,
                left=[self.queries.service(service, metrics.DESIRED_TASKS, "Maximum"),
                      self.queries.service(service, metrics.RUNNING_TASKS, "Maximum"),
                      self.queries.service(service, metrics.PROTECTED_TASKS, "Maximum"),
                      self.queries.service(service, metrics.UNMAPPED_FLOW_RUNS, "Maximum")],
                left_annotations=[cloudwatch.HorizontalAnnotation(value=service.max_capacity, label="maxCapacity",
                                                                  color=cloudwatch.Color.RED)],
                left_y_axis=cloudwatch.YAxisProps(min=0, show_units=False)),
            cloudwatch.GraphWidget(
                title=f"{where}: BacklogPerTask (target tracking)", width=8,
                left=[self.queries.service(service, metrics.BACKLOG_PER_TASK, "Average")],
                left_annotations=[cloudwatch.HorizontalAnnotation(value=service.target_backlog_per_task,
                                                                  label="target")],
                left_y_axis=cloudwatch.YAxisProps(min=0, show_units=False)),
            cloudwatch.GraphWidget(
                title=f"{where}: TaskShortfall (step scale-out) and demand", width=8,
                left=[self.queries.service(service, metrics.TASK_SHORTFALL, "Maximum")],
                right=[self.queries.service(service, metrics.DEMAND_FLOW_RUNS, "Maximum")],
                left_y_axis=cloudwatch.YAxisProps(min=0, show_units=False),
                right_y_axis=cloudwatch.YAxisProps(min=0, show_units=False)),
        ]

    def shortfall(self, services: Sequence[ServiceConfig], title: str) -> cloudwatch.GraphWidget:
        """One line per ECS service: the tasks each is short of its demand (the overview of a big fleet)."""
        return cloudwatch.GraphWidget(
            title=title, width=8,
            left=[self.queries.service(s, metrics.TASK_SHORTFALL, "Maximum", label=s.path) for s in services],
            left_y_axis=cloudwatch.YAxisProps(min=0, show_units=False))
