"""Planner and executor against the in-memory connection: statuses, propagation, policies."""

from __future__ import annotations

import threading
import time

import pytest

from engine.connection.base import CommandResult
from engine.connection.fake import FakeConnection
from engine.execute.scheduler import Executor, RunOptions
from engine.model.config import CONTROLLER, Fleet, Group, Host, Inventory, Playbook, Step
from engine.model.events import StepFinished, StepStarted
from engine.model.results import Status


def inventory(n: int, group: str = "web") -> Inventory:
    names = [f"h{i:02d}" for i in range(1, n + 1)]
    hosts = {h: Host(h, connection="ssh", vars={"root": f"/srv/{h}"}) for h in names}
    return Inventory("inv.yml", hosts, {group: Group(group, hosts=tuple(names))}, vars={"app": "shop"})


def playbook(steps: list[Step], **fleet_kw) -> Playbook:
    return Playbook("pb.yml", "pb", {}, {"web": Fleet("web", "web", **fleet_kw)}, tuple(steps))


def cmd(step_id: str, fleet: str = "web", needs: tuple[str, ...] = (), **args) -> Step:
    return Step(step_id, "command", fleet, args, needs=needs)


class Fleet_:
    """Fake hosts; commands listed in `fail` exit 1 on the hosts named there."""

    def __init__(
        self,
        inv: Inventory,
        *,
        fail: dict[str, set[str]] | None = None,
        down: set[str] = frozenset(),
        delay: float = 0.0,
        gather: int = 0,
    ) -> None:
        self.fail = fail or {}
        self.delay = delay
        self.gather = gather  # the first calls wait until this many run at once (an event, not a delay)
        self.lock = threading.Lock()
        self.gathered = threading.Condition(self.lock)
        self.running = 0
        self.max_running = 0
        self.conns = {h: FakeConnection(h, handler=self.handler, reachable=h not in down) for h in inv.hosts}

    def handler(self, conn: FakeConnection, argv: list[str]) -> CommandResult:
        with self.lock:
            self.running += 1
            self.max_running = max(self.max_running, self.running)
            self.gathered.notify_all()
            if not self.gathered.wait_for(lambda: self.max_running >= self.gather, timeout=120):
                raise AssertionError(f"never {self.gather} calls at once (at most {self.max_running})")
        try:
            if self.delay:
                time.sleep(self.delay)
            if argv[:2] == ["test", "-e"]:
                return CommandResult(0 if argv[2] in conn.files else 1)
            if argv[:1] == ["touch"]:
                conn.files[argv[1]] = b""
                return CommandResult(0)
            if argv[0] in self.fail and conn.host in self.fail[argv[0]]:
                return CommandResult(1, b"", b"boom\n")
            return CommandResult(0, f"out-{conn.host}".encode())
        finally:
            with self.lock:
                self.running -= 1

    def connect(self, host: str) -> FakeConnection:
        conn = self.conns[host]
        conn.open()
        return conn

    def mutations(self) -> list[tuple]:
        return [
            c for conn in self.conns.values() for c in conn.calls if not (c[0] == "run" and c[1][:2] == ("test", "-e"))
        ]


def execute(pb: Playbook, inv: Inventory, fleet: Fleet_, mode: str, events: list | None = None, **opts) -> tuple:
    ex = Executor(pb, inv, RunOptions(mode=mode, run_id="r1", release_id="rel1", **opts), connect=fleet.connect)
    if events is not None:
        ex.bus.subscribe(events.append)
    summary = ex.execute()
    return summary, {(r.step, r.host): r for r in summary.results}


def test_plan_reports_per_host_and_mutates_nothing():
    inv = inventory(3)
    fleet = Fleet_(inv)
    fleet.conns["h02"].files["/srv/h02/done"] = b""
    pb = playbook([cmd("mark", argv=["touch", "{{ root }}/done"], creates="{{ root }}/done")])
    summary, res = execute(pb, inv, fleet, "plan")
    assert res[("mark", "h01")].status == Status.CHANGED
    assert res[("mark", "h02")].status == Status.OK
    assert "exists" in res[("mark", "h02")].message
    assert fleet.mutations() == []
    assert summary.exit_code() == 2


def test_run_applies_then_replan_is_a_noop():
    inv = inventory(3)
    fleet = Fleet_(inv)
    pb = playbook([cmd("mark", argv=["touch", "{{ root }}/done"], creates="{{ root }}/done")])
    summary, res = execute(pb, inv, fleet, "run")
    assert {r.status for r in res.values()} == {Status.CHANGED}
    assert summary.exit_code() == 0
    summary, res = execute(pb, inv, fleet, "plan")
    assert {r.status for r in res.values()} == {Status.OK}
    assert summary.exit_code() == 0


