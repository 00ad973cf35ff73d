"""Progress of long transfers: at most one event a second per host, with a rate and an ETA, and
shown live on a terminal (bytes, rate, ETA per host) while the transfer runs."""

from __future__ import annotations

import io
import json

from rich.console import Console

from engine.execute.progress import ProgressMeter
from engine.model.events import Progress, RunStarted, StepStarted
from engine.report.console import ConsoleReporter
from engine.report.jsondoc import JsonLinesReporter


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_at_most_one_event_a_second_per_host_with_rate_and_eta():
    events: list[Progress] = []
    clock = Clock()
    meter = ProgressMeter(events.append, clock=clock)
    a, a2, b = meter.for_step("web1", "sync"), meter.for_step("web1", "fetch"), meter.for_step("web2", "sync")
    for i in range(50):  # 50 calls in 0.49 s: one event per host
        clock.now = 100.0 + i * 0.01
        a(i * 1000, 100_000)
        a2(i, None, "download")  # the same host's other step shares the host's budget
        b(i * 10, 1000)
    assert [(e.host, e.step) for e in events] == [("web1", "sync"), ("web2", "sync")]
    clock.now = 101.5
    a(30_000, 100_000)
    last = events[-1]
    assert (last.host, last.done, last.total) == ("web1", 30_000, 100_000)
    assert last.rate == 30_000 / 1.5 and last.eta == 70_000 / (30_000 / 1.5)
    clock.now = 101.9  # within a second of web1's last event: nothing
    a(40_000, 100_000)
    assert len(events) == 3


def test_the_live_display_shows_bytes_rate_and_eta_per_host():
    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=140, color_system=None)
    rep = ConsoleReporter(console, mode="run", live=True)
    rep(RunStarted("r1", "pb.yml", "run", ["web1", "web2"], ["sync"]))
    rep(StepStarted("sync", "web1"))
    rep(Progress("web1", "sync", "transfer", 12_300_000, 50_300_000, 4_100_000.0, 9.3))
    shown = Console(file=io.StringIO(), width=140, color_system=None)
    with shown.capture() as cap:
        shown.print(rep._live_renderable())
    rep.close()
    text = cap.get()
    assert "web1" in text and "12.3 MB / 50.3 MB" in text and "4.1 MB/s" in text and "ETA 9.3s" in text


def test_jsonl_carries_progress_events():
    out = io.StringIO()
    rep = JsonLinesReporter(out)
    rep(Progress("web1", "sync", "transfer", 10, 100, 5.0, 18.0))
    doc = json.loads(out.getvalue().splitlines()[-1])
    assert doc["event"] == "progress" and (doc["host"], doc["done"], doc["total"], doc["eta"]) == (
        "web1",
        10,
        100,
        18.0,
    )
