"""One argument definition, two uses: a JSON Schema for load time and strict conversion at run time.

A module declares its arguments once, as a frozen dataclass whose fields carry `doc` metadata
(see `engine.module.arg`). `schema_for` turns it into a JSON Schema (for `schemas/`, editors and
the loader); `build` turns rendered arguments into an instance of it, converting only what is
unambiguous (`"8080"` for an integer, `"true"` for a boolean) and naming the field, what was
expected and what was found otherwise.

Longer than ~400 lines: the schema and the conversion walk the same type cases and rules, and
stay together so that they agree.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import re
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any, Literal, Union, cast

from engine.errors import ArgError, suggest

__all__ = [
    "TEMPLATE_SCHEMA",
    "schema_for",
    "type_schema",
    "build",
    "field_errors",
    "group_errors",
    "rule_errors",
    "rule_text",
    "enforce",
    "expected_name",
    "describe_value",
]

TEMPLATE_SCHEMA: dict[str, Any] = {"type": "string", "pattern": r"\{\{|\{%"}
"""A string that is a Jinja2 template, accepted where a non-string is expected before rendering."""

_UNION_TYPES = (Union, types.UnionType)
_SEQ_ORIGINS = (list, tuple, Sequence, typing.Sequence)
_MAP_ORIGINS = (dict, Mapping, typing.Mapping)


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    """A class's resolved annotations, once per class: resolving them costs more than the rest of
    building one step's arguments (`typing.get_type_hints` evaluates every string annotation)."""
    return typing.get_type_hints(cls)


def _jsonable(value: Any) -> Any:
    """A JSON form of a default, or raise TypeError/ValueError if it has none."""
    if isinstance(value, tuple):
        value = list(value)
    json.dumps(value, allow_nan=False)
    return json.loads(json.dumps(value))


def _with_template(schema: dict[str, Any], templated: bool) -> dict[str, Any]:
    if not templated:
        return schema
    branches = schema["anyOf"] if set(schema) == {"anyOf"} else [schema]
    if TEMPLATE_SCHEMA in branches or any(
        b.get("type") == "string" and "pattern" not in b and "enum" not in b for b in branches
    ):
        return schema  # any string already passes
    return {"anyOf": [*branches, dict(TEMPLATE_SCHEMA)]}


def type_schema(tp: Any, *, templated: bool = False) -> dict[str, Any]:
    """The JSON Schema of one type hint (see `schema_for` for what `templated` adds)."""
    if tp is Any or tp is object:
        return {}
    if tp is type(None):
        return {"type": "null"}
    if tp is str:
        return {"type": "string"}
    if tp is bool:
        return _with_template({"type": "boolean"}, templated)
    if tp is int:
        return _with_template({"type": "integer"}, templated)
    if tp is float:
        return _with_template({"type": "number"}, templated)
    if dataclasses.is_dataclass(tp):
        # a type hint is the class itself; is_dataclass's narrowing also admits an instance
        return _with_template(schema_for(cast(type, tp), templated=templated), templated)
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return _with_template({"enum": list(args)}, templated)
    if origin in _UNION_TYPES:
        return _union(args, templated)
    if origin in _SEQ_ORIGINS:
        if origin is tuple and args and (len(args) != 2 or args[1] is not Ellipsis):
            items = [type_schema(a, templated=templated) for a in args]
            schema = {"type": "array", "prefixItems": items, "minItems": len(items), "maxItems": len(items)}
        else:
            schema = {"type": "array"}
            if args:
                schema["items"] = type_schema(args[0], templated=templated)
        return _with_template(schema, templated)
    if origin in _MAP_ORIGINS:
        schema = {"type": "object"}
        if len(args) == 2:
            schema["additionalProperties"] = type_schema(args[1], templated=templated)
        return _with_template(schema, templated)
    if tp in (list, tuple):
        return _with_template({"type": "array"}, templated)
    if tp is dict:
        return _with_template({"type": "object"}, templated)
    raise TypeError(f"argschema: unsupported type {tp!r}")


def _union(args: tuple, templated: bool) -> dict[str, Any]:
    branches: list[dict[str, Any]] = []
    for a in args:
        sub = type_schema(a, templated=templated)
        for b in sub["anyOf"] if set(sub) == {"anyOf"} else [sub]:
            if b not in branches:
                branches.append(b)
    if {} in branches:
        return {}
    if TEMPLATE_SCHEMA in branches:  # keep the template alternative last, for readable errors
        branches.remove(TEMPLATE_SCHEMA)
        if {"type": "string"} not in branches:
            branches.append(dict(TEMPLATE_SCHEMA))
    return branches[0] if len(branches) == 1 else {"anyOf": branches}


