"""What a plan or run is asked to do (`RunOptions`), and which hosts each fleet covers.

Kept apart from the executor so the CLI can read options and open connections before the
executor (and the graph library under it) is even imported.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from engine.errors import PlaybookError, ValidationError
from engine.execute.shard import Shard
from engine.model.config import Inventory, Playbook
from engine.model.patterns import select_hosts

__all__ = ["RunOptions", "resolve_fleets", "check_release_id"]

_RELEASE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._+-]{0,127}")


@dataclass
class RunOptions:
    mode: str = "plan"  # "plan" | "run"
    forks: int = 50
    limit: str | None = None
    extra_vars: Mapping[str, Any] = field(default_factory=dict)
    run_id: str = ""
    release_id: str = ""
    state_dir: str = ".playbook"
    verbose: int = 0
    locks: bool = True  # take fleets' deploy locks in run mode (engine.api.execute)
    # `playbook apply`: the saved plan per (step, host): {"change": ..., "fingerprint": ...}.
    # Nodes outside it are skipped; a node whose fresh plan no longer matches fails as drifted.
    expected: Mapping[tuple[str, str | None], Mapping[str, Any]] | None = None
    # `playbook run --resume`: nodes finished by the interrupted run, with their outputs
    done: Mapping[tuple[str, str | None], Mapping[str, Any]] | None = None
    resumed_from: str = ""
    # `playbook rollback`: outputs the runs of the target release recorded, per (step, host).
    # Templates see them for steps that do not run (`steps.sync.release_name`); a step that does
    # run (a source, as `recorded_artifact`) gives its own outputs over them.
    recorded: Mapping[tuple[str, str | None], Mapping[str, Any]] | None = None
    # `--shard`: this part of a sharded run, and the hosts it works on (engine/execute/sharded.py)
    shard: Shard | None = None
    only_hosts: frozenset[str] | None = None
    # `--state s3://bucket/prefix`: locks, history and journal in a shared backend ("" = local)
    state: str = ""
    # one failure budget across shards (engine/record/state/budget.py); None: this run's own
    budget: Any = None


def resolve_fleets(
    playbook: Playbook, inventory: Inventory, limit: str | None, only: frozenset[str] | None = None
) -> dict[str, list[str]]:
    """Host names per fleet after `--limit` (and within `only`, a shard's hosts)."""
    allowed: set[str] | None = None
    if limit:
        allowed = set(select_hosts(inventory, limit, what="--limit"))
    result: dict[str, list[str]] = {}
    for name, fleet in playbook.fleets.items():
        try:
            hosts = select_hosts(inventory, fleet.hosts, what=f"fleets.{name}.hosts")
        except PlaybookError as exc:
            raise type(exc)(exc.message, location=fleet.location, path=exc.path) from None
        result[name] = [h for h in hosts if (allowed is None or h in allowed) and (only is None or h in only)]
    return result


def check_release_id(value: str) -> None:
    """A release id names a directory (`releases/<id>`) and a record: a plain name of letters,
    digits, `.`, `_`, `+` and `-`, starting with a letter or digit, without `..`."""
    if not _RELEASE_ID.fullmatch(value) or ".." in value:
        raise ValidationError(
            "must be a plain name: letters, digits, '.', '_', '+' and '-', starting with a letter or digit, "
            f"no '..', at most 128 characters (got {value!r})",
            path="--release-id",
        )
