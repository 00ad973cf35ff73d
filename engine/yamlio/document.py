"""A safe, strict YAML loader that remembers where every value came from.

PyYAML only composes the node tree here (with the C parser when it is available); the Python
values are built by this module, so that:

- duplicate mapping keys are errors naming both places;
- no tag other than the plain str/int/float/bool/null/map/seq is accepted (no `!!python/...`);
- scalars resolve by strict rules: `yes`/`on`/`0755`/`1.10` are errors asking the author to say
  what they mean, instead of silently becoming `True`, 493 or 1.1 (YAML 1.1's surprises);
- every value and every mapping key keeps its file:line:col, for error messages;
- aliases that expand past a budget, oversized files and non-regular files are refused before
  anything is built (engine/yamlio/bounds.py).

See docs/playbook-format.md ("YAML rules") for the user-facing description.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode

from engine.errors import LoadError, Location, PlaybookError, ValidationErrors
from engine.yamlio.bounds import check_events, read_bounded

__all__ = ["Document", "load_file", "load_text", "resolve_scalar"]

_BaseLoader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)

_PLAIN = "tag:playbook,plain"  # our marker for an untagged plain scalar, resolved by us
_STD = "tag:yaml.org,2002:"
_STR, _INT, _FLOAT, _BOOL, _NULL = (_STD + t for t in ("str", "int", "float", "bool", "null"))
_MAP, _SEQ = _STD + "map", _STD + "seq"


class _Loader(_BaseLoader):  # type: ignore[misc, valid-type]
    """Composes nodes only; plain untagged scalars keep a marker tag so we resolve them."""

    def resolve(self, kind: type, value: Any, implicit: Any) -> str:
        if kind is ScalarNode and implicit[0]:
            return _PLAIN
        return super().resolve(kind, value, implicit)


_NULLS = frozenset({"", "~", "null", "Null", "NULL"})
_TRUE = frozenset({"true", "True", "TRUE"})
_FALSE = frozenset({"false", "False", "FALSE"})
_AMBIGUOUS_WORDS = frozenset({"yes", "no", "on", "off", "y", "n"})
_INT_RE = re.compile(r"[-+]?(?:0|[1-9][0-9]*)")
_OCT = re.compile(r"0o[0-7]+")
_HEX = re.compile(r"0x[0-9a-fA-F]+")
_LEADING_ZERO = re.compile(r"[-+]?0[0-9]+")
_YAML11_INT = re.compile(r"[-+]?(?:0b[01_]+|[0-9][0-9_]*)")  # binary, or with '_' separators
_FLOATISH = re.compile(r"[-+]?(?:[0-9][0-9_]*\.?[0-9_]*|\.[0-9][0-9_]*)(?:[eE][-+]?[0-9]+)?")


class _Ambiguous(Exception):
    pass


def resolve_scalar(text: str) -> Any:
    """The value of an unquoted scalar under playbook's strict rules (raises on ambiguity)."""
    if text in _NULLS:
        return None
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    first = text[0]
    if first.isalpha() and len(text) <= 3 and text.lower() in _AMBIGUOUS_WORDS:
        raise _Ambiguous(f"ambiguous value '{text}': write true/false, or quote it for a string")
    if not (first.isdigit() or first in "+-."):
        return text
    if _INT_RE.fullmatch(text):
        return int(text)
    if _OCT.fullmatch(text):
        return int(text[2:], 8)
    if _HEX.fullmatch(text):
        return int(text[2:], 16)
    if _LEADING_ZERO.fullmatch(text):
        sign = "-" if text[0] == "-" else ""
        digits = text.lstrip("+-").lstrip("0") or "0"
        raise _Ambiguous(f"ambiguous number '{text}': write {sign}0o{digits} for octal or quote it for a string")
    if _YAML11_INT.fullmatch(text):
        raise _Ambiguous(f"ambiguous number '{text}': write it as a plain decimal, or quote it for a string")
    if _FLOATISH.fullmatch(text) and any(c.isdigit() for c in text):
        number = None if "_" in text else float(text)
        if number is not None and repr(number) == text:
            return number
        hint = f" or write {number!r}" if number is not None else ""
        raise _Ambiguous(f"ambiguous number '{text}': quote it (\"{text}\") for a string{hint}")
    return text


