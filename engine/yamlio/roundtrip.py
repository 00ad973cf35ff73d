"""Round-trip YAML edits that keep everything an edit does not touch.

An edit is made on ruamel.yaml's round-trip tree (comments, key order, quoting and flow/block
style are kept), but the file is not simply re-dumped: ruamel normalises indentation, spacing
and the text before `---`. Instead the untouched document and the edited one are both dumped,
their difference is computed, and only those hunks are applied to the original text
(`merge_edit`). Lines outside the hunks stay byte-identical. Two ruamel habits are corrected on
the way: a new entry appended to a block is moved above the blank lines and comments that
introduce the next section, and a removed entry takes with it only the comment lines directly
above it (comments after it stay).

The node helpers build ruamel nodes for new values in the style the file already uses
(`detect_indent`, `majority_flow`) and quote strings the strict loader would read as something
else (`needs_quotes`).
"""

from __future__ import annotations

import difflib
import re
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

import yaml
from ruamel.yaml.comments import CommentedMap, CommentedSeq
from ruamel.yaml.scalarstring import DoubleQuotedScalarString, SingleQuotedScalarString

from engine.errors import LoadError
from engine.yamlio.bounds import check_events

__all__ = [
    "merge_edit",
    "detect_indent",
    "needs_quotes",
    "flow_style",
    "new_map",
    "new_seq",
    "to_node",
    "majority_flow",
]


def _norm(line: str) -> str:
    s = " ".join(line.split())
    s = re.sub(r"([\[{]) ", r"\1", s)
    return re.sub(r" ([\]},])", r"\1", s)


def _blank(line: str) -> bool:
    return not line.strip()


def _comment(line: str) -> bool:
    return line.lstrip().startswith("#")


def _significant(line: str) -> bool:
    return not _blank(line) and not _comment(line)


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def _slide_insert(B: list[str], b: int, new: list[str], floor: int) -> int:
    """Move an insertion at B[b] above the blank lines and comments that introduce what follows
    (ruamel hangs them on the previous entry, so appended entries land below them)."""
    first = next((ln for ln in new if _significant(ln)), None)
    if first is None:
        return b
    ind = _indent(first)
    k = b
    while k < len(B) and not _significant(B[k]):
        k += 1
    next_ind = _indent(B[k]) if k < len(B) else -1
    at_block_end = next_ind < ind
    start = b
    while b - 1 >= floor:
        line = B[b - 1]
        if _blank(line) or (_comment(line) and (_indent(line) < ind if at_block_end else _indent(line) <= ind)):
            b -= 1
        else:
            break
    if b == 0 and not at_block_end:
        # only comments above: the file's header stays first; a comment block that is
        # separated from it by a blank line introduces the next key, so insert above that
        blanks = [i for i in range(start) if _blank(B[i])]
        return blanks[-1] + 1 if blanks else start
    return b


def _fix_delete(B: list[str], b1: int, b2: int, floor: int, ceil: int) -> tuple[int, int]:
    """Narrow a deletion to the removed entry: its lines and the comments directly above it.
    Comments and blank lines after it stay; a doubled blank line left behind is collapsed."""
    content = [i for i in range(b1, b2) if _significant(B[i])]
    if not content:
        return b1, b1
    first, last = content[0], content[-1]
    start = first
    while start - 1 >= max(floor, 0) and _comment(B[start - 1]) and _indent(B[start - 1]) >= _indent(B[first]):
        start -= 1
    end = last + 1
    before_blank = start == 0 or _blank(B[start - 1])
    if before_blank and end < min(ceil, len(B)) and _blank(B[end]):
        end += 1
    return start, end


def _hunks(B: list[str], C: list[str]) -> list[tuple[int, int, list[str]]]:
    ops = [op for op in difflib.SequenceMatcher(None, B, C, autojunk=False).get_opcodes() if op[0] != "equal"]
    out: list[tuple[int, int, list[str]]] = []
    for n, (tag, b1, b2, c1, c2) in enumerate(ops):
        floor = out[-1][1] if out else 0
        ceil = ops[n + 1][1] if n + 1 < len(ops) else len(B)
        if tag == "insert":
            b = _slide_insert(B, b1, C[c1:c2], floor)
            out.append((b, b, C[c1:c2]))
        elif tag == "delete":
            s, e = _fix_delete(B, b1, b2, floor, ceil)
            if s < e:
                out.append((s, e, []))
        else:
            out.append((b1, b2, C[c1:c2]))
    return out


