"""Where the controller keeps its state: the local state directory (the default) or a shared
`s3://bucket/prefix` backend (`--state`, `$PLAYBOOK_STATE`), for runs split over machines.

    state_url(text)                 StateUrl | None (None: local)
    open_store(url)                 the S3Store of a URL (one per process and URL)
    open_history(state, state_dir)  History (SQLite) or S3History

The backend's parts: engine/record/state/s3store.py (conditional requests, the self-test),
s3lock.py (deploy locks with leases), s3history.py (index and journals), budget.py (one
failure budget for all shards).
"""

from __future__ import annotations

import atexit
import json
import os
import threading
from typing import Any

from engine.record.state.s3store import S3Store, StateError, StateUrl, parse_state_url

__all__ = ["StateError", "StateUrl", "state_url", "open_store", "open_history"]

_STORES: dict[StateUrl, S3Store] = {}
_LOCK = threading.Lock()


def state_url(text: str | None, *, what: str = "--state") -> StateUrl | None:
    """The shared backend `text` names, or None for the local state (empty, or `local`)."""
    text = (text or "").strip()
    if not text or text == "local":
        return None
    return parse_state_url(text, what=what)


def open_store(url: StateUrl) -> S3Store:
    with _LOCK:
        if url not in _STORES:
            if not _STORES and os.environ.get("PLAYBOOK_STATE_STATS"):
                atexit.register(_write_stats, os.environ["PLAYBOOK_STATE_STATS"])
            _STORES[url] = S3Store(url)
        return _STORES[url]


def _write_stats(path: str) -> None:
    """One JSON line per process: the requests its stores made (bench/shards.py reads them)."""
    for store in _STORES.values():
        line = {"pid": os.getpid(), "requests": store.requests, "seconds": store.seconds, "by_kind": store.by_kind}
        with open(path, "a") as f:
            f.write(json.dumps(line, sort_keys=True) + "\n")


def open_history(state: str | None, state_dir: str) -> Any:
    """The run history: in the shared backend when `state` names one, else `<state_dir>/history.sqlite`."""
    url = state_url(state)
    if url is None:
        from engine.record.history import History

        return History(state_dir)
    from engine.record.state.s3history import S3History

    return S3History(open_store(url))
