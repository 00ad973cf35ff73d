"""One failure budget for every shard of a run, in the shared state backend.

`history/runs/<run id>.budget.json` holds the failed hosts per fleet, changed only by
compare-and-swap. A shard adds each host that fails and compares the fleet's total against
`max_fail_percentage` of the whole fleet (every shard's hosts, not only its own); before each
rolling batch it reads the object again, so once any shard spent the budget, every shard stops
starting new batches (engine/execute/scheduler.py).
"""

from __future__ import annotations

from collections.abc import Mapping

from engine.record.state.s3store import Precondition, S3Store, StateError, backoff

__all__ = ["SharedBudget"]

_RETRIES = 30


class SharedBudget:
    """The failed hosts of one run, per fleet; `sizes` are the whole fleets' host counts."""

    def __init__(self, store: S3Store, run_id: str, sizes: Mapping[str, int]) -> None:
        self.store = store
        self.name = f"history/runs/{run_id}.budget.json"
        self.sizes = dict(sizes)

    def record_failure(self, fleet: str, host: str) -> tuple[int, int]:
        """Add `host` to the fleet's failed hosts; (failed hosts of the fleet so far, fleet size)."""
        for attempt in range(_RETRIES):
            got = self.store.get(self.name)
            doc, etag = got if got is not None else ({}, None)
            failed = sorted(set(doc.get(fleet, [])) | {host})
            doc = {**doc, fleet: failed}
            try:
                if etag is None:
                    self.store.put(self.name, doc, if_absent=True)
                else:
                    self.store.put(self.name, doc, if_match=etag)
                return len(failed), self.sizes.get(fleet, 0)
            except Precondition:
                backoff(attempt)
        raise StateError(f"{self.store.where(self.name)}: too much contention (gave up after {_RETRIES} tries)")

    def failed(self) -> dict[str, tuple[int, int]]:
        """(failed, fleet size) per fleet, as every shard recorded them."""
        got = self.store.get(self.name)
        doc = got[0] if got else {}
        return {fleet: (len(hosts), self.sizes.get(fleet, 0)) for fleet, hosts in doc.items()}
