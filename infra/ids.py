"""Construct ids: one function for every per-service, per-queue and per-pool construct.

Derived from the names, never from the position in the configuration:
reordering the queues must not move a resource to another logical id
(CloudFormation would create the "new" one first, and an alarm with a fixed
AlarmName would fail on the name still in use). Readable, and unique per
identity: names that differ only in punctuation (``prefect/ecs_worker`` and
``prefect/ecs-worker``, or cluster ``a-b`` service ``c`` and cluster ``a``
service ``b-c``) get different ids.
"""

from __future__ import annotations

import hashlib
import json
import re


def construct_id(kind: str, *names: str | None) -> str:
    digest = hashlib.sha256(json.dumps(names).encode()).hexdigest()[:8]
    readable = re.sub(r"[^A-Za-z0-9-]", "-", "-".join(n or "any-pool" for n in names))
    return f"{kind}-{readable}-{digest}"
