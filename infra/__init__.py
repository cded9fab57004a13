"""The Prefect ECS autoscaler as CDK constructs (installed as ``prefect_ecs_autoscaler``).

One construct per concern: the publisher with its monitoring (:mod:`.autoscaler`), each
service's scaling (:mod:`.scaling`), and the standalone app's stack (:mod:`.stack`) built
from them. The names below load on first use, so reading a synthesized template back
(:mod:`.assembly`, ``make synth``'s summary) starts no CDK.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

_EXPORTS = {
    "PrefectBacklogPublisher": ".autoscaler", "PrefectAuth": ".autoscaler", "PublisherNetwork": ".autoscaler",
    "WorkerServiceScaling": ".scaling", "WorkQueue": ".scaling", "PrefectAutoscalerStack": ".stack",
}
__all__ = [*_EXPORTS, "ConfigError"]

if TYPE_CHECKING:
    from prefect_backlog.config import ConfigError as ConfigError

    from .autoscaler import PrefectAuth as PrefectAuth
    from .autoscaler import PrefectBacklogPublisher as PrefectBacklogPublisher
    from .autoscaler import PublisherNetwork as PublisherNetwork
    from .scaling import WorkerServiceScaling as WorkerServiceScaling
    from .scaling import WorkQueue as WorkQueue
    from .stack import PrefectAutoscalerStack as PrefectAutoscalerStack


def __getattr__(name: str) -> Any:
    if name == "ConfigError":
        from prefect_backlog.config import ConfigError
        return ConfigError
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