def test_unknown_propagates_to_dependants_in_plan():
    inv = inventory(2)
    fleet = Fleet_(inv)
    pb = playbook(
        [
            cmd("first", argv=["echo", "hi"]),
            cmd("second", argv=["echo", "{{ steps.first.stdout }}"], needs=("first",)),
            cmd("third", argv=["echo", "x"], needs=("second",)),
        ]
    )
    summary, res = execute(pb, inv, fleet, "plan")
    assert res[("first", "h01")].status == Status.CHANGED
    assert res[("second", "h01")].status == Status.UNKNOWN
    assert "known only after" in res[("second", "h01")].message
    assert res[("third", "h01")].status == Status.UNKNOWN
    assert "second" in res[("third", "h01")].message
    # and in run mode the output is real
    summary, res = execute(pb, inv, fleet, "run")
    assert res[("second", "h02")].status == Status.CHANGED
    assert fleet.conns["h02"].commands[-2] == ["echo", "out-h02"]


def test_failed_host_skips_its_remaining_steps_only():
    inv = inventory(3)
    fleet = Fleet_(inv, fail={"deploy": {"h02"}})
    pb = playbook([cmd("a", argv=["deploy"]), cmd("b", argv=["echo"], needs=("a",))])
    summary, res = execute(pb, inv, fleet, "run")
    assert res[("a", "h02")].status == Status.FAILED
    assert "boom" in res[("a", "h02")].message
    assert res[("b", "h02")].status == Status.SKIPPED
    assert res[("b", "h01")].status == res[("b", "h03")].status == Status.CHANGED
    assert summary.exit_code() == 1
    assert summary.failed_hosts == ["h02"]


def test_unreachable_host_fails_alone():
    inv = inventory(3)
    fleet = Fleet_(inv, down={"h03"})
    pb = playbook([cmd("a", argv=["echo"]), cmd("b", argv=["echo"], needs=("a",))])
    summary, res = execute(pb, inv, fleet, "run")
    assert res[("a", "h03")].status == Status.UNREACHABLE
    assert res[("b", "h03")].status == Status.SKIPPED
    assert res[("b", "h01")].status == Status.CHANGED


@pytest.mark.parametrize("failures,aborts", [(2, False), (3, True)])
def test_failure_budget_boundary_is_exact(failures, aborts):
    # 10 hosts, max_fail_percentage 20: two failed hosts are within budget, the third exceeds it.
    inv = inventory(10)
    failing = {f"h{i:02d}" for i in range(1, failures + 1)}
    fleet = Fleet_(inv, fail={"deploy": failing})
    pb = playbook([cmd("a", argv=["deploy"])], max_fail_percentage=20)
    summary, res = execute(pb, inv, fleet, "run", forks=1)
    skipped = [h for (s, h), r in res.items() if r.status == Status.SKIPPED]
    if aborts:
        assert summary.aborted and "3 of 10" in summary.aborted
        assert skipped == [f"h{i:02d}" for i in range(4, 11)]
    else:
        assert summary.aborted is None
        assert skipped == []
        assert sum(1 for r in res.values() if r.status == Status.CHANGED) == 8


def test_serial_batches_finish_before_the_next_starts():
    inv = inventory(5)
    fleet = Fleet_(inv, delay=0.01)
    pb = playbook([cmd("a", argv=["echo"]), cmd("b", argv=["echo"], needs=("a",))], serial=2)
    events: list = []
    execute(pb, inv, fleet, "run", events=events)
    order = [
        (type(e).__name__, e.host if isinstance(e, StepStarted) else e.result.host)
        for e in events
        if isinstance(e, (StepStarted, StepFinished))
    ]
    batches = [["h01", "h02"], ["h03", "h04"], ["h05"]]
    for k in range(1, len(batches)):
        first_start = min(i for i, (kind, h) in enumerate(order) if kind == "StepStarted" and h in batches[k])
        last_finish = max(i for i, (kind, h) in enumerate(order) if kind == "StepFinished" and h in batches[k - 1])
        assert last_finish < first_start


def test_forks_caps_concurrency():
    inv = inventory(8)
    fleet = Fleet_(inv, gather=3)
    pb = playbook([cmd("a", argv=["echo"])])
    execute(pb, inv, fleet, "run", forks=3)
    assert fleet.max_running == 3