def schema_for(cls: type, *, templated: bool) -> dict[str, Any]:
    """JSON Schema (draft 2020-12) of a dataclass of arguments.

    Each field becomes a property with its `doc` as description and its default when that is
    JSON-able; fields without a default are `required`; other keys are refused. With
    `templated=True` every non-string position also accepts a string containing `{{` or `{%`:
    a template that is rendered, and then checked by `build`, later.
    """
    hints = _hints(cls)
    properties: dict[str, Any] = {}
    required: list[str] = []
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        prop = _with_rules(dict(type_schema(hints[f.name], templated=templated)), f.metadata, templated)
        doc = " ".join(t for t in (f.metadata.get("doc"), rule_text(cls, f.name)) if t)
        if doc:
            prop["description"] = doc
        if f.default is not dataclasses.MISSING:
            default: Any = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            required.append(f.name)
            default = dataclasses.MISSING
        if default is not dataclasses.MISSING:
            try:
                prop["default"] = _jsonable(default)
            except (TypeError, ValueError):
                pass
        properties[f.name] = prop
    schema: dict[str, Any] = {"type": "object", "properties": properties, "additionalProperties": False}
    if required:
        schema["required"] = required
    groups = list(_groups(cls).values())
    if len(groups) == 1:
        schema["oneOf"] = [{"required": [name]} for name in groups[0]]
    elif groups:
        schema["allOf"] = [{"oneOf": [{"required": [name]} for name in g]} for g in groups]
    doc = (cls.__doc__ or "").strip()
    if doc and not doc.startswith(cls.__name__ + "("):  # not the dataclass-generated signature
        schema["description"] = doc
    return schema


# --- rules declared with the argument (engine.module.arg) --------------------------------


def _groups(cls: type) -> dict[str, list[str]]:
    """`exactly_one` groups: group name -> its arguments, in declaration order."""
    out: dict[str, list[str]] = {}
    for f in dataclasses.fields(cls):
        group = f.metadata.get("exactly_one")
        if group:
            out.setdefault(group, []).append(f.name)
    return out


def _and(names: Sequence[str]) -> str:
    quoted = [f"'{n}'" for n in names]
    return quoted[0] if len(quoted) == 1 else ", ".join(quoted[:-1]) + " and " + quoted[-1]


def rule_text(cls: type, name: str) -> str:
    """The rules of one argument as a sentence for its documentation ('' when it has none)."""
    meta = next(f.metadata for f in dataclasses.fields(cls) if f.name == name)
    parts = []
    if meta.get("minimum") is not None:
        parts.append(f"At least {meta['minimum']:g}.")
    if meta.get("pattern"):
        parts.append(f"Must be {meta.get('expected') or 'a string matching ' + meta['pattern']}.")
    if meta.get("nonempty"):
        parts.append("Must not be empty.")
    group = meta.get("exactly_one")
    if group:
        parts.append(f"Give exactly one of {_and(_groups(cls)[group])}.")
    return " ".join(parts)


def _with_rules(schema: dict[str, Any], meta: Mapping[str, Any], templated: bool) -> dict[str, Any]:
    """`schema` with the argument's rules added to the branches they are about."""
    branches = schema["anyOf"] if set(schema) == {"anyOf"} else [schema]
    out = []
    for b in branches:
        b = dict(b)
        kind = b.get("type")
        if meta.get("minimum") is not None and kind in ("integer", "number"):
            b["minimum"] = meta["minimum"]
        if meta.get("pattern") and kind == "string" and "pattern" not in b:
            b["pattern"] = meta["pattern"]
            if meta.get("expected"):
                b["x-expected"] = meta["expected"]
        if meta.get("nonempty") and kind == "array":
            b["minItems"] = 1
        if meta.get("nonempty") and kind == "string" and "pattern" not in b:
            b["minLength"] = 1
        out.append(b)
    if templated and meta.get("pattern") and TEMPLATE_SCHEMA not in out:
        out.append(dict(TEMPLATE_SCHEMA))  # a template renders first, then must match
    return out[0] if len(out) == 1 else {"anyOf": out}


def rule_errors(cls: type, name: str, value: Any, path: str) -> ArgError | None:
    """The error for a converted value that breaks its argument's declared rules, if any."""
    meta = next(f.metadata for f in dataclasses.fields(cls) if f.name == name)
    if value is None:
        return None
    low = meta.get("minimum")
    if low is not None and isinstance(value, (int, float)) and not isinstance(value, bool) and value < low:
        return ArgError(f"'{name}' must be at least {low:g} (got {value})", path=path)
    pattern = meta.get("pattern")
    if pattern and isinstance(value, str) and not re.fullmatch(pattern, value):
        what = meta.get("expected") or f"a string matching {pattern}"
        shown = describe_value(value, secret=bool(meta.get("secret")))
        return ArgError(f"'{name}' must be {what} (got {shown})", path=path)
    if meta.get("nonempty") and isinstance(value, (str, list, tuple)) and not value:
        return ArgError(f"'{name}' must not be empty", path=path)
    return None


