"""Run ids and release ids."""

from __future__ import annotations

import datetime as _dt
import uuid
from typing import Any

__all__ = ["new_run_id", "unused_release_id", "new_release_id"]


def new_run_id() -> str:
    return uuid.uuid4().hex[:12]


def unused_release_id(history: Any) -> str:
    """A new release id no recorded run used: two runs within one second would otherwise share
    `releases/<id>` (the second writing into the live release); the later gets `-2`, `-3`, ...
    (which still sort after the first)."""
    from modules._support.releases import release_name_for

    base = new_release_id()
    return release_name_for(base, history.release_ids(base))


def new_release_id() -> str:
    """A sortable release id, UTC to the second (Capistrano style): 20261124T051500Z."""
    return _dt.datetime.now(_dt.UTC).strftime("%Y%m%dT%H%M%SZ")
