"""The time and size budget of rendering one template, and stopping a render on an interrupt.

A template is code: `{% for i in range(99999) %}{% for j in range(99999) %}…` runs for hours and
`{{ 'x' * 10**10 }}` asks for 10 GB in one C call, during which no signal handler runs. So:

- every loop iteration, call, attribute lookup and operator of a template checks the render's
  deadline (`$PLAYBOOK_TEMPLATE_TIMEOUT` seconds, 5 by default) and the run's stop event (set by
  SIGINT/SIGTERM), so a render ends within one iteration of either (a trace function would do the
  same for five times the cost of every render);
- the operations that build big values in one step (`*`, `+`, `**`, `%`, `~`, and the filters
  and string methods that pad, repeat or join) are checked *before* they run against the size
  limit (`$PLAYBOOK_TEMPLATE_MAX_SIZE`, 1M by default), and so is the output as it is produced.

See docs/templating.md ("Limits"). engine/templating.py wires this into its sandbox.
"""

from __future__ import annotations

import os
import re
import string
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from engine.errors import TemplateError

__all__ = [
    "DEFAULT_SECONDS",
    "DEFAULT_MAX_SIZE",
    "Budget",
    "RenderInterrupted",
    "budget",
    "current",
    "tick",
    "ticked",
    "check_binop",
    "check_call",
    "check_format",
    "bounded_join",
    "bounded_output",
]

DEFAULT_SECONDS = 5.0
"""How long one template may render, by default (`$PLAYBOOK_TEMPLATE_TIMEOUT`)."""

DEFAULT_MAX_SIZE = 1024 * 1024
"""The largest string or list a template may build, by default (`$PLAYBOOK_TEMPLATE_MAX_SIZE`)."""

_TIME_ENV, _SIZE_ENV = "PLAYBOOK_TEMPLATE_TIMEOUT", "PLAYBOOK_TEMPLATE_MAX_SIZE"


class RenderInterrupted(TemplateError):
    """The run was asked to stop (SIGINT/SIGTERM) while a template was rendering."""


@dataclass
class Budget:
    """The limits of one render: a monotonic deadline, a size, and the run's stop event."""

    seconds: float
    max_size: int
    stop: threading.Event | None = None
    deadline: float = 0.0

    def check(self) -> None:
        if self.stop is not None and self.stop.is_set():
            raise RenderInterrupted("interrupted while rendering a template")
        if time.monotonic() > self.deadline:
            raise TemplateError(
                f"template took longer than its budget of {self.seconds:g} s (set ${_TIME_ENV} to allow more)"
            )

    def size(self, n: int, what: str) -> None:
        if n > self.max_size:
            raise TemplateError(
                f"template would build {what} of {n} characters or items, over the limit of "
                f"{self.max_size} (set ${_SIZE_ENV} to allow more)"
            )


_local = threading.local()


def current() -> Budget | None:
    """The budget of the render running in this thread, if any."""
    return getattr(_local, "budget", None)


def _setting(name: str, default: float, parse: Callable[[str], float]) -> float:
    raw = os.environ.get(name, "").strip()
    if not raw:
        return default
    try:
        value = parse(raw)
    except ValueError:
        value = 0
    if value <= 0:
        raise TemplateError(f"${name} must be a positive number (got {raw!r})")
    return value


def _size(raw: str) -> int:
    factor = {"K": 1024, "M": 1024**2, "G": 1024**3}.get(raw[-1].upper(), 1)
    return int(raw[:-1] if factor != 1 else raw) * factor


_settings: dict[tuple[str | None, str | None], tuple[float, int]] = {}


def _limits() -> tuple[float, int]:
    key = (os.environ.get(_TIME_ENV), os.environ.get(_SIZE_ENV))
    found = _settings.get(key)
    if found is None:
        found = _settings[key] = (
            _setting(_TIME_ENV, DEFAULT_SECONDS, float),
            int(_setting(_SIZE_ENV, DEFAULT_MAX_SIZE, _size)),
        )
    return found


