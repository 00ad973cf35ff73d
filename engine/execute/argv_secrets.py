"""Secrets rendered into a host command's arguments: refused before any host is touched.

A command's arguments are public on its host: every user sees them in `ps` and
`/proc/<pid>/cmdline`. Masking output cannot help there, so a step whose argument-bound fields
(below) read a secret, directly or through a playbook var built from one, is an error that names
the secret and the field, never the value. The way to hand a command a secret is its `env` (or
`stdin`), whose values travel on standard input (modules/_support/env_stdin.py).
`ARGV_FIELDS` lists, per module, the arguments that end up in a command line on the host.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

from engine import templating
from engine.errors import PlaybookError, TemplateError
from engine.model.config import Playbook
from engine.secrets import SCRUBBER

__all__ = ["ARGV_FIELDS", "secret_names", "secrets_in_argv"]

#: module -> argument names whose values become (part of) a host command line
ARGV_FIELDS: Mapping[str, tuple[str, ...]] = {
    "command": ("argv", "shell", "chdir", "creates", "removes", "unless"),
    "cache_clear": ("command", "chdir"),
    "migrate": ("up", "down", "chdir"),
}


def secret_names(playbook: Playbook, extra_vars: Mapping[str, Any]) -> set[str]:
    """The playbook's `secrets:` and every extra var whose value is a registered secret
    (`--secret NAME`), plus every playbook var whose template reads one of those."""
    names = set(playbook.secrets)
    names |= {k for k, v in extra_vars.items() if isinstance(v, str) and v in SCRUBBER}
    templates = {**playbook.vars, **extra_vars}
    changed = True
    while changed:  # vars built from secrets are secrets too ("Bearer {{ token }}")
        changed = False
        for name, value in templates.items():
            if name not in names and _reads(value) & names:
                names.add(name)
                changed = True
    return names


def secrets_in_argv(
    playbook: Playbook,
    extra_vars: Mapping[str, Any],
    *,
    locate: Callable[[Any, tuple], Any],
    dotted: Callable[[str, tuple], str],
) -> list[PlaybookError]:
    """One error per (step, field) whose template reads a secret, located at the field."""
    secrets = secret_names(playbook, extra_vars)
    if not secrets:
        return []
    errors: list[PlaybookError] = []
    for step in playbook.steps:
        for field in ARGV_FIELDS.get(step.module, ()):
            if field not in step.args:
                continue
            for path, source in _templates(step.args[field], ("args", field)):
                found = sorted(_reads_source(source) & secrets)
                if found:
                    errors.append(
                        TemplateError(
                            f"secret '{found[0]}' would be passed in the command's arguments ('{field}'), "
                            "which every user of the host can read in its process list; pass it in 'env' "
                            "(or 'stdin') instead",
                            location=locate(step, path),
                            path=dotted(step.id, path),
                        )
                    )
    return errors


def _reads(value: Any) -> set[str]:
    return {n for _, src in _templates(value, ()) for n in _reads_source(src)}


def _reads_source(source: str) -> set[str]:
    try:
        return templating.undeclared(source)
    except TemplateError:  # reported by the template check itself
        return set()


def _templates(value: Any, path: tuple) -> Iterator[tuple[tuple, str]]:
    if isinstance(value, str):
        if templating.is_template(value):
            yield path, value
    elif isinstance(value, Mapping):
        for k, v in value.items():
            yield from _templates(v, path + (k,))
    elif isinstance(value, (list, tuple)):
        for i, v in enumerate(value):
            yield from _templates(v, path + (i,))
