"""Module documentation, generated from each module's single argument definition.

Used by `playbook modules [NAME]` and to write `docs/modules.md` (`python -m engine.docs`).
"""

from __future__ import annotations

import dataclasses
import inspect
import sys
import types
import typing
from typing import Any

from engine.argschema import rule_text
from engine.errors import PlaybookError, suggest
from engine.module import all_modules

__all__ = ["type_name", "module_doc", "module_table", "modules_markdown", "module_json"]


def type_name(tp: Any) -> str:
    """A reader's name for a type hint: `list of string`, `integer or null`."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is type(None):
        return "null"
    if tp is str:
        return "string"
    if tp is int:
        return "integer"
    if tp is float:
        return "number"
    if tp is bool:
        return "boolean"
    if tp is Any:
        return "any"
    if origin in (typing.Union, types.UnionType):
        return " or ".join(type_name(a) for a in args)
    if origin is typing.Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (list, tuple, typing.Sequence):
        inner = [a for a in args if a is not Ellipsis]
        return f"list of {type_name(inner[0])}" if inner else "list"
    if origin in (dict, typing.Mapping):
        return f"mapping of {type_name(args[1])}" if len(args) == 2 else "mapping"
    if dataclasses.is_dataclass(tp):
        return "mapping"
    return getattr(tp, "__name__", str(tp))


def _fields(cls: type) -> list[tuple[str, str, str, str]]:
    hints = typing.get_type_hints(cls)
    rows = []
    for f in dataclasses.fields(cls):
        if f.default is not dataclasses.MISSING:
            default = "—" if f.default is None else repr(f.default)
        elif f.default_factory is not dataclasses.MISSING:
            default = repr(f.default_factory())
        else:
            default = "required"
        doc = " ".join(t for t in (f.metadata.get("doc", ""), rule_text(cls, f.name)) if t)
        rows.append((f.name, type_name(hints[f.name]), default, doc))
    return rows


def _get(name: str) -> Any:
    mods = all_modules()
    if name not in mods:
        raise PlaybookError(f"unknown module '{name}'" + suggest(name, mods))
    return mods[name]


def module_doc(name: str) -> str:
    """Plain-text documentation of one module."""
    m = _get(name)
    lines = [f"{m.name} — {m.summary}", ""]
    doc = inspect.getdoc(type(m)) or ""
    if doc:
        lines += [doc, ""]
    where = "controller only" if m.controller_only else "on a fleet's hosts or on the controller"
    lines.append(f"Runs: {where}.")
    source_type = getattr(m, "source_type", None)
    if source_type:
        lines.append(f"Source type: `type: {source_type}` under `sources:`.")
    lines += ["", "Arguments:"]
    for fname, tname, default, fdoc in _fields(m.Args):
        lines.append(f"  {fname} ({tname}, {default})")
        if fdoc:
            lines.append(f"      {fdoc}")
    if m.outputs:
        lines += ["", "Outputs (steps.<id>.<name>):"]
        for oname, odoc in m.outputs.items():
            lines.append(f"  {oname}: {odoc}")
    lines += ["", "Examples:", *(f"  {line}" if line else "" for line in m.examples.rstrip("\n").split("\n"))]
    return "\n".join(lines) + "\n"


def module_json(name: str | None = None) -> dict[str, Any]:
    """Machine-readable documentation (`playbook modules [NAME] --format json`), shaped like
    `ansible-doc -j`: `{name: {"doc": {...}, "examples": "...", "return": {...}}}` for one module or
    every module. Each argument carries its JSON Schema, so types and rules are the ones
    `validate` enforces."""
    from engine.argschema import schema_for

    mods = {name: _get(name)} if name else all_modules()
    out: dict[str, Any] = {}
    for mname, m in mods.items():
        schema = schema_for(m.Args, templated=False)
        props = schema.get("properties", {})
        required = set(schema.get("required", ()))
        options = {}
        for fname, tname, _default, fdoc in _fields(m.Args):
            options[fname] = {
                "description": fdoc,
                "type": tname,
                "required": fname in required,
                "default": props.get(fname, {}).get("default"),
                "schema": props.get(fname, {}),
            }
        out[mname] = {
            "doc": {
                "module": mname,
                "short_description": m.summary,
                "description": inspect.getdoc(type(m)) or "",
                "controller_only": bool(m.controller_only),
                "source_type": getattr(m, "source_type", None),
                "options": options,
            },
            "examples": m.examples,
            "return": dict(m.outputs),
        }
    return out


def module_table() -> str:
    mods = all_modules()
    width = max(len(n) for n in mods)
    return "".join(f"{n.ljust(width)}  {m.summary}\n" for n, m in mods.items())


def modules_markdown() -> str:
    """docs/modules.md: every module's arguments and outputs."""
    out = [
        "# Modules",
        "",
        "Generated from the modules' argument definitions by `python -m engine.docs`; do not edit by hand.",
        "`playbook modules NAME` prints the same.",
        "",
    ]
    for name, m in all_modules().items():
        out += [f"## `{name}`", "", m.summary[0].upper() + m.summary[1:] + ".", ""]
        doc = inspect.getdoc(type(m))
        if doc:
            out += [doc, ""]
        source_type = getattr(m, "source_type", None)
        if source_type:
            out += [f"Source type `{source_type}` (under `sources:`).", ""]
        if m.controller_only:
            out += ["Runs on the controller only.", ""]
        out += ["| argument | type | default | description |", "|---|---|---|---|"]
        for fname, tname, default, fdoc in _fields(m.Args):
            cell = fdoc.replace("|", "\\|")
            out.append(f"| `{fname}` | {tname} | {default} | {cell} |")
        out.append("")
        if m.outputs:
            out += ["Outputs: " + ", ".join(f"`{k}` ({v})" for k, v in m.outputs.items()), ""]
        out += ["Example:", "", "```yaml", m.examples.rstrip("\n"), "```", ""]
    return "\n".join(out)


if __name__ == "__main__":
    path = sys.argv[1] if len(sys.argv) > 1 else "docs/modules.md"
    with open(path, "w") as fh:
        fh.write(modules_markdown())
