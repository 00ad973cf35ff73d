"""`recorded_artifact`: the exact bytes a release was deployed from (source type `recorded`).

`playbook rollback` replaces each source an rsync step deployed from with one of these, so a
host on which `keep` already removed the release can get it back. The digest comes from the
history of the run that deployed the release. The bytes are taken from the controller's
content-addressed cache when it still has them (re-hashed first). Otherwise the original
source is asked again, pinned to that digest: an S3 object by its version id and sha256, an npm
package by version and integrity, a local tree by its tree digest. Bytes that differ are
never used.

A rollback usually only switches `current` back, and then needs no bytes at all. So an
artifact that cannot be had is not an error here: the plan says so (`available: false`,
`error`), and only the hosts that need the bytes fail, with that reason.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

from engine.argschema import build
from engine.errors import ModuleError, PlaybookError
from engine.model.results import Plan
from engine.module import ApplyContext, PlanContext, arg, get_module, register, source_module
from modules._support.artifacts import ArtifactCache, Digest, sri_to_digest

__all__ = ["RecordedArtifact", "parse_digest", "RecordedArtifactArgs"]


@dataclass(frozen=True)
class RecordedArtifactArgs:
    digest: str = arg(doc="The recorded digest: `sha256:<hex>` (S3 objects, local trees) or `sha512-<base64>` (npm).")
    release: str = arg("", doc="The release the digest was recorded for (shown in messages).")
    path: str | None = arg(
        None,
        doc="The path the original source gave (the cache's `tree`, `tree-strip1` or `blob`); says how the cached bytes are laid out.",
    )
    fetch: dict[str, Any] | None = arg(
        None,
        doc="The original source (`type` plus its arguments), pinned to `digest`, to fetch again when the cache no longer has the bytes.",
    )


def parse_digest(text: str) -> Digest | None:
    """A cache key from a recorded digest, or None for digests that are not of bytes (a tree)."""
    try:
        if text.startswith("sha256:"):
            return Digest("sha256", text[len("sha256:") :])
        if text.startswith(("sha512-", "sha256-")):
            return sri_to_digest(text)
    except ValueError:
        return None
    return None


@register
class RecordedArtifact:
    """The bytes a release was deployed from, by their recorded digest: from the controller's
    cache, else fetched again from the original source pinned to that digest. Unavailable bytes
    are reported in the plan, not failed: only hosts that need them fail. Used by rollback, which
    adds every other output the source recorded for the release (npm `integrity`, S3 `uri`...)."""

    name: ClassVar[str] = "recorded_artifact"
    source_type: ClassVar[str] = "recorded"
    Args: ClassVar[type] = RecordedArtifactArgs
    summary: ClassVar[str] = "the exact bytes a release was deployed from, by recorded digest (used by rollback)"
    outputs: ClassVar[dict[str, str]] = {
        "path": "the tree (or file) on the controller; empty when the bytes are unavailable",
        "digest": "the recorded digest",
        "version": "the version a fetch found, else the one recorded for the release, when the source has one",
        "available": "whether the bytes were found",
        "error": "why not, when they were not",
    }
    controller_only: ClassVar[bool] = True
    examples: ClassVar[str] = """\
sources:
  code:
    type: recorded
    digest: sha256:9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08
    release: 20261124T051500Z
"""

    def plan(self, ctx: PlanContext, args: RecordedArtifactArgs) -> Plan:
        release = f" (release {args.release})" if args.release else ""
        # no `version` unless a fetch gives one: the rollback keeps the one recorded for the release
        outputs: dict[str, Any] = {"digest": args.digest, "available": True, "error": ""}
        key = parse_digest(args.digest)
        cache = ArtifactCache(ctx.state_dir)
        if key is not None and cache.verify(key, on_damage=lambda text: ctx.warn(f"{args.digest}{release}: {text}")):
            budget = (args.fetch or {}).get("max_unpacked_mib")
            path = _materialise(cache, key, args.path, ctx.warn, budget if isinstance(budget, int) else None)
            return Plan.no_change(
                f"{args.digest}{release} from the controller's cache",
                outputs={**outputs, "path": path},
                fingerprint={"digest": args.digest},
            )
        try:
            if not args.fetch:
                raise ModuleError("not in the controller's cache, and there is no source to fetch it from")
            fetched = _fetch(ctx, args)
        except PlaybookError as exc:
            why = f"{args.digest}{release} is unavailable: {exc.message}"
            ctx.emit(f"warning: {why}")
            return Plan.no_change(
                why + "; hosts that no longer have the release cannot get it back",
                outputs={**outputs, "path": "", "available": False, "error": why},
                fingerprint={"digest": args.digest},
            )
        return Plan.no_change(
            f"{args.digest}{release} fetched again from the {args.fetch.get('type')} source",
            outputs={**outputs, "path": fetched.get("path", ""), **_known(fetched, "version")},
            fingerprint={"digest": args.digest},
        )

    def apply(self, ctx: ApplyContext, plan: Plan) -> None:  # pragma: no cover - a plan here never changes
        return None


def _known(outputs: dict[str, Any], *names: str) -> dict[str, Any]:
    """The named outputs that have a value."""
    return {n: outputs[n] for n in names if outputs.get(n) is not None}


def _materialise(
    cache: ArtifactCache, key: Digest, recorded: str | None, warn: Callable[[str], None], budget_mib: int | None
) -> str:
    layout = os.path.basename(recorded.rstrip("/")) if recorded else "tree"
    if layout == "blob":
        return str(cache.blob(key))
    strip = (
        int(layout[len("tree-strip") :])
        if layout.startswith("tree-strip") and layout[len("tree-strip") :].isdigit()
        else 0
    )
    budget = budget_mib * 2**20 if budget_mib else None
    return str(cache.tree(key, strip_components=strip, label=str(key), max_bytes=budget, on_damage=warn))


def _fetch(ctx: PlanContext, args: RecordedArtifactArgs) -> dict[str, Any]:
    """Plan the original source with its pins; its plan fetches into the cache and verifies."""
    spec = dict(args.fetch or {})
    kind = str(spec.pop("type", ""))
    module_name = source_module(kind)
    if module_name is None or module_name == RecordedArtifact.name:
        raise ModuleError(f"cannot fetch a source of type '{kind}' again")
    module = get_module(module_name)
    plan = module.plan(ctx, build(module.Args, spec, path=f"{ctx.step}.args.fetch"))
    outputs = dict(plan.outputs or {})
    got = str(outputs.get("digest", ""))
    if got != args.digest:
        raise ModuleError(f"the {kind} source now gives {got or 'no digest'}, not the recorded {args.digest}")
    return outputs
