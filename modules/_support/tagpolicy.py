"""Picking an image tag by policy: newest `master-*` by the timestamp or build number the tags
carry, or the highest semantic version in a range.

Tags come from the playbook (or a registry lookup done by the caller); this module only filters
and orders them, so it is pure and unit-tested with lists of strings. The shape follows Flux's
ImagePolicy (a filter pattern, then an ordering), with orderings that read what CI pipelines
actually put in tags:

- `timestamp`: a date-time inside the tag: `20240501120000`, `20240501T120000Z`,
  `2024-05-01T12-00-00`, or a Unix epoch in seconds (10 digits) or milliseconds (13 digits).
- `build`: the first purely numeric part after the pattern's literal prefix (`master-1234-ab12cd`).
- `semver`: `MAJOR.MINOR.PATCH[-pre][+build]` at the end of the tag (an optional `v` before it),
  filtered by `semver_range`; pre-releases only when the range names one. As with every order, a
  candidate without the key (`latest` under a semver policy) is an error naming it.
- `alphabetical`: plain string order (as Flux's `alphabetical: asc`).
- `auto`: `timestamp` when every candidate carries one, else `build` when every candidate has a
  build number, else an error asking for an explicit order.

A regex `pattern` may capture the ordering key itself with a named group `ts`, `build` or
`version`.
"""

from __future__ import annotations

import datetime as _dt
import fnmatch
import re
from collections.abc import Iterable
from dataclasses import dataclass

from engine.errors import ArgError

__all__ = [
    "ORDERS",
    "TagPolicy",
    "SemVer",
    "parse_semver",
    "semver_range",
    "tag_timestamp",
    "tag_build_number",
    "select_tag",
    "policy_from_args",
]

ORDERS = ("auto", "timestamp", "build", "semver", "alphabetical")

_EPOCH_MIN, _EPOCH_MAX = 946_684_800, 4_102_444_800  # 2000-01-01 .. 2100-01-01


@dataclass(frozen=True)
class TagPolicy:
    """Which tags qualify (`pattern`: a glob such as `master-*`, or a regex starting with `^`) and
    how they are ordered (`order`, one of `ORDERS`); `semver_range` implies `order: semver`."""

    pattern: str | None = None
    order: str = "auto"
    semver_range: str | None = None

    def __post_init__(self) -> None:
        if self.order not in ORDERS:
            raise ArgError(f"'tag_order' must be one of {', '.join(ORDERS)} (got {self.order!r})")
        if self.semver_range is not None:
            semver_range(self.semver_range)  # validate early
            if self.order not in ("auto", "semver"):
                raise ArgError(f"'semver_range' needs 'tag_order: semver' (got {self.order!r})")
        if self.pattern and self.pattern.startswith("^"):
            try:
                re.compile(self.pattern)
            except re.error as exc:
                raise ArgError(f"'tag_pattern' is not a valid regex: {exc} (got {self.pattern!r})") from None

    @property
    def effective_order(self) -> str:
        return "semver" if self.semver_range is not None and self.order == "auto" else self.order

    def matches(self, tag: str) -> re.Match[str] | None:
        """The match of `tag` against the pattern (the whole tag must match), or None."""
        if not self.pattern:
            return re.fullmatch(r"(?s).*", tag)
        if self.pattern.startswith("^"):
            return re.fullmatch(self.pattern, tag)
        return re.match(fnmatch.translate(self.pattern), tag)

    def literal_prefix(self) -> str:
        """The part of a glob pattern before its first wildcard (`master-` for `master-*`)."""
        if not self.pattern or self.pattern.startswith("^"):
            return ""
        return re.split(r"[*?\[]", self.pattern, maxsplit=1)[0]

    def describe(self) -> str:
        parts = [f"pattern {self.pattern!r}" if self.pattern else "any tag"]
        order = self.effective_order
        parts.append(f"newest by {order}" if order in ("timestamp", "build") else f"highest by {order}")
        if self.semver_range:
            parts.append(f"in range {self.semver_range!r}")
        return ", ".join(parts)


