"""What the playbook and inventory loaders share: reading a YAML mapping, collecting located
errors, the locations of values inside a document, and cycle finding (with the standard library's graphlib)."""

from __future__ import annotations

import graphlib
from collections.abc import Iterable, Iterator, Mapping
from typing import Any, TypeGuard

from engine.argschema import describe_value
from engine.errors import LoadError, Location, PlaybookError, ValidationErrors
from engine.yamlio.document import Document, load_file

__all__ = ["read_mapping", "raise_all", "walk_strings", "locations", "find_cycle", "is_number"]


def read_mapping(path: str, what: str) -> Document:
    doc = load_file(path)
    if doc.data is None:
        raise LoadError(f"the {what} file is empty", location=Location(str(path), 1, 1))
    if not isinstance(doc.data, dict):
        raise LoadError(
            f"the {what} must be a mapping at the top level (got {describe_value(doc.data)})", location=doc.where(())
        )
    return doc


def raise_all(errors: list[PlaybookError]) -> None:
    if not errors:
        return
    unique: list[PlaybookError] = []
    seen: set[str] = set()
    for e in errors:
        if str(e) not in seen:
            seen.add(str(e))
            unique.append(e)
    unique.sort(key=lambda e: (e.location.line, e.location.col) if e.location else (0, 0))
    raise unique[0] if len(unique) == 1 else ValidationErrors(unique)


def walk_strings(value: Any, path: tuple = ()) -> Iterator[tuple[tuple, str]]:
    if isinstance(value, str):
        yield path, value
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from walk_strings(v, path + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from walk_strings(v, path + (i,))


def locations(doc: Document, prefix: tuple, data: Any) -> dict[tuple, Location]:
    """Where each value inside `data` (found at `prefix`) is written, keyed by relative path."""
    out: dict[tuple, Location] = {}

    def walk(value: Any, rel: tuple) -> None:
        items = value.items() if isinstance(value, dict) else enumerate(value) if isinstance(value, list) else ()
        for k, v in items:
            sub = rel + (k,)
            loc = doc.exact(prefix + sub)
            if loc is not None:
                out[sub] = loc
            walk(v, sub)

    walk(data, ())
    return out


def find_cycle(edges: Mapping[str, Iterable[str]]) -> list[str]:
    """A cycle of a small directed graph (`node -> successors`) as the list of its nodes in edge
    order, or [] when there is none. The loader's checks run before the execution graph
    (engine/execute/graph.py) is built; both use the standard library's `graphlib`."""
    try:
        graphlib.TopologicalSorter(edges).prepare()
    except graphlib.CycleError as e:
        # graphlib reads the mapping as node -> predecessors and lists the cycle that way round,
        # its first node repeated at the end
        return list(reversed(e.args[1]))[:-1]
    return []


def is_number(value: Any) -> TypeGuard[int | float]:
    return isinstance(value, (int, float)) and not isinstance(value, bool)
