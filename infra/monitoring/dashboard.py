"""The dashboard of the operators' view: alarm status, publisher health, then a row per queue (or pool) and service."""

from __future__ import annotations

from collections.abc import Sequence

from aws_cdk import Duration
from aws_cdk import aws_cloudwatch as cloudwatch
from aws_cdk import aws_lambda as lambda_
from constructs import Construct

from infra.metric_queries import PERIOD, MetricQueries
from infra.monitoring.alarms import SUSTAINED_MINUTES
from prefect_backlog import metrics
from prefect_backlog.config import Config, QueueConfig, ServiceConfig

MAX_ALARMS_PER_STATUS_WIDGET = 100  # CloudWatch's limit for one alarm status widget


class OperatorsDashboard:
    """Builds the dashboard in ``scope``; ``widget_count`` is what it holds (CloudWatch allows 500)."""

    def __init__(self, scope: Construct, config: Config, queries: MetricQueries, function: lambda_.IFunction) -> None:
        self.scope = scope
        self.config = config
        self.queries = queries
        self.function = function
        self.widget_count = 0

    def build(self, status: Sequence[cloudwatch.IAlarm]) -> cloudwatch.Dashboard:
        """The dashboard; ``status`` are the alarms its status strip shows (ours, and the scale-out alarms)."""
        config = self.config
        dashboard = cloudwatch.Dashboard(
            self.scope, "Dashboard", dashboard_name=config.stack_name,
            default_interval=Duration.hours(3), period_override=cloudwatch.PeriodOverride.AUTO)
        dashboard.add_widgets(cloudwatch.TextWidget(width=24, height=2, markdown=(
            f"# {config.stack_name}: Prefect backlog and ECS scaling\n"
            f"Metrics in namespace `{config.namespace}`, published by Lambda `{self.function.function_name}` "
            f"({config.schedule}). Alarms: " + self._alarms_summary())))
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

    def _queue_widgets(self, queue: QueueConfig) -> list[cloudwatch.IWidget]:
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

    def _pool_queue_widgets(self, pool: str) -> list[cloudwatch.IWidget]:
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

    def _service_widgets(self, service: ServiceConfig) -> list[cloudwatch.IWidget]:
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
