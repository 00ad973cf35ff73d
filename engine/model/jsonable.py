"""Plain JSON values from the engine's values: one conversion for reports, saved plans and the
drift check, so the same fingerprint is written the same way everywhere."""

from __future__ import annotations

import dataclasses
import datetime as _dt
import enum
import json
import math
from collections.abc import Mapping
from pathlib import PurePath
from typing import Any

from engine.model.results import Diff, UnknownValue
from engine.secrets import MASK, Secret

__all__ = ["json_safe", "loads"]


def json_safe(value: Any) -> Any:
    """Convert `value` into plain JSON types.

    Unknown-until-applied values and non-finite floats become None, bytes are decoded (UTF-8,
    invalid bytes replaced), a `Secret` becomes its mask, enums their value, tuples/sets lists,
    paths and anything else unrecognised their `str`.
    """
    if value is None or isinstance(value, (bool, int, str)):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, UnknownValue):
        return None
    if isinstance(value, Secret):
        return MASK
    if isinstance(value, enum.Enum):
        return json_safe(value.value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", errors="replace")
    if isinstance(value, Diff):
        return value.to_dict()
    if isinstance(value, Mapping):
        return {str(json_safe(k)): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, (set, frozenset)):
        items = [json_safe(v) for v in value]
        try:
            return sorted(items)
        except TypeError:
            return items
    if isinstance(value, (_dt.datetime, _dt.date)):
        return value.isoformat()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: json_safe(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, PurePath):
        return str(value)
    return str(value)


def loads(data: str | bytes | bytearray) -> Any:
    """`json.loads` for JSON from outside the process (a plan file, a host, a registry, a state
    backend): lists and objects nested past the decoder's recursion limit raise `ValueError`,
    like any other malformed JSON, instead of `RecursionError`."""
    try:
        return json.loads(data)
    except RecursionError:
        raise ValueError("JSON nested too deeply") from None
