"""Edits of an inventory file for ops (`playbook inventory …`): add or remove hosts and groups,
set or unset vars, keeping every comment and every line the edit does not touch (the text merge
is engine/yamlio/roundtrip.py).

The edited text is then loaded by the real loader from a temporary file next to the inventory;
an edit that would make the inventory invalid is refused and the file is left untouched.
Otherwise the temporary file replaces the inventory atomically (`os.replace`), keeping its mode.

Over 400 lines as one idea: the edit vocabulary (hosts, groups, vars) over one round-trip document,
with its checks.
"""

from __future__ import annotations

import difflib
import io
import os
import re
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import yaml
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq

from engine.errors import InventoryEditError, LoadError, PlaybookError, ValidationError, suggest
from engine.load.schemas import HOST_NAME, IDENTIFIER, PATTERN_TEXT
from engine.yamlio.bounds import read_bounded
from engine.yamlio.roundtrip import detect_indent, flow_style, majority_flow, merge_edit, new_map, new_seq, to_node

__all__ = [
    "InventoryEditError",
    "Target",
    "EditResult",
    "InventoryEditor",
    "parse_value",
    "parse_assignment",
    "edit_inventory",
    "add_host",
    "remove_host",
    "set_vars",
    "unset_vars",
    "add_group",
]

_TOP_ORDER = ("defaults", "vars", "hosts", "groups", "dynamic")


@dataclass(frozen=True)
class Target:
    """Where vars are set: a host, a group, or `all` (the top-level `vars:`)."""

    kind: str  # "host" | "group" | "all"
    name: str = ""

    def __str__(self) -> str:
        return "all" if self.kind == "all" else f"{self.kind} '{self.name}'"


@dataclass(frozen=True)
class EditResult:
    """What an edit did: the file, whether it changed, the unified diff, and whether the file's
    layout could not be kept (then it was re-dumped whole, comments and order still kept)."""

    path: str
    changed: bool
    diff: str
    reformatted: bool = False


# --- values from the command line ------------------------------------------------------------


def parse_value(text: str, *, what: str = "value") -> Any:
    """A command-line value as YAML under playbook's strict rules: `8080` is an int, `true` a
    bool, `""` or `''` quote a string, `[a, b]` / `{k: v}` are flow collections, and `yes`,
    `0755` or `1.10` are refused as ambiguous."""
    from engine.yamlio.document import load_text, resolve_scalar

    if text[:1] in ("'", '"', "[", "{"):
        try:
            return load_text(text, what).data
        except PlaybookError as exc:
            raise ValidationError(f"cannot read {what} {text!r}: {getattr(exc, 'message', exc)}") from None
    try:
        return resolve_scalar(text)
    except Exception as exc:  # yamlload's ambiguity error is private; its message is the point
        raise ValidationError(f"{what}: {exc}") from None


