"""Synthesize the stack for a configuration and print its CloudFormation templates (JSON) on stdout.

    PYTHONPATH=lambda:. python -m demo.synth '<context as JSON>'

The same as ``cdk synth`` minus the CLI: ``infra.stack.PrefectAutoscalerStack``
built in an ``aws_cdk.App`` and every template read back (``infra.assembly``;
the root and its nested stacks, by name).
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


def synthesize(context: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The CloudFormation templates ``cdk synth`` would produce for ``context``, by name ("root", "Shard07", ...)."""
    os.environ.setdefault("JSII_SILENCE_WARNING_DEPRECATED_NODE_VERSION", "1")
    os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")
    import aws_cdk as cdk  # starts jsii's node process: imported only where needed

    from infra.assembly import synthesize as synthesize_stack
    from infra.stack import PrefectAutoscalerStack

    config = parse_config(dict(context))
    outdir = tempfile.mkdtemp(prefix="demo-synth-")
    try:
        stack = PrefectAutoscalerStack(cdk.App(outdir=outdir), config.stack_name, config=config)
        return synthesize_stack(stack).templates
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