class budget:  # noqa: N801 (used as a context manager, like contextlib's)
    """`with budget(stop) as b:` runs the block as one render under the configured budget;
    a render inside another shares the outer one's."""

    __slots__ = ("_stop", "_own")

    def __init__(self, stop: threading.Event | None = None) -> None:
        self._stop = stop
        self._own = False

    def __enter__(self) -> Budget:
        outer = current()
        if outer is not None:
            return outer
        seconds, max_size = _limits()
        b = Budget(seconds, max_size, self._stop, time.monotonic() + seconds)
        b.check()
        _local.budget = b
        self._own = True
        return b

    def __exit__(self, *exc: object) -> None:
        if self._own:
            _local.budget = None


def tick() -> None:
    """A point where a render may be stopped: each loop iteration, call, attribute and operator."""
    b = getattr(_local, "budget", None)
    if b is not None:
        b.check()


def ticked(iterable: Any) -> Iterator[Any]:
    """`iterable`, checking the budget before each item (what a template's `for` loops over)."""
    b = current()
    for item in iterable:
        if b is not None:
            b.check()
        yield item


_SIZED = (str, bytes, list, tuple)
_WIDTH = re.compile(r"[0-9]+")


def check_binop(operator: str, left: Any, right: Any) -> None:
    """Refuse, before it runs, an operator that would build a value over the size limit."""
    b = current()
    if b is None:
        return
    b.check()
    if operator == "*":
        for seq, n in ((left, right), (right, left)):
            if isinstance(seq, _SIZED) and isinstance(n, int):
                b.size(len(seq) * n, "a value")
        if isinstance(left, int) and isinstance(right, int):
            b.size((left.bit_length() + right.bit_length()) // 8, "a number (in bytes)")
    elif operator == "+":
        if isinstance(left, _SIZED) and isinstance(right, _SIZED):
            b.size(len(left) + len(right), "a value")
    elif operator == "**":
        if isinstance(left, int) and isinstance(right, int) and abs(left) > 1 and right > 0:
            b.size(right * abs(left).bit_length() // 8, "a number (in bytes)")
    elif operator == "%" and isinstance(left, str):
        b.size(_percent_size(left, right), "a formatted string")


# one %-conversion: (key), flags, width, .precision, length modifier, type
_CONVERSION = re.compile(r"%(?:\(([^)]*)\))?[-#0 +]*(\*|\d+)?(?:\.(\*|\d*))?[hlL]?(.)", re.DOTALL)
_HUGE = 10**30  # a width written with 30 digits or more: no need to read it to refuse it


def _number(digits: str) -> int:
    return int(digits) if len(digits) < 30 else _HUGE


def _text_len(value: Any, seen: dict[int, int]) -> int:
    """The length of `value` as text, worked out once per object (one value may fill many fields)."""
    key = id(value)
    if key not in seen:
        try:
            seen[key] = len(value) if isinstance(value, str) else len(str(value))
        except (ValueError, TypeError, RecursionError):  # formatting it fails the same way
            seen[key] = 0
    return seen[key]


def _percent_size(fmt: str, values: Any) -> int:
    """How long `fmt % values` can be: the format's length, every width and precision (a `*` one
    read from `values`: `'%*d' % (10**10, 1)`) and the text of the value each conversion takes
    (`'%(a)s' * 100000` takes one value 100000 times)."""
    mapping = values if isinstance(values, Mapping) else None
    args = list(values) if isinstance(values, tuple) else [values]
    total, i = len(fmt), 0
    seen: dict[int, int] = {}
    for m in _CONVERSION.finditer(fmt):
        key, width, precision, kind = m.groups()
        if kind == "%":
            continue
        for part in (width, precision):
            if part == "*":
                n = args[i] if i < len(args) else 0
                i += 1
                total += abs(n) if isinstance(n, int) else 0
            elif part:
                total += _number(part)
        if key is not None and mapping is not None:
            value = mapping.get(key, "")
        else:
            value, i = (args[i] if i < len(args) else ""), i + 1
        total += _text_len(value, seen)
    return total


_FORMATTER = string.Formatter()


def _format_size(fmt: str, args: Sequence[Any], kwargs: Mapping[str, Any]) -> int:
    """How long `fmt.format(*args, **kwargs)` can be: the format's length, every width and
    precision (nested ones read from the arguments as str.format would: `'{:{}}'.format('x',
    10**10)`) and the text of each field's value (for `{0.a}` or `{0[1]}`, all of argument 0's)."""
    total, auto = len(fmt), 0
    seen: dict[int, int] = {}

    def lookup(name: str) -> Any:
        nonlocal auto
        if name == "":
            value, auto = (args[auto] if auto < len(args) else ""), auto + 1
            return value
        key = re.split(r"[.\[]", name, maxsplit=1)[0]
        if key.isdigit():
            return args[int(key)] if int(key) < len(args) else ""
        return kwargs.get(key, "")

    try:
        for _, field, spec, _ in _FORMATTER.parse(fmt):
            if field is None:
                continue
            value = lookup(field)
            if spec and "{" in spec:
                resolved = []
                for literal, inner, _, _ in _FORMATTER.parse(spec):
                    resolved.append(literal)
                    if inner is not None:
                        width = lookup(inner)
                        resolved.append(str(width) if isinstance(width, (int, str)) else "")
                spec = "".join(resolved)
            total += _text_len(value, seen) + sum(_number(d) for d in _WIDTH.findall(spec or ""))
    except (ValueError, TypeError):  # not a valid format (or an int too long to print): str.format says so
        return len(fmt)
    return total


def check_format(fmt: str, args: Sequence[Any], kwargs: Any) -> None:
    """Refuse, before it runs, a `str.format`/`format_map` call that would build too big a string."""
    b = current()
    if b is None:
        return
    b.check()
    b.size(_format_size(fmt, args, kwargs if isinstance(kwargs, Mapping) else {}), "a formatted string")


_PADDING = {"center", "ljust", "rjust", "zfill"}


_TEXT = (str, bytes, bytearray)


def check_call(obj: Any, args: tuple, kwargs: dict) -> tuple:
    """Refuse, before it runs, a method call that would build too big a value. Returns the
    arguments to call it with: what `join` is given is read first (measured as it comes)."""
    b = current()
    if b is None:
        return args
    b.check()
    owner = getattr(obj, "__self__", None)
    name = getattr(obj, "__name__", "")
    if type(owner) is int and name == "to_bytes":
        length = args[0] if args else kwargs.get("length", 1)
        if isinstance(length, int):
            b.size(length, "a bytes value")
        return args
    if not isinstance(owner, _TEXT):
        return args
    try:
        if name in _PADDING and args and isinstance(args[0], int):
            b.size(args[0], "a padded string")
        elif name == "expandtabs":
            size = args[0] if args and isinstance(args[0], int) else kwargs.get("tabsize", 8)
            tabs = owner.count("\t") if isinstance(owner, str) else owner.count(b"\t")
            b.size(tabs * int(size) + len(owner), "a string")
        elif name == "replace" and len(args) >= 2 and isinstance(args[0], _TEXT) and isinstance(args[1], _TEXT):
            b.size(len(owner) + (owner.count(args[0]) + 1) * len(args[1]), "a string")  # type: ignore[arg-type]
        elif name == "translate" and args and isinstance(owner, str):
            table = args[0]
            values = table.values() if isinstance(table, Mapping) else table if isinstance(table, (list, tuple)) else ()
            widest = max((len(v) for v in values if isinstance(v, str)), default=1)
            b.size(len(owner) * widest, "a string")
        elif name == "join" and args:
            parts, total = [], 0
            for part in args[0]:
                parts.append(part)
                total += len(owner) + (len(part) if isinstance(part, _TEXT) else 0)
                b.size(total, "a string")
            return (parts, *args[1:])
    except TypeError:  # arguments the method itself refuses: it says so when called
        pass
    return args


def bounded_join(parts: Iterable[Any], sep: str = "") -> str:
    """`sep.join(str(p) for p in parts)` that checks the size as it goes (Jinja's `~` and `join`)."""
    b = current()
    out: list[str] = []
    total = 0
    for part in parts:
        text = part if isinstance(part, str) else str(part)
        total += len(text) + len(sep)
        if b is not None:
            b.size(total, "a string")
        out.append(text)
    return sep.join(out)


def bounded_output(pieces: Iterable[str]) -> str:
    """A template's output from its generator (pieces are strings), stopped at the size limit."""
    b = current()
    limit = b.max_size if b is not None else -1
    out: list[str] = []
    append = out.append
    total = 0
    for piece in pieces:
        total += len(piece)
        if total > limit >= 0 and b is not None:
            b.size(total, "an output")
        append(piece)
    return "".join(out)
