"""Load an inventory: YAML → schema validation → groups, hosts and connection settings (with
dynamic sources merged in, engine/load/ec2.py). See docs/inventory.md."""

from __future__ import annotations

import os
from typing import Any

from engine.errors import GraphError, Location, PlaybookError, ValidationError, suggest
from engine.load import validcache
from engine.load.common import find_cycle, raise_all, read_mapping
from engine.load.schema_errors import display_path, schema_errors
from engine.load.schemas import inventory_schema
from engine.model.config import Group, Host, Inventory

__all__ = ["load_inventory"]

_CONNECTION_KEYS = ("connection", "user", "port", "key", "known_hosts", "kubeconfig", "context", "namespace")


def _resolve_path(value: Any, base_dir: str) -> Any:
    if not isinstance(value, str):
        return value
    value = os.path.expanduser(value)
    return os.path.normpath(value if os.path.isabs(value) else os.path.join(base_dir, value))


def load_inventory(path: str, *, dynamic: bool = True) -> Inventory:
    """Load and validate an inventory file; see docs/inventory.md.

    Hosts named only in a group's `hosts` list are created with the defaults. `key` and
    `known_hosts` are resolved relative to the inventory's directory. `Host.groups` lists the
    groups a host is directly in, in file order.

    With `dynamic` (the default), the file's `dynamic:` sources (AWS EC2) are queried once per
    process and their hosts and groups merged in (engine/load/ec2.py); without it only the
    file is read, and groups that a source may create are empty placeholders.
    """
    path = str(path)
    doc = read_mapping(path, "inventory")
    data: dict[str, Any] = doc.data
    schema = inventory_schema()
    marker = validcache.key("inventory", schema, data)
    validated = validcache.known(marker)
    errors: list[PlaybookError] = [] if validated else schema_errors(schema, data, doc)
    base_dir = os.path.dirname(os.path.abspath(path))

    defaults = dict(data["defaults"]) if isinstance(data.get("defaults"), dict) else {}
    for k in ("key", "known_hosts", "kubeconfig"):
        if k in defaults:
            defaults[k] = _resolve_path(defaults[k], base_dir)

    raw_hosts: dict[Any, Any] = data["hosts"] if isinstance(data.get("hosts"), dict) else {}
    raw_groups: dict[Any, Any] = data["groups"] if isinstance(data.get("groups"), dict) else {}
    specs: dict[str, tuple[dict[str, Any], Location | None]] = {}
    for name, spec in raw_hosts.items():
        specs[str(name)] = (spec if isinstance(spec, dict) else {}, doc.key_where(("hosts", name)))

    groups: dict[str, Group] = {}
    member_of: dict[str, list[str]] = {}
    group_names = [str(g) for g in raw_groups]
    sources: list[tuple[str, dict[str, Any], tuple]] = []
    if isinstance(data.get("dynamic"), list):
        from engine.load.ec2 import dynamic_group_matcher, dynamic_sources

        sources = dynamic_sources(data["dynamic"])
    from_source = dynamic_group_matcher(sources) if sources else (lambda _name: False)
    placeholders: list[str] = []
    for gname, gspec in raw_groups.items():
        gname = str(gname)
        gspec = gspec if isinstance(gspec, dict) else {}
        members = (
            [h for h in gspec.get("hosts") or [] if isinstance(h, str)] if isinstance(gspec.get("hosts"), list) else []
        )
        children = (
            [c for c in gspec.get("children") or [] if isinstance(c, str)]
            if isinstance(gspec.get("children"), list)
            else []
        )
        for j, h in enumerate(members):
            if h not in specs:
                specs[h] = ({}, doc.where(("groups", gname, "hosts", j)))
            member_of.setdefault(h, [])
            if gname not in member_of[h]:
                member_of[h].append(gname)
        for j, child in enumerate(children):
            if child not in raw_groups and child != "all" and from_source(child):
                placeholders.append(child)  # filled by its dynamic source
            elif child not in raw_groups:
                hint = suggest(child, group_names)
                if child == "all":
                    msg = "'all' holds every host; it cannot be a child group"
                else:
                    msg = f"unknown group '{child}' in children{hint}"
                errors.append(
                    ValidationError(
                        msg,
                        location=doc.where(("groups", gname, "children", j)),
                        path=display_path(("groups", gname, "children", j)),
                    )
                )
        gvars = gspec.get("vars")
        groups[gname] = Group(
            name=gname,
            hosts=tuple(dict.fromkeys(members)),
            children=tuple(c for c in dict.fromkeys(children) if c in raw_groups or c in placeholders),
            vars=dict(gvars) if isinstance(gvars, dict) else {},
            location=doc.key_where(("groups", gname)),
        )

    for name in dict.fromkeys(placeholders):
        groups[name] = Group(name=name)

    cycle = find_cycle({g.name: g.children for g in groups.values()})
    if cycle:
        start = min(range(len(cycle)), key=lambda i: group_names.index(cycle[i]))
        cycle = cycle[start:] + cycle[:start]
        errors.append(
            GraphError(
                f"groups contain each other in a cycle: {' -> '.join(cycle + [cycle[0]])}",
                location=doc.key_where(("groups", cycle[0])),
                path=display_path(("groups", cycle[0])),
            )
        )

    raise_all(errors)
    if not validated:
        validcache.remember(marker)

    hosts: dict[str, Host] = {}
    for name, (spec, location) in specs.items():
        settings = {k: spec.get(k, defaults.get(k)) for k in _CONNECTION_KEYS}
        hvars = spec.get("vars")
        hosts[name] = Host(
            name=name,
            connection=settings["connection"] or "ssh",
            address=spec.get("address"),
            port=settings["port"] if settings["port"] is not None else 22,
            user=settings["user"],
            key=_resolve_path(settings["key"], base_dir) if "key" in spec else settings["key"],
            known_hosts=_resolve_path(settings["known_hosts"], base_dir)
            if "known_hosts" in spec
            else settings["known_hosts"],
            kubeconfig=_resolve_path(settings["kubeconfig"], base_dir)
            if "kubeconfig" in spec
            else settings["kubeconfig"],
            context=settings["context"],
            namespace=settings["namespace"],
            vars=dict(hvars) if isinstance(hvars, dict) else {},
            groups=tuple(member_of.get(name, ())),
            location=location,
        )
    all_vars = data.get("vars")
    inventory = Inventory(
        path=path,
        hosts=hosts,
        groups=groups,
        vars=dict(all_vars) if isinstance(all_vars, dict) else {},
        defaults=defaults,
        notify=tuple(dict(n) for n in data["notify"] if isinstance(n, dict))
        if isinstance(data.get("notify"), list)
        else (),
        state=str(data.get("state") or ""),
    )
    if dynamic and sources:
        from engine.load.ec2 import merge_dynamic

        return merge_dynamic(inventory, sources, doc=doc, explicit_hosts=raw_hosts)
    return inventory
