"""The module interface and registry.

A module plans; only the engine applies. `plan` gets a `PlanContext` whose connection is a
read-only view (probes and reads, no `put`), so a dry run cannot mutate a host by construction;
`apply` is only ever called by the executor in run mode, with the plan it made. The other
clients follow the same rule (modules/_support/kube.py, git.py, http.py): `plan` can build only
their readers, whose classes have no write methods and whose transports refuse a mutating
request; a writer must be handed an `ApplyContext`, and `require_apply` refuses it (and every
write through it) while the engine is inside a `plan` call on this thread (`planning`).

Arguments are one frozen dataclass per module (`Args`). The JSON Schema in `schemas/`, the
loader's validation and `playbook modules NAME` are all generated from it: declare a field once,
with `arg(doc=...)` for its description.
"""

from __future__ import annotations

import dataclasses
import importlib
import pkgutil
import threading
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, cast, runtime_checkable

from engine.connection.base import CommandResult, Connection, ReadOnly
from engine.errors import CommandTimeout, ModuleError, PlaybookError, ReadOnlyViolation
from engine.model.results import Plan, StepResult

__all__ = [
    "arg",
    "output",
    "Output",
    "CHANGED_OUTPUT",
    "Module",
    "PlanContext",
    "ApplyContext",
    "planning",
    "is_planning",
    "require_apply",
    "register",
    "get_module",
    "all_modules",
    "source_module",
    "find_module",
    "source_types",
]

_MISSING = dataclasses.MISSING

CHANGED_OUTPUT = "changed"
"""The output the engine gives every step (engine/execute/step.py): whether it changed something."""


def arg(
    default: Any = _MISSING,
    *,
    doc: str,
    default_factory: Any = _MISSING,
    secret: bool = False,
    minimum: float | None = None,
    pattern: str | None = None,
    expected: str | None = None,
    nonempty: bool = False,
    exactly_one: str | None = None,
) -> Any:
    """Declare a module argument with its documentation (used for schema, docs and help) and
    its rules, which the schema, the docs, `validate` and the conversion before `plan` all
    enforce (engine/argschema.py): `minimum` for a number; `pattern` (a regex the whole string
    must match, described by `expected`) for a string; `nonempty` for a string or a list;
    `exactly_one`, a group name: of the arguments in that group exactly one is given (not null).
    None values (an optional argument not given) are never checked against the rules."""
    meta: dict[str, Any] = {"doc": doc, "secret": secret}
    rules = {"minimum": minimum, "pattern": pattern, "expected": expected, "nonempty": nonempty or None}
    rules["exactly_one"] = exactly_one
    meta.update({k: v for k, v in rules.items() if v is not None})
    if default_factory is not _MISSING:
        return field(default_factory=default_factory, metadata=meta)
    if default is _MISSING:
        return field(metadata=meta)
    return field(default=default, metadata=meta)


class Output(str):
    """An output's description that also carries the output's type (`type`, a type hint):
    `validate` renders templates reading the output with a placeholder of that type."""

    type: Any = Any


def output(doc: str, type: Any = Any) -> Output:  # noqa: A002 - reads as a declaration
    """Declare a module output with its description and type: `output("exit code", int)`.
    A plain string in `outputs` is an output of unknown type."""
    out = Output(doc)
    out.type = type
    return out


@dataclass
class _Context:
    """What a module may know about where it runs."""

    host: str | None  # None for controller steps
    step: str
    vars: Mapping[str, Any]
    run_id: str
    release_id: str
    state_dir: str  # controller-side directory for caches and records
    timeout: float | None = None
    deadline: float | None = None
    emit: Callable[[str], None] = lambda _msg: None  # progress lines for the reporter
    # a line the user must see without -v (an unverified artifact, a damaged cache entry)
    warn: Callable[[str], None] = lambda _msg: None
    # bytes done of a long transfer (done, total or None, what): a meter that rate-limits itself
    progress: Callable[..., None] = lambda _done, _total=None, _what="transfer": None
    target: Any = None  # the inventory Host (engine.model.config.Host) for host steps; None on the controller
    mode: str = "plan"  # "plan" | "run"

    def remaining(self) -> float | None:
        import time

        if self.deadline is None:
            return self.timeout
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise CommandTimeout(f"step '{self.step}' timed out after {self.timeout:g}s", path=self.host or "")
        return left


@dataclass
class PlanContext(_Context):
    """Context for `Module.plan`: `conn` is read-only (`probe`, `get`), and the module's other
    clients are the readers built from it (`KubeReader`, `GitReader`, `HttpReader`)."""

    conn: ReadOnly | None = None

    def probe(self, argv: Any, **kw: Any) -> CommandResult:
        if self.conn is None:
            raise ModuleError("this step has no connection", path=self.step)
        kw.setdefault("timeout", self.remaining())
        return self.conn.probe(argv, **kw)


@dataclass
class ApplyContext(_Context):
    """Context for `Module.apply`: `conn` is the host's full connection, and the writers
    (`Kube`, `Git`, `Http`) can be built from it."""

    conn: Connection | None = None

    def run(self, argv: Any, **kw: Any) -> CommandResult:
        require_apply(self, "running a command with the full connection")
        if self.conn is None:
            raise ModuleError("this step has no connection", path=self.step)
        kw.setdefault("timeout", self.remaining())
        return self.conn.run(argv, **kw)

    def probe(self, argv: Any, **kw: Any) -> CommandResult:
        return self.run(argv, **kw)


