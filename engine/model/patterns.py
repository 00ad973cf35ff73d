"""Host patterns, shared by fleets' `hosts:` and the CLI's `--limit`.

A pattern is terms separated by `,` or `:`. A term is a host name, a group name, a glob over
host and group names (`web*`, `db-?`), `all` / `*`, or `~regex`. Plain terms are united;
terms prefixed with `&` intersect that union; terms prefixed with `!` are removed last. So
`web:&canary:!web07` means "hosts in web that are also in canary, except web07", whatever the
order of the terms. The result keeps inventory order. A term that matches nothing is an error
(a typo in `--limit` must not silently deploy nowhere, or everywhere).
"""

from __future__ import annotations

import fnmatch
import re
from collections.abc import Iterable

from engine.errors import ValidationError, suggest
from engine.model.config import Inventory

__all__ = ["select_hosts", "group_members"]


def group_members(inventory: Inventory, group: str) -> list[str]:
    """Every host in a group, its children included, in inventory order."""
    return list(inventory.members.get(group, ()))


def _split(pattern: str) -> list[str]:
    terms = [t.strip() for t in re.split(r"[,:]", pattern)]
    return [t for t in terms if t]


def _match_term(inventory: Inventory, term: str) -> list[str]:
    if term in ("all", "*"):
        return list(inventory.hosts)
    if term.startswith("~"):
        try:
            rx = re.compile(term[1:])
        except re.error as exc:
            raise ValidationError(f"bad regex in host pattern '{term}': {exc}") from None
        hosts = {h for h in inventory.hosts if rx.search(h)}
        for g in inventory.groups:
            if rx.search(g):
                hosts.update(group_members(inventory, g))
        return [h for h in inventory.hosts if h in hosts]
    if term in inventory.hosts:
        return [term]
    if term in inventory.groups:
        return group_members(inventory, term)
    if any(c in term for c in "*?["):
        hosts = {h for h in inventory.hosts if fnmatch.fnmatchcase(h, term)}
        for g in inventory.groups:
            if fnmatch.fnmatchcase(g, term):
                hosts.update(group_members(inventory, g))
        return [h for h in inventory.hosts if h in hosts]
    raise ValidationError(
        f"host pattern term '{term}' matches no host or group"
        + suggest(term, list(inventory.hosts) + list(inventory.groups) + ["all"])
    )


def select_hosts(inventory: Inventory, pattern: str | Iterable[str], *, what: str = "pattern") -> list[str]:
    """Resolve a host pattern (or a list of them, united) to host names in inventory order."""
    if not isinstance(pattern, str):
        pattern = ",".join(pattern)
    union: set[str] = set()
    intersections: list[set[str]] = []
    excluded: set[str] = set()
    plain_seen = False
    try:
        for term in _split(pattern):
            if term.startswith("!"):
                excluded.update(_match_term(inventory, term[1:]))
            elif term.startswith("&"):
                intersections.append(set(_match_term(inventory, term[1:])))
            else:
                plain_seen = True
                union.update(_match_term(inventory, term))
    except ValidationError as exc:
        raise ValidationError(exc.message, path=what) from None
    if not plain_seen:
        union = set(inventory.hosts)
    for inter in intersections:
        union &= inter
    union -= excluded
    return [h for h in inventory.hosts if h in union]
