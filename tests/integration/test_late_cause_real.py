"""Why is it Late, against real Prefect 3 and 2.18 servers: the dry run's JSON names each queue's cause.

Four queues, each Late for its own reason, built through the REST API only: one no worker ever polled, one
paused, one whose concurrency limit a Running run holds, and one a worker polls (``get_scheduled_flow_runs``,
as a worker does) on a service that ``--running-tasks`` puts at its maximum.
"""

from __future__ import annotations

import json
import time
import uuid
from pathlib import Path

import pytest

from harness.backlog import BacklogClient
from harness.prefect_server import PrefectServer
from prefect_backlog import dry_run

pytestmark = pytest.mark.integration


@pytest.mark.parametrize("version", ["3", "2"])
def test_the_dry_run_names_four_causes(version: str, request: pytest.FixtureRequest, tmp_path: Path,
                                       capsys: pytest.CaptureFixture[str]) -> None:
    server: PrefectServer = request.getfixturevalue(f"prefect{version}_server")
    api = BacklogClient(server.api_url)
    pool = f"late-{uuid.uuid4().hex[:8]}"
    targets = {name: api.target(pool, name) for name in ("unpolled", "paused", "limited", "full")}
    for target in targets.values():
        api.late_run(target.deployment_id)
    api.pause_queue(targets["paused"].queue_id)
    api.request("PATCH", f"/work_queues/{targets['limited'].queue_id}", {"concurrency_limit": 1})
    api.running_run(targets["limited"].deployment_id)
    # The worker polls "full" (and only it), as a worker started with --queue full does.
    api.post(f"/work_pools/{pool}/get_scheduled_flow_runs", {"work_queue_names": ["full"]})
    for _ in range(50):  # the server records the poll in the background
        if api.get_queue(pool, "full").get("last_polled"):
            break
        time.sleep(0.1)

    queues = [{"workPool": pool, "workQueue": name, "cluster": "c",
               "service": "full" if name == "full" else "other", "maxCapacity": 2 if name == "full" else 5}
              for name in targets]
    (tmp_path / "cdk.json").write_text(json.dumps({"context": {"prefectApiUrl": server.api_url}}))
    assert dry_run.main(["--context", str(tmp_path / "cdk.json"), "--queues", json.dumps(queues),
                         "--running-tasks", "2", "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    causes = {q["queue"]: (q["late"], q["lateCause"]) for q in out["queues"]}
    assert causes == {f"{pool}/unpolled": (1, "no-worker"), f"{pool}/paused": (1, "paused"),
                      f"{pool}/limited": (1, "concurrency-limit"), f"{pool}/full": (1, "at-max-capacity")}
