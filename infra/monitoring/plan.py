"""Per queue or per work pool: what ``monitoringDetail`` asks for, and what its default "auto" chooses.

Per queue, each queue has three alarms (oldest Late run, blocked backlog,
workers not taking runs) and a dashboard row of its own. Per pool, each work
pool has two Metrics Insights alarms over its worst queue and one row with a
line per queue.

"auto" keeps per-queue alarms up to :data:`AUTO_PER_QUEUE_MAX_QUEUES` queues:

* every configuration that fit one stack before nested stacks (about 80,
  at most ~95 queues) keeps exactly the alarms it had;
* 100 queues are 300 queue alarms, three full alarm status widgets on the
  overview. Past that, one trouble common to a pool (paused, its workers
  gone) notifies once per queue, dozens of emails at once, where per-pool
  alarms say it once per pool; and each queue's alarms cost $0.30 a month.

A queue without ``workPool`` is looked up in every pool at run time, so no
pool's alarms can cover it: when "auto" chooses per pool, such queues keep
their own alarms and rows (``"pool"`` given explicitly still requires
``workPool`` on every queue, as before).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from prefect_backlog.config import Config, MonitoringDetail, QueueConfig

AUTO_PER_QUEUE_MAX_QUEUES = 100


@dataclass(frozen=True)
class MonitoringPlan:
    setting: MonitoringDetail  # as configured
    detail: Literal["queue", "pool"]  # what it came to
    reason: str
    queues: tuple[QueueConfig, ...]  # monitored one by one: their own alarms and dashboard rows
    pools: tuple[str, ...]  # monitored as a whole: pool alarms and one row per pool


def plan_monitoring(config: Config) -> MonitoringPlan:
    queues, setting = config.queues, config.monitoring_detail
    if setting == "queue":
        return MonitoringPlan(setting, "queue", 'monitoringDetail "queue"', queues, ())
    if setting == "pool":
        return MonitoringPlan(setting, "pool", 'monitoringDetail "pool"', (), config.work_pools)
    if len(queues) <= AUTO_PER_QUEUE_MAX_QUEUES:
        return MonitoringPlan(setting, "queue", f'monitoringDetail "auto": {len(queues):,} queues, at most '
                                                f'{AUTO_PER_QUEUE_MAX_QUEUES} get per-queue alarms', queues, ())
    pool_less = tuple(q for q in queues if q.work_pool is None)
    reason = (f'monitoringDetail "auto": {len(queues):,} queues, more than the {AUTO_PER_QUEUE_MAX_QUEUES} that get '
              "per-queue alarms")
    if pool_less:
        reason += (f"; {len(pool_less)} queues without workPool keep their own alarms (no pool's alarms can cover a "
                   "queue looked up in any pool)")
    return MonitoringPlan(setting, "pool", reason, pool_less, config.work_pools)
