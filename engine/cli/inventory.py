"""`playbook inventory …`: read and edit an inventory from the shell or from scripts.

`register(subparsers)` adds the `inventory` command to the main parser; `run(ns)` executes it
and returns the exit code (0 ok, 1 error: user errors are raised as `PlaybookError`s and the
main CLI prints them). Edits go through `engine.load.inventory_edit` and keep the file's comments
and layout; see docs/inventory-cli.md.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from typing import Any, TextIO

from engine.errors import PlaybookError
from engine.model.config import Inventory

__all__ = ["register", "run"]

_READ_COMMANDS = ("list", "show", "graph", "validate")


def _common(p: argparse.ArgumentParser, dest: str = "inventory_file") -> None:
    # the subcommand's own -i has its own dest: argparse would let its default (None) overwrite
    # a value given before the subcommand (`playbook inventory -i inv.yml list`)
    p.add_argument(
        "-i",
        "--inventory",
        dest=dest,
        metavar="FILE",
        default=None,
        help="inventory YAML (default: $PLAYBOOK_INVENTORY)",
    )


def _edit_flags(p: argparse.ArgumentParser) -> None:
    _common(p)
    p.add_argument("--dry-run", action="store_true", help="print the diff, change nothing")
    p.add_argument("--diff", action="store_true", help="print the diff of the change")


def _target(p: argparse.ArgumentParser) -> None:
    t = p.add_mutually_exclusive_group(required=True)
    t.add_argument("--host", help="a host's vars")
    t.add_argument("--group", help="a group's vars")
    t.add_argument("--all", action="store_true", help="the top-level vars (group `all`)")


def register(subparsers: Any) -> argparse.ArgumentParser:
    """Add `inventory` and its subcommands to the main CLI's subparsers."""
    inv = subparsers.add_parser(
        "inventory",
        help="list, show, graph, validate and edit an inventory",
        description="Read and edit an inventory; edits keep comments and layout.",
    )
    _common(inv, dest="inventory_file_top")
    sub = inv.add_subparsers(dest="inventory_command", metavar="SUBCOMMAND")

    p = sub.add_parser("list", help="hosts with their address and groups")
    p.add_argument("pattern", nargs="?", default="all", help="host pattern (docs/patterns.md), default all")
    p.add_argument("--format", choices=["text", "json"], default="text")
    p.add_argument("--no-dynamic", action="store_true", help="do not query dynamic sources")
    _common(p)

    p = sub.add_parser("show", help="a host's connection settings and effective vars with their origin")
    p.add_argument("host")
    p.add_argument("--format", choices=["text", "json"], default="text")
    p.add_argument("--no-dynamic", action="store_true", help="do not query dynamic sources")
    _common(p)

    p = sub.add_parser("graph", help="groups, their children and hosts as a tree")
    p.add_argument("--format", choices=["text", "json"], default="text")
    p.add_argument("--no-dynamic", action="store_true", help="do not query dynamic sources")
    _common(p)

    p = sub.add_parser("validate", help="check the inventory (and query its dynamic sources)")
    p.add_argument("--no-dynamic", action="store_true", help="check the file only")
    _common(p)

    p = sub.add_parser("add-host", help="add a host (to groups)")
    p.add_argument("name")
    p.add_argument("-g", "--group", action="append", default=[], help="group to add it to; repeatable")
    p.add_argument("--var", action="append", default=[], metavar="K=V", help="host var; repeatable")
    p.add_argument("--address")
    p.add_argument("--port", type=int)
    _edit_flags(p)

    p = sub.add_parser("remove-host", help="remove a host and its mentions in groups")
    p.add_argument("name")
    _edit_flags(p)

    p = sub.add_parser("set-var", help="set vars on a host, a group or all")
    _target(p)
    p.add_argument("assignments", nargs="+", metavar="K=V")
    _edit_flags(p)

    p = sub.add_parser("unset-var", help="remove vars from a host, a group or all")
    _target(p)
    p.add_argument("names", nargs="+", metavar="K")
    _edit_flags(p)

    p = sub.add_parser("add-group", help="add a group")
    p.add_argument("name")
    p.add_argument("--child", action="append", default=[], help="child group; repeatable")
    p.add_argument("--parent", action="append", default=[], help="make it a child of this group; repeatable")
    p.add_argument("--host", dest="members", action="append", default=[], help="member host; repeatable")
    p.add_argument("--var", action="append", default=[], metavar="K=V", help="group var; repeatable")
    _edit_flags(p)
    return inv