@dataclass
class Document:
    """A loaded YAML file: plain Python `data` plus the location of every value and key.

    Paths are tuples of mapping keys and list indexes: `("steps", 2, "args", "dest")`.
    """

    file: str
    data: Any
    _values: dict[tuple, tuple[int, int]] = field(default_factory=dict, repr=False)
    _keys: dict[tuple, tuple[int, int]] = field(default_factory=dict, repr=False)

    def where(self, path: tuple = ()) -> Location | None:
        """Where the value at `path` starts; for a path that was not written (a missing key),
        the nearest enclosing value that was."""
        path = tuple(path)
        while True:
            pos = self._values.get(path)
            if pos is not None:
                return Location(self.file, pos[0], pos[1])
            if not path:
                return None
            path = path[:-1]

    def exact(self, path: tuple) -> Location | None:
        """Where the value at `path` is written, or None if it is not (no fallback)."""
        pos = self._values.get(tuple(path))
        return Location(self.file, pos[0], pos[1]) if pos is not None else None

    def key_where(self, path: tuple) -> Location | None:
        """Where the mapping key that ends `path` is written (for 'unknown key' errors)."""
        pos = self._keys.get(tuple(path))
        if pos is not None:
            return Location(self.file, pos[0], pos[1])
        return self.where(path)

    def paths(self, prefix: tuple = ()) -> Iterator[tuple]:
        """Every recorded value path under `prefix` (prefix itself excluded), relative to it."""
        n = len(prefix)
        for path in self._values:
            if len(path) > n and path[:n] == prefix:
                yield path[n:]


def _pos(node: Node) -> tuple[int, int]:
    mark = node.start_mark
    return (mark.line + 1, mark.column + 1)


class _Builder:
    def __init__(self, file: str) -> None:
        self.file = file
        self.values: dict[tuple, tuple[int, int]] = {}
        self.keys: dict[tuple, tuple[int, int]] = {}
        self.errors: list[PlaybookError] = []
        self.done: dict[int, Any] = {}  # id(node) -> value: aliases reuse, never re-walk
        self.active: set[int] = set()
        self.entry_marks: dict[int, dict[Any, tuple[tuple[int, int], tuple[int, int]]]] = {}

    def error(self, node: Node, message: str) -> None:
        line, col = _pos(node)
        self.errors.append(LoadError(message, location=Location(self.file, line, col)))

    def build(self, node: Node, path: tuple) -> Any:
        self.values[path] = _pos(node)
        key = id(node)
        if key in self.done:
            return self.done[key]
        if key in self.active:
            self.error(node, "an alias refers to the value that contains it (recursive structures are not allowed)")
            return None
        if isinstance(node, ScalarNode):
            value = self.scalar(node)
        elif isinstance(node, SequenceNode):
            if node.tag != _SEQ:
                self.error(node, f"tags are not allowed (found '{_short(node.tag)}')")
            self.active.add(key)
            value = [self.build(item, path + (i,)) for i, item in enumerate(node.value)]
            self.active.discard(key)
        else:
            assert isinstance(node, MappingNode)  # the composer makes only these three kinds of node
            if node.tag != _MAP:
                self.error(node, f"tags are not allowed (found '{_short(node.tag)}')")
            self.active.add(key)
            value = self.mapping(node, path)
            self.active.discard(key)
        self.done[key] = value
        return value

    def scalar(self, node: ScalarNode) -> Any:
        tag, text = node.tag, node.value
        if tag == _STR:
            return text
        if tag == _PLAIN or tag in (_INT, _FLOAT, _BOOL, _NULL):
            try:
                value = resolve_scalar(text)
            except _Ambiguous as exc:
                self.error(node, str(exc))
                return text
            if tag != _PLAIN and not _fits_tag(tag, value):
                self.error(node, f"'{text}' is not a valid {_short(tag)}")
                return text
            return float(value) if tag == _FLOAT else value
        self.error(node, f"tags are not allowed (found '{_short(tag)}')")
        return text

    def mapping(self, node: MappingNode, path: tuple) -> dict[Any, Any]:
        result: dict[Any, Any] = {}
        marks: dict[Any, tuple[tuple[int, int], tuple[int, int]]] = {}
        first_line: dict[Any, int] = {}
        merged: list[Node] = []
        for key_node, value_node in node.value:
            if isinstance(key_node, ScalarNode) and key_node.tag == _PLAIN and key_node.value == "<<":
                merged.append(value_node)
                continue
            if not isinstance(key_node, ScalarNode):
                self.error(key_node, "mapping keys must be plain values (strings or numbers)")
                continue
            # keys are text: `on:`/`y:`/`404:` as keys mean the words, not booleans or numbers
            key = key_node.value if key_node.tag in (_PLAIN, _STR) else self.scalar(key_node)
            kpos = _pos(key_node)
            if key in first_line:
                self.error(key_node, f"duplicate key '{key}' (first at line {first_line[key]})")
                continue
            first_line[key] = kpos[0]
            self.keys[path + (key,)] = kpos
            result[key] = self.build(value_node, path + (key,))
            marks[key] = (kpos, _pos(value_node))
        if merged:
            result, marks = self.merge(merged, result, marks, path)
        self.entry_marks[id(node)] = marks
        return result

    def merge(self, merged: list[Node], own: dict, own_marks: dict, path: tuple) -> tuple[dict, dict]:
        sources: list[Node] = []
        for value_node in merged:
            items = value_node.value if isinstance(value_node, SequenceNode) else [value_node]
            for item in items:
                if isinstance(item, MappingNode):
                    sources.append(item)
                else:
                    self.error(item, "a merge key '<<' takes a mapping or a list of mappings")
        result: dict[Any, Any] = {}
        marks: dict[Any, Any] = {}
        saved = self.values, self.keys
        self.values, self.keys = {}, {}  # a merge source's own paths are not paths of this mapping
        built = [self.build(src, path + ("<<",)) for src in sources]
        self.values, self.keys = saved
        for src, value in zip(sources, built):  # earlier mappings in a merge list win over later ones
            if not isinstance(value, dict):
                continue
            src_marks = self.entry_marks.get(id(src), {})
            for k, v in value.items():
                if k not in result:
                    result[k] = v
                    marks[k] = src_marks.get(k)
        for k in result:
            if k not in own and marks.get(k):
                self.keys[path + (k,)], self.values[path + (k,)] = marks[k]
        result.update(own)
        marks.update(own_marks)
        return result, marks


