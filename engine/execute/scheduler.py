"""Plan and run: walk the execution graph across the fleet in parallel.

Each (step, host) node is dispatched as soon as everything it needs has finished, so hosts move
independently (no barrier between steps). At most `forks` host nodes run at once, and a fleet's
own `forks` caps its hosts further. Nodes are taken depth-first per host (earlier hosts finish
their chain before later hosts start), which keeps few connections busy at a time.

What one node does (plan, apply, the saved-plan check) is engine/execute/step.py; what its
templates see is engine/execute/context.py.

Failure handling (documented in docs/execution.md):
- a failed or unreachable host skips the rest of its steps; other hosts go on;
- a fleet's `max_fail_percentage` is one budget for the whole run: once the number of failed
  hosts of that fleet is greater than that percentage of the fleet's hosts, no new work starts
  anywhere; in-flight steps finish;
- an interrupt (SIGINT/SIGTERM via `request_stop`) starts no new work and lets in-flight
  steps finish; what never started is reported as skipped.
"""

from __future__ import annotations

import dataclasses
import heapq
import queue
import threading
import time
from collections.abc import Callable

from engine.connection.base import Connection
from engine.execute.context import HostContexts, Outputs
from engine.execute.graph import ExecGraph, Node, build_graph, step_order
from engine.execute.options import RunOptions, resolve_fleets
from engine.execute.step import StepRunner, internal_error, upstream_results
from engine.model.config import Inventory, Playbook, Step
from engine.model.events import (
    BudgetExceeded,
    EventBus,
    HostFinished,
    Message,
    RunFinished,
    RunStarted,
    StepFinished,
)
from engine.model.results import RunSummary, Status, StepResult
from engine.workers import Workers

__all__ = ["RunOptions", "Executor", "resolve_fleets"]


_RANK = {Status.OK: 0, Status.SKIPPED: 0, Status.CHANGED: 1, Status.UNKNOWN: 1, Status.FAILED: 3, Status.UNREACHABLE: 3}


class Executor:
    """One plan or run of a playbook over an inventory. Create, then call `execute()` once."""

    def __init__(
        self,
        playbook: Playbook,
        inventory: Inventory,
        options: RunOptions,
        *,
        bus: EventBus | None = None,
        connect: Callable[[str], Connection] | None = None,
        release: Callable[[str], None] | None = None,
        prewarm: bool = True,
    ) -> None:
        self.playbook = playbook
        self.inventory = inventory
        self.opts = options
        self.bus = bus or EventBus()
        self.fleet_hosts = resolve_fleets(playbook, inventory, options.limit)
        self.graph: ExecGraph = build_graph(playbook, self.fleet_hosts)
        self.steps: dict[str, Step] = {s.id: s for s in playbook.steps}
        self.order = step_order(playbook)
        self.hosts = [h for h in inventory.hosts if any(h in hs for hs in self.fleet_hosts.values())]
        self._connect = connect
        self._release = release
        self._prewarm_connections = prewarm  # False: the caller already opens them (engine.api.open_early)
        self._stop = threading.Event()
        self._started = time.time()
        self._results: dict[Node, StepResult] = {}
        self._outputs = Outputs()
        for (sid, host), outs in (options.recorded or {}).items():
            self._outputs.record(sid, host, outs)
        self._host_failed: dict[str, str] = {}
        self._unreachable: set[str] = set()
        self._aborted: str | None = None
        self.contexts = HostContexts(playbook, inventory, options, started=self._started)
        self.runner = StepRunner(
            inventory,
            options,
            self.steps,
            self.graph,
            contexts=self.contexts,
            outputs=self._outputs,
            results=self._results,
            bus=self.bus,
            connect=connect,
            stop=self._stop,
        )

    def request_stop(self) -> None:
        """Start no new work; in-flight steps finish. Safe to call from a signal handler."""
        self._stop.set()

    def host_context(self, host: str | None) -> dict:
        """Template context of a host (engine/execute/context.py)."""
        return self.contexts.host(host)

    def execute(self) -> RunSummary:
        """Dispatch every node of the graph as soon as what it needs has finished; return the summary."""
        summary = RunSummary(
            run_id=self.opts.run_id,
            playbook=self.playbook.path,
            mode=self.opts.mode,
            hosts=list(self.hosts),
            steps=list(self.order),
            started=self._started,
        )
        self.bus.emit(
            RunStarted(self.opts.run_id, self.playbook.path, self.opts.mode, list(self.hosts), list(self.order))
        )
        g = self.graph.graph
        controller_pool = Workers(
            min(4, sum(1 for n in g.nodes if n.host is None and not n.barrier)) or 1, "playbook-ctl"
        )
        forks = max(1, self.opts.forks)
        host_pool = Workers(min(forks, len(self.hosts)) or 1, "playbook-host")
        warm = self._prewarm(forks)
        try:
            _Dispatch(self, summary, controller_pool, host_pool, forks).loop()
        finally:
            controller_pool.shutdown(wait=True)
            host_pool.shutdown(wait=True)
            if warm is not None:
                warm.shutdown(wait=True, cancel=True)
        summary.aborted = self._aborted
        summary.interrupted = self._stop.is_set()
        summary.finished = time.time()
        self.bus.emit(RunFinished(summary))
        return summary

    def _prewarm(self, forks: int) -> Workers | None:
        """Open host connections in the background while controller steps (artifact fetches,
        source digests) run first: handshakes overlap that work instead of following it. A
        failure is kept by the connection pool and reported by the host's first step."""
        g = self.graph.graph
        if (
            not self._prewarm_connections
            or self._connect is None
            or not self.hosts
            or not any(n.host is None and not n.barrier for n in g.nodes)
        ):
            return None
        pool = Workers(min(forks, len(self.hosts)), "playbook-connect")
        connect = self._connect

        def open_one(host: str) -> None:
            if self._stop.is_set():
                return
            try:
                connect(host)
            except Exception:  # reported by the step that needs the connection
                pass

        for host in self.hosts:
            pool.submit(open_one, host)
        return pool

    def _check_budget(self, host: str) -> None:
        for name, fleet in self.playbook.fleets.items():
            hosts = self.fleet_hosts.get(name, [])
            if fleet.max_fail_percentage is None or host not in hosts or not hosts:
                continue
            failed = sum(1 for h in hosts if h in self._host_failed)
            if failed * 100.0 > fleet.max_fail_percentage * len(hosts):
                if not self._aborted:
                    self._aborted = (
                        f"fleet '{name}' exceeded its failure budget: {failed} of {len(hosts)} hosts failed "
                        f"(max_fail_percentage {fleet.max_fail_percentage:g}%)"
                    )
                    self.bus.emit(Message(self._aborted, "error"))
                    self.bus.emit(BudgetExceeded(name, failed, len(hosts), fleet.max_fail_percentage))