def _inventory_path(ns: argparse.Namespace) -> str:
    path = (
        getattr(ns, "inventory_file", None)
        or getattr(ns, "inventory_file_top", None)
        or os.environ.get("PLAYBOOK_INVENTORY")
    )
    if not path:
        raise PlaybookError("no inventory: pass -i FILE or set $PLAYBOOK_INVENTORY")
    return path


def run(ns: argparse.Namespace, out: TextIO | None = None) -> int:
    """Execute `playbook inventory <subcommand>`; returns the exit code."""
    out = out or sys.stdout
    command = getattr(ns, "inventory_command", None)
    if not command:
        raise PlaybookError(
            "missing subcommand: list, show, graph, validate, add-host, remove-host, "
            "set-var, unset-var or add-group (see `playbook inventory -h`)"
        )
    path = _inventory_path(ns)
    if command in _READ_COMMANDS:
        from engine.load.inventory import load_inventory

        inventory = load_inventory(path, dynamic=not ns.no_dynamic)
        return {"list": _list, "show": _show, "graph": _graph, "validate": _validate}[command](ns, inventory, out)
    return _edit(ns, path, out)


# --- reading ---------------------------------------------------------------------------------


def _list(ns: argparse.Namespace, inventory: Inventory, out: TextIO) -> int:
    from engine.model.patterns import select_hosts

    names = select_hosts(inventory, ns.pattern)
    rows: list[dict[str, Any]] = []
    for name in names:
        h = inventory.hosts[name]
        rows.append(
            {
                "name": name,
                "address": h.hostname,
                "port": h.port,
                "connection": h.connection,
                "groups": list(_direct_groups(inventory, name)),
            }
        )
    if ns.format == "json":
        out.write(json.dumps(rows, indent=2) + "\n")
        return 0
    table = [("HOST", "ADDRESS", "GROUPS")] + [
        (r["name"], _address_text(inventory, r["name"]), ", ".join(r["groups"]) or "-") for r in rows
    ]
    out.write(_columns(table))
    return 0


def _direct_groups(inventory: Inventory, host: str) -> list[str]:
    return [g.name for g in inventory.groups.values() if host in g.hosts]


def _address_text(inventory: Inventory, name: str) -> str:
    h = inventory.hosts[name]
    if h.connection == "local":
        return "local"
    if h.connection == "kubernetes":
        return f"k8s:{h.context or '(current)'}/{h.namespace or '(default)'}"
    return h.hostname if h.port == 22 else f"{h.hostname}:{h.port}"


def _columns(rows: Sequence[tuple[str, ...]]) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    return "".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() + "\n" for r in rows)


def _show(ns: argparse.Namespace, inventory: Inventory, out: TextIO) -> int:
    from engine.errors import ValidationError, suggest
    from engine.model.hostvars import host_groups, merged_vars
    from engine.secrets import SCRUBBER

    if ns.host not in inventory.hosts:
        raise ValidationError(f"unknown host '{ns.host}'{suggest(ns.host, list(inventory.hosts))}")
    h = inventory.hosts[ns.host]
    values, origin = merged_vars(inventory, ns.host)
    keys = (
        ("connection", "address", "port", "user", "key", "known_hosts")
        if h.connection != "kubernetes"
        else ("connection", "kubeconfig", "context", "namespace")
    )
    connection = {k: getattr(h, k) for k in keys}
    if h.connection == "ssh" and not h.address:
        connection["address"] = h.hostname
    doc: dict[str, Any] = {
        "host": h.name,
        "connection": connection,
        "groups": host_groups(inventory, h.name),
        "direct_groups": _direct_groups(inventory, h.name),
        "vars": {k: {"value": v, "from": origin[k]} for k, v in values.items()},
        "defined_at": str(h.location) if h.location else None,
    }
    if ns.format == "json":
        out.write(SCRUBBER.scrub(json.dumps(doc, indent=2, default=str)) + "\n")
        return 0
    lines = [f"host {h.name}" + (f"  ({doc['defined_at']})" if doc["defined_at"] else ""), "connection:"]
    lines += [f"  {k}: {'-' if v is None else v}" for k, v in connection.items()]
    lines.append(f"groups: {', '.join(doc['groups']) or '-'}")
    lines.append("vars:" if values else "vars: none")
    shown = {k: json.dumps(v, default=str, ensure_ascii=False) for k, v in values.items()}
    width = max((len(k) + len(v) for k, v in shown.items()), default=0) + 4
    for k, text in shown.items():
        left = f"  {k}: {text}"
        lines.append(f"{left.ljust(width)}  # {origin[k]}")
    out.write(SCRUBBER.scrub("\n".join(lines)) + "\n")
    return 0


