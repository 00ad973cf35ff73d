"""Editing one scalar in a YAML file without touching any other byte.

GitOps files are read by people: their comments (including Flux's `# {"$imagepolicy": ...}`
markers), quote styles, indentation and blank lines must survive an automated bump. PyYAML
drops all of that; ruamel.yaml's round trip keeps most of it. So an edit is made in two ways:

1. ruamel.yaml round trip (quotes preserved, indentation configured from the file), accepted
   only if the text it writes differs from the original in exactly the intended values;
2. otherwise a precise edit of the scalar's characters at the position ruamel reports for the
   node, keeping its quote style; a trailing comment moves with the value's new length and
   nothing else on the line changes.

Either way the result is verified: re-parsed, it must equal the original with only the intended
values changed, and the line diff must touch only the intended lines.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import yaml as pyyaml
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.error import YAMLError
from ruamel.yaml.scalarstring import DoubleQuotedScalarString, SingleQuotedScalarString

from engine.errors import LoadError, ModuleError
from engine.yamlio.bounds import check_events

__all__ = [
    "YamlEditError",
    "Target",
    "Marker",
    "parse_key_path",
    "find_key_path",
    "find_markers",
    "set_scalars",
    "guess_indent",
]


_MARKER = re.compile(r"#\s*(\{\s*\"\$imagepolicy\"\s*:\s*\"([^\"]+)\"\s*\})\s*$")


class YamlEditError(ModuleError):
    """A YAML file could not be parsed or edited as asked (the message names the file and line)."""


@dataclass(frozen=True)
class Target:
    """One scalar in a YAML stream: document index, path from the document root, 0-based
    line/column of the value's first character, and its current value."""

    doc: int
    path: tuple[Any, ...]
    line: int
    col: int
    value: Any

    def dotted(self) -> str:
        out = ""
        for p in self.path:
            out += f"[{p}]" if isinstance(p, int) else (("." if out else "") + str(p))
        return out


@dataclass(frozen=True)
class Marker:
    """A Flux image-policy marker: `policy` is `namespace:name`, `field` is None (the whole
    image), `tag`, `name` or `digest`."""

    policy: str
    field: str | None
    target: Target


def _bounded(text: str, name: str) -> None:
    """Refuse an alias bomb before ruamel builds anything (engine/yamlio/bounds.py)."""
    try:
        check_events(YAML().parse(text), name or "<yaml>")
    except LoadError as exc:
        raise YamlEditError(str(exc)) from None
    except YAMLError:
        pass  # the load that follows reports the syntax error


def _load(text: str, name: str) -> list[Any]:
    _bounded(text, name)
    y = YAML()
    y.preserve_quotes = True
    try:
        return [d for d in y.load_all(text)]
    except YAMLError as exc:
        raise YamlEditError(f"cannot parse YAML: {exc}", path=name) from None


def parse_key_path(path: str) -> tuple[Any, ...]:
    """`spec.values.image.tag` or `spec.template.spec.containers[0].image` as a tuple of keys
    and list indices."""
    parts: list[Any] = []
    for chunk in path.split("."):
        m = re.fullmatch(r"([^\[\]]*)((?:\[\d+\])*)", chunk)
        if not m or (not m.group(1) and not m.group(2)):
            raise YamlEditError(f"'key_path' must look like 'spec.values.image.tag' (got {path!r})")
        if m.group(1):
            parts.append(m.group(1))
        parts += [int(i) for i in re.findall(r"\[(\d+)\]", m.group(2))]
    return tuple(parts)


def _walk(node: Any, path: tuple[Any, ...], doc: int) -> Iterator[Target]:
    if isinstance(node, CommentedMap):
        for k, v in node.items():
            if isinstance(v, (CommentedMap, CommentedSeq)):
                yield from _walk(v, path + (k,), doc)
            else:
                line, col = node.lc.value(k)
                yield Target(doc, path + (k,), line, col, v)
    elif isinstance(node, CommentedSeq):
        for i, v in enumerate(node):
            if isinstance(v, (CommentedMap, CommentedSeq)):
                yield from _walk(v, path + (i,), doc)
            else:
                line, col = node.lc.item(i)
                yield Target(doc, path + (i,), line, col, v)