def _short(tag: str) -> str:
    return "!!" + tag[len(_STD) :] if tag.startswith(_STD) else tag


def _fits_tag(tag: str, value: Any) -> bool:
    if tag == _NULL:
        return value is None
    if tag == _BOOL:
        return isinstance(value, bool)
    if tag == _INT:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def load_text(text: str, file: str = "<string>") -> Document:
    """Parse YAML text into a `Document`; bad input raises `LoadError` (or `ValidationErrors`
    holding several `LoadError`s), never a PyYAML exception."""
    try:
        check_events(yaml.parse(text, Loader=_Loader), file)  # before anything is built
        root = yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        raise _syntax_error(exc, file, text) from None
    except yaml.YAMLError as exc:
        raise LoadError(f"YAML error: {exc}", path=file) from None
    except RecursionError:
        raise LoadError("YAML is nested too deeply", path=file) from None
    if root is None:
        return Document(file, None)
    builder = _Builder(file)
    try:
        data = builder.build(root, ())
    except RecursionError:
        raise LoadError("YAML is nested too deeply", path=file) from None
    if builder.errors:
        errors = sorted(builder.errors, key=lambda e: (e.location.line, e.location.col) if e.location else (0, 0))
        raise errors[0] if len(errors) == 1 else ValidationErrors(errors)
    return Document(file, data, builder.values, builder.keys)


def load_file(path: str) -> Document:
    """Read and parse a YAML file; unreadable, undecodable, oversized or non-regular files are a
    `LoadError` (see engine/yamlio/bounds.py)."""
    raw = read_bounded(path)
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise LoadError(f"file is not UTF-8 (byte {exc.start})", path=str(path)) from None
    return load_text(text, str(path))


def _syntax_error(exc: yaml.MarkedYAMLError, file: str, text: str) -> LoadError:
    mark = exc.problem_mark or exc.context_mark
    problem = exc.problem or exc.context or "invalid YAML"
    if exc.context and exc.problem and exc.context_mark is not None:
        problem = f"{problem} ({exc.context} at line {exc.context_mark.line + 1})"
    index = getattr(mark, "index", None)
    if isinstance(index, int) and 0 <= index < len(text) and text[index] == "\t":
        problem += " (a tab: indent with spaces)"
    location = Location(file, mark.line + 1, mark.column + 1) if mark is not None else None
    return LoadError(f"YAML syntax error: {problem}", location=location)
