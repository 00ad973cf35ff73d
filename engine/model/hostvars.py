"""The effective vars of a host, with where each came from.

Precedence, lowest to highest (documented in docs/templating.md):

1. playbook `vars:` (defaults shipped with the playbook)
2. inventory `vars:` (the implicit group `all`)
3. group vars: parent groups before their children; groups at the same depth by name
4. host vars
5. `-e` extra vars on the command line

Vars may reference other vars (`app_dir: "/srv/{{ app }}"`); they are resolved per host.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from engine.model.config import Inventory

__all__ = ["host_groups", "merged_vars"]


def host_groups(inventory: Inventory, host: str) -> list[str]:
    """Every group the host belongs to, directly or through children, parents first."""
    return list(inventory.memberships.get(host, ()))


def merged_vars(
    inventory: Inventory,
    host: str,
    *,
    playbook_vars: Mapping[str, Any] | None = None,
    extra_vars: Mapping[str, Any] | None = None,
) -> tuple[dict[str, Any], dict[str, str]]:
    """The host's raw (unrendered) vars after precedence, and for each the layer it came from."""
    merged: dict[str, Any] = {}
    origin: dict[str, str] = {}

    def layer(values: Mapping[str, Any] | None, name: str) -> None:
        for k, v in (values or {}).items():
            merged[k] = v
            origin[k] = name

    layer(playbook_vars, "playbook vars")
    layer(inventory.vars, "group all")
    for g in host_groups(inventory, host):
        layer(inventory.groups[g].vars, f"group {g}")
    layer(inventory.hosts[host].vars, f"host {host}")
    layer(extra_vars, "extra vars (-e)")
    return merged, origin