def test_nodes_waiting_for_a_fork_start_in_priority_order_and_are_checked_once(monkeypatch):
    # forks=2 over 6 hosts x 3 chained steps: a node that waits for a fork is not re-examined
    # on every completion (that made 200 hosts x 20 steps quadratic), and the order stays
    # depth-first per host in host order.
    from engine.execute import scheduler

    checks: list = []
    real = scheduler._Dispatch.skip_reason
    monkeypatch.setattr(scheduler._Dispatch, "skip_reason", lambda self, node: checks.append(node) or real(self, node))
    inv = inventory(6)
    fleet = Fleet_(inv)
    pb = playbook(
        [cmd("a", argv=["echo"]), cmd("b", argv=["echo"], needs=("a",)), cmd("c", argv=["echo"], needs=("b",))]
    )
    events: list = []
    execute(pb, inv, fleet, "run", events=events, forks=1)
    assert len(checks) == 18
    started = [(e.host, e.step) for e in events if isinstance(e, StepStarted)]
    assert started == [(f"h{i:02d}", s) for i in range(1, 7) for s in "abc"]


def test_controller_step_runs_once_and_feeds_hosts():
    inv = inventory(3)
    fleet = Fleet_(inv)
    pb = Playbook(
        "pb.yml",
        "pb",
        {},
        {"web": Fleet("web", "web")},
        (
            Step("prep", "command", CONTROLLER, {"argv": ["echo", "ready"]}),
            cmd("use", argv=["echo", "{{ steps.prep.stdout | trim }}"], needs=("prep",)),
        ),
    )
    summary, res = execute(pb, inv, fleet, "run")
    assert [k for k in res if k[0] == "prep"] == [("prep", None)]
    assert all(conn.commands[-1] == ["echo", "ready"] for conn in fleet.conns.values())


def test_interrupt_starts_no_new_work():
    inv = inventory(4)
    fleet = Fleet_(inv)
    pb = playbook([cmd("a", argv=["echo"]), cmd("b", argv=["echo"], needs=("a",))])
    ex = Executor(pb, inv, RunOptions(mode="run", forks=1, run_id="r", release_id="x"), connect=fleet.connect)
    ex.bus.subscribe(lambda e: ex.request_stop() if isinstance(e, StepFinished) else None)
    summary = ex.execute()
    statuses = [r.status for r in summary.results]
    assert statuses[0] == Status.CHANGED
    assert set(statuses[1:]) == {Status.SKIPPED}
    assert summary.interrupted and summary.exit_code() == 130
    assert all("interrupted" in r.message for r in summary.results[1:])


def test_retries_until_success():
    inv = inventory(1)
    attempts = {"n": 0}

    def flaky(conn, argv):
        attempts["n"] += 1
        return CommandResult(0 if attempts["n"] >= 3 else 1, b"", b"not yet")

    conn = FakeConnection("h01", handler=flaky)
    pb = playbook([Step("a", "command", "web", {"argv": ["x"]}, retries=2, retry_delay=0)])
    ex = Executor(pb, inv, RunOptions(mode="run", run_id="r", release_id="x"), connect=lambda h: conn)
    summary = ex.execute()
    assert summary.results[0].status == Status.CHANGED
    assert summary.results[0].attempts == 3


def test_undefined_variable_fails_the_step_with_its_name():
    inv = inventory(1)
    fleet = Fleet_(inv)
    pb = playbook([cmd("a", argv=["echo", "{{ nope }}"])])
    summary, res = execute(pb, inv, fleet, "plan")
    assert res[("a", "h01")].status == Status.FAILED
    assert "undefined variable" in res[("a", "h01")].message and "nope" in res[("a", "h01")].message


def test_failure_in_one_batch_does_not_skip_the_next_batch():
    # Only the failure budget stops a rollout; a batch boundary orders work, it is not a dependency.
    inv = inventory(4)
    fleet = Fleet_(inv, fail={"deploy": {"h01"}})
    pb = playbook([cmd("a", argv=["deploy"]), cmd("b", argv=["echo"], needs=("a",))], serial=2)
    summary, res = execute(pb, inv, fleet, "run")
    assert res[("b", "h01")].status == Status.SKIPPED
    assert all(res[(s, h)].status == Status.CHANGED for s in ("a", "b") for h in ("h02", "h03", "h04"))


def test_a_step_interrupted_while_rendering_its_arguments_is_skipped_with_nothing_done():
    """SIGINT/SIGTERM arriving while a step's arguments render (here: on its StepStarted event,
    before the render; a render checks the stop request as it goes) ends that render: the step
    is reported skipped, as one never started, and runs no command on the host."""
    inv = inventory(1)
    fleet = Fleet_(inv)
    slow = "{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}x"
    pb = playbook([cmd("a", argv=["echo", slow])])
    ex = Executor(pb, inv, RunOptions(mode="run", run_id="r", release_id="x"), connect=fleet.connect)
    ex.bus.subscribe(lambda e: ex.request_stop() if isinstance(e, StepStarted) else None)
    summary = ex.execute()
    (result,) = summary.results
    assert result.status == Status.SKIPPED
    assert result.message == "interrupted while rendering its arguments"
    assert fleet.mutations() == [] and all(not c.calls for c in fleet.conns.values())
    assert summary.interrupted and summary.exit_code() == 130
