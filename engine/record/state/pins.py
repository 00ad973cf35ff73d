"""The source digests every shard of a run must deploy, pinned by the first shard to start.

A sharded `run` (no saved plan) fetches its sources in every shard. The first shard to start
writes their digests to `<run id>.sources.json`, created only if absent (`If-None-Match: *` in
S3, `O_EXCL` in the local state directory); every later shard compares its own fetch with them
and refuses to start if a source changed in between (a re-uploaded object, a moved branch):
two shards would otherwise deploy two different trees under one release id.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from engine.model import jsonable
from engine.record.state import open_store, state_url
from engine.record.state.s3store import Precondition

__all__ = ["pin_sources"]


def pin_sources(state: str, state_dir: str, run_id: str, digests: Mapping[str, Any]) -> dict[str, Any]:
    """Pin `digests` for run `run_id` unless another part did first; return what is pinned."""
    url = state_url(state)
    if url is not None:
        store = open_store(url)
        name = f"history/runs/{run_id}.sources.json"
        try:
            store.put(name, dict(digests), if_absent=True)
            return dict(digests)
        except Precondition:
            got = store.get(name)
            return dict(got[0]) if got else dict(digests)
    path = Path(state_dir) / "pins" / f"{run_id}.sources.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return dict(jsonable.loads(path.read_text() or "{}"))
    with os.fdopen(fd, "w") as f:
        json.dump(dict(digests), f, sort_keys=True)
    return dict(digests)
