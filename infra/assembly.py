"""A synthesized stack read back: its root template and the templates of its nested stacks.

Scaling and most alarms live in nested stacks (infra/layout.py), so whatever
reads what a synth produced (``make synth``'s summary, the tests, the demo, the
time-to-scale bench) reads every template of the stack through here, never
the root alone. The root template's metadata names its nested stacks' template
files (the stack writes it: infra/stack.py), both in ``cdk.out`` and in
an in-process synth's output directory.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from aws_cdk import Stack

METADATA_KEY = "PrefectAutoscaler"
ROOT = "root"


@dataclass(frozen=True)
class StackTemplates:
    """Every template of one stack by name: ``"root"`` first, then each nested stack by its id (``Shard07``)."""

    name: str
    templates: dict[str, dict[str, Any]]
    sizes: dict[str, int]  # bytes of each template file (CloudFormation takes at most 1 MB each)

    @property
    def root(self) -> dict[str, Any]:
        return self.templates[ROOT]

    @property
    def layout(self) -> dict[str, Any]:
        """What the stack recorded about its layout (counts, monitoring choice, nested stacks, dashboards)."""
        recorded: dict[str, Any] = self.root.get("Metadata", {}).get(METADATA_KEY, {})
        return recorded

    def resources(self, kind: str | None = None) -> Iterator[tuple[str, str, dict[str, Any]]]:
        """(template name, logical id, resource) of every resource, or of those of type ``kind``."""
        for template_name, template in self.templates.items():
            for logical_id, resource in template.get("Resources", {}).items():
                if kind is None or resource.get("Type") == kind:
                    yield template_name, logical_id, resource

    def of_type(self, kind: str) -> dict[str, dict[str, Any]]:
        """Resources of one type by logical id, across all templates (logical ids are unique across them)."""
        found: dict[str, dict[str, Any]] = {}
        for template_name, logical_id, resource in self.resources(kind):
            if logical_id in found:
                raise ValueError(f"logical id {logical_id} appears in two templates (the second: {template_name})")
            found[logical_id] = resource
        return found


def read(outdir: Path, stack_name: str) -> StackTemplates:
    """The templates of ``stack_name`` in a cloud assembly directory (``cdk.out``)."""
    files = {ROOT: outdir / f"{stack_name}.template.json"}
    root: dict[str, Any] = json.loads(files[ROOT].read_text())
    nested = root.get("Metadata", {}).get(METADATA_KEY, {}).get("nestedStacks", {})
    files.update({name: outdir / template_file for name, template_file in nested.items()})
    templates = {name: root if name == ROOT else json.loads(path.read_text()) for name, path in files.items()}
    return StackTemplates(stack_name, templates, {name: path.stat().st_size for name, path in files.items()})


def root_stack_names(outdir: Path) -> list[str]:
    """The stacks of a cloud assembly (nested templates are not stacks of their own)."""
    return sorted(p.name.removesuffix(".template.json") for p in outdir.glob("*.template.json")
                  if not p.name.endswith(".nested.template.json"))


def synthesize(stack: Stack) -> StackTemplates:
    """Synthesize ``stack``'s app once and read every template of the stack back from its output directory.

    ``aws_cdk.assertions.Template.from_stack`` synthesizes the whole app again on each call; one synth for
    all the templates is what keeps a 1,000-queue stack's tests affordable.
    """
    from aws_cdk import Stage  # here, not at the top: reading cdk.out (the summary) needs no CDK and no Node

    stage = Stage.of(stack)
    assert stage is not None
    assembly = stage.synth()
    return read(Path(assembly.directory), stack.artifact_id)
