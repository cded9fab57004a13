"""The dashboards of the operators' view: an overview in the root stack and, for a big fleet, the work pools'.

CloudWatch allows 500 widgets per dashboard (and 100 alarms per alarm status
widget); each dashboard here keeps to :data:`WIDGET_BUDGET`.

* The overview (named after the stack, in the root stack) shows the alarm
  status of every alarm, publisher health, and then either every row (queues
  or pools, then ECS services) when they fit, so a small fleet has one
  dashboard as before; or links to the work pools' dashboards and, per ECS
  service, the tasks it is short of its demand (one line each).
  Alarms live in nested stacks: the overview names each by the ARN built
  from its fixed name (``arn:<partition>:cloudwatch:<region>:<account>:alarm:<name>``),
  so it needs no cross-stack reference (CloudFormation allows 200 outputs per
  stack), and it is deployed after every nested stack.
* Past the overview, the fleet's dashboards (``<stack>-pools-<n>``) hold each
  work pool's rows: its queues' rows (or the pool's row), then the rows of the
  ECS services that serve those queues. Pools go in name order (queues
  without ``workPool`` last); a pool stays on one dashboard when it fits the
  rest of the current one or a fresh one, and one too big for a dashboard
  runs over several. Small pools share a dashboard: each costs $3 a month.
  Adding a queue may push a pool onto the next dashboard; that only changes
  dashboard bodies (a dashboard holds no state), and dashboard ``n`` always
  lives in its own nested stack (infra/layout.py).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from aws_cdk import Aws, Duration
from aws_cdk import aws_cloudwatch as cloudwatch
from constructs import Construct

from prefect_backlog.config import Config, QueueConfig

from ..assembly import ROOT
from .plan import MonitoringPlan
from .rows import Row, WidgetRows

WIDGET_BUDGET = 450  # per dashboard, under CloudWatch's 500 with room for the title
MAX_ALARMS_PER_STATUS_WIDGET = 100  # CloudWatch's limit for one alarm status widget
SERVICES_PER_GRAPH = 50  # lines per TaskShortfall graph on the overview
LINKS_PER_WIDGET = 18  # lines of links per text widget
POOL_LESS = "queues without workPool"


@dataclass
class Page:
    """One dashboard past the overview: the pools it shows (in order, a pool may continue on the next) and rows."""

    pools: list[str] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)

    @property
    def widgets(self) -> int:
        return _count(self.rows)


def pack(groups: Sequence[tuple[str, Sequence[Row]]], budget: int) -> list[Page]:
    """Each group's rows in order onto pages of at most ``budget`` widgets (see the module's docstring)."""
    pages = [Page()]
    for label, rows in groups:
        if pages[-1].rows and pages[-1].widgets + _count(rows) > budget >= _count(rows):
            pages.append(Page())  # fits a fresh page, not the rest of this one
        for row in rows:
            if pages[-1].rows and pages[-1].widgets + len(row) > budget:
                pages.append(Page())
            if not pages[-1].pools or pages[-1].pools[-1] != label:
                pages[-1].pools.append(label)
            pages[-1].rows.append(row)
    return pages if pages[0].rows else []


def dashboard_name(stack_name: str, number: int) -> str:
    """The fleet's dashboard ``number`` (1, 2, ...) past the overview, which is named after the stack."""
    return f"{stack_name}-pools-{number}"


def _link(name: str, label: str) -> str:
    return f"[{label}](#dashboards:name={name})"


@dataclass(frozen=True)
class BuiltDashboard:
    """What the stack checks and the summary reports: a dashboard's name, widget count and stack."""

    name: str
    widgets: int
    stack: str  # "root", or the nested stack's id


