"""JSON Schema errors as located, worded messages: `path: 'field' must be X (got Y)`.

jsonschema says where an instance failed and which keyword; this module turns each error into a
`PlaybookError` at the file:line:col of the offending value, named the way a playbook author
names it (`steps[2].args.dest`), with what was expected and what was found.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

from engine.argschema import TEMPLATE_SCHEMA, describe_value
from engine.errors import Location, PlaybookError, ValidationError, suggest
from engine.load.schemas import PATTERN_TEXT
from engine.yamlio.document import Document

if TYPE_CHECKING:  # imported by schema_errors itself: content validated before never needs it
    import jsonschema

__all__ = ["schema_errors", "display_path"]

_TYPE_NAMES = {
    "integer": "integer",
    "number": "number",
    "string": "string",
    "boolean": "boolean",
    "null": "null",
    "array": "list",
    "object": "mapping",
}


def _type_name(kind: str) -> str:
    """A reader's name for a JSON Schema type (`object` → `mapping`); an unknown one as it is."""
    return _TYPE_NAMES.get(kind, kind)


def display_path(path: Iterable[Any]) -> str:
    """`("steps", 2, "args", "port")` → `steps[2].args.port`."""
    out = ""
    for part in path:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _field_name(path: tuple) -> str:
    """The subject of a message: the last key, with the list indexes that follow it."""
    tail = ""
    for part in reversed(path):
        if isinstance(part, int):
            tail = f"[{part}]" + tail
        else:
            return f"{part}{tail}"
    return tail or "value"


def _describe(schema: Any) -> str:
    """A reader's wording of what a schema accepts."""
    if not isinstance(schema, dict) or not schema:
        return "any value"
    if schema == TEMPLATE_SCHEMA:
        return "a template"
    if "enum" in schema:
        return "one of " + ", ".join(repr(v) for v in schema["enum"])
    if "const" in schema:
        return repr(schema["const"])
    if "anyOf" in schema or "oneOf" in schema:
        return " or ".join(_describe(s) for s in schema.get("anyOf") or schema["oneOf"])
    kind = schema.get("type")
    if "pattern" in schema:
        default = f"a string matching {schema['pattern']}"
        return schema.get("x-expected") or PATTERN_TEXT.get(schema["pattern"], default)
    if isinstance(kind, list):
        return " or ".join(_type_name(k) for k in kind)
    if kind == "string":
        return "a non-empty string" if schema.get("minLength") else "string"
    if kind in ("integer", "number"):
        return _describe_bounds(kind, schema)
    if kind == "array":
        items = schema.get("items")
        simple = (
            isinstance(items, dict) and set(items) <= {"type", "description"} and isinstance(items.get("type"), str)
        )
        return f"list of {_describe(items)}" if simple else "list"
    if kind:
        return _type_name(kind)
    return "a valid value"


def _describe_bounds(kind: str, schema: dict) -> str:
    """'integer from 1 to 65535', 'number > 0 and <= 60', 'integer >= 1': every bound it has."""
    lo, hi = schema.get("minimum"), schema.get("maximum")
    if lo is not None and hi is not None:
        return f"{kind} from {lo:g} to {hi:g}"
    bounds = [
        f"{op} {schema[key]:g}"
        for key, op in (("minimum", ">="), ("exclusiveMinimum", ">"), ("maximum", "<="), ("exclusiveMaximum", "<"))
        if schema.get(key) is not None
    ]
    return " and ".join([f"{kind} {bounds[0]}", *bounds[1:]]) if bounds else kind


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    if isinstance(value, dict):
        return "object"
    return "unknown"


def _branch_accepts_type(branch: dict, value: Any) -> bool:
    kind = branch.get("type")
    actual = _json_type(value)
    if kind is None:
        return False
    kinds = kind if isinstance(kind, list) else [kind]
    return actual in kinds or (actual == "integer" and "number" in kinds)


