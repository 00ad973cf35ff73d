"""The exception tree of playbook.

Every error the engine raises on purpose is a `PlaybookError`. Subtypes also inherit the
builtin they resemble, so callers that catch `ValueError` or `OSError` keep working, and they
carry their subject as fields (location, host, step) rather than only as prose.

Third-party exceptions (paramiko, botocore, kubernetes, jinja2, yaml) are translated into these
at the boundary of the layer that calls them; none escapes a connection or a module.

    PlaybookError
    ├── LoadError (ValueError)               a file could not be read or parsed
    ├── ValidationError (ValueError)         a value does not fit the schema
    ├── ValidationErrors (ValueError)        several of the above, found in one pass
    ├── TemplateError (ValueError)           a template failed to parse or render
    ├── GraphError (ValueError)              the step graph is not a DAG / names a missing step
    ├── ArgError (ValueError)                a module argument is invalid after rendering
    ├── InventoryEditError (ValueError)      `playbook inventory …` refused an edit
    ├── ConnectionFailed (ConnectionError)   a host could not be reached: `unreachable`
    │   └── HostKeyError                     unknown or changed host key
    ├── CommandTimeout (TimeoutError)        a command outlived its step's timeout
    ├── ReadOnlyViolation (RuntimeError)     a write through a read-only client (planning)
    ├── ModuleError (RuntimeError)           a module could not plan or apply
    │   ├── YamlEditError                    engine/yamlio/scalars.py
    │   ├── DigestMismatch                   modules/_support/artifacts.py
    │   ├── ExtractError                     modules/_support/extract.py
    │   │   └── UnsafeEntry                  an archive entry that would escape
    │   ├── Conflict                         modules/_support/kube.py (HTTP 409, retried)
    │   └── Forbidden                        modules/_support/kube.py (401/403, certain)
    ├── LockHeld (RuntimeError)              another run holds a deploy lock
    ├── StalePlan (RuntimeError)             a saved plan no longer matches the world
    ├── UntrustedPlan (ValueError)           a saved plan fails its hash or signature check
    ├── ResumeRefused (RuntimeError)         a resume would mix two runs' inputs
    ├── RollbackRefused (RuntimeError)       a rollback would leave migrations applied, or
    │                                        some host cannot be rolled back
    └── DynamicInventoryError (RuntimeError) a dynamic inventory source failed

The ModuleError children live beside the code that raises them; every other class is here.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable
from dataclasses import dataclass

__all__ = [
    "Location",
    "PlaybookError",
    "LoadError",
    "ValidationError",
    "ValidationErrors",
    "TemplateError",
    "GraphError",
    "ConnectionFailed",
    "HostKeyError",
    "CommandTimeout",
    "ModuleError",
    "ReadOnlyViolation",
    "ArgError",
    "LockHeld",
    "InventoryEditError",
    "StalePlan",
    "UntrustedPlan",
    "ResumeRefused",
    "RollbackRefused",
    "DynamicInventoryError",
    "suggest",
]


@dataclass(frozen=True)
class Location:
    """A place in a YAML file: 1-based line and column, as editors count."""

    file: str
    line: int
    col: int

    def __str__(self) -> str:
        return f"{self.file}:{self.line}:{self.col}"


class PlaybookError(Exception):
    """Base of every error playbook raises on purpose; its str() is the user-facing message.

    `certain`: the error does not depend on what upstream steps will change, so a dry run
    reports the step failed rather than unknown (a bad argument is bad whatever runs first)."""

    certain: bool = False

    def __init__(self, message: str, *, location: Location | None = None, path: str = "") -> None:
        self.message = message
        self.location = location
        self.path = path
        super().__init__(self.__str__())

    def __str__(self) -> str:
        where = f"{self.location} " if self.location else ""
        subject = f"{self.path}: " if self.path else ""
        return f"{where}{subject}{self.message}"


class LoadError(PlaybookError, ValueError):
    """A file could not be read or parsed (YAML syntax, duplicate key, forbidden tag)."""


class ValidationError(PlaybookError, ValueError):
    """A value does not fit the schema: the field, what was expected and what was found."""


class ValidationErrors(PlaybookError, ValueError):
    """Several validation errors found in one pass; str() lists them one per line."""

    def __init__(self, errors: Iterable[PlaybookError]) -> None:
        self.errors = list(errors)
        super().__init__("\n".join(str(e) for e in self.errors))

    def __str__(self) -> str:
        return "\n".join(str(e) for e in self.errors)


class TemplateError(PlaybookError, ValueError):
    """A Jinja2 template failed to parse or render (undefined variable, sandbox violation)."""


class GraphError(PlaybookError, ValueError):
    """The step graph is not a DAG, or a step names a step that does not exist."""


class ConnectionFailed(PlaybookError, ConnectionError):
    """A host could not be reached or authenticated; the host is then `unreachable`.

    `seconds`: how long the attempt took (the pool sets it), so the step that reports a failure
    found before it started still shows the time it cost."""

    def __init__(self, message: str, *, host: str = "") -> None:
        self.host = host
        self.seconds = 0.0
        super().__init__(message, path=host)


class HostKeyError(ConnectionFailed):
    """The host's key is unknown or differs from known_hosts; carries the offered fingerprint."""

    def __init__(self, message: str, *, host: str = "", fingerprint: str = "") -> None:
        self.fingerprint = fingerprint
        super().__init__(message, host=host)