def parse_assignment(text: str) -> tuple[str, Any]:
    """`key=value` → (key, parsed value); the key must be a var name."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep:
        raise ValidationError(f"expected key=value (got {text!r})")
    _check_var_name(key)
    return key, parse_value(raw, what=f"value of '{key}'")


def _check_var_name(name: str) -> None:
    if not re.fullmatch(IDENTIFIER, name):
        raise InventoryEditError(f"'{name}' is not a valid var name: use {PATTERN_TEXT[IDENTIFIER]}")


def _check_name(name: str, what: str) -> None:
    if not re.fullmatch(HOST_NAME, name):
        raise InventoryEditError(f"'{name}' is not a valid {what} name: use {PATTERN_TEXT[HOST_NAME]}")


class InventoryEditor:
    """An inventory file loaded for round-trip editing. Make edits with the methods, then
    `result()` gives the new text (or `save()` validates and writes it)."""

    def __init__(self, path: str) -> None:
        self.path = str(path)
        self.real_path = os.path.realpath(self.path)
        self.raw = read_bounded(self.real_path)
        try:
            text = self.raw.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise LoadError(f"file is not UTF-8 (byte {exc.start})", path=self.path) from None
        self.bom = text.startswith("\ufeff")
        text = text.lstrip("\ufeff")
        self.newline = "\r\n" if "\r\n" in text else "\n"
        self.text = text.replace("\r\n", "\n")
        from engine.load.inventory import load_inventory

        self.before_inventory = load_inventory(self.path, dynamic=False)  # refuse to edit a broken file
        self.yaml = YAML(typ="rt")
        self.yaml.preserve_quotes = True
        self.yaml.width = 1 << 30
        mapping, sequence, offset = detect_indent(self.text)
        self.yaml.indent(mapping=mapping, sequence=sequence, offset=offset)
        if re.search(r"(?m)^---(\s|$)", self.text):
            self.yaml.explicit_start = True
        self.data = self.yaml.load(self.text)
        if self.data is None:
            self.data = CommentedMap()
        self.before_dump = self._dump()
        self.changes: list[str] = []

    # -- helpers --

    def _dump(self) -> str:
        buf = io.StringIO()
        self.yaml.dump(self.data, buf)
        return buf.getvalue()

    def _top(self, key: str, make: Callable[[], Any]) -> Any:
        value = self.data.get(key)
        if value is None:
            value = make()
            if key in self.data:
                self.data[key] = value
            else:
                pos = len(self.data)
                rank = _TOP_ORDER.index(key) if key in _TOP_ORDER else len(_TOP_ORDER)
                for i, k in enumerate(self.data):
                    if k in _TOP_ORDER and _TOP_ORDER.index(k) > rank:
                        pos = i
                        break
                self.data.insert(pos, key, value)
        return value

    def _hosts(self) -> CommentedMap:
        return self._top("hosts", lambda: new_map(False))

    def _groups(self) -> CommentedMap:
        return self._top("groups", lambda: new_map(False))

    def _static_hosts(self) -> list[str]:
        return list(self.before_inventory.hosts)

    def _group_names(self) -> list[str]:
        groups = self.data.get("groups")
        return [str(g) for g in groups] if isinstance(groups, dict) else []

    def _require_group(self, name: str) -> None:
        # a group a dynamic source may create counts: the loader keeps a placeholder for it
        if name not in self._group_names() and name not in self.before_inventory.groups:
            raise InventoryEditError(
                f"unknown group '{name}'{suggest(name, self._group_names())}; "
                "create it first with `playbook inventory add-group`"
            )

    def _host_entry(self, name: str) -> CommentedMap:
        """The host's mapping under `hosts:`, created (in the siblings' style) when the host is
        only named in a group or written as `name:`."""
        hosts = self._hosts()
        entry = hosts.get(name)
        if isinstance(entry, CommentedMap):
            return entry
        flow = majority_flow(hosts.values(), default=False)
        entry = new_map(flow)
        hosts[name] = entry
        return entry

    def _group_entry(self, name: str) -> CommentedMap:
        groups = self._groups()
        entry = groups.get(name)
        if isinstance(entry, CommentedMap):
            return entry
        entry = new_map(majority_flow(groups.values(), default=False))
        groups[name] = entry
        return entry

    def _list_in(self, entry: CommentedMap, key: str, siblings: Iterable[Any]) -> CommentedSeq:
        seq = entry.get(key)
        if isinstance(seq, CommentedSeq):
            return seq
        flow = (
            True
            if flow_style(entry)
            else majority_flow((s.get(key) for s in siblings if isinstance(s, CommentedMap)), default=True)
        )
        seq = new_seq(flow)
        entry[key] = seq
        return seq

    def _vars_of(self, target: Target, create: bool) -> CommentedMap | None:
        if target.kind == "all":
            if not create:
                v = self.data.get("vars")
                return v if isinstance(v, CommentedMap) else None
            return self._top("vars", lambda: new_map(False))
        if target.kind == "host":
            if target.name not in self._static_hosts():
                raise InventoryEditError(f"unknown host '{target.name}'{suggest(target.name, self._static_hosts())}")
            if not create:
                entry = (self.data.get("hosts") or {}).get(target.name)
            else:
                entry = self._host_entry(target.name)
            siblings = list((self.data.get("hosts") or {}).values())
        else:
            self._require_group(target.name)
            entry = self._group_entry(target.name) if create else (self.data.get("groups") or {}).get(target.name)
            siblings = list(self._groups().values()) if create else []
        if not isinstance(entry, CommentedMap):
            return None
        v = entry.get("vars")
        if isinstance(v, CommentedMap) or not create:
            return v if isinstance(v, CommentedMap) else None
        flow = (
            True
            if flow_style(entry)
            else majority_flow((s.get("vars") for s in siblings if isinstance(s, CommentedMap)), default=False)
        )
        v = new_map(flow)
        entry["vars"] = v
        return v

    # -- edits --

    def add_host(
        self,
        name: str,
        *,
        groups: Sequence[str] = (),
        address: str | None = None,
        port: int | None = None,
        vars: Mapping[str, Any] | None = None,
    ) -> None:
        """Add a host under `hosts:` and append it to each group's `hosts` list."""
        _check_name(name, "host")
        if name in self._static_hosts():
            where = self.before_inventory.hosts[name].location
            raise InventoryEditError(f"host '{name}' already exists" + (f" (at {where})" if where else ""))
        groups = [g for g in dict.fromkeys(groups) if g != "all"]
        for g in groups:
            self._require_group(g)
        for k in vars or {}:
            _check_var_name(k)
        if port is not None and not (isinstance(port, int) and 1 <= port <= 65535):
            raise InventoryEditError(f"'port' must be integer from 1 to 65535 (got {port!r})")
        hosts = self._hosts()
        settings: dict[str, Any] = {}
        if address:
            settings["address"] = address
        if port is not None:
            settings["port"] = port
        if vars:
            settings["vars"] = dict(vars)
        if settings:
            flow = majority_flow(hosts.values(), default=False)
            entry: Any = new_map(flow)
            for k, v in settings.items():
                entry[k] = to_node(v, flow=flow)
        else:
            empties = [v for v in hosts.values() if v is None or (isinstance(v, CommentedMap) and not v)]
            entry = None if empties and all(v is None for v in empties) else new_map(True)
        hosts[name] = entry
        gmap = self.data.get("groups")
        for g in groups:
            gentry = self._group_entry(g)
            self._list_in(gentry, "hosts", gmap.values()).append(name)
        self.changes.append(f"add host {name}" + (f" to {', '.join(groups)}" if groups else ""))

    def remove_host(self, name: str) -> None:
        """Remove a host's entry and every mention of it in groups' `hosts` lists."""
        if name not in self._static_hosts():
            raise InventoryEditError(f"unknown host '{name}'{suggest(name, self._static_hosts())}")
        hosts = self.data.get("hosts")
        if isinstance(hosts, CommentedMap) and name in hosts:
            del hosts[name]
        groups = self.data.get("groups")
        for gentry in (groups or {}).values():
            if isinstance(gentry, CommentedMap) and isinstance(gentry.get("hosts"), CommentedSeq):
                seq = gentry["hosts"]
                while name in seq:
                    del seq[seq.index(name)]
        self.changes.append(f"remove host {name}")

    def set_vars(self, target: Target, values: Mapping[str, Any]) -> None:
        """Set vars on a host, a group or `all`; an existing var keeps its place and comment."""
        for k in values:
            _check_var_name(k)
        vmap = self._vars_of(target, create=True)
        assert vmap is not None
        flow = bool(flow_style(vmap))
        for k, v in values.items():
            vmap[k] = to_node(v, flow=True if flow else isinstance(v, (dict, list)), like=vmap.get(k))
        self.changes.append(f"set {', '.join(values)} on {target}")

    def unset_vars(self, target: Target, names: Sequence[str]) -> None:
        """Remove vars; an emptied `vars:` goes too."""
        vmap = self._vars_of(target, create=False)
        for k in names:
            if vmap is None or k not in vmap:
                known = list(vmap or {})
                raise InventoryEditError(f"{target} has no var '{k}'{suggest(k, known)}")
        assert vmap is not None
        for k in names:
            del vmap[k]
        if not vmap:
            if target.kind == "all":
                del self.data["vars"]
            else:
                parent = self.data["hosts" if target.kind == "host" else "groups"][target.name]
                del parent["vars"]
        self.changes.append(f"unset {', '.join(names)} on {target}")

    def add_group(
        self,
        name: str,
        *,
        children: Sequence[str] = (),
        parents: Sequence[str] = (),
        hosts: Sequence[str] = (),
        vars: Mapping[str, Any] | None = None,
    ) -> None:
        """Add a group, optionally with child groups and hosts, and make it a child of `parents`."""
        _check_name(name, "group")
        if name == "all":
            raise InventoryEditError("'all' is implicit: it holds every host and cannot be defined")
        if name in self._group_names():
            raise InventoryEditError(f"group '{name}' already exists")
        for c in children:
            if c == name:
                raise InventoryEditError(f"group '{name}' cannot be its own child")
            self._require_group(c)
        for p in parents:
            self._require_group(p)
        for h in hosts:
            if h not in self._static_hosts():
                raise InventoryEditError(f"unknown host '{h}'{suggest(h, self._static_hosts())}")
        for k in vars or {}:
            _check_var_name(k)
        groups = self._groups()
        flow = majority_flow(groups.values(), default=False)
        list_flow = majority_flow(
            (g.get(k) for g in groups.values() if isinstance(g, CommentedMap) for k in ("hosts", "children")),
            default=True,
        )
        entry: Any = new_map(flow)
        if hosts:
            entry["hosts"] = new_seq(flow or list_flow, dict.fromkeys(hosts))
        if children:
            entry["children"] = new_seq(flow or list_flow, dict.fromkeys(children))
        if vars:
            entry["vars"] = new_map(flow, vars)
        if not entry:
            empties = [v for v in groups.values() if v is None or (isinstance(v, CommentedMap) and not v)]
            entry = None if empties and all(v is None for v in empties) else new_map(True)
        groups[name] = entry
        for p in dict.fromkeys(parents):
            self._list_in(self._group_entry(p), "children", groups.values()).append(name)
        self.changes.append(f"add group {name}")

    # -- output --

    def result(self) -> tuple[str, bool]:
        """The edited file's text, and whether its layout had to be re-dumped whole."""
        after = self._dump()
        merged = merge_edit(self.text, self.before_dump, after)
        reformatted = False
        if merged is None or not _same_data(merged, after):
            merged, reformatted = after, True
        text = merged.replace("\n", self.newline)
        return ("\ufeff" if self.bom else "") + text, reformatted

    def save(self, *, dry_run: bool = False) -> EditResult:
        """Validate the edited text with the real loader and, unless `dry_run`, replace the file
        atomically. An edit that would make the inventory invalid raises `InventoryEditError`."""
        text, reformatted = self.result()
        new = text.encode("utf-8")
        diff = "".join(
            difflib.unified_diff(
                self.raw.decode("utf-8").splitlines(True),
                text.splitlines(True),
                fromfile=f"a/{self.path}",
                tofile=f"b/{self.path}",
            )
        )
        changed = new != self.raw
        directory = os.path.dirname(self.real_path) or "."
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(self.real_path)}.", suffix=".tmp", dir=directory)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(new)
                fh.flush()
                os.fsync(fh.fileno())
            self._validate(tmp)
            if dry_run or not changed:
                return EditResult(self.path, changed, diff, reformatted)
            with open(self.real_path, "rb") as fh:
                if fh.read() != self.raw:
                    raise InventoryEditError(
                        f"{self.path} changed while it was being edited; nothing written, try again"
                    )
            st = os.stat(self.real_path)
            os.chmod(tmp, st.st_mode & 0o7777)
            try:
                os.chown(tmp, st.st_uid, st.st_gid)
            except OSError:
                pass  # not ours to give away: the file then belongs to whoever edits it
            os.replace(tmp, self.real_path)
            tmp = ""
            return EditResult(self.path, True, diff, reformatted)
        finally:
            if tmp and os.path.exists(tmp):
                os.unlink(tmp)

    def _validate(self, tmp: str) -> None:
        from engine.load.inventory import load_inventory

        try:
            load_inventory(tmp, dynamic=False)
        except PlaybookError as exc:
            message = str(exc).replace(tmp, self.path)
            what = "; ".join(self.changes) or "edit"
            raise InventoryEditError(f"refused ({what}): the inventory would be invalid:\n{message}") from None