def group_errors(cls: type, data: Mapping[str, Any], path: str, *, unknown: Sequence[str] = ()) -> list[ArgError]:
    """'give exactly one of ...' for each `exactly_one` group that `data` breaks; a group with
    a member in `unknown` (not rendered yet) is only checked for two or more given."""
    out = []
    for names in _groups(cls).values():
        given = [n for n in names if data.get(n) is not None]
        if len(given) > 1 or (not given and not any(n in unknown for n in names)):
            out.append(ArgError(f"give exactly one of {_and(names)}", path=path))
    return out


def enforce(args: Any, *, path: str) -> None:
    """Raise the first declared rule an arguments instance breaks: what `build` checks, for a
    module's `plan` to call on arguments that may not have come through `build`."""
    cls = type(args)
    for f in dataclasses.fields(cls):
        broken = rule_errors(cls, f.name, getattr(args, f.name), f"{path}.{f.name}")
        if broken is not None:
            raise broken
    for broken in group_errors(cls, {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)}, path):
        raise broken


# --- conversion ---------------------------------------------------------------------------

_CLEAN_INT = re.compile(r"[-+]?[0-9]+")
_CLEAN_FLOAT = re.compile(r"[-+]?(?:[0-9]+(?:\.[0-9]+)?|\.[0-9]+)(?:[eE][-+]?[0-9]+)?")


class _Mismatch(Exception):
    pass


def expected_name(tp: Any) -> str:
    """How an error names what a type hint expects: `integer`, `list of string`, `'a' or 'b'`."""
    if tp is Any or tp is object:
        return "any value"
    if tp is type(None):
        return "null"
    names = {str: "string", int: "integer", float: "number", bool: "boolean"}
    if tp in names:
        return names[tp]
    if dataclasses.is_dataclass(tp):
        return "mapping"
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return "one of " + ", ".join(repr(a) for a in args)
    if origin in _UNION_TYPES:
        return " or ".join(expected_name(a) for a in args)
    if origin in _SEQ_ORIGINS or tp in (list, tuple):
        inner = [a for a in args if a is not Ellipsis]
        return f"list of {expected_name(inner[0])}" if len(inner) == 1 else "list"
    if origin in _MAP_ORIGINS or tp is dict:
        return "mapping"
    return getattr(tp, "__name__", str(tp))