def _scalars(docs: Sequence[Any]) -> list[Target]:
    out: list[Target] = []
    for i, d in enumerate(docs):
        out += list(_walk(d, (), i))
    return out


def find_key_path(text: str, key_path: str, *, name: str = "") -> list[Target]:
    """Every scalar at `key_path`, one per document that has it (empty when none does)."""
    want = parse_key_path(key_path)
    return [t for t in _scalars(_load(text, name)) if t.path == want]


def find_markers(text: str, *, name: str = "") -> list[Marker]:
    """Every `# {"$imagepolicy": "ns:name[:field]"}` marker with the scalar on its line."""
    lines = text.splitlines()
    by_line: dict[int, list[Target]] = {}
    for t in _scalars(_load(text, name)):
        by_line.setdefault(t.line, []).append(t)
    out: list[Marker] = []
    for n, line in enumerate(lines):
        m = _MARKER.search(line)
        if not m:
            continue
        ref = m.group(2)
        parts = ref.split(":")
        if len(parts) == 2:
            policy, fld = ref, None
        elif len(parts) == 3 and parts[2] in ("tag", "name", "digest"):
            policy, fld = ":".join(parts[:2]), parts[2]
        else:
            raise YamlEditError(
                f"line {n + 1}: image policy marker must be 'namespace:name[:tag|:name|:digest]' (got {ref!r})",
                path=name,
            )
        on_line = [t for t in by_line.get(n, []) if t.col < m.start()]
        if not on_line:
            raise YamlEditError(
                f"line {n + 1}: image policy marker {ref!r} is not on a line with a scalar value", path=name
            )
        out.append(Marker(policy, fld, max(on_line, key=lambda t: t.col)))
    return out


# -- writing -------------------------------------------------------------------------------------


def guess_indent(text: str) -> tuple[int, int, int]:
    """(mapping, sequence, offset) for ruamel's `indent()`, read from the file's block structure."""
    mapping: dict[int, int] = {}
    offsets: dict[int, int] = {}
    prev: tuple[int, str] | None = None
    for raw in text.splitlines():
        stripped = raw.strip()
        if not stripped or stripped.startswith("#") or stripped in ("---", "..."):
            continue
        ind = len(raw) - len(raw.lstrip(" "))
        if prev is not None and prev[1].endswith(":") and ind > prev[0]:
            delta = ind - prev[0]
            if stripped.startswith("- "):
                offsets[delta] = offsets.get(delta, 0) + 1
            else:
                mapping[delta] = mapping.get(delta, 0) + 1
        prev = (ind, stripped.split(" #")[0].rstrip())
    m = max(mapping, key=lambda k: mapping[k]) if mapping else 2
    o = max(offsets, key=lambda k: offsets[k]) if offsets else 0
    return m, o + 2, o


def _plain_ok(value: str) -> bool:
    """Whether `value` reads back as the same string when written unquoted (YAML 1.1 and 1.2)."""
    if not value or value != value.strip() or "\n" in value or " #" in value or ": " in value:
        return False
    try:
        a = pyyaml.safe_load(f"k: {value}\n")
        b = YAML(typ="safe", pure=True).load(f"k: {value}\n")
    except Exception:  # noqa: BLE001 - any parse problem means: quote it
        return False
    return a == {"k": value} and b == {"k": value}


def _scalar_end(line: str, col: int, *, where: str) -> tuple[int, str]:
    """End column (exclusive) and style ("'", '"' or "") of the scalar starting at `col`."""
    ch = line[col] if col < len(line) else ""
    if ch == "'":
        i = col + 1
        while i < len(line):
            if line[i] == "'":
                if i + 1 < len(line) and line[i + 1] == "'":
                    i += 2
                    continue
                return i + 1, "'"
            i += 1
        raise YamlEditError(f"{where}: the quoted value continues on the next line; not edited")
    if ch == '"':
        i = col + 1
        while i < len(line):
            if line[i] == "\\":
                i += 2
                continue
            if line[i] == '"':
                return i + 1, '"'
            i += 1
        raise YamlEditError(f"{where}: the quoted value continues on the next line; not edited")
    if ch in ("|", ">", "&", "*", "!", ""):
        raise YamlEditError(f"{where}: block scalars, anchors, aliases and tags are not edited")
    comment = re.search(r"\s#", line[col:])
    end = col + comment.start() if comment else len(line)
    if re.search(r"[\[{]", line[:col]):  # inside a flow collection: `, ] }` also end it
        stop = re.search(r"[,\]}]", line[col:end])
        if stop:
            end = col + stop.start()
    end = col + len(line[col:end].rstrip())
    return end, ""


