"""`local_tree`: a directory on the controller as a deploy source (source type `local`)."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from engine.errors import ModuleError
from engine.model.results import Plan
from engine.module import ApplyContext, PlanContext, arg, output, register
from modules._support.manifest import cached_manifest, tree_digest

__all__ = ["LocalTree", "LocalTreeArgs"]


@dataclass(frozen=True)
class LocalTreeArgs:
    path: str = arg(doc="Directory on the controller; relative paths are relative to the playbook's directory.")
    sha256: str | None = arg(
        None, doc="Pin the tree's digest (`sha256:<hex>` as `playbook plan` prints it); a different tree is an error."
    )


def _abspath(args: LocalTreeArgs, vars: Mapping[str, Any] | None) -> str:
    base = str((vars or {}).get("playbook_dir", "."))
    return os.path.normpath(os.path.join(base, os.path.expanduser(args.path)))


@register
class LocalTree:
    """Reads a local directory and exposes its absolute path and content digest. Reading
    changes nothing, so its plan is always no-change; a pinned `sha256` that does not match the
    tree fails the step before anything is deployed."""

    name: ClassVar[str] = "local_tree"
    source_type: ClassVar[str] = "local"
    Args: ClassVar[type] = LocalTreeArgs
    summary: ClassVar[str] = "a directory on the controller as a source (path, digest)"
    outputs: ClassVar[dict[str, str]] = {
        "path": output("absolute path of the tree", str),
        "digest": output("sha256 over names, modes and contents", str),
        "files": output("number of files", int),
    }
    controller_only: ClassVar[bool] = True
    examples: ClassVar[str] = """\
sources:
  code:
    type: local
    path: ../build/app
"""

    def check_args(self, args: LocalTreeArgs, vars: Mapping[str, Any]) -> None:
        """The directory must exist when the playbook is checked, not only once a run starts."""
        path = _abspath(args, vars)
        if not os.path.isdir(path):
            raise ModuleError(f"source directory '{path}' does not exist", path="path")

    def plan(self, ctx: PlanContext, args: LocalTreeArgs) -> Plan:
        path = _abspath(args, ctx.vars)
        if not os.path.isdir(path):
            raise ModuleError(f"source directory '{path}' does not exist", path=ctx.step)
        manifest = cached_manifest(path, ctx.state_dir, ctx.run_id)
        digest = tree_digest(manifest)
        if args.sha256 and args.sha256 != digest:
            raise ModuleError(f"tree '{path}' has digest {digest}, but the playbook pins {args.sha256}", path=ctx.step)
        files = sum(1 for e in manifest.values() if e.kind == "f")
        outputs = {"path": path, "digest": digest, "files": files}
        return Plan.no_change(f"{files} files, {digest[:19]}…", outputs=outputs, fingerprint={"digest": digest})

    def apply(self, ctx: ApplyContext, plan: Plan) -> None:  # pragma: no cover - never changes
        return None
