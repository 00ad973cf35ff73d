"""A fixed set of worker threads, all started up front.

`concurrent.futures.ThreadPoolExecutor` starts a thread on each `submit` until it has
`max_workers`, and `Thread.start()` waits for the new thread to run. Once a few SSH handshakes
are busy in other threads, every such wait is a GIL hand-off (5 ms each by default): dispatching
the 25th host's first step then waited ~300 ms behind the first. Starting every thread before
the work begins, while nothing else competes, takes well under a millisecond each.
"""

from __future__ import annotations

import queue
import threading
from collections.abc import Callable
from typing import Any

__all__ = ["Workers"]

_STOP = object()


class Workers:
    """`n` daemon threads taking `fn(*args)` calls from one queue, in submission order.

    A call's exceptions are the caller's business: wrap `fn` so it reports them (a raising call
    is dropped, and its thread goes on with the next one)."""

    def __init__(self, n: int, name: str) -> None:
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._cancelled = threading.Event()
        self._threads = [threading.Thread(target=self._loop, name=f"{name}_{i}", daemon=True) for i in range(max(1, n))]
        for t in self._threads:
            t.start()

    def submit(self, fn: Callable[..., Any], *args: Any) -> None:
        self._queue.put((fn, args))

    def shutdown(self, *, wait: bool = True, cancel: bool = False) -> None:
        """Stop taking work once the queue is drained (`cancel`: drop what has not started)."""
        if cancel:
            self._cancelled.set()
        for _ in self._threads:
            self._queue.put(_STOP)
        if wait:
            for t in self._threads:
                if t is not threading.current_thread():
                    t.join()

    def _loop(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            if self._cancelled.is_set():
                continue
            fn, args = item
            try:
                fn(*args)
            except BaseException:  # noqa: BLE001 - see the class docstring
                pass
