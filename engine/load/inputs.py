"""The inputs of a run besides the playbook file: which inventory (`-i`, the playbook's
`inventory:`, $PLAYBOOK_INVENTORY), extra vars (`-e`) and secret vars (`secrets:`, `--secret`)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

from engine.errors import LoadError
from engine.model.config import Playbook

__all__ = ["find_inventory", "parse_extra_vars", "resolve_secrets"]


def find_inventory(playbook: Playbook, explicit: str | None) -> str:
    """`-i` wins; then the playbook's `inventory:` (relative to it); then $PLAYBOOK_INVENTORY."""
    if explicit:
        return explicit
    if playbook.inventory:
        return os.path.normpath(os.path.join(os.path.dirname(playbook.path), playbook.inventory))
    env = os.environ.get("PLAYBOOK_INVENTORY")
    if env:
        return env
    raise LoadError(
        "no inventory: pass -i INVENTORY, set `inventory:` in the playbook, or set $PLAYBOOK_INVENTORY",
        path=playbook.path,
    )


def parse_extra_vars(items: Sequence[str]) -> dict[str, Any]:
    """`-e key=value` (a string), `-e @vars.yml`, `-e '{"json": "object"}'`; later ones win."""
    from engine.yamlio.document import load_file

    result: dict[str, Any] = {}
    for item in items:
        if item.startswith("@"):
            doc = load_file(item[1:])
            if not isinstance(doc.data, dict):
                raise LoadError(f"extra vars file must hold a mapping (got {type(doc.data).__name__})", path=item[1:])
            result.update(doc.data)
        elif item.lstrip().startswith("{"):
            import json

            from engine.yamlio.bounds import MAX_DEPTH, check_depth

            try:
                data = json.loads(item)
            except json.JSONDecodeError as exc:
                raise LoadError(f"-e JSON is not valid: {exc}") from None
            except RecursionError:  # the decoder recurses once per level
                raise LoadError(f"-e JSON: lists and mappings nested more than {MAX_DEPTH} levels deep") from None
            if not isinstance(data, dict):
                raise LoadError("-e JSON must be an object")
            check_depth(data, "-e JSON")
            result.update(data)
        elif "=" in item:
            key, _, value = item.partition("=")
            key = key.strip()
            if not key.isidentifier():
                raise LoadError(f"-e: '{key}' is not a valid variable name (expected key=value)")
            result[key] = value
        else:
            raise LoadError(f"-e expects key=value, @file.yml or a JSON object (got {item!r})")
    return result


#: The shortest secret accepted (engine/secrets.py masks shorter values nowhere: "yes", "1")
MIN_SECRET_CHARS = 8


def resolve_secrets(playbook: Playbook, cli: Sequence[str] = ()) -> dict[str, str]:
    """Secret vars: the playbook's `secrets:` (env or file) and `--secret NAME` (the value of env
    var NAME) / `--secret NAME=@FILE`. Every value is registered with the scrubber before it is
    used, so it is masked in every output; none ever travels in argv."""
    from engine.secrets import SCRUBBER

    found: dict[str, str] = {}

    def read_file(name: str, path: str) -> str:
        full = os.path.expanduser(path)
        if not os.path.isabs(full):
            full = os.path.join(os.path.dirname(os.path.abspath(playbook.path)), full)
        try:
            with open(full, encoding="utf-8") as fh:
                return fh.read().rstrip("\n")
        except OSError as exc:
            raise LoadError(f"secret '{name}': cannot read file {path}: {exc.strerror}") from None

    def read_env(name: str, var: str) -> str:
        if var not in os.environ:
            raise LoadError(f"secret '{name}': environment variable {var} is not set")
        return os.environ[var]

    for name, spec in playbook.secrets.items():
        found[name] = read_env(name, spec["env"]) if "env" in spec else read_file(name, spec["file"])
    for item in cli:
        name, sep, rest = item.partition("=")
        if not name.isidentifier():
            raise LoadError(f"--secret: '{name}' is not a valid variable name (expected NAME or NAME=@FILE)")
        if sep and not rest.startswith("@"):
            raise LoadError(
                f"--secret {name}: give the value in the environment variable {name} or as "
                f"{name}=@FILE; a value on the command line would be visible to every user of the machine"
            )
        found[name] = read_file(name, rest[1:]) if sep else read_env(name, name)
    for name, value in found.items():
        if len(value) < MIN_SECRET_CHARS:
            raise LoadError(
                f"secret '{name}': the value is {len(value)} characters long; secrets must have at least "
                f"{MIN_SECRET_CHARS} (a shorter value cannot be masked in output without hiding ordinary text)"
            )
    for value in found.values():
        SCRUBBER.add(value)
    return found
