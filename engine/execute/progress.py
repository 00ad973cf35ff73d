"""Progress of long work (transfers, downloads) as `Progress` events, at most one a second per
host: modules call `ctx.progress(done, total)` as often as they like, and the meter decides
what is worth an event. The rate is the mean since the first call; the ETA follows from it."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

from engine.model.events import Event, Progress

__all__ = ["ProgressMeter", "INTERVAL"]

INTERVAL = 1.0  # seconds between two events of one host


class ProgressMeter:
    """Turns a module's `progress(done, total)` calls into rate-limited `Progress` events.

    One meter per run: `for_step(host, step)` gives the callable a step's context carries. The
    limit is per host, so parallel steps on one host share it."""

    def __init__(self, emit: Callable[[Event], None], *, clock: Callable[[], float] = time.monotonic) -> None:
        self._emit = emit
        self._clock = clock
        self._lock = threading.Lock()
        self._last: dict[str | None, float] = {}
        self._t0 = clock()

    def for_step(self, host: str | None, step: str) -> Callable[..., None]:
        started: list[float] = []

        def progress(done: int, total: int | None = None, what: str = "transfer") -> None:
            now = self._clock()
            if not started:
                started.append(now)
            with self._lock:
                last = self._last.get(host)
                if last is not None and now - last < INTERVAL:
                    return
                self._last[host] = now
            elapsed = now - started[0]
            rate = done / elapsed if elapsed > 0 and done > 0 else None
            eta = (total - done) / rate if rate and total is not None and total >= done else None
            self._emit(Progress(host, step, what, int(done), total, rate, eta, round(now - self._t0, 3)))

        return progress
