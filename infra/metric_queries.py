"""How CloudWatch finds each published metric, for the scaling policies, the alarms and the dashboard.

Every metric comes from :mod:`prefect_backlog.metrics`, the same definitions the
publisher uses. Queue metrics carry the *resolved* work pool as their
``WorkPool`` dimension. A configured queue without ``workPool`` is looked up by
name at run time, so its pool is unknown at synth: the dashboard finds its
series with a ``SEARCH`` expression (one line per pool found), and its alarms
with Metrics Insights queries (``MAX``/``MIN`` over every pool holding a queue
of that name), which unlike ``SEARCH`` are allowed in alarms.
"""

from __future__ import annotations

from aws_cdk import Duration
from aws_cdk import aws_cloudwatch as cloudwatch

from prefect_backlog import metrics
from prefect_backlog.config import Config, QueueConfig, ServiceConfig

PERIOD = Duration.minutes(1)


def search_string(value: str) -> str:
    """A value inside SEARCH's single-quoted query, as an exact (double-quoted) term."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"').replace("'", "\\'") + '"'


def insights_string(value: str) -> str:
    """A Metrics Insights string literal."""
    return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"


def insights_name(value: str) -> str:
    """A Metrics Insights identifier (namespace) in double quotes."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def metric(namespace: str, definition: metrics.MetricDef, dimensions: dict[str, str], statistic: str, *,
           period: Duration = PERIOD, label: str | None = None) -> cloudwatch.Metric:
    """A published metric. A label turns an alarm's metric into the ``Metrics`` form; scaling alarms keep none."""
    return cloudwatch.Metric(namespace=namespace, metric_name=definition.name, dimensions_map=dimensions,
                             statistic=statistic, period=period, label=label)


class MetricQueries:
    """The metrics of one configuration's namespace and publisher."""

    def __init__(self, config: Config) -> None:
        self.namespace = config.namespace
        self.publisher_name = config.stack_name

    def publisher(self, definition: metrics.MetricDef, statistic: str, period: Duration = PERIOD) -> cloudwatch.Metric:
        return metric(self.namespace, definition, metrics.publisher_dimensions(self.publisher_name), statistic,
                      period=period, label=definition.name)

    def service(self, service: ServiceConfig, definition: metrics.MetricDef, statistic: str,
                period: Duration = PERIOD, label: str | None = None) -> cloudwatch.Metric:
        return metric(self.namespace, definition, metrics.service_dimensions(*service.key), statistic, period=period,
                      label=label or definition.name)

    def queue_graph(self, queue: QueueConfig, definition: metrics.MetricDef,
                    statistic: str = "Maximum") -> cloudwatch.IMetric:
        """For the dashboard: the metric itself, or a SEARCH for it in whichever pool the queue is in."""
        if queue.work_pool is not None:
            return metric(self.namespace, definition, metrics.queue_dimensions(queue.work_pool, queue.work_queue),
                          statistic, label=definition.name)
        return self.search(definition, statistic, "WorkQueue", queue.work_queue, label_by="WorkPool")

    def queue_alarm(self, queue: QueueConfig, definition: metrics.MetricDef, function: str) -> cloudwatch.IMetric:
        """For an alarm: the metric itself, or a Metrics Insights query over every pool holding the queue."""
        statistic = {"MAX": "Maximum", "MIN": "Minimum"}[function]
        if queue.work_pool is not None:
            return metric(self.namespace, definition, metrics.queue_dimensions(queue.work_pool, queue.work_queue),
                          statistic, label=definition.name)
        return self.insights(definition, function, "WorkQueue", queue.work_queue, label=definition.name)

    def search(self, definition: metrics.MetricDef, statistic: str, dimension: str, value: str, *,
               label_by: str) -> cloudwatch.SearchExpression:
        """Every queue series of ``definition`` whose ``dimension`` is ``value``, one line each."""
        query = (f'{{{search_string(self.namespace)},WorkPool,WorkQueue}} '
                 f'MetricName={search_string(definition.name)} {dimension}={search_string(value)}')
        return cloudwatch.SearchExpression(
            expression=f"SEARCH('{query}', '{statistic}', {int(PERIOD.to_seconds())})",
            label=f"{definition.name} (${{PROP('Dim.{label_by}')}})", period=PERIOD)

    def late_by_cause(self) -> cloudwatch.SearchExpression:
        """Every ECS service's Late runs by cause (published only while non-zero): one line per service and cause."""
        keys = ",".join(metrics.late_cause_dimensions("", "", ""))
        query = f"{{{search_string(self.namespace)},{keys}}} MetricName={search_string(metrics.LATE_FLOW_RUNS.name)}"
        return cloudwatch.SearchExpression(
            expression=f"SEARCH('{query}', 'Maximum', {int(PERIOD.to_seconds())})",
            label="${PROP('Dim.ClusterName')}/${PROP('Dim.ServiceName')}: ${PROP('Dim.Cause')}", period=PERIOD)

    def insights(self, definition: metrics.MetricDef, function: str, dimension: str, value: str, *,
                 label: str) -> cloudwatch.MathExpression:
        """A Metrics Insights query (allowed in alarms, unlike SEARCH): ``function`` over every queue series
        of ``definition`` whose ``dimension`` is ``value``."""
        return cloudwatch.MathExpression(
            expression=(f"SELECT {function}({definition.name}) "
                        f"FROM SCHEMA({insights_name(self.namespace)}, WorkPool, WorkQueue) "
                        f"WHERE {dimension} = {insights_string(value)}"),
            using_metrics={}, period=PERIOD, label=label)