class CommandTimeout(PlaybookError, TimeoutError):
    """A command ran longer than its step's timeout."""


class ModuleError(PlaybookError, RuntimeError):
    """A module could not plan or apply; the message says what on which host."""


class ReadOnlyViolation(PlaybookError, RuntimeError):
    """A write was attempted where only reads are allowed: a module's `plan` (a dry run, or the
    plan half of a run) tried to build a writing client or send a mutating request. A bug in the
    module, never retried or reported as unknown; nothing was written. (Not an OSError: the
    network handlers that turn OSError into "unreachable" must not swallow it.)"""


class ArgError(PlaybookError, ValueError):
    """A module argument is invalid after rendering."""

    certain = True


class LockHeld(PlaybookError, RuntimeError):
    """A deploy lock is held by another run; the message names the holder."""


class InventoryEditError(PlaybookError, ValueError):
    """An inventory edit was refused; the file was left unchanged."""


class StalePlan(PlaybookError, RuntimeError):
    """The world moved since the plan was made; `drifted` lists (host, step, why)."""

    def __init__(self, message: str, drifted: list[tuple[str, str, str]]) -> None:
        self.drifted = drifted
        super().__init__(message)


class UntrustedPlan(PlaybookError, ValueError):
    """A saved plan file failed verification (altered, unsigned, signed with another key);
    `plan_file` is the file. Nothing was applied."""

    def __init__(self, message: str, *, plan_file: str = "") -> None:
        self.plan_file = plan_file
        super().__init__(message)


class ResumeRefused(PlaybookError, RuntimeError):
    """`run --resume` would mix two runs' inputs under one release (the playbook, inventory,
    `--limit` or a source changed since the run); the message names what and how."""


class RollbackRefused(PlaybookError, RuntimeError):
    """The rollback would leave migrations applied, or some host cannot be rolled back; the
    message lists them, and `hosts` names the hosts that cannot. Nothing was changed on any
    host."""

    def __init__(self, message: str, *, hosts: Iterable[str] = ()) -> None:
        self.hosts = list(hosts)
        super().__init__(message)


class DynamicInventoryError(PlaybookError, RuntimeError):
    """A dynamic inventory source failed (no credentials, API error, a bad name or address)."""


def suggest(name: str, candidates: Iterable[str]) -> str:
    """Return ` (did you mean 'x'?)` for the closest candidate, or an empty string."""
    close = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""