def _roots(inventory: Inventory) -> list[str]:
    children = {c for g in inventory.groups.values() for c in g.children}
    return [g for g in inventory.groups if g not in children]


def _graph(ns: argparse.Namespace, inventory: Inventory, out: TextIO) -> int:
    grouped = {h for g in inventory.groups.values() for h in g.hosts}
    ungrouped = [h for h in inventory.hosts if h not in grouped]
    if ns.format == "json":
        doc = {
            "all": {"children": _roots(inventory) + (["ungrouped"] if ungrouped else []), "vars": dict(inventory.vars)},
            **{g.name: {"hosts": list(g.hosts), "children": list(g.children)} for g in inventory.groups.values()},
        }
        if ungrouped:
            doc["ungrouped"] = {"hosts": ungrouped, "children": []}
        out.write(json.dumps(doc, indent=2, default=str) + "\n")
        return 0
    lines = ["@all:"]

    def walk(group: str, depth: int, seen: tuple[str, ...]) -> None:
        pad = "  |" * depth
        lines.append(f"{pad}--@{group}:")
        if group in seen:
            return
        g = inventory.groups[group]
        for child in g.children:
            walk(child, depth + 1, seen + (group,))
        for h in g.hosts:
            lines.append(f"{pad}  |--{h}")

    for root in _roots(inventory):
        walk(root, 1, ())
    if ungrouped:
        lines.append("  |--@ungrouped:")
        lines += [f"  |  |--{h}" for h in ungrouped]
    out.write("\n".join(lines) + "\n")
    return 0


def _validate(ns: argparse.Namespace, inventory: Inventory, out: TextIO) -> int:
    out.write(f"ok {inventory.path}: {len(inventory.hosts)} hosts, {len(inventory.groups)} groups\n")
    return 0


# --- editing ---------------------------------------------------------------------------------


def _edit(ns: argparse.Namespace, path: str, out: TextIO) -> int:
    from engine.load import inventory_edit as ie

    command = ns.inventory_command
    if command == "add-host":
        values = dict(ie.parse_assignment(a) for a in ns.var)
        edit = lambda e: e.add_host(ns.name, groups=ns.group, address=ns.address, port=ns.port, vars=values)  # noqa: E731
    elif command == "remove-host":
        edit = lambda e: e.remove_host(ns.name)  # noqa: E731
    elif command == "set-var":
        values = dict(ie.parse_assignment(a) for a in ns.assignments)
        target = _target_of(ns)
        edit = lambda e: e.set_vars(target, values)  # noqa: E731
    elif command == "unset-var":
        target = _target_of(ns)
        edit = lambda e: e.unset_vars(target, ns.names)  # noqa: E731
    elif command == "add-group":
        values = dict(ie.parse_assignment(a) for a in ns.var)
        edit = lambda e: e.add_group(ns.name, children=ns.child, parents=ns.parent, hosts=ns.members, vars=values)  # noqa: E731
    else:  # pragma: no cover - argparse only lets the commands above through
        raise PlaybookError(f"unknown inventory subcommand '{command}'")
    result = ie.edit_inventory(path, edit, dry_run=ns.dry_run)
    if ns.dry_run or ns.diff:
        out.write(result.diff)
    if result.reformatted:
        sys.stderr.write(
            f"note: {path}: its layout could not be kept line for line; it was re-indented (comments and order kept)\n"
        )
    if not ns.dry_run and not ns.diff:
        out.write(f"{'changed' if result.changed else 'unchanged'} {path}\n")
    return 0


def _target_of(ns: argparse.Namespace) -> Any:
    from engine.load.inventory_edit import Target

    if ns.all:
        return Target("all")
    if ns.host:
        return Target("host", ns.host)
    return Target("group", ns.group)