_PLANNING = threading.local()


@contextmanager
def planning() -> Iterator[None]:
    """Mark this thread as inside `Module.plan` (the executor wraps every plan call): writers
    refuse to be built or used until it ends."""
    depth = getattr(_PLANNING, "depth", 0)
    _PLANNING.depth = depth + 1
    try:
        yield
    finally:
        _PLANNING.depth = depth


def is_planning() -> bool:
    """Whether this thread is inside a `Module.plan` call the engine made."""
    return getattr(_PLANNING, "depth", 0) > 0


def require_apply(ctx: object, what: str) -> None:
    """Refuse `what` (building a writing client, or one write through it) unless `ctx` is an
    `ApplyContext` and no plan is running on this thread: `ReadOnlyViolation` otherwise."""
    step = str(getattr(ctx, "step", "") or "")
    if not isinstance(ctx, ApplyContext):
        raise ReadOnlyViolation(
            f"{what} needs the step's ApplyContext (got {type(ctx).__name__}): plan gets read-only clients only",
            path=step,
        )
    if is_planning():
        raise ReadOnlyViolation(f"{what} while planning: a dry run cannot write", path=step)


@runtime_checkable
class Module(Protocol):
    """What every module provides. See the module docstring for the contract."""

    name: ClassVar[str]
    Args: ClassVar[type]
    summary: ClassVar[str]
    outputs: ClassVar[Mapping[str, str]]  # output name -> description
    controller_only: ClassVar[bool]
    # valid YAML: a list of steps using the module, or a `sources:` mapping for a source module
    # (`playbook modules NAME`, docs/modules.md; tests/engine/test_module_examples.py loads each)
    examples: ClassVar[str]

    def plan(self, ctx: PlanContext, args: Any) -> Plan: ...

    def apply(self, ctx: ApplyContext, plan: Plan) -> StepResult | Mapping[str, Any] | None: ...

    # Optional: `check_args(self, args, vars) -> None`, what can be known wrong about rendered
    # arguments without a host (a local directory that does not exist), raising a PlaybookError
    # whose `path` is the argument's name. `validate`, `plan` and `run` call it before any host
    # is contacted (engine/execute/argcheck.py), with the step's template context as `vars`.


_REGISTRY: dict[str, Module] = {}
_SOURCES: dict[str, str] = {}
_loaded = False
_lock = threading.Lock()


def register(cls: type) -> type:
    """Class decorator: register a module by its `name` (and its `source_type`, if any)."""
    for attr in ("name", "Args", "summary"):
        if not hasattr(cls, attr):
            raise TypeError(f"module {cls.__name__} lacks '{attr}'")
    # checked above; `outputs`, `controller_only` and `examples` get their defaults here
    module = cast("type[Module]", cls)
    if not dataclasses.is_dataclass(module.Args):
        raise TypeError(f"module {module.name}: Args must be a dataclass")
    module.outputs = dict(getattr(cls, "outputs", {}))
    module.outputs.setdefault(
        CHANGED_OUTPUT,
        output("whether the step changed something on this host (in a plan: would change); every step has it", bool),
    )
    module.controller_only = bool(getattr(cls, "controller_only", False))
    module.examples = str(getattr(cls, "examples", ""))  # every module of modules/ has them (a test)
    _REGISTRY[module.name] = module()
    source_type = getattr(cls, "source_type", None)
    if source_type:
        _SOURCES[source_type] = module.name
    return cls


def _load_all() -> None:
    global _loaded
    with _lock:
        if _loaded:
            return
        import modules

        for info in pkgutil.iter_modules(modules.__path__):
            if not info.name.startswith("_"):
                importlib.import_module(f"modules.{info.name}")
        _loaded = True


def all_modules() -> dict[str, Module]:
    """Every registered module by name, importing the `modules` package on first use."""
    _load_all()
    return dict(sorted(_REGISTRY.items()))


def find_module(name: str) -> Module | None:
    """The module called `name`, importing only `modules/<name>.py` (a plan or run loads just
    the modules its playbook uses; each file registers the module of its own name)."""
    hit = _REGISTRY.get(name)
    if hit is not None:
        return hit
    if name.isidentifier() and not name.startswith("_"):
        try:
            importlib.import_module(f"modules.{name}")
        except ModuleNotFoundError as exc:
            if exc.name != f"modules.{name}":
                raise
    if name not in _REGISTRY:
        _load_all()
    return _REGISTRY.get(name)


def get_module(name: str) -> Module:
    found = find_module(name)
    if found is None:
        raise PlaybookError(f"unknown module '{name}'")
    return found


def source_module(source_type: str) -> str | None:
    """The module name that implements a source type (`local`, `s3`, `npm`, ...): looked up in
    `modules.SOURCE_TYPES` first (no imports), else among all modules."""
    import modules

    name = getattr(modules, "SOURCE_TYPES", {}).get(source_type)
    if name is not None and find_module(name) is not None:
        return name
    _load_all()
    return _SOURCES.get(source_type)


def source_types() -> list[str]:
    _load_all()
    return sorted(_SOURCES)