def _render(value: str, style: str) -> str:
    if style == "'" and "\n" not in value:
        return "'" + value.replace("'", "''") + "'"
    if style == "" and _plain_ok(value):
        return value
    return json.dumps(value, ensure_ascii=False)


def _precise(text: str, edits: Sequence[tuple[Target, str]], name: str) -> str:
    lines = text.splitlines(keepends=True)
    # right to left, so earlier columns on the same line stay valid
    for target, new in sorted(edits, key=lambda e: (e[0].line, e[0].col), reverse=True):
        line = lines[target.line]
        body = line.rstrip("\r\n")
        end, style = _scalar_end(body, target.col, where=f"{name}:{target.line + 1}:{target.col + 1}")
        lines[target.line] = body[: target.col] + _render(new, style) + body[end:] + line[len(body) :]
    return "".join(lines)


def _roundtrip(text: str, edits: Sequence[tuple[Target, str]], name: str) -> str | None:
    y = YAML()
    y.preserve_quotes = True
    y.width = 1 << 16
    m, s, o = guess_indent(text)
    y.indent(mapping=m, sequence=s, offset=o)
    _bounded(text, name)
    try:
        docs = list(y.load_all(text))
        for target, new in edits:
            node = docs[target.doc]
            for p in target.path[:-1]:
                node = node[p]
            old = node[target.path[-1]]
            if isinstance(old, (SingleQuotedScalarString, DoubleQuotedScalarString)):
                new_value: Any = type(old)(new)
            elif _plain_ok(new):
                new_value = new
            else:
                new_value = DoubleQuotedScalarString(new)
            node[target.path[-1]] = new_value
        buf = io.StringIO()
        if len(docs) == 1:
            y.dump(docs[0], buf)
        else:
            y.dump_all(docs, buf)
        return buf.getvalue()
    except Exception:  # noqa: BLE001 - any failure of the round trip means: use the precise edit
        return None


def _changed_lines(before: str, after: str) -> set[int] | None:
    a, b = before.splitlines(keepends=True), after.splitlines(keepends=True)
    if len(a) != len(b):
        return None
    return {i for i, (x, y) in enumerate(zip(a, b)) if x != y}


def _plain(docs: Iterable[Any]) -> list[Any]:
    return [json.loads(json.dumps(d, default=str)) for d in docs]


def _verify(before: str, after: str, edits: Sequence[tuple[Target, str]], name: str) -> None:
    want = _plain(_load(before, name))
    for target, new in edits:
        node = want[target.doc]
        for p in target.path[:-1]:
            node = node[p]
        node[target.path[-1]] = new
    got = _plain(_load(after, name))
    if got != want:
        raise YamlEditError("the edited file does not read back as intended; not written", path=name)
    lines = _changed_lines(before, after)
    if lines is None or not lines <= {t.line for t, _ in edits}:
        raise YamlEditError("the edit would change lines other than the intended ones; not written", path=name)


def set_scalars(text: str, edits: Sequence[tuple[Target, str]], *, name: str = "") -> tuple[str, str]:
    """`text` with each target set to its new string value, and which way it was made
    (`"roundtrip"` or `"precise"`). Only the targets' lines change; anything else is an error."""
    edits = [(t, new) for t, new in edits if t.value != new or not isinstance(t.value, str)]
    if not edits:
        return text, "none"
    out = _precise(text, edits, name)
    _verify(text, out, edits, name)
    # The round trip is the reference editor; it is used as is when it changed nothing but the
    # values (its output equals the character-precise edit). It may re-align a trailing comment
    # or re-flow a document marker, so otherwise the precise edit wins.
    rt = _roundtrip(text, edits, name)
    return out, ("roundtrip" if rt == out else "precise")