# -- timestamps and build numbers ----------------------------------------------------------------

_TS_PATTERNS = (
    # 20240501T120000Z, 20240501120000, 20240501-120000
    re.compile(r"(?<!\d)(\d{4})(\d{2})(\d{2})[T_-]?(\d{2})(\d{2})(\d{2})Z?(?!\d)"),
    # 2024-05-01T12-00-00, 2024-05-01T12:00:00Z, 2024-05-01_12.00.00
    re.compile(r"(?<!\d)(\d{4})-(\d{2})-(\d{2})[T_.-](\d{2})[-:.]?(\d{2})[-:.]?(\d{2})Z?(?!\d)"),
)
_EPOCH = re.compile(r"(?<![0-9A-Za-z])(\d{10}|\d{13})(?![0-9A-Za-z])")


def _ts_from_group(value: str) -> float | None:
    for pat in _TS_PATTERNS:
        m = pat.search(value)
        if m:
            try:
                year, month, day, hour, minute, second = (int(g) for g in m.groups())
                when = _dt.datetime(year, month, day, hour, minute, second, tzinfo=_dt.UTC)
            except ValueError:
                continue
            return when.timestamp()
    m = _EPOCH.search(value)
    if m:
        n = int(m.group(1))
        secs = n / 1000 if len(m.group(1)) == 13 else n
        if _EPOCH_MIN <= secs <= _EPOCH_MAX:
            return float(secs)
    return None


def tag_timestamp(tag: str, policy: TagPolicy | None = None) -> float | None:
    """The UTC time a tag carries (seconds since the epoch), or None."""
    m = policy.matches(tag) if policy else None
    if m is not None and "ts" in m.re.groupindex and m.group("ts"):
        text = m.group("ts")
        if text.isdigit() and len(text) in (10, 13):
            return int(text) / (1000 if len(text) == 13 else 1)
        return _ts_from_group(text)
    rest = tag[len(policy.literal_prefix()) :] if policy else tag
    return _ts_from_group(rest)


def tag_build_number(tag: str, policy: TagPolicy | None = None) -> int | None:
    """The build number a tag carries: the named group `build`, else the first purely numeric
    part after the pattern's literal prefix."""
    m = policy.matches(tag) if policy else None
    if m is not None and "build" in m.re.groupindex and m.group("build"):
        return int(m.group("build")) if m.group("build").isdigit() else None
    rest = tag[len(policy.literal_prefix()) :] if policy else tag
    for part in re.split(r"[-_.+]", rest):
        if part.isdigit():
            return int(part)
    return None


# -- semantic versions ---------------------------------------------------------------------------

_SEMVER = re.compile(
    r"v?(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)(?:-([0-9A-Za-z-]+(?:\.[0-9A-Za-z-]+)*))?(?:\+([0-9A-Za-z.-]+))?"
)


@dataclass(frozen=True, order=False)
class SemVer:
    """A semantic version; compares by semver precedence (build metadata ignored)."""

    major: int
    minor: int
    patch: int
    pre: tuple[str, ...] = ()

    def key(self) -> tuple:
        # a release sorts after its pre-releases; numeric identifiers sort before alphanumeric ones
        pre = tuple((0, int(p), "") if p.isdigit() else (1, 0, p) for p in self.pre)
        return (self.major, self.minor, self.patch, 1 if not self.pre else 0, pre)

    def __lt__(self, other: SemVer) -> bool:
        return self.key() < other.key()

    def __le__(self, other: SemVer) -> bool:
        return self.key() <= other.key()

    def __gt__(self, other: SemVer) -> bool:
        return self.key() > other.key()

    def __ge__(self, other: SemVer) -> bool:
        return self.key() >= other.key()

    def __str__(self) -> str:
        return f"{self.major}.{self.minor}.{self.patch}" + (f"-{'.'.join(self.pre)}" if self.pre else "")


