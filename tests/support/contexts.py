"""Configuration builders shared by the config, stack and app tests: one valid entry and context, then overrides."""

from __future__ import annotations

import copy
from typing import Any

API = "https://prefect.example.com/api"
DROP: Any = object()  # as an override: leave that key out
ENTRY: dict[str, Any] = {"workPool": "pool-a", "workQueue": "default", "cluster": "prefect", "service": "worker",
                         "maxCapacity": 3}


def _with(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    result = copy.deepcopy(base)
    for key, value in overrides.items():
        if value is DROP:
            result.pop(key, None)
        else:
            result[key] = value
    return result


def entry(**overrides: Any) -> dict[str, Any]:
    """A valid queue entry with fields replaced (``DROP`` removes one)."""
    return _with(ENTRY, overrides)


def context(*entries: Any, **top: Any) -> dict[str, Any]:
    """A valid context holding ``entries`` (one default entry when none), top-level keys replaced or DROPped."""
    return _with({"prefectApiUrl": API, "queues": list(entries) or [entry()]}, top)
