"""Lambda entry point: wires configuration, credentials and AWS clients into one tick.

The configuration is the canonical form the stack wrote into the package
(``publisher_config.json``), parsed by the same code that validated it at synth
time. It travels in the package, not in an environment variable, because
Lambda caps all environment variables at 4 KB and hundreds of queues exceed it.
"""

from __future__ import annotations

import json
import os
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import boto3
import requests
from aws_lambda_powertools import Logger, Tracer
from aws_lambda_powertools.logging.utils import copy_config_to_registered_loggers
from aws_lambda_powertools.utilities import parameters
from aws_lambda_powertools.utilities.typing import LambdaContext
from botocore.config import Config as BotoConfig

from prefect_backlog.config import Config, parse_config
from prefect_backlog.prefect_api import PrefectClient, authorization_header
from prefect_backlog.tick import WarmState, run_samples

CONFIG_FILE = Path(os.environ.get("PUBLISHER_CONFIG_FILE", Path(__file__).with_name("publisher_config.json")))
SECRET_MAX_AGE_SECONDS = 300
# Kept by the container between invocations (reserved concurrency 1 and a one-minute schedule keep it
# warm): which backlogs were too deep to page, which tasks it protected, which runs were orphaned. Lost
# on a cold start at the cost of a few calls, never of a wrong figure.
WARM = WarmState()
# ECS throttles per account, and users' own workers already press on it in bursts: back off, and let
# botocore's adaptive mode slow our calls down when ECS says so, within the sample's budget.
ECS_CLIENT_CONFIG = BotoConfig(retries={"mode": "adaptive", "max_attempts": 4}, connect_timeout=3, read_timeout=5)

logger = Logger()
tracer = Tracer()
copy_config_to_registered_loggers(source_logger=logger, include={"prefect_backlog"})


class PublisherFailed(RuntimeError):
    """Nothing could be read: raised so the invocation shows as failed (Lambda Errors metric)."""


def load_config(path: Path | None = None) -> Config:
    return parse_config(json.loads((path or CONFIG_FILE).read_text()))


def authorization(config: Config) -> str | None:
    if config.auth is None:
        return None
    secret = parameters.get_secret(config.auth.secret, max_age=SECRET_MAX_AGE_SECONDS)
    return authorization_header(config.auth.scheme, str(secret).strip())


@logger.inject_lambda_context(log_event=False)
@tracer.capture_lambda_handler
def lambda_handler(event: dict[str, Any], context: LambdaContext) -> dict[str, Any]:
    config = load_config()
    WARM.ledger.resync_every = config.full_read_every_samples
    deadline = time.monotonic() + context.get_remaining_time_in_millis() / 1000
    auth = authorization(config)
    session = requests.Session()  # one connection pool for every sample of this invocation

    def new_client(read_deadline: float) -> PrefectClient:
        return PrefectClient(config.api_url, authorization=auth, deadline=read_deadline, session=session,
                             depth_memory=WARM.depth, ledger=WARM.ledger)

    reports = run_samples(config, new_client, ecs=boto3.client("ecs", config=ECS_CLIENT_CONFIG),
                          cloudwatch=boto3.client("cloudwatch"), deadline=deadline,
                          wall_clock=lambda: datetime.now(UTC), warm=WARM)
    for report in reports:
        logger.info("published", extra=report.summary())
    failures = [r.whole_failure for r in reports if r.whole_failure]
    if failures:
        raise PublisherFailed(failures[0])
    return {"samples": len(reports), **(reports[-1].summary() if reports else {})}