def parse_semver(text: str, *, search: bool = False) -> SemVer | None:
    """`1.2.3`, `v1.2.3-rc.1+build.5`; with `search`, the version at the end of a longer tag."""
    if search:
        m = re.search(r"(?:(?<=[^0-9A-Za-z.])|^)" + _SEMVER.pattern + r"$", text)
    else:
        m = _SEMVER.fullmatch(text)
    if not m:
        return None
    pre = tuple(m.group(4).split(".")) if m.group(4) else ()
    return SemVer(int(m.group(1)), int(m.group(2)), int(m.group(3)), pre)


_PARTIAL = re.compile(r"v?(\d+|[xX*])(?:\.(\d+|[xX*]))?(?:\.(\d+|[xX*]))?(?:-([0-9A-Za-z.-]+))?")
_COMPARATOR = re.compile(r"(>=|<=|>|<|=|\^|~)?\s*(\S+)")


def _partial(text: str, rng: str) -> tuple[list[int | None], tuple[str, ...]]:
    m = _PARTIAL.fullmatch(text)
    if not m:
        raise ArgError(f"'semver_range' has an invalid version {text!r} (got {rng!r})")
    nums = [None if g is None or g in "xX*" else int(g) for g in m.groups()[:3]]
    # after a wildcard everything is a wildcard: 1.x.3 means 1.x
    for i in range(3):
        if nums[i] is None:
            nums[i + 1 :] = [None] * (2 - i)
            break
    return nums, tuple(m.group(4).split(".")) if m.group(4) else ()


def _bounds(op: str, text: str, rng: str) -> list[tuple[str, SemVer]]:
    """One comparator as a list of (op, version) constraints (npm semantics)."""
    nums, pre = _partial(text, rng)
    major, minor, patch = nums
    if major is None:
        return []  # *, x: anything
    lo = SemVer(major, minor or 0, patch or 0, pre)
    if op in ("", "="):
        if patch is not None:
            return [("=", lo)]
        hi = SemVer(major + 1, 0, 0) if minor is None else SemVer(major, minor + 1, 0)
        return [(">=", lo), ("<", SemVer(hi.major, hi.minor, hi.patch, ("0",)))]
    if op == "^":
        if major > 0 or minor is None:
            hi = SemVer(major + 1, 0, 0)
        elif minor > 0 or patch is None:
            hi = SemVer(0, minor + 1, 0)
        else:
            hi = SemVer(0, 0, (patch or 0) + 1)
        return [(">=", lo), ("<", SemVer(hi.major, hi.minor, hi.patch, ("0",)))]
    if op == "~":
        hi = SemVer(major + 1, 0, 0) if minor is None else SemVer(major, minor + 1, 0)
        return [(">=", lo), ("<", SemVer(hi.major, hi.minor, hi.patch, ("0",)))]
    if op in (">", "<=") and patch is None:
        # >1.2 means >=1.3.0; <=1.2 means <1.3.0
        nxt = SemVer(major + 1, 0, 0) if minor is None else SemVer(major, minor + 1, 0)
        return [(">=" if op == ">" else "<", nxt)]
    return [(op, lo)]


_OPS = {
    "=": lambda a, b: a.key() == b.key(),
    ">=": lambda a, b: a >= b,
    "<=": lambda a, b: a <= b,
    ">": lambda a, b: a > b,
    "<": lambda a, b: a < b,
}


