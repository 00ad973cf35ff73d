"""A host's groups (parents first) and a group's hosts (children included), worked out once per
inventory: what group vars' precedence and the `groups` template variable read."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from engine.model.config import Group, Host, Inventory
from engine.model.hostvars import host_groups, merged_vars
from engine.model.patterns import group_members


def _inventory() -> Inventory:
    hosts = {h: Host(h, vars={"who": h}) for h in ("web1", "web2", "canary1", "db1", "lone")}
    groups = {
        "all": Group("all", hosts=tuple(hosts)),
        "edge": Group("edge", children=("web",), vars={"who": "edge", "tier": "edge"}),
        "web": Group("web", hosts=("web1", "web2"), children=("canary",), vars={"tier": "web"}),
        "canary": Group("canary", hosts=("canary1",), vars={"tier": "canary"}),
        "db": Group("db", hosts=("db1", "canary1"), vars={"tier": "db"}),
    }
    return Inventory("inv.yml", hosts, groups)


def test_a_hosts_groups_come_through_children_parents_first_then_by_name():
    inv = _inventory()
    assert host_groups(inv, "canary1") == ["all", "db", "edge", "web", "canary"]
    assert host_groups(inv, "web1") == ["all", "edge", "web"]
    assert host_groups(inv, "lone") == ["all"]
    assert host_groups(inv, "nowhere") == []
    # the deepest group wins; at one depth the later name
    values, origin = merged_vars(inv, "canary1")
    assert values["tier"] == "canary" and origin["tier"] == "group canary"
    assert values["who"] == "canary1" and origin["who"] == "host canary1"


def test_a_groups_hosts_include_its_childrens_in_inventory_order():
    inv = _inventory()
    assert group_members(inv, "edge") == ["web1", "web2", "canary1"]
    assert group_members(inv, "db") == ["canary1", "db1"]
    assert group_members(inv, "all") == ["web1", "web2", "canary1", "db1", "lone"]
    assert group_members(inv, "missing") == []


def test_a_chain_of_3000_groups_validates(tmp_path: Path):
    # each level used to be one recursive call: the CLI said "internal error: RecursionError"
    n = 3000
    lines = ["defaults: {connection: local}", "hosts:", "  h1: {}", "groups:"]
    for i in range(n):
        lines += [f"  g{i}:", f"    children: [g{i + 1}]" if i < n - 1 else "    hosts: [h1]"]
    (tmp_path / "inv.yml").write_text("\n".join(lines) + "\n")
    (tmp_path / "p.yml").write_text(
        "name: deep\ninventory: inv.yml\nfleets: {top: {hosts: g0}}\n"
        "steps:\n  - {id: c, module: command, fleet: top, args: {argv: [echo, '{{ groups.g0 | length }}']}}\n"
    )
    proc = subprocess.run(
        [sys.executable, "-m", "engine.cli", "validate", "p.yml"], cwd=tmp_path, capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr
    assert "ok p.yml" in proc.stdout + proc.stderr