def _same_data(a: str, b: str) -> bool:
    try:
        return yaml.safe_load(a) == yaml.safe_load(b)
    except yaml.YAMLError:
        return False


def edit_inventory(path: str, edit: Callable[[InventoryEditor], None], *, dry_run: bool = False) -> EditResult:
    """Load `path`, apply `edit` to it, validate and save; see the module docstring."""
    editor = InventoryEditor(path)
    edit(editor)
    return editor.save(dry_run=dry_run)


def add_host(
    path: str,
    name: str,
    *,
    groups: Sequence[str] = (),
    address: str | None = None,
    port: int | None = None,
    vars: Mapping[str, Any] | None = None,
    dry_run: bool = False,
) -> EditResult:
    """`playbook inventory add-host`."""
    return edit_inventory(
        path, lambda e: e.add_host(name, groups=groups, address=address, port=port, vars=vars), dry_run=dry_run
    )


def remove_host(path: str, name: str, *, dry_run: bool = False) -> EditResult:
    """`playbook inventory remove-host`."""
    return edit_inventory(path, lambda e: e.remove_host(name), dry_run=dry_run)


def set_vars(path: str, target: Target, values: Mapping[str, Any], *, dry_run: bool = False) -> EditResult:
    """`playbook inventory set-var`."""
    return edit_inventory(path, lambda e: e.set_vars(target, values), dry_run=dry_run)


def unset_vars(path: str, target: Target, names: Sequence[str], *, dry_run: bool = False) -> EditResult:
    """`playbook inventory unset-var`."""
    return edit_inventory(path, lambda e: e.unset_vars(target, names), dry_run=dry_run)


def add_group(
    path: str,
    name: str,
    *,
    children: Sequence[str] = (),
    parents: Sequence[str] = (),
    hosts: Sequence[str] = (),
    vars: Mapping[str, Any] | None = None,
    dry_run: bool = False,
) -> EditResult:
    """`playbook inventory add-group`."""
    return edit_inventory(
        path, lambda e: e.add_group(name, children=children, parents=parents, hosts=hosts, vars=vars), dry_run=dry_run
    )