def semver_range(rng: str):
    """A predicate for an npm-style range: `>=1.2.0 <2`, `^1.4`, `~2.3.1`, `1.x`, `1.2.3 || ^2`.

    Pre-release versions satisfy the range only when one of its comparators names a pre-release
    of the same MAJOR.MINOR.PATCH (as npm does)."""
    alternatives: list[list[tuple[str, SemVer]]] = []
    if not rng.strip():
        raise ArgError("'semver_range' must not be empty")
    for alt in rng.split("||"):
        text = re.sub(r"(>=|<=|>|<|=|\^|~)\s+", r"\1", alt.strip())
        cons: list[tuple[str, SemVer]] = []
        if " - " in alt:
            a, b = (p.strip() for p in alt.split(" - ", 1))
            cons += _bounds(">=", a, rng) + _bounds("<=", b, rng)
        else:
            for tok in text.split():
                m = _COMPARATOR.fullmatch(tok)
                if not m:
                    raise ArgError(f"'semver_range' has an invalid comparator {tok!r} (got {rng!r})")
                cons += _bounds(m.group(1) or "", m.group(2), rng)
        alternatives.append(cons)

    def allows(v: SemVer) -> bool:
        for cons in alternatives:
            if all(_OPS[op](v, bound) for op, bound in cons):
                if not v.pre or any(
                    b.pre and b.pre != ("0",) and (b.major, b.minor, b.patch) == (v.major, v.minor, v.patch)
                    for _, b in cons
                ):
                    return True
        return False

    return allows


# -- selection -----------------------------------------------------------------------------------


def select_tag(tags: Iterable[str], policy: TagPolicy) -> tuple[str, list[str]]:
    """The tag `policy` picks from `tags`, and the candidates it considered (best first).

    Raises `ArgError` when no tag qualifies or when the tags cannot be ordered as asked, naming
    the tags that lacked an ordering key."""
    seen: list[str] = []
    for t in tags:
        t = str(t).strip()
        if t and t not in seen:
            seen.append(t)
    candidates = [t for t in seen if policy.matches(t)]
    if not candidates:
        shown = ", ".join(seen[:8]) + (" …" if len(seen) > 8 else "")
        raise ArgError(f"no tag matches {policy.describe()} (got {len(seen)} tags{': ' + shown if seen else ''})")
    order = policy.effective_order
    if order == "auto":
        if all(tag_timestamp(t, policy) is not None for t in candidates):
            order = "timestamp"
        elif all(tag_build_number(t, policy) is not None for t in candidates):
            order = "build"
        else:
            raise ArgError(f"cannot order tags {candidates[:5]} by timestamp or build number: set 'tag_order'")
    keyed: list[tuple[object, str]] = []
    missing: list[str] = []
    for t in candidates:
        if order == "timestamp":
            k: object = tag_timestamp(t, policy)
        elif order == "build":
            k = tag_build_number(t, policy)
        elif order == "semver":
            m = policy.matches(t)
            group = m.group("version") if m is not None and "version" in m.re.groupindex else None
            v = parse_semver(group) if group else parse_semver(t, search=True)
            k = v.key() if v is not None else None
            if v is not None and policy.semver_range is not None and not semver_range(policy.semver_range)(v):
                continue
            if v is not None and v.pre and policy.semver_range is None:
                continue  # no range: releases only
        else:
            k = t
        if k is None:
            missing.append(t)
        else:
            keyed.append((k, t))
    if missing:  # every order, semver too: a tag that cannot be ordered is named, never skipped
        key = "semantic version (MAJOR.MINOR.PATCH)" if order == "semver" else order
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5 else "")
        raise ArgError(f"tags without a {key} to order by: {shown} (narrow 'tag_pattern' or set 'tag_order')")
    if not keyed:
        raise ArgError(f"no tag matches {policy.describe()} (candidates: {', '.join(candidates[:8])})")
    keyed.sort(key=lambda kt: (kt[0], kt[1]), reverse=True)
    return keyed[0][1], [t for _, t in keyed]


def policy_from_args(pattern: str | None, order: str, rng: str | None) -> TagPolicy:
    """A `TagPolicy` from module arguments (`tag_pattern`, `tag_order`, `semver_range`)."""
    return TagPolicy(pattern=pattern, order=order, semver_range=rng)
