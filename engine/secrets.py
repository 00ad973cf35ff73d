"""Secret values and the value-based scrubber every outbound text passes through.

A `Secret` masks itself wherever it is turned into text by accident (`str`, `repr`, f-strings,
`%` formatting); code that really needs the value calls `.reveal()`. It is deliberately *not* a
`str` subclass: `"token=" + secret` or `json.dumps(secret)` raise instead of leaking.

Masking the type is not enough (a revealed value ends up in a command's output, an error, a
diff), so reporters also pass every line through a `Scrubber`, which replaces each registered
value wherever it occurs, like ansible's `no_log` by value.
"""

from __future__ import annotations

import hmac
import re
import threading
from collections.abc import Iterable
from typing import Any

__all__ = ["MASK", "Secret", "Scrubber", "SCRUBBER"]

MASK = "********"

#: Values shorter than this are not registered: masking "yes" or "1" everywhere would make
#: output unreadable and hide nothing worth hiding.
MIN_SECRET_LEN = 4
#: Lines of a multi-line secret (a PEM key) are registered on their own from this length, so
#: a secret split across the lines of a diff is still masked.
MIN_LINE_LEN = 8


class Scrubber:
    """Replaces every registered secret value in text with `MASK`.

    All values are matched by one compiled regex preferring the longest value (so a secret that
    contains another is masked whole), rebuilt after `add` on the next `scrub`, so registering
    many values compiles once. Safe to share between threads.
    """

    def __init__(self, values: Iterable[Any] = ()) -> None:
        self._values: set[str] = set()
        self._pattern: re.Pattern[str] | None = None
        self._lock = threading.Lock()
        for v in values:
            self.add(v)

    def add(self, value: Any) -> None:
        """Register a secret (`str`, `bytes` or `Secret`); values under 4 characters are ignored."""
        if isinstance(value, Secret):
            value = value.reveal()
        if isinstance(value, bytes):
            value = value.decode("utf-8", errors="replace")
        if not isinstance(value, str):
            return
        new = {value} if len(value) >= MIN_SECRET_LEN else set()
        if "\n" in value:
            new |= {line.strip() for line in value.splitlines() if len(line.strip()) >= MIN_LINE_LEN}
        with self._lock:
            if new <= self._values:
                return
            self._values |= new
            self._pattern = None  # recompiled on the next scrub, so bulk adds compile once

    def __len__(self) -> int:
        return len(self._values)

    def __contains__(self, value: object) -> bool:
        return value in self._values

    def scrub(self, text: Any) -> str:
        """Return `text` (converted with `str` if needed) with every secret replaced by `MASK`."""
        if not isinstance(text, str):
            text = str(text)
        if not text or not self._values:
            return text
        return self._compiled().sub(MASK, text)

    def _compiled(self) -> re.Pattern[str]:
        pattern = self._pattern
        if pattern is None:
            with self._lock:
                if self._pattern is None:
                    self._pattern = _compile(self._values)
                pattern = self._pattern
        return pattern

    def scrub_obj(self, obj: Any) -> Any:
        """Scrub strings inside dicts (keys and values), lists and tuples; `Secret` becomes `MASK`.

        Containers are rebuilt (dict, list, tuple); other values are returned unchanged.
        """
        if isinstance(obj, Secret):
            return MASK
        if isinstance(obj, str):
            return self.scrub(obj)
        if isinstance(obj, dict):
            return {self.scrub_obj(k): self.scrub_obj(v) for k, v in obj.items()}
        if isinstance(obj, list):
            return [self.scrub_obj(v) for v in obj]
        if isinstance(obj, tuple):
            return tuple(self.scrub_obj(v) for v in obj)
        return obj


def _compile(values: Iterable[str]) -> re.Pattern[str]:
    """One regex matching any of `values`, preferring the longest.

    The alternation is factored into a prefix trie: a flat `a|b|c…` of thousands of secrets
    tries every branch at every position, while the trie tries one character per level.
    """
    ordered = sorted(values, key=lambda v: (-len(v), v))
    try:
        return re.compile(_trie_pattern(ordered))
    except (RecursionError, re.error, OverflowError):  # pathological nesting: fall back to flat
        return re.compile("|".join(re.escape(v) for v in ordered))


def _trie_pattern(values: Iterable[str]) -> str:
    trie: dict[str, Any] = {}
    for v in values:
        node = trie
        for ch in v:
            node = node.setdefault(ch, {})
        node[""] = True
    return _node_pattern(trie)


def _node_pattern(node: dict[str, Any]) -> str:
    parts: list[str] = []
    # Follow single-child chains iteratively: a 4 KiB key must not cost 4096 stack frames.
    while len(node) == 1 and "" not in node:
        ((ch, node),) = node.items()
        parts.append(re.escape(ch))
    branches = [re.escape(ch) + _node_pattern(child) for ch, child in sorted(node.items()) if ch != ""]
    ends_here = "" in node
    if branches:
        alternation = branches[0] if len(branches) == 1 else "(?:" + "|".join(branches) + ")"
        if ends_here:
            # Greedy optional: the longer secret is tried first, the shorter one still matches.
            alternation = "(?:" + alternation + ")?"
        parts.append(alternation)
    return "".join(parts)


#: The process-wide scrubber: `Secret`s register here by default and reporters use it unless
#: given another.
SCRUBBER = Scrubber()


class Secret:
    """A secret string that masks itself as `********` in str/repr/format.

    Constructing one registers the value with `scrubber` (the process-wide `SCRUBBER` unless
    told otherwise; pass `scrubber=None` to skip), so it is masked even once revealed.
    """

    __slots__ = ("_value",)

    def __init__(self, value: str, *, scrubber: Scrubber | None = SCRUBBER) -> None:
        if isinstance(value, Secret):
            value = value.reveal()
        if not isinstance(value, str):
            raise TypeError(f"'value' must be str (got {type(value).__name__})")
        self._value = value
        if scrubber is not None:
            scrubber.add(value)

    def reveal(self) -> str:
        """The real value: pass it only to where it is needed (stdin, a 0600 file, an API)."""
        return self._value

    def __str__(self) -> str:
        return MASK

    def __repr__(self) -> str:
        return MASK

    def __format__(self, spec: str) -> str:
        return format(MASK, spec)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Secret):
            return hmac.compare_digest(self._value.encode(), other._value.encode())
        return NotImplemented

    def __hash__(self) -> int:
        return hash(("Secret", self._value))

    def __bool__(self) -> bool:
        return bool(self._value)

    def __copy__(self) -> Secret:
        return self

    def __deepcopy__(self, _memo: Any) -> Secret:
        return self
