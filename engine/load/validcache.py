"""Remember which playbook and inventory contents passed their JSON Schemas.

Validating is pure: the same data against the same schema gives the same answer. A run whose
playbook and inventory have not changed since they last validated cleanly need not import
jsonschema (about 65 ms) nor validate again (about 30 ms). So a clean validation leaves an
empty marker file named by the sha256 of the schema and the data together. Each later load
looks for it first. A changed file, a changed schema (a new version of playbook, a module's
arguments) or an edited value gives another name, and is validated in full. Invalid content
never gets a marker, so its errors are reported every time.

The markers live in `$PLAYBOOK_CACHE_DIR/valid/`, by default `$XDG_CACHE_HOME/playbook/valid/`
(`~/.cache/playbook/valid/`). Deleting them is always safe. When the directory cannot be
written, everything is simply validated every time.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any

__all__ = ["key", "known", "remember", "cache_dir"]


def cache_dir() -> str:
    explicit = os.environ.get("PLAYBOOK_CACHE_DIR")
    if explicit:
        return os.path.join(explicit, "valid")
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "playbook", "valid")


def key(kind: str, schemas: Any, data: Any) -> str | None:
    """The marker name for `data` checked against `schemas`; None when the data is not plain
    JSON-like values (it is then always validated)."""
    try:
        text = json.dumps([kind, schemas, data], sort_keys=True, allow_nan=False, separators=(",", ":"))
    except (TypeError, ValueError):
        return None
    return hashlib.sha256(text.encode()).hexdigest()


def known(marker: str | None) -> bool:
    return marker is not None and os.path.exists(os.path.join(cache_dir(), marker))


def remember(marker: str | None) -> None:
    if marker is None:
        return
    try:
        os.makedirs(cache_dir(), exist_ok=True)
        with open(os.path.join(cache_dir(), marker), "a"):
            pass
    except OSError:
        pass  # a read-only home: validate every time