class _Dispatch:
    """The state of one `Executor.execute`: what is ready, running and deferred, and how many
    nodes of each host are left. Only the dispatching thread touches it; workers report through
    `done`."""

    def __init__(
        self, ex: Executor, summary: RunSummary, controller_pool: Workers, host_pool: Workers, forks: int
    ) -> None:
        self.ex = ex
        self.summary = summary
        self.controller_pool = controller_pool
        self.host_pool = host_pool
        self.forks = forks
        g = ex.graph.graph
        self.waiting = {n: g.in_degree(n) for n in g.nodes}
        self.ready: list[tuple[tuple, Node]] = []
        for n, d in self.waiting.items():
            if d == 0:
                heapq.heappush(self.ready, (ex.graph.priority(n), n))
        self.done: queue.Queue[tuple[Node, StepResult]] = queue.Queue()
        self.running_hosts = 0
        self.running_by_fleet: dict[str, int] = {}
        self.in_flight = 0
        self.deferred: list[tuple[tuple, Node]] = []
        self.host_remaining: dict[str, int] = {}
        for n in g.nodes:
            if n.host is not None:
                self.host_remaining[n.host] = self.host_remaining.get(n.host, 0) + 1

    def loop(self) -> None:
        while self.ready or self.in_flight or self.deferred:
            self.dispatch()
            if not self.in_flight:
                if self.deferred:  # nothing running yet capacity was full: cannot happen, but never spin
                    self.requeue_deferred()
                    continue
                break
            node, result = self._next_done()
            self.in_flight -= 1
            if node.host is not None:
                self.running_hosts -= 1
                self.running_by_fleet[self.ex.steps[node.step].fleet] -= 1
            self.finish(node, result)
            self.requeue_deferred()

    def _next_done(self) -> tuple[Node, StepResult]:
        # A blocking get without a timeout does not always wake for a signal that arrives while
        # a worker holds the GIL (seen with a template rendering): the SIGTERM handler then never
        # ran. Waking up now and then lets the interpreter run pending signal handlers.
        while True:
            try:
                return self.done.get(timeout=0.2)
            except queue.Empty:
                continue

    def requeue_deferred(self) -> None:
        for item in self.deferred:
            heapq.heappush(self.ready, item)
        self.deferred.clear()

    def dispatch(self) -> None:
        """Start everything that may start now; finish at once what is skipped or already done."""
        ex, opts = self.ex, self.ex.opts
        while self.ready:
            prio, node = heapq.heappop(self.ready)
            if node.barrier:
                self.finish(node, StepResult(node.step, None, Status.OK))
                continue
            key = (node.step, node.host)
            if opts.done is not None and key in opts.done:
                self.finish(
                    node,
                    StepResult(
                        node.step, node.host, Status.OK, f"done in run {opts.resumed_from}", outputs=opts.done[key]
                    ),
                )
                continue
            if opts.expected is not None and key not in opts.expected:
                self.finish(node, StepResult(node.step, node.host, Status.SKIPPED, "not in the saved plan"))
                continue
            reason = self.skip_reason(node)
            if reason is not None:
                self.finish(node, StepResult(node.step, node.host, Status.SKIPPED, reason))
                continue
            if node.host is None:
                self.in_flight += 1
                self.controller_pool.submit(self.work, node)
                continue
            fleet = ex.steps[node.step].fleet
            cap = ex.playbook.fleets[fleet].forks
            if self.running_hosts >= self.forks or (cap and self.running_by_fleet.get(fleet, 0) >= cap):
                self.deferred.append((prio, node))
                continue
            self.running_hosts += 1
            self.running_by_fleet[fleet] = self.running_by_fleet.get(fleet, 0) + 1
            self.in_flight += 1
            self.host_pool.submit(self.work, node)

    def work(self, node: Node) -> None:
        """A worker thread's job: run the node and report its result, whatever happens."""
        try:
            result = self.ex.runner.run(node)
        except BaseException as exc:  # never lose a node's completion
            result = StepResult(
                node.step, node.host, Status.FAILED, internal_error(self.ex.steps[node.step], exc, self.ex.opts.verbose)
            )
        self.done.put((node, result))

    def finish(self, node: Node, result: StepResult) -> None:
        ex = self.ex
        recorded = (ex.opts.recorded or {}).get((node.step, node.host))
        if recorded and result.status in (Status.OK, Status.CHANGED):
            result = dataclasses.replace(result, outputs={**recorded, **result.outputs})
        ex._results[node] = result
        if not node.barrier:
            self.summary.results.append(result)
            ex._outputs.record(node.step, node.host, result.outputs)
            ex.bus.emit(StepFinished(result))
            if node.host is not None:
                self.host_finished_step(node, result)
        for succ in ex.graph.graph.successors(node):
            self.waiting[succ] -= 1
            if self.waiting[succ] == 0:
                heapq.heappush(self.ready, (ex.graph.priority(succ), succ))

    def host_finished_step(self, node: Node, result: StepResult) -> None:
        ex, host = self.ex, node.host
        assert host is not None
        self.host_remaining[host] -= 1
        if self.host_remaining[host] == 0:
            worst = max(
                (r.status for r in self.summary.results if r.host == host),
                key=lambda st: _RANK.get(st, 0),
                default=Status.OK,
            )
            ex.bus.emit(HostFinished(host, worst.value))
            if ex._release is not None:
                ex._release(host)  # e.g. close its SSH connection early
        if result.status == Status.UNREACHABLE:
            ex._unreachable.add(host)
        if result.failed and host not in ex._host_failed:
            ex._host_failed[host] = node.step
            ex._check_budget(host)

    def skip_reason(self, node: Node) -> str | None:
        ex = self.ex
        if ex._stop.is_set():
            return "interrupted before this step started"
        if ex._aborted:
            return f"not started: {ex._aborted}"
        if node.host in ex._unreachable:
            return f"host unreachable (at step '{ex._host_failed[node.host]}')"
        if node.host is not None and node.host in ex._host_failed and ex.opts.mode == "run":
            return f"host failed at step '{ex._host_failed[node.host]}'"
        bad = [
            r
            for r in upstream_results(ex.graph, node, ex._results)
            if r.status in (Status.FAILED, Status.UNREACHABLE, Status.SKIPPED)
            and not (r.status == Status.SKIPPED and r.message == "condition 'when' is false")
        ]
        if bad:
            what = bad[0].status.value if bad[0].status != Status.SKIPPED else "was skipped"
            return f"needs '{bad[0].step}', which {what}"
        return None
