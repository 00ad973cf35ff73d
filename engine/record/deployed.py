"""The record of deployed artifact digests, per playbook and source.

`<state_dir>/artifacts/<playbook>/<source>.json` keeps the history of what each source of a
playbook deployed: `{"digest", "version", "time", "run_id", ...}` entries, oldest first.
`last_deployed` reads the newest; source modules compare with it to say "no change" or
"1.0.0 republished: A → B", and a rollback can fetch the exact bytes again by digest.
`ArtifactRecorder` writes it from the events of a successful run.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from engine.errors import ModuleError
from engine.model import jsonable
from engine.model.events import Event, RunFinished
from engine.model.results import Status, UnknownValue

__all__ = ["record_path", "history", "last_deployed", "record_deployed", "ArtifactRecorder"]


HISTORY_KEEP = 200  # entries per source; older ones are dropped


_SAFE_NAME = re.compile(r"[^A-Za-z0-9_.@+-]")


def record_path(state_dir: str | os.PathLike[str], playbook: str, source: str) -> Path:
    """`<state_dir>/artifacts/<playbook>/<source>.json` (names made filesystem-safe)."""
    return Path(state_dir) / "artifacts" / _SAFE_NAME.sub("_", playbook) / f"{_SAFE_NAME.sub('_', source)}.json"


def history(state_dir: str | os.PathLike[str], playbook: str, source: str) -> list[dict[str, Any]]:
    """Every recorded deployment of a source, oldest first (empty when none)."""
    path = record_path(state_dir, playbook, source)
    try:
        data = jsonable.loads(path.read_text())
    except FileNotFoundError:
        return []
    except (OSError, ValueError) as exc:
        raise ModuleError(f"artifact record {path} is unreadable: {exc}") from None
    entries = data.get("history") if isinstance(data, dict) else None
    return [e for e in entries if isinstance(e, dict)] if isinstance(entries, list) else []


def last_deployed(state_dir: str | os.PathLike[str], playbook: str, source: str) -> dict[str, Any] | None:
    """The newest recorded deployment of a source (`digest`, `version`, `time`, `run_id`), or None."""
    entries = history(state_dir, playbook, source)
    return entries[-1] if entries else None


def record_deployed(
    state_dir: str | os.PathLike[str],
    playbook: str,
    source: str,
    *,
    digest: str,
    version: Any = None,
    run_id: str = "",
    extra: Mapping[str, Any] | None = None,
    now: float | None = None,
) -> dict[str, Any]:
    """Append a deployment to a source's history (atomically: temp file + rename)."""
    path = record_path(state_dir, playbook, source)
    path.parent.mkdir(parents=True, exist_ok=True)
    entries = history(state_dir, playbook, source)
    entry: dict[str, Any] = {
        "digest": digest,
        "version": version,
        "time": now if now is not None else time.time(),
        "run_id": run_id,
    }
    for k, v in (extra or {}).items():
        entry.setdefault(k, v)
    entries.append(entry)
    doc = {"playbook": playbook, "source": source, "history": entries[-HISTORY_KEEP:]}
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(doc, fh, indent=1, default=str)
        os.rename(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return entry


_RECORDED_EXTRA = ("uri", "integrity", "tarball", "package", "version_id")


class ArtifactRecorder:
    """Event subscriber: after a successful run, records the digest of every source step.

    Register it with the run's subscribers: `ArtifactRecorder(state_dir, playbook_name)`. On
    `RunFinished` of a run (mode "run") whose exit code is 0, each `sources.<name>` result with a
    `digest` output is appended to `<state_dir>/artifacts/<playbook_name>/<name>.json` unless the
    newest entry already has that digest and version. A failed or interrupted run records
    nothing: its artifacts were not (completely) deployed.
    """

    def __init__(
        self, state_dir: str | os.PathLike[str], playbook_name: str, on_error: Callable[[str], None] | None = None
    ) -> None:
        self.state_dir = state_dir
        self.playbook = playbook_name
        self.on_error = on_error
        self.recorded: list[tuple[str, dict[str, Any]]] = []

    def __call__(self, event: Event) -> None:
        if not isinstance(event, RunFinished):
            return
        summary = event.summary
        if getattr(summary, "mode", None) != "run" or summary.exit_code() != 0:
            return
        for result in summary.results:
            if result.host is not None or not result.step.startswith("sources."):
                continue
            if result.status not in (Status.OK, Status.CHANGED):
                continue
            outs = result.outputs or {}
            digest = outs.get("digest")
            if not isinstance(digest, str) or not digest:
                continue
            source = result.step[len("sources.") :]
            version = outs.get("version")
            if isinstance(version, UnknownValue):
                version = None
            try:
                last = last_deployed(self.state_dir, self.playbook, source)
                if last and last.get("digest") == digest and last.get("version") == version:
                    continue
                extra = {k: outs[k] for k in _RECORDED_EXTRA if isinstance(outs.get(k), (str, int, float))}
                entry = record_deployed(
                    self.state_dir,
                    self.playbook,
                    source,
                    digest=digest,
                    version=version,
                    run_id=summary.run_id,
                    extra=extra,
                )
                self.recorded.append((source, entry))
            except (OSError, ModuleError) as exc:  # the deploy happened; a broken record must not hide it
                if self.on_error is not None:
                    self.on_error(f"could not record artifact of source '{source}': {exc}")