def schema_errors(
    schema: Mapping[str, Any] | jsonschema.Draft202012Validator,
    instance: Any,
    doc: Document,
    *,
    base: tuple = (),
    noun: str = "key",
) -> list[PlaybookError]:
    """Validate `instance` (found at `base` in `doc`) against a schema (or a ready validator)
    and word each error, located. `noun` is what unknown/missing keys are called."""
    import jsonschema

    validator = (
        schema if isinstance(schema, jsonschema.Draft202012Validator) else jsonschema.Draft202012Validator(schema)
    )
    out: list[PlaybookError] = []
    for error in validator.iter_errors(instance):
        out.extend(_word(error, doc, base, noun))
    return out


def _word(error: jsonschema.ValidationError, doc: Document, base: tuple, noun: str) -> list[PlaybookError]:
    path = base + tuple(error.absolute_path)
    name = _field_name(path)
    shown = display_path(path)
    value = error.instance
    kind = error.validator
    schema = error.schema if isinstance(error.schema, dict) else {}

    def err(message: str, location: Location | None = None) -> ValidationError:
        return ValidationError(message, location=location or doc.where(path), path=shown)

    if "propertyNames" in error.relative_schema_path:
        key = value
        where = doc.key_where(path + (key,))
        if kind == "not":
            return [ValidationError(f"'{key}' is a reserved name", location=where, path=shown)]
        return [ValidationError(f"'{key}' is not a valid name: use {_describe(schema)}", location=where, path=shown)]
    if kind == "additionalProperties" and isinstance(value, dict):
        known = list(schema.get("properties", {}))
        patterns = list(schema.get("patternProperties", {}))
        extras = [k for k in value if k not in known and not any(re.search(p, str(k)) for p in patterns)]
        return [
            ValidationError(
                f"unknown {noun} '{k}'{suggest(str(k), known)}", location=doc.key_where(path + (k,)), path=shown
            )
            for k in extras
        ]
    if kind == "required" and isinstance(value, dict):
        where = doc.key_where(path) if path else doc.where(path)
        return [err(f"missing required {noun} '{k}'", where) for k in error.validator_value if k not in value]
    if kind == "oneOf" and all(isinstance(b, dict) and set(b) == {"required"} for b in error.validator_value):
        names = [b["required"][0] for b in error.validator_value]  # an `exactly_one` group (engine/argschema.py)
        return [err("give exactly one of " + " and ".join(f"'{n}'" for n in names))]
    if kind in ("anyOf", "oneOf"):
        branches = error.validator_value
        fitting = [i for i, b in enumerate(branches) if isinstance(b, dict) and _branch_accepts_type(b, value)]
        if isinstance(value, (dict, list)) and len(fitting) == 1:
            inner = [
                e for e in error.context or () if e.relative_schema_path and e.relative_schema_path[0] == fitting[0]
            ]
            if inner:
                return [m for e in inner for m in _word(e, doc, base, noun)]
        return [err(f"'{name}' must be {_describe(schema)} (got {describe_value(value)})")]
    if kind in ("enum", "const"):
        options = error.validator_value if kind == "enum" else [error.validator_value]
        hint = suggest(value, [o for o in options if isinstance(o, str)]) if isinstance(value, str) else ""
        return [err(f"'{name}' must be {_describe(schema)} (got {describe_value(value)}){hint}")]
    if kind in ("minItems", "minLength", "minProperties") and error.validator_value == 1:
        return [err(f"'{name}' must not be empty")]
    if kind == "uniqueItems":
        return [err(f"'{name}' lists the same item twice")]
    if kind == "type":
        names = error.validator_value if isinstance(error.validator_value, list) else [error.validator_value]
        if any(n in ("array", "object") for n in names):
            expected = " or ".join(_type_name(n) for n in names)
        else:
            expected = _describe(schema)  # keeps bounds: 'integer from 1 to 65535'
        return [err(f"'{name}' must be {expected} (got {describe_value(value)})")]
    if kind in (
        "pattern",
        "minimum",
        "maximum",
        "exclusiveMinimum",
        "exclusiveMaximum",
        "minLength",
        "maxLength",
        "minItems",
        "maxItems",
    ):
        return [err(f"'{name}' must be {_describe(schema)} (got {describe_value(value)})")]
    return [err(f"'{name}': {error.message}")]
