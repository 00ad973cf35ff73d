"""Resource bounds for every YAML file playbook reads: size, file type, alias expansion.

A YAML alias is a reference, so a 500-byte file of nested aliases ("billion laughs") stands for
10^9 values; any walk over the loaded data (schema validation, templating, hashing) then takes
gigabytes. So before a value is built, the parser's event stream is read once and the number of
nodes every alias stands for is added up; past `ALIAS_NODE_BUDGET` the file is refused at the
alias that crossed it. Files are read only if they are regular files (not `/dev/zero`, not a
FIFO, which would block or never end) and no bigger than `max_file_size()` bytes
(`$PLAYBOOK_MAX_FILE_SIZE`). See docs/playbook-format.md ("Limits").
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from typing import Any

from engine.errors import LoadError, Location

__all__ = [
    "ALIAS_NODE_BUDGET",
    "MAX_DEPTH",
    "DEFAULT_MAX_FILE_SIZE",
    "max_file_size",
    "read_bounded",
    "check_events",
    "check_depth",
]

ALIAS_NODE_BUDGET = 100_000
"""At most this many nodes may be reached through aliases (`*name` and `<<: *name`) in one file."""

MAX_DEPTH = 200
"""At most this many levels of lists and mappings, the top level included (aliases count as what
they stand for): deeper data would overflow the recursive walks that read it."""

DEFAULT_MAX_FILE_SIZE = 4 * 1024 * 1024
"""The default size limit of a playbook, an inventory or an `-e @file`, in bytes."""

_SIZE_ENV = "PLAYBOOK_MAX_FILE_SIZE"


def max_file_size() -> int:
    """The size limit in bytes: `$PLAYBOOK_MAX_FILE_SIZE` (a number, with an optional K/M/G
    suffix) or `DEFAULT_MAX_FILE_SIZE`."""
    raw = os.environ.get(_SIZE_ENV, "").strip()
    if not raw:
        return DEFAULT_MAX_FILE_SIZE
    factor = {"K": 1024, "M": 1024**2, "G": 1024**3}.get(raw[-1].upper(), 1)
    digits = raw[:-1] if factor != 1 else raw
    if not digits.isdigit() or int(digits) == 0:
        raise LoadError(f"${_SIZE_ENV} must be a positive number of bytes, like 8M (got {raw!r})")
    return int(digits) * factor


def read_bounded(path: str) -> bytes:
    """The bytes of a regular file no bigger than `max_file_size()`; anything else is a `LoadError`.

    The file is opened non-blocking, so a FIFO is refused at once instead of waiting for a writer.
    """
    limit = max_file_size()
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise LoadError(f"cannot read file: {exc.strerror or exc}", path=str(path)) from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISREG(info.st_mode):
            raise LoadError(f"not a regular file ({_kind(info.st_mode)}): give a YAML file", path=str(path))
        if info.st_size > limit:
            raise LoadError(_too_big(info.st_size, limit), path=str(path))
        os.set_blocking(fd, True)
        with os.fdopen(fd, "rb", closefd=False) as fh:
            raw = fh.read(limit + 1)  # the file may grow between fstat and read
    except OSError as exc:
        raise LoadError(f"cannot read file: {exc.strerror or exc}", path=str(path)) from None
    finally:
        os.close(fd)
    if len(raw) > limit:
        raise LoadError(_too_big(len(raw), limit), path=str(path))
    return raw


def _too_big(size: int, limit: int) -> str:
    return (
        f"file is too big ({size} bytes; the limit is {limit} bytes): "
        f"set ${_SIZE_ENV} (e.g. {_SIZE_ENV}=16M) to allow bigger files"
    )


def _kind(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "a directory"
    if stat.S_ISFIFO(mode):
        return "a FIFO"
    if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        return "a device"
    if stat.S_ISSOCK(mode):
        return "a socket"
    return "not a plain file"


def check_events(events: Iterable[Any], file: str, budget: int = ALIAS_NODE_BUDGET) -> None:
    """Raise a located `LoadError` if the aliases in a YAML event stream stand for more than
    `budget` nodes, or if lists and mappings nest more than `MAX_DEPTH` levels deep (aliases
    counted as what they stand for). Works on PyYAML's and ruamel.yaml's events (same class
    names and fields); nothing is built, so the cost is one pass over the events whatever the
    aliases expand to."""
    sizes: dict[str, int] = {}  # anchor -> nodes its value stands for, aliases expanded
    depths: dict[str, int] = {}  # anchor -> levels of lists and mappings in its value
    stack: list[list[Any]] = []  # [anchor, node count so far, deepest child] per open collection
    expanded = 0
    for event in events:
        kind = type(event).__name__
        if kind in ("MappingStartEvent", "SequenceStartEvent"):
            if len(stack) >= MAX_DEPTH:
                raise _too_deep(file, event)
            stack.append([getattr(event, "anchor", None), 1, 0])
            continue
        if kind in ("MappingEndEvent", "SequenceEndEvent"):
            anchor, size, inner = stack.pop()
            depth = inner + 1
        elif kind == "ScalarEvent":
            anchor, size, depth = getattr(event, "anchor", None), 1, 0
        elif kind == "AliasEvent":
            # an open anchor (a cycle) is the builder's error
            anchor, size, depth = None, sizes.get(event.anchor, 0), depths.get(event.anchor, 0)
            if len(stack) + depth > MAX_DEPTH:
                raise _too_deep(file, event)
            expanded += size
            if expanded > budget:
                mark = event.start_mark
                raise LoadError(
                    f"aliases expand to more than {budget} values (at alias '*{event.anchor}'): "
                    "a YAML file this big through aliases is refused (a 'billion laughs' bomb?)",
                    location=Location(file, mark.line + 1, mark.column + 1),
                )
        else:
            if kind == "DocumentEndEvent":
                sizes.clear()  # anchors do not cross documents
                depths.clear()
            continue
        if anchor:
            sizes[anchor], depths[anchor] = size, depth
        if stack:
            stack[-1][1] += size
            stack[-1][2] = max(stack[-1][2], depth)


def _too_deep(file: str, event: Any) -> LoadError:
    mark = event.start_mark
    return LoadError(
        f"lists and mappings nested more than {MAX_DEPTH} levels deep",
        location=Location(file, mark.line + 1, mark.column + 1),
    )


def check_depth(value: Any, what: str) -> None:
    """Raise `LoadError` if lists and mappings nest more than `MAX_DEPTH` levels deep in a value
    that did not come from a YAML file (`-e` JSON); `value` itself is the first level."""
    level = [value]
    for _ in range(MAX_DEPTH + 1):
        level = [
            v
            for item in level
            if isinstance(item, (list, dict))
            for v in (item.values() if isinstance(item, dict) else item)
        ]
        if not level:
            return
    raise LoadError(f"{what}: lists and mappings nested more than {MAX_DEPTH} levels deep")