class Dashboards:
    """Builds the overview and, when the fleet's rows do not fit it, the work pools' dashboards."""

    def __init__(self, config: Config, plan: MonitoringPlan, rows: WidgetRows) -> None:
        self.config = config
        self.plan = plan
        self.rows = rows
        self.built: list[BuiltDashboard] = []

    def build(self, overview_scope: Construct, status: Sequence[str],
              page_scope: Callable[[int], tuple[Construct, str]]) -> cloudwatch.Dashboard:
        """``status`` names every alarm to show; ``page_scope(n)`` gives dashboard n's scope and stack id."""
        head = [self._title(), *self._status(overview_scope, status), self.rows.publisher(), self.rows.late_causes()]
        inline = [*self._detail_rows(self.plan.queues, self.plan.pools),
                  *(self.rows.service(s) for s in self.config.services)]
        if _count(head) + _count(inline) <= WIDGET_BUDGET:
            return self._dashboard(overview_scope, "Dashboard", self.config.stack_name, [*head, *inline], ROOT)
        pages = pack(self._pool_groups(), WIDGET_BUDGET - 1)
        for number, page in enumerate(pages, start=1):
            scope, stack = page_scope(number)
            self._dashboard(scope, "Dashboard", dashboard_name(self.config.stack_name, number),
                            [[self._page_header(number, len(pages), page)], *page.rows], stack)
        return self._dashboard(overview_scope, "Dashboard", self.config.stack_name,
                               [*head, *self._links(pages), *self._shortfall()], ROOT)

    # --- the overview ----------------------------------------------------------------------

    def _title(self) -> Row:
        config = self.config
        return [cloudwatch.TextWidget(width=24, height=2, markdown=(
            f"# {config.stack_name}: Prefect backlog and ECS scaling\n"
            f"Metrics in namespace `{config.namespace}`, published by Lambda `{self.rows.function.function_name}` "
            f"({config.schedule}). Alarms: " + self.rows.alarms_summary()))]

    def _status(self, scope: Construct, names: Sequence[str]) -> list[Row]:
        holder = Construct(scope, "AlarmStatus")
        alarms = [cloudwatch.Alarm.from_alarm_arn(
            holder, f"Alarm{i}", f"arn:{Aws.PARTITION}:cloudwatch:{Aws.REGION}:{Aws.ACCOUNT_ID}:alarm:{name}")
            for i, name in enumerate(names)]
        return [[cloudwatch.AlarmStatusWidget(title="Alarms (and the step policies' scale-out alarms)", width=24,
                                              height=3, alarms=alarms[start:start + MAX_ALARMS_PER_STATUS_WIDGET])]
                for start in range(0, len(alarms), MAX_ALARMS_PER_STATUS_WIDGET)]

    def _links(self, pages: Sequence[Page]) -> list[Row]:
        lines = [f"- {_link(dashboard_name(self.config.stack_name, n), f'Dashboard {n}')}: {_pools(page.pools)}"
                 for n, page in enumerate(pages, start=1)]
        return [[cloudwatch.TextWidget(width=24, height=min(2 + len(chunk), 20), markdown=(
            "## Work pools: each pool's queues and the ECS services serving them\n" + "\n".join(chunk)))]
            for chunk in (lines[start:start + LINKS_PER_WIDGET] for start in range(0, len(lines), LINKS_PER_WIDGET))]

    def _shortfall(self) -> list[Row]:
        services = sorted(self.config.services, key=lambda s: s.path)
        graphs: Row = [self.rows.shortfall(services[start:start + SERVICES_PER_GRAPH],
                                           f"TaskShortfall per ECS service ({start + 1}-"
                                           f"{min(start + SERVICES_PER_GRAPH, len(services))} of {len(services)})")
                       for start in range(0, len(services), SERVICES_PER_GRAPH)]
        title: Row = [cloudwatch.TextWidget(width=24, height=1, markdown=(
            "## ECS services: tasks short of their demand (0 when scaling keeps up; details on the pools' "
            "dashboards)"))]
        return [title, graphs]

    # --- the work pools' dashboards --------------------------------------------------------

    def _pool_groups(self) -> list[tuple[str, list[Row]]]:
        """Each work pool's rows, pools in name order (queues without workPool last)."""
        by_pool: dict[str | None, list[QueueConfig]] = {pool: [] for pool in self.plan.pools}
        for queue in self.plan.queues:
            by_pool.setdefault(queue.work_pool, []).append(queue)
        groups = []
        for pool in sorted(by_pool, key=lambda p: (p is None, p or "")):
            own = sorted(by_pool[pool], key=lambda q: q.work_queue)
            rows = self._detail_rows(own, (pool,) if pool in self.plan.pools else ())
            served = {q.service_key for q in self.config.queues if q.work_pool == pool}
            rows += [self.rows.service(s) for s in sorted(self.config.services, key=lambda s: s.path)
                     if s.key in served]
            groups.append((POOL_LESS if pool is None else pool, rows))
        return groups

    def _page_header(self, number: int, pages: int, page: Page) -> cloudwatch.TextWidget:
        stack_name = self.config.stack_name
        neighbours = [_link(dashboard_name(stack_name, n), label) for n, label in
                      ((number - 1, "previous"), (number + 1, "next")) if 1 <= n <= pages]
        return cloudwatch.TextWidget(width=24, height=2, markdown=(
            f"# {stack_name}: dashboard {number} of {pages}, {_pools(page.pools)}\n"
            + " · ".join([_link(stack_name, "Overview (every alarm, publisher health, every ECS service)"),
                          *neighbours])))

    # --- shared ----------------------------------------------------------------------------

    def _detail_rows(self, queues: Sequence[QueueConfig], pools: Sequence[str]) -> list[Row]:
        return [*(self.rows.pool(pool) for pool in pools), *(self.rows.queue(queue) for queue in queues)]

    def _dashboard(self, scope: Construct, cid: str, name: str, rows: Sequence[Row],
                   stack: str) -> cloudwatch.Dashboard:
        dashboard = cloudwatch.Dashboard(scope, cid, dashboard_name=name, default_interval=Duration.hours(3),
                                         period_override=cloudwatch.PeriodOverride.AUTO)
        for row in rows:
            dashboard.add_widgets(*row)
        self.built.append(BuiltDashboard(name, _count(rows), stack))
        return dashboard


def _pools(pools: Sequence[str]) -> str:
    """The pools a dashboard shows, shortened when there are many: ``a, b, c … k (11 pools)``."""
    if len(pools) <= 4:
        return ", ".join(pools)
    return f"{', '.join(pools[:3])} … {pools[-1]} ({len(pools)} pools)"


def _count(rows: Sequence[Row]) -> int:
    return sum(len(row) for row in rows)

