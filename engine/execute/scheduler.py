"""Plan and run: walk the execution graph across the fleet in parallel.

Each (step, host) node is dispatched as soon as everything it needs has finished, so hosts move
independently (no barrier between steps). At most `forks` host nodes run at once, and a fleet's
own `forks` caps its hosts further. Nodes are taken depth-first per host (earlier hosts finish
their chain before later hosts start), which keeps few connections busy at a time.

In plan mode only `Module.plan` is ever called. In run mode a step is applied only when its
plan says it will (or may) change something, and `apply` receives that very plan.

Failure handling (documented in docs/execution.md):
- a failed or unreachable host skips the rest of its steps; other hosts go on;
- a fleet's `max_fail_percentage` is one budget for the whole run: once the number of failed
  hosts of that fleet is greater than that percentage of the fleet's hosts, no new work starts
  anywhere; in-flight steps finish;
- an interrupt (SIGINT/SIGTERM via `request_stop`) starts no new work and lets in-flight
  steps finish; what never started is reported as skipped.
"""

from __future__ import annotations

import heapq
import os
import queue
import threading
import time
import traceback
from typing import Any, Callable, Mapping

from engine import templating
from engine.connection.base import Connection, ReadOnly
from engine.connection.local import LocalConnection
from engine.errors import CommandTimeout, ConnectionFailed, PlaybookError
from engine.model.events import EventBus, HostFinished, Message, RunFinished, RunStarted, StepFinished, StepStarted
from engine.execute.graph import ExecGraph, Node, build_graph, step_order
from engine.model.hostvars import host_groups, merged_vars
from engine.model.config import CONTROLLER, Inventory, Playbook, Step
from engine.module import ApplyContext, PlanContext, get_module
from engine.execute.options import RunOptions, resolve_fleets
from engine.model.results import UNKNOWN, Change, Plan, RunSummary, Status, StepResult
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
        self._connect = connect
        self._release = release
        self._prewarm_connections = prewarm  # False: the caller already opens them (engine.api.open_early)
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._results: dict[Node, StepResult] = {}
        self._outputs: dict[tuple[str, str | None], Mapping[str, Any]] = {}
        self._host_failed: dict[str, str] = {}
        self._unreachable: set[str] = set()
        self._groups: dict[str, list[str]] | None = None
        self._host_vars: dict[str, dict[str, Any]] = {}
        self._aborted: str | None = None
        self._started = time.time()
        self._controller = LocalConnection(CONTROLLER)
        self.hosts = [h for h in inventory.hosts if any(h in hs for hs in self.fleet_hosts.values())]

    # -- control ---------------------------------------------------------------------------

    def request_stop(self) -> None:
        """Start no new work; in-flight steps finish. Safe to call from a signal handler."""
        self._stop.set()

    # -- vars and templates ----------------------------------------------------------------

    def host_context(self, host: str | None) -> dict[str, Any]:
        """Template context of a host (controller: playbook vars and extra vars only)."""
        key = host or ""
        with self._lock:
            cached = self._host_vars.get(key)
        if cached is not None:
            return cached
        facts = {
            "run": {"id": self.opts.run_id, "mode": self.opts.mode, "time": self._started, "playbook": self.playbook.name},
            "release_id": self.opts.release_id,
            "playbook_dir": os.path.dirname(os.path.abspath(self.playbook.path)),
            "groups": self._groups_map(),
        }
        if host is None:
            raw = dict(self.playbook.vars)
            raw.update(self.opts.extra_vars)
            facts["host"] = {"name": CONTROLLER, "groups": []}
        else:
            raw, _ = merged_vars(self.inventory, host, playbook_vars=self.playbook.vars, extra_vars=self.opts.extra_vars)
            h = self.inventory.hosts[host]
            facts["host"] = {
                "name": host,
                "address": h.hostname,
                "port": h.port,
                "user": h.user,
                "groups": host_groups(self.inventory, host),
            }
        ctx = templating.resolve_vars(raw, base=facts)
        ctx.update(facts)
        with self._lock:
            self._host_vars[key] = ctx
        return ctx

    def _groups_map(self) -> dict[str, list[str]]:
        if self._groups is None:
            from engine.model.patterns import group_members

            groups = {g: group_members(self.inventory, g) for g in self.inventory.groups}
            groups["all"] = list(self.inventory.hosts)
            self._groups = groups
        return self._groups

    def _step_context(self, step: Step, host: str | None) -> dict[str, Any]:
        ctx = dict(self.host_context(host))
        steps_ns: dict[str, Any] = {}
        sources_ns: dict[str, Any] = {}
        with self._lock:
            for (sid, h), outs in self._outputs.items():
                if h is None or h == host:
                    if sid.startswith("sources."):
                        sources_ns[sid[len("sources."):]] = dict(outs)
                    else:
                        steps_ns[sid] = dict(outs)
        ctx["steps"] = steps_ns
        ctx["sources"] = sources_ns
        return ctx

    # -- one node ---------------------------------------------------------------------------

    def _conn(self, host: str | None) -> Connection:
        if host is None:
            return self._controller
        if self._connect is None:
            raise ConnectionFailed("no connection factory configured", host=host)
        return self._connect(host)

    def _upstream(self, node: Node) -> list[StepResult]:
        out: list[StepResult] = []
        todo = list(self.graph.graph.predecessors(node))
        seen: set[Node] = set()
        while todo:
            n = todo.pop()
            if n in seen:
                continue
            seen.add(n)
            if n.barrier == "batch":
                continue
            if n.barrier:
                todo.extend(self.graph.graph.predecessors(n))
            elif n in self._results:
                out.append(self._results[n])
        return out

    def _run_node(self, node: Node) -> StepResult:
        step = self.steps[node.step]
        started = time.monotonic()
        self.bus.emit(StepStarted(step.id, node.host))
        attempts = 0
        while True:
            attempts += 1
            result = self._attempt(node, step)
            if result.status != Status.FAILED or attempts > step.retries or self._stop.is_set():
                break
            self.bus.emit(Message(f"retrying after failure: {result.message}", "warning", node.host, step.id))
            time.sleep(step.retry_delay)
        return StepResult(
            step.id, node.host, result.status, result.message, result.plan, result.outputs,
            time.monotonic() - started, attempts,
        )

    def _attempt(self, node: Node, step: Step) -> StepResult:
        host = node.host
        mode = self.opts.mode
        upstream = self._upstream(node)
        pending = [r.step for r in upstream if r.status == Status.UNKNOWN]
        if mode == "plan" and pending:
            return StepResult(step.id, host, Status.UNKNOWN, f"depends on '{pending[0]}', whose outcome is unknown until applied",
                              plan=Plan.unknown(f"depends on '{pending[0]}'"), outputs=_unknown_outputs(step))
        changing = [r.step for r in upstream if r.status == Status.CHANGED]
        module = get_module(step.module)
        try:
            ctx_vars = self._step_context(step, host)
            if step.when is not None:
                cond = templating.render(step.when if templating.is_template(step.when) else "{{ " + step.when + " }}",
                                         ctx_vars, what=f"{step.id}.when")
                if not cond or (isinstance(cond, str) and cond.strip().lower() in ("", "false", "no", "0", "none")):
                    return StepResult(step.id, host, Status.SKIPPED, "condition 'when' is false")
            rendered = templating.render_value(dict(step.args), ctx_vars, what=f"{step.id}.args")
            from engine.argschema import build

            args = build(module.Args, rendered, path=f"steps.{step.id}.args")
        except templating.UnknownReference as ref:
            return StepResult(step.id, host, Status.UNKNOWN,
                              f"arguments use a value known only after an upstream step is applied ({ref.what})",
                              plan=Plan.unknown("arguments not known yet"), outputs=_unknown_outputs(step))
        except PlaybookError as exc:
            where = f"{step.location} " if step.location else ""
            return StepResult(step.id, host, Status.FAILED, f"{where}{exc}")
        deadline = time.monotonic() + step.timeout if step.timeout else None
        common = dict(host=host, step=step.id, vars=ctx_vars, run_id=self.opts.run_id, release_id=self.opts.release_id,
                      state_dir=self.opts.state_dir, timeout=step.timeout, deadline=deadline, mode=mode,
                      target=self.inventory.hosts.get(host) if host else None,
                      emit=lambda text: self.bus.emit(Message(text, "info", host, step.id)))
        try:
            conn = self._conn(host)
            plan = module.plan(PlanContext(conn=ReadOnly(conn), **common), args)
        except ConnectionFailed as exc:
            return StepResult(step.id, host, Status.UNREACHABLE, str(exc))
        except CommandTimeout as exc:
            return StepResult(step.id, host, Status.FAILED, f"timed out while planning: {exc}")
        except PlaybookError as exc:
            if mode == "plan" and changing:
                return StepResult(step.id, host, Status.UNKNOWN,
                                  f"cannot plan before '{changing[0]}' is applied: {exc}",
                                  plan=Plan.unknown(str(exc)), outputs=_unknown_outputs(step))
            return StepResult(step.id, host, Status.FAILED, str(exc))
        except Exception as exc:  # a bug in a module must not take the run down
            return StepResult(step.id, host, Status.FAILED, _internal(step, exc, self.opts.verbose))
        drift = self._drift(step, host, plan, upstream)
        if drift:
            return StepResult(step.id, host, Status.FAILED, drift, plan=plan)
        if mode == "plan" or plan.change == Change.NO_CHANGE:
            status = {Change.WILL_CHANGE: Status.CHANGED, Change.NO_CHANGE: Status.OK, Change.UNKNOWN: Status.UNKNOWN}[plan.change]
            outputs = dict(plan.outputs)
            if plan.change != Change.NO_CHANGE:
                for name in module.outputs:
                    outputs.setdefault(name, UNKNOWN)
            return StepResult(step.id, host, status, plan.reason, plan=plan, outputs=outputs)
        try:
            applied = module.apply(ApplyContext(conn=conn, **common), plan)
        except ConnectionFailed as exc:
            return StepResult(step.id, host, Status.UNREACHABLE, str(exc), plan=plan)
        except CommandTimeout as exc:
            return StepResult(step.id, host, Status.FAILED, f"timed out: {exc}", plan=plan)
        except PlaybookError as exc:
            return StepResult(step.id, host, Status.FAILED, str(exc), plan=plan)
        except Exception as exc:
            return StepResult(step.id, host, Status.FAILED, _internal(step, exc, self.opts.verbose), plan=plan)
        if isinstance(applied, StepResult):
            return applied
        outputs = dict(plan.outputs)
        outputs.update(applied or {})
        return StepResult(step.id, host, Status.CHANGED, plan.reason, plan=plan, outputs=outputs)

    # -- the scheduler ----------------------------------------------------------------------

    def execute(self) -> RunSummary:
        g = self.graph.graph
        summary = RunSummary(
            run_id=self.opts.run_id, playbook=self.playbook.path, mode=self.opts.mode,
            hosts=list(self.hosts), steps=list(self.order), started=self._started,
        )
        self.bus.emit(RunStarted(self.opts.run_id, self.playbook.path, self.opts.mode, list(self.hosts), list(self.order)))
        waiting = {n: g.in_degree(n) for n in g.nodes}
        ready: list[tuple[tuple, Node]] = []
        for n, d in waiting.items():
            if d == 0:
                heapq.heappush(ready, (self.graph.priority(n), n))
        done_q: "queue.Queue[tuple[Node, StepResult]]" = queue.Queue()
        running_hosts = 0
        running_by_fleet: dict[str, int] = {}
        in_flight = 0
        forks = max(1, self.opts.forks)
        host_remaining: dict[str, int] = {}
        for n in g.nodes:
            if n.host is not None:
                host_remaining[n.host] = host_remaining.get(n.host, 0) + 1
        deferred: list[tuple[tuple, Node]] = []

        def finish(node: Node, result: StepResult) -> None:
            self._results[node] = result
            if not node.barrier:
                summary.results.append(result)
                with self._lock:
                    self._outputs[(node.step, node.host)] = result.outputs
                self.bus.emit(StepFinished(result))
                if node.host is not None:
                    host_remaining[node.host] -= 1
                    if host_remaining[node.host] == 0:
                        worst = max((r.status for r in summary.results if r.host == node.host),
                                    key=lambda st: _RANK.get(st, 0), default=Status.OK)
                        self.bus.emit(HostFinished(node.host, worst.value))
                        if self._release is not None:
                            self._release(node.host)  # e.g. close its SSH connection early
                    if result.status == Status.UNREACHABLE:
                        self._unreachable.add(node.host)
                    if result.failed and node.host not in self._host_failed:
                        self._host_failed[node.host] = node.step
                        self._check_budget(node.host)
            for succ in g.successors(node):
                waiting[succ] -= 1
                if waiting[succ] == 0:
                    heapq.heappush(ready, (self.graph.priority(succ), succ))

        def skip_reason(node: Node) -> str | None:
            if self._stop.is_set():
                return "interrupted before this step started"
            if self._aborted:
                return f"not started: {self._aborted}"
            if node.host in self._unreachable:
                return f"host unreachable (at step '{self._host_failed[node.host]}')"
            if node.host is not None and node.host in self._host_failed and self.opts.mode == "run":
                return f"host failed at step '{self._host_failed[node.host]}'"
            bad = [r for r in self._upstream(node) if r.status in (Status.FAILED, Status.UNREACHABLE, Status.SKIPPED)
                   and not (r.status == Status.SKIPPED and r.message == "condition 'when' is false")]
            if bad:
                return f"needs '{bad[0].step}', which {bad[0].status.value if bad[0].status != Status.SKIPPED else 'was skipped'}"
            return None

        controller_pool = Workers(min(4, sum(1 for n in g.nodes if n.host is None and not n.barrier)) or 1,
                                  "playbook-ctl")
        host_pool = Workers(min(forks, len(self.hosts)) or 1, "playbook-host")
        warm = self._prewarm(forks)

        def worker(node: Node) -> None:
            try:
                result = self._run_node(node)
            except BaseException as exc:  # never lose a node's completion
                result = StepResult(node.step, node.host, Status.FAILED, _internal(self.steps[node.step], exc, self.opts.verbose))
            done_q.put((node, result))

        try:
            while ready or in_flight or deferred:
                # dispatch everything that may start now
                while ready:
                    prio, node = heapq.heappop(ready)
                    if node.barrier:
                        finish(node, StepResult(node.step, None, Status.OK))
                        continue
                    key = (node.step, node.host)
                    if self.opts.done is not None and key in self.opts.done:
                        finish(node, StepResult(node.step, node.host, Status.OK,
                                                f"done in run {self.opts.resumed_from}", outputs=self.opts.done[key]))
                        continue
                    if self.opts.expected is not None and key not in self.opts.expected:
                        finish(node, StepResult(node.step, node.host, Status.SKIPPED, "not in the saved plan"))
                        continue
                    reason = skip_reason(node)
                    if reason is not None:
                        res = StepResult(node.step, node.host, Status.SKIPPED, reason)
                        finish(node, res)
                        continue
                    if node.host is None:
                        in_flight += 1
                        controller_pool.submit(worker, node)
                        continue
                    fleet = self.steps[node.step].fleet
                    cap = self.playbook.fleets[fleet].forks
                    if running_hosts >= forks or (cap and running_by_fleet.get(fleet, 0) >= cap):
                        deferred.append((prio, node))
                        continue
                    running_hosts += 1
                    running_by_fleet[fleet] = running_by_fleet.get(fleet, 0) + 1
                    in_flight += 1
                    host_pool.submit(worker, node)
                if not in_flight:
                    if deferred:  # nothing running yet capacity was full: cannot happen, but never spin
                        for item in deferred:
                            heapq.heappush(ready, item)
                        deferred.clear()
                        continue
                    break
                node, result = done_q.get()
                in_flight -= 1
                if node.host is not None:
                    running_hosts -= 1
                    fleet = self.steps[node.step].fleet
                    running_by_fleet[fleet] -= 1
                finish(node, result)
                for item in deferred:
                    heapq.heappush(ready, item)
                deferred.clear()
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

    def _drift(self, step: Step, host: str | None, plan: Plan, upstream: list[StepResult]) -> str:
        """With a saved plan: why this node's fresh plan is not the reviewed one ("" if it is).

        Nodes downstream of a change legitimately see a different world than at review time
        (the upstream change has been applied since), so only the change itself is compared there."""
        if self.opts.expected is None:
            return ""
        exp = self.opts.expected.get((step.id, host))
        if exp is None:
            return ""
        if exp.get("change") == Change.NO_CHANGE.value and plan.change != Change.NO_CHANGE:
            return "drifted since the plan: it planned no change, now it would change (" + plan.reason + ")"
        if any(r.status == Status.CHANGED for r in upstream):
            return ""
        if _normal(exp.get("fingerprint", {})) != _normal(dict(plan.fingerprint)):
            return f"drifted since the plan: {_what_differs(exp.get('fingerprint', {}), plan.fingerprint)}"
        return ""

    def _prewarm(self, forks: int) -> Workers | None:
        """Open host connections in the background while controller steps (artifact fetches,
        source digests) run first: handshakes overlap that work instead of following it. A
        failure is kept by the connection pool and reported by the host's first step."""
        g = self.graph.graph
        if (not self._prewarm_connections or self._connect is None or not self.hosts
                or not any(n.host is None and not n.barrier for n in g.nodes)):
            return None
        pool = Workers(min(forks, len(self.hosts)), "playbook-connect")

        def connect(host: str) -> None:
            if self._stop.is_set():
                return
            try:
                self._connect(host)
            except Exception:  # reported by the step that needs the connection
                pass

        for host in self.hosts:
            pool.submit(connect, host)
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


def _normal(value: Any) -> Any:
    import json

    from engine.report.jsondoc import json_safe

    return json.loads(json.dumps(json_safe(value), sort_keys=True))


def _what_differs(before: Mapping[str, Any], after: Mapping[str, Any]) -> str:
    a, b = _normal(dict(before or {})), _normal(dict(after or {}))
    keys = sorted(k for k in set(a) | set(b) if a.get(k) != b.get(k))
    return "changed " + ", ".join(keys) if keys else "fingerprint changed"


def _unknown_outputs(step: Step) -> dict[str, Any]:
    try:
        return {name: UNKNOWN for name in get_module(step.module).outputs}
    except PlaybookError:
        return {}


def _internal(step: Step, exc: BaseException, verbose: int) -> str:
    text = f"internal error in module '{step.module}' (step '{step.id}'): {type(exc).__name__}: {exc}"
    if verbose >= 3:
        text += "\n" + "".join(traceback.format_exception(exc))
    return text
