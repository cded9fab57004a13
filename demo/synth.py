"""Synthesize the stack for a configuration and print its CloudFormation template (JSON) on stdout.

    PYTHONPATH=lambda:. python -m demo.synth '<context as JSON>'

The same as ``cdk synth`` minus the CLI: ``infra.stack.PrefectAutoscalerStack``
built in an ``aws_cdk.App`` and read back with ``aws_cdk.assertions.Template``.
The demo runs this in a child process of its own, so that the node process
CDK starts (jsii) ends with it, and overlaps it with the Prefect server's start.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from collections.abc import Mapping, Sequence
from typing import Any

from prefect_backlog.config import parse_config


def synthesize(context: Mapping[str, Any]) -> dict[str, Any]:
    """The CloudFormation template ``cdk synth`` would produce for ``context``."""
    os.environ.setdefault("JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION", "1")
    os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")
    import aws_cdk as cdk  # starts jsii's node process: imported only where needed
    from aws_cdk.assertions import Template

    from infra.stack import PrefectAutoscalerStack

    config = parse_config(dict(context))
    outdir = tempfile.mkdtemp(prefix="demo-synth-")
    try:
        stack = PrefectAutoscalerStack(cdk.App(outdir=outdir), config.stack_name, config=config)
        return dict(Template.from_stack(stack).to_json())
    finally:
        shutil.rmtree(outdir, ignore_errors=True)


def main(argv: Sequence[str]) -> int:
    if len(argv) != 2:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    json.dump(synthesize(json.loads(argv[1])), sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