def describe_value(value: Any, *, secret: bool = False) -> str:
    """`string '80a'`, `integer 5`, `null`, `list`... as the `(got ...)` part of a message."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        kind, text = "boolean", "true" if value else "false"
    elif isinstance(value, int):
        kind, text = "integer", str(value)
    elif isinstance(value, float):
        kind, text = "number", repr(value)
    elif isinstance(value, str):
        kind, text = "string", repr(value if len(value) <= 60 else value[:57] + "...")
    elif isinstance(value, Mapping):
        return "mapping"
    elif isinstance(value, (list, tuple)):
        return "list"
    else:
        return type(value).__name__
    return kind if secret else f"{kind} {text}"


class _Converter:
    def __init__(self, secret: bool) -> None:
        self.secret = secret

    def convert(self, tp: Any, value: Any, name: str, path: str) -> Any:
        try:
            return self._convert(tp, value, name, path, loose=False)
        except _Mismatch:
            pass
        try:
            return self._convert(tp, value, name, path, loose=True)
        except _Mismatch:
            raise ArgError(
                f"'{name}' must be {expected_name(tp)} (got {describe_value(value, secret=self.secret)})", path=path
            ) from None

    def _convert(self, tp: Any, value: Any, name: str, path: str, *, loose: bool) -> Any:
        if tp is Any or tp is object:
            return value
        if tp is type(None):
            if value is None:
                return None
            raise _Mismatch
        if tp is bool:
            if isinstance(value, bool):
                return value
            if loose and isinstance(value, str) and value.strip().lower() in ("true", "false"):
                return value.strip().lower() == "true"
            raise _Mismatch
        if tp is int:
            if isinstance(value, int) and not isinstance(value, bool):
                return value
            if loose and isinstance(value, str) and _CLEAN_INT.fullmatch(value.strip()):
                return int(value.strip())
            raise _Mismatch
        if tp is float:
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                return float(value)
            if loose and isinstance(value, str) and _CLEAN_FLOAT.fullmatch(value.strip()):
                return float(value.strip())
            raise _Mismatch
        if tp is str:
            if isinstance(value, str):
                return value
            # a template like "{{ count }}" renders to a number; as a string it loses nothing
            if loose and isinstance(value, (int, float)) and not isinstance(value, bool):
                return str(value)
            raise _Mismatch
        if dataclasses.is_dataclass(tp):
            if isinstance(value, Mapping):
                return _build(cast(type, tp), value, path, self.secret)  # the class, as in type_schema
            raise _Mismatch
        origin, args = typing.get_origin(tp), typing.get_args(tp)
        if origin is Literal:
            if value in args and not (isinstance(value, bool) and not any(isinstance(a, bool) for a in args)):
                return value
            raise _Mismatch
        if origin in _UNION_TYPES:
            for a in args:
                try:
                    return self._convert(a, value, name, path, loose=False)
                except _Mismatch:
                    continue
            if loose:
                for a in args:
                    try:
                        return self._convert(a, value, name, path, loose=True)
                    except _Mismatch:
                        continue
            raise _Mismatch
        if origin in _SEQ_ORIGINS or tp in (list, tuple):
            if not isinstance(value, (list, tuple)):
                raise _Mismatch
            if origin is tuple and args and (len(args) != 2 or args[1] is not Ellipsis):
                if len(value) != len(args):
                    raise ArgError(f"'{name}' must have {len(args)} items (got {len(value)})", path=path)
                return tuple(
                    self.convert(a, v, f"{name}[{i}]", f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value))
                )
            item = args[0] if args else Any
            items = [self.convert(item, v, f"{name}[{i}]", f"{path}[{i}]") for i, v in enumerate(value)]
            return tuple(items) if origin is tuple or tp is tuple else items
        if origin in _MAP_ORIGINS or tp is dict:
            if not isinstance(value, Mapping):
                raise _Mismatch
            vt = args[1] if len(args) == 2 else Any
            out = {}
            for k, v in value.items():
                if not isinstance(k, str):
                    raise ArgError(f"'{name}' keys must be strings (got {describe_value(k)})", path=path)
                out[k] = self.convert(vt, v, f"{name}.{k}", f"{path}.{k}")
            return out
        raise TypeError(f"argschema: unsupported type {tp!r}")


def _build(cls: type, data: Mapping[str, Any], path: str, secret: bool) -> Any:
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    for key in data:
        if key not in fields:
            raise ArgError(f"unknown argument '{key}'{suggest(str(key), fields)}", path=path)
    values: dict[str, Any] = {}
    for name, f in fields.items():
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ArgError(f"missing required argument '{name}'", path=path)
            continue
        conv = _Converter(secret or bool(f.metadata.get("secret")))
        sub = f"{path}.{name}" if path else name
        values[name] = conv.convert(hints[name], data[name], name, sub)
        broken = rule_errors(cls, name, values[name], sub)
        if broken is not None:
            raise broken
    for broken in group_errors(cls, values, path):
        raise broken
    return cls(**values)


def build(cls: type, data: Any, *, path: str) -> Any:
    """Convert rendered arguments to the frozen dataclass `cls`, strictly.

    A string becomes an int/float only if it is a clean number (`"8080"`), a bool only if it is
    `true`/`false` in any case; lists become tuples for tuple fields. Errors are `ArgError`s
    like `steps.web.args.port: 'port' must be integer (got string '80a')`; values of secret
    fields are never shown.
    """
    if data is None:
        data = {}
    if not isinstance(data, Mapping):
        raise ArgError(f"arguments must be a mapping (got {describe_value(data)})", path=path)
    return _build(cls, data, path, False)


def field_errors(cls: type, data: Mapping[str, Any], *, path: str) -> list[tuple[str, ArgError]]:
    """(field name, error) for each given field of `cls` that `build` would refuse (its type or
    its declared rules), every one of them rather than the first (fields not in `data` and
    unknown keys are the schema's business). `check` calls it with the arguments it could
    render; the `exactly_one` groups are `group_errors`'."""
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    out: list[tuple[str, ArgError]] = []
    for name, value in data.items():
        f = fields.get(name)
        if f is None:
            continue
        conv = _Converter(bool(f.metadata.get("secret")))
        sub = f"{path}.{name}" if path else name
        try:
            broken = rule_errors(cls, name, conv.convert(hints[name], value, name, sub), sub)
        except ArgError as exc:
            broken = exc
        if broken is not None:
            out.append((name, broken))
    return out
