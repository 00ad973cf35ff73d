"""Values computed once per key however many hosts' threads ask at once (a source manifest, the
tree a host should have, one comparison), for the length of a run: the last few keys are kept."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Any

__all__ = ["Memo"]


class Memo:
    """`get(key, compute)` calls `compute()` once per key: a second thread asking for the same
    key waits for the first one's value, threads asking for other keys do not wait. Only the
    `size` most recently used keys are kept."""

    def __init__(self, size: int = 8) -> None:
        self._size = size
        self._table: OrderedDict[Hashable, tuple[threading.Lock, list[Any]]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: Hashable, compute: Callable[[], Any]) -> Any:
        with self._lock:
            slot = self._table.get(key)
            if slot is None:
                slot = self._table[key] = (threading.Lock(), [])
                while len(self._table) > self._size:
                    self._table.popitem(last=False)
            else:
                self._table.move_to_end(key)
        lock, box = slot
        with lock:
            if not box:
                box.append(compute())
            return box[0]

    def clear(self) -> None:
        with self._lock:
            self._table.clear()
