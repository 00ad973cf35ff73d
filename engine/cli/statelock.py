"""`playbook lock status|release|break --state s3://...`: the deploy locks in the shared backend."""

from __future__ import annotations

import argparse
import time
from typing import Any

__all__ = ["cmd_shared_lock"]


def cmd_shared_lock(ns: argparse.Namespace, loaded: Any) -> int:
    """One line per locked fleet: free, held (by whom, since when, from which runner), or broken.
    `release` breaks only locks whose every lease expired; `break` (or `release --force`) any."""
    import sys

    from engine.record.state import open_store, state_url
    from engine.record.state.s3lock import break_lock, describe, live_leases, lock_status

    url = state_url(ns.state)
    assert url is not None
    store = open_store(url)
    kept = 0
    for name, fleet in loaded.playbook.fleets.items():
        if not fleet.lock:
            continue
        rec = lock_status(store, name)
        if rec is None:
            sys.stdout.write(f"{name}: free\n")
            continue
        now = time.time()
        live = live_leases(rec, now, store=store, fleet=name)  # a sharded run's: in its parts' journals
        if ns.action == "status":
            state = f"{len(live)} live lease(s)" if live else "every lease expired"
            sys.stdout.write(f"{name}: held by {describe(rec, now)}; {state}\n")
            continue
        if live and ns.action == "release" and not ns.force:
            kept += 1
            sys.stdout.write(
                f"{name}: kept: {describe(rec, now)} has a live lease (a part that runs, or a shard that "
                f"ended ok and waits for its coordinator; use break)\n"
            )
            continue
        was = break_lock(store, name)
        sys.stdout.write(f"{name}: broken (was {describe(was, now) if was else 'free'})\n")
    return 1 if kept else 0
