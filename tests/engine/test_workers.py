"""engine.workers: threads started up front, calls in submission order, cancel drops the rest."""

from __future__ import annotations

import threading

from engine.workers import Workers


def test_threads_are_running_before_any_work_and_run_calls_in_order():
    before = threading.active_count()
    w = Workers(3, "t")
    assert threading.active_count() == before + 3
    gate, seen, lock = threading.Event(), [], threading.Lock()

    def call(i: int) -> None:
        gate.wait(5)
        with lock:
            seen.append(i)

    for i in range(9):
        w.submit(call, i)
    gate.set()
    w.shutdown(wait=True)
    assert sorted(seen) == list(range(9))
    assert threading.active_count() == before


def test_a_raising_call_does_not_stop_its_thread_and_cancel_drops_pending_work():
    w = Workers(1, "t")
    started, release, done = threading.Event(), threading.Event(), []

    def boom() -> None:
        raise RuntimeError("x")

    def block() -> None:
        started.set()
        release.wait(5)
        done.append("block")

    w.submit(boom)
    w.submit(block)
    w.submit(done.append, "never")
    assert started.wait(5)
    stopper = threading.Thread(target=w.shutdown, kwargs={"wait": True, "cancel": True})
    stopper.start()
    release.set()
    stopper.join(5)
    assert done == ["block"]
