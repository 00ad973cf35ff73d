"""A selection of zero hosts is an error: a `--limit`, or a fleet's `hosts:` pattern, that
selects no host would make a plan or run "succeed on 0 hosts", which a CI job reads as
deployed. Each error names the pattern and the nearest host and group names.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping

from engine.errors import PlaybookError, ValidationError
from engine.model.config import CONTROLLER, Inventory, Playbook
from engine.model.patterns import select_hosts

__all__ = ["empty_selections"]


def _nearest(inventory: Inventory, pattern: str, among: list[str] | None = None) -> str:
    """`; nearest names: a, b` (or the first names the inventory has)."""
    term = pattern.strip()
    if term in inventory.groups and not re.search(r"[,:]", term):
        return f" (group '{term}' has no hosts)"
    names = among if among is not None else list(inventory.hosts) + [g for g in inventory.groups if g != "all"]
    close: list[str] = []
    for term in re.split(r"[,:]", pattern):
        word = re.sub(r"[!&~*?\[\]^$.\\]", "", term.strip())
        if word:
            close += [n for n in difflib.get_close_matches(word, names, n=3, cutoff=0.5) if n != term.strip()]
    shown = list(dict.fromkeys(close))[:3] or names[:5]
    if not shown:
        return "; the inventory has no hosts"
    return "; nearest names: " + ", ".join(shown)


def empty_selections(
    playbook: Playbook, inventory: Inventory, limit: str | None, fleet_hosts: Mapping[str, list[str]]
) -> list[PlaybookError]:
    """Errors for each fleet a step runs on whose pattern selects no host, and for a `--limit`
    that selects none of the hosts those fleets cover. `fleet_hosts` is after `--limit`."""
    used = list(dict.fromkeys(s.fleet for s in playbook.steps if s.fleet != CONTROLLER))
    errors: list[PlaybookError] = []
    covered: list[str] = []
    for name in used:
        fleet = playbook.fleets.get(name)
        if fleet is None:
            continue
        hosts = select_hosts(inventory, fleet.hosts, what=f"fleets.{name}.hosts")
        if not hosts:
            errors.append(
                ValidationError(
                    f"'{fleet.hosts}' selects no host" + _nearest(inventory, fleet.hosts),
                    location=fleet.location,
                    path=f"fleets.{name}.hosts",
                )
            )
        covered += [h for h in hosts if h not in covered]
    if limit and not errors:
        selected = select_hosts(inventory, limit, what="--limit")
        if not selected:
            errors.append(ValidationError(f"--limit '{limit}' selects no host" + _nearest(inventory, limit)))
        elif used and not any(fleet_hosts.get(n) for n in used):
            errors.append(
                ValidationError(
                    f"--limit '{limit}' selects none of the hosts the playbook's fleets cover"
                    + _nearest(inventory, limit, covered)
                )
            )
    return errors
