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
  steps finish; what never started is reported as skipped;
- an abort (a second Ctrl-C, via `abort`) kills the controller's child processes, stops waiting
  for in-flight steps and reports them as unknown (they may have run part-way).

Longer than ~400 lines: dispatch, the failure budget, interrupts and aborts all change the
same dispatch state; the abort path is the next to move out.
"""

from __future__ import annotations

import dataclasses
import heapq
import queue
import threading
import time
from collections.abc import Callable
from typing import cast

from engine.connection import children
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


_ABORT = object()  # put on the dispatcher's queue by `Executor.abort`

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
        self.fleet_hosts = resolve_fleets(playbook, inventory, options.limit, options.only_hosts)
        self.graph: ExecGraph = build_graph(playbook, self.fleet_hosts)
        self.steps: dict[str, Step] = {s.id: s for s in playbook.steps}
        self.order = step_order(playbook)
        self.hosts = [h for h in inventory.hosts if any(h in hs for hs in self.fleet_hosts.values())]
        self._connect = connect
        self._release = release
        self._prewarm_connections = prewarm  # False: the caller already opens them (engine.api.open_early)
        self._stop = threading.Event()
        self._aborting = threading.Event()
        self._executing = False
        self._executed = False
        # (node, result) from the workers, or _ABORT; a SimpleQueue because `abort` puts on it
        # from a signal handler (reentrant, unlike queue.Queue)
        self._done: queue.SimpleQueue[object] = queue.SimpleQueue()
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

    def abort(self) -> bool:
        """Stop now (a second interrupt): no new work, every controller child process killed, the
        dispatcher stops waiting for in-flight steps, which are reported as unknown. Safe to call
        from a signal handler. False before `execute` started (nothing to wake: the caller stops
        it another way); after `execute` returned nothing is done (what follows is clean-up, such
        as releasing the deploy locks, which must not be cut off)."""
        self._stop.set()
        if self._executed:
            return True
        if not self._executing:
            children.abort()
            return False
        self._aborting.set()
        self._done.put(_ABORT)  # before the kills, so no killed step's result is taken first
        children.abort()
        return True

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
        self._executing = True
        try:
            self.bus.emit(
                RunStarted(self.opts.run_id, self.playbook.path, self.opts.mode, list(self.hosts), list(self.order))
            )
            return self._execute(summary)
        finally:
            self._executing = False
            self._executed = True

    def _execute(self, summary: RunSummary) -> RunSummary:
        g = self.graph
        controller_pool = Workers(
            min(4, sum(1 for n in g.nodes if n.host is None and not n.barrier)) or 1, "playbook-ctl"
        )
        forks = max(1, self.opts.forks)
        host_pool = Workers(min(forks, len(self.hosts)) or 1, "playbook-host")
        warm = self._prewarm(forks)
        self._check_shared_budget()  # another shard may have spent it already
        try:
            _Dispatch(self, summary, controller_pool, host_pool, forks).loop()
        finally:
            wait = not self._aborting.is_set()  # an abort leaves in-flight steps behind
            controller_pool.shutdown(wait=wait, cancel=not wait)
            host_pool.shutdown(wait=wait, cancel=not wait)
            if warm is not None:
                warm.shutdown(wait=wait, cancel=True)
        summary.aborted = self._aborted
        summary.interrupted = self._stop.is_set()
        summary.finished = time.time()
        self.bus.emit(RunFinished(summary))
        return summary

    def _prewarm(self, forks: int) -> Workers | None:
        """Open host connections in the background while controller steps (artifact fetches,
        source digests) run first: handshakes overlap that work instead of following it. A
        failure is kept by the connection pool and reported by the host's first step."""
        g = self.graph
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
            failed, total = sum(1 for h in hosts if h in self._host_failed), len(hosts)
            if self.opts.budget is not None:  # one budget for every shard (engine/record/state/budget.py)
                failed, total = self.opts.budget.record_failure(name, host)
            self._over_budget(name, failed, total)

    def _over_budget(self, name: str, failed: int, total: int) -> None:
        pct = self.playbook.fleets[name].max_fail_percentage
        if pct is not None and total and failed * 100.0 > pct * total and not self._aborted:
            self._aborted = (
                f"fleet '{name}' exceeded its failure budget: {failed} of {total} hosts failed "
                f"(max_fail_percentage {pct:g}%)"
            )
            self.bus.emit(Message(self._aborted, "error"))
            self.bus.emit(BudgetExceeded(name, failed, total, pct))

    def _check_shared_budget(self) -> None:
        """Before a rolling batch: has another shard spent a budget this run shares?"""
        if self.opts.budget is None or self._aborted:
            return
        for name, (failed, total) in self.opts.budget.failed().items():
            if name in self.playbook.fleets:
                self._over_budget(name, failed, total)


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
        g = ex.graph
        self.waiting = {n: g.in_degree(n) for n in g.nodes}
        self.ready: list[tuple[tuple, Node]] = []
        for n, d in self.waiting.items():
            if d == 0:
                heapq.heappush(self.ready, (ex.graph.priority(n), n))
        self.done = ex._done
        self.running: set[Node] = set()
        self.running_hosts = 0
        self.running_by_fleet: dict[str, int] = {}
        self.in_flight = 0
        self.deferred: list[tuple[tuple, Node]] = []  # held back by their fleet's `forks`
        self.queued: list[tuple[tuple, Node]] = []  # a heap: host nodes waiting for one of the run's forks
        self.host_remaining: dict[str, int] = {}
        for n in g.nodes:
            if n.host is not None:
                self.host_remaining[n.host] = self.host_remaining.get(n.host, 0) + 1

    def loop(self) -> None:
        while self.ready or self.in_flight or self.deferred or self.queued:
            self.dispatch()
            if not self.in_flight:
                if self.deferred or self.queued:  # nothing running yet capacity was full: cannot happen, but never spin
                    self.requeue_deferred()
                    continue
                break
            item = self._next_done()
            if item is _ABORT or self.ex._aborting.is_set():
                self.abandon()
                continue
            assert isinstance(item, tuple)
            node, result = cast("tuple[Node, StepResult]", item)
            self.running.discard(node)
            self.in_flight -= 1
            if node.host is not None:
                self.running_hosts -= 1
                self.running_by_fleet[self.ex.steps[node.step].fleet] -= 1
            self.finish(node, result)
            self.requeue_deferred()

    def abandon(self) -> None:
        """An abort: report every in-flight node as unknown and stop waiting for it; what has
        not started is then skipped by `dispatch` (the run is stopped)."""
        ex = self.ex
        abandoned = sorted(self.running, key=lambda n: (n.step, n.host or ""))
        self.running.clear()
        self.in_flight = 0
        self.running_hosts = 0
        self.running_by_fleet.clear()
        for node in abandoned:
            self.finish(
                node,
                StepResult(
                    node.step,
                    node.host,
                    Status.UNKNOWN,
                    "aborted by a second interrupt while it ran: it may have run part-way",
                ),
            )
        if not ex._aborted:
            where = ", ".join(f"{n.step}@{n.host or 'controller'}" for n in abandoned) or "none"
            hint = (
                f" (`playbook run --resume {ex.opts.run_id}` redoes what did not finish)"
                if ex.opts.mode == "run"
                else ""
            )
            ex._aborted = f"a second interrupt stopped the run at once; steps cut off part-way: {where}{hint}"
            ex.bus.emit(Message(ex._aborted, "error"))

    def _next_done(self) -> object:
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
        """Start everything that may start now; finish at once what is skipped or already done.

        A host node met while every fork is busy waits in `queued` and is looked at again only
        when a fork frees, in priority order with the nodes that became ready meanwhile: each
        completion costs one heap move, not a pass over everything waiting."""
        ex, opts = self.ex, self.ex.opts
        while self.ready or (self.queued and self.running_hosts < self.forks):
            if self.queued and self.running_hosts < self.forks and (not self.ready or self.queued[0] < self.ready[0]):
                heapq.heappush(self.ready, heapq.heappop(self.queued))
            prio, node = heapq.heappop(self.ready)
            if node.host is not None and self.running_hosts >= self.forks:
                heapq.heappush(self.queued, (prio, node))
                continue
            if node.barrier:
                if node.barrier == "batch":
                    ex._check_shared_budget()
                self.finish(node, StepResult(node.step, None, Status.OK))
                continue
            key = (node.step, node.host)
            if opts.done is not None and key in opts.done:
                self.finish(
                    node,
                    StepResult(
                        node.step,
                        node.host,
                        Status.OK,
                        f"done in run {opts.resumed_from}"
                        if opts.resumed_from
                        else "fetched and verified before the run",
                        outputs=opts.done[key],
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
                self.running.add(node)
                self.controller_pool.submit(self.work, node)
                continue
            fleet = ex.steps[node.step].fleet
            cap = ex.playbook.fleets[fleet].forks
            if cap and self.running_by_fleet.get(fleet, 0) >= cap:
                self.deferred.append((prio, node))
                continue
            self.running_hosts += 1
            self.running_by_fleet[fleet] = self.running_by_fleet.get(fleet, 0) + 1
            self.in_flight += 1
            self.running.add(node)
            self.host_pool.submit(self.work, node)

    def work(self, node: Node) -> None:
        """A worker thread's job: run the node and report its result, whatever happens."""
        try:
            with children.step_scope():
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
        for succ in ex.graph.successors(node):
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