def merge_edit(original: str, before: str, after: str) -> str | None:
    """Apply the change from `before` to `after` (two dumps of one document) to `original`
    (the text `before` was loaded from), leaving every other line of `original` as it was.
    Returns None when the hunks cannot be placed unambiguously."""
    A, B, C = original.split("\n"), before.split("\n"), after.split("\n")
    eq: list[int | None] = [None] * len(B)
    matcher = difflib.SequenceMatcher(None, [_norm(x) for x in A], [_norm(x) for x in B], autojunk=False)
    for tag, a1, _a2, b1, b2 in matcher.get_opcodes():
        if tag == "equal":
            for k in range(b2 - b1):
                eq[b1 + k] = a1 + k
    pieces: list[tuple[int, int, list[str]]] = []
    for b1, b2, new in _hunks(B, C):
        if b1 == b2:
            if b1 > 0 and eq[b1 - 1] is not None:
                a = eq[b1 - 1] + 1  # type: ignore[operator]
            elif b1 < len(B) and eq[b1] is not None:
                a = eq[b1]  # type: ignore[assignment]
            elif b1 == 0:
                a = 0
            else:
                return None
            pieces.append((a, a, new))
            continue
        lo, hi = b1, b2
        while lo > 0 and eq[lo] is None:
            lo -= 1
        while hi < len(B) and eq[hi - 1] is None:
            hi += 1
        if eq[lo] is None or eq[hi - 1] is None:
            return None
        new = B[lo:b1] + new + B[b2:hi]
        pieces.append((eq[lo], eq[hi - 1] + 1, new))  # type: ignore[arg-type, operator]
    out: list[str] = []
    pos = 0
    for a1, a2, new in sorted(pieces, key=lambda p: (p[0], p[1])):
        if a1 < pos:
            return None
        out.extend(A[pos:a1])
        out.extend(new)
        pos = a2
    out.extend(A[pos:])
    return "\n".join(out)


def detect_indent(text: str) -> tuple[int, int, int]:
    """(mapping, sequence, offset) indentation most used by the file, as ruamel wants them."""
    try:
        check_events(yaml.parse(text, Loader=yaml.SafeLoader), "<yaml>")  # the walk below expands aliases
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except (yaml.YAMLError, LoadError):
        root = None
    maps: Counter[int] = Counter()
    seqs: Counter[tuple[int, int]] = Counter()

    def walk(node: Any) -> None:
        if isinstance(node, yaml.MappingNode):
            for k, v in node.value:
                if isinstance(v, yaml.MappingNode) and not v.flow_style and v.value:
                    step = v.start_mark.column - k.start_mark.column
                    if step > 0:
                        maps[step] += 1
                elif isinstance(v, yaml.SequenceNode) and not v.flow_style and v.value:
                    dash = v.start_mark.column - k.start_mark.column
                    item = v.value[0].start_mark.column - k.start_mark.column
                    if dash >= 0 and item >= dash + 2:
                        seqs[(item, dash)] += 1
                walk(v)
        elif isinstance(node, yaml.SequenceNode):
            for item in node.value:
                walk(item)

    walk(root)
    mapping = maps.most_common(1)[0][0] if maps else 2
    if seqs:
        sequence, offset = seqs.most_common(1)[0][0]
    else:
        sequence, offset = mapping + 2, mapping
    return mapping, sequence, offset


def needs_quotes(value: str) -> bool:
    from engine.yamlio.document import resolve_scalar

    if value == "":
        return True
    try:
        return resolve_scalar(value) != value
    except Exception:
        return True


def flow_style(node: Any) -> bool | None:
    if isinstance(node, (CommentedMap, CommentedSeq)):
        return node.fa.flow_style()
    return None


def new_map(flow: bool, items: Mapping[str, Any] = {}) -> CommentedMap:
    m = CommentedMap()
    for k, v in items.items():
        m[k] = to_node(v, flow=True) if flow else to_node(v)
    if flow:
        m.fa.set_flow_style()
    else:
        m.fa.set_block_style()
    return m


def new_seq(flow: bool, items: Iterable[Any] = ()) -> CommentedSeq:
    s = CommentedSeq(to_node(v, flow=True) for v in items)
    if flow:
        s.fa.set_flow_style()
    else:
        s.fa.set_block_style()
    return s


def to_node(value: Any, *, flow: bool = True, like: Any = None) -> Any:
    """A Python value as a ruamel node: strings that the strict loader would read as something
    else are quoted (ruamel's YAML 1.2 rules would write `yes` or `0755` bare)."""
    if isinstance(value, str):
        if isinstance(like, SingleQuotedScalarString) and "\n" not in value:
            return SingleQuotedScalarString(value)
        if isinstance(like, DoubleQuotedScalarString) or needs_quotes(value):
            return DoubleQuotedScalarString(value)
        return value
    if isinstance(value, dict):
        return new_map(flow, value)
    if isinstance(value, list):
        return new_seq(flow, value)
    return value


def majority_flow(values: Iterable[Any], default: bool) -> bool:
    votes = Counter(flow_style(v) for v in values if isinstance(v, (CommentedMap, CommentedSeq)) and len(v))
    votes.pop(None, None)
    if not votes:
        return default
    return votes[True] >= votes[False]
