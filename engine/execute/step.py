"""One (step, host) node: render its `when` and arguments, plan it, and apply it in run mode.

In plan mode only `Module.plan` is ever called, with a read-only view of the connection and inside
`planning()`, so no writing client (Kubernetes, git, HTTP) can be built or used meanwhile. In run
mode a step is applied only when its plan says it will (or may) change something, `apply`
receives that very plan, and with a saved plan (`playbook apply`) the fresh plan must still be
the reviewed one (engine/record/savedplan.py). Every outcome is a `StepResult` with an explicit
status; no exception from a module leaves here.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections.abc import Callable, Mapping
from typing import Any

from engine import templating
from engine.connection.base import Connection, ReadOnly
from engine.connection.local import LocalConnection
from engine.errors import CommandTimeout, ConnectionFailed, PlaybookError, ReadOnlyViolation
from engine.execute.context import HostContexts, Outputs
from engine.execute.graph import ExecGraph, Node
from engine.execute.options import RunOptions
from engine.execute.progress import ProgressMeter
from engine.model.config import CONTROLLER, Inventory, Step
from engine.model.events import EventBus, Message, StepStarted
from engine.model.results import UNKNOWN, Change, Plan, Status, StepResult
from engine.module import ApplyContext, PlanContext, get_module, planning
from engine.record.savedplan import node_drift
from engine.template_budget import RenderInterrupted

__all__ = ["StepRunner", "upstream_results", "internal_error", "unknown_outputs", "with_changed"]


def upstream_results(graph: ExecGraph, node: Node, results: Mapping[Node, StepResult]) -> list[StepResult]:
    """The results of the work nodes `node` waits for, looking through cross-fleet barriers
    (a rolling-batch barrier orders work but carries no results)."""
    out: list[StepResult] = []
    todo = list(graph.predecessors(node))
    seen: set[Node] = set()
    while todo:
        n = todo.pop()
        if n in seen:
            continue
        seen.add(n)
        if n.barrier == "batch":
            continue
        if n.barrier:
            todo.extend(graph.predecessors(n))
        elif n in results:
            out.append(results[n])
    return out


class StepRunner:
    """Runs nodes of one plan or run; shared by the scheduler's worker threads."""

    def __init__(
        self,
        inventory: Inventory,
        options: RunOptions,
        steps: Mapping[str, Step],
        graph: ExecGraph,
        *,
        contexts: HostContexts,
        outputs: Outputs,
        results: Mapping[Node, StepResult],
        bus: EventBus,
        connect: Callable[[str], Connection] | None,
        stop: threading.Event,
    ) -> None:
        self.inventory = inventory
        self.opts = options
        self.steps = steps
        self.graph = graph
        self.contexts = contexts
        self.outputs = outputs
        self.results = results
        self.bus = bus
        self._connect = connect
        self._stop = stop
        self._controller = LocalConnection(CONTROLLER)
        self.meter = ProgressMeter(bus.emit)

    def run(self, node: Node) -> StepResult:
        """The node's result after its attempts (`retries` more on failure, unless stopping)."""
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
            step.id,
            node.host,
            result.status,
            result.message,
            result.plan,
            with_changed(result),
            max(time.monotonic() - started, result.duration),
            attempts,
        )

    def _conn(self, host: str | None) -> Connection:
        if host is None:
            return self._controller
        if self._connect is None:
            raise ConnectionFailed("no connection factory configured", host=host)
        return self._connect(host)

    def _attempt(self, node: Node, step: Step) -> StepResult:
        host = node.host
        mode = self.opts.mode
        upstream = upstream_results(self.graph, node, self.results)
        pending = [r.step for r in upstream if r.status == Status.UNKNOWN]
        if mode == "plan" and pending:
            return StepResult(
                step.id,
                host,
                Status.UNKNOWN,
                f"depends on '{pending[0]}', whose outcome is unknown until applied",
                plan=Plan.unknown(f"depends on '{pending[0]}'"),
                outputs=unknown_outputs(step),
            )
        changing = [r.step for r in upstream if r.status == Status.CHANGED]
        module = get_module(step.module)
        try:
            ctx_vars = self.contexts.for_step(host, self.outputs)
            if step.when is not None:
                cond = templating.render(
                    step.when if templating.is_template(step.when) else "{{ " + step.when + " }}",
                    ctx_vars,
                    what=f"{step.id}.when",
                    stop=self._stop,
                )
                if not cond or (isinstance(cond, str) and cond.strip().lower() in ("", "false", "no", "0", "none")):
                    return StepResult(step.id, host, Status.SKIPPED, "condition 'when' is false")
            rendered = templating.render_value(dict(step.args), ctx_vars, what=f"{step.id}.args", stop=self._stop)
            from engine.argschema import build

            args = build(module.Args, rendered, path=f"steps.{step.id}.args")
        except templating.UnknownReference as ref:
            return StepResult(
                step.id,
                host,
                Status.UNKNOWN,
                f"arguments use a value known only after an upstream step is applied ({ref.what})",
                plan=Plan.unknown("arguments not known yet"),
                outputs=unknown_outputs(step),
            )
        except RenderInterrupted:  # SIGINT/SIGTERM: nothing was done, as for a step not started
            return StepResult(step.id, host, Status.SKIPPED, "interrupted while rendering its arguments")
        except PlaybookError as exc:
            where = f"{step.location} " if step.location else ""
            return StepResult(step.id, host, Status.FAILED, f"{where}{exc}")
        deadline = time.monotonic() + step.timeout if step.timeout else None
        common: dict[str, Any] = dict(
            host=host,
            step=step.id,
            vars=ctx_vars,
            run_id=self.opts.run_id,
            release_id=self.opts.release_id,
            state_dir=self.opts.state_dir,
            timeout=step.timeout,
            deadline=deadline,
            mode=mode,
            target=self.inventory.hosts.get(host) if host else None,
            emit=lambda text: self.bus.emit(Message(text, "info", host, step.id)),
            warn=lambda text: self.bus.emit(Message(text, "warning", host, step.id)),
            progress=self.meter.for_step(host, step.id),
        )
        try:
            conn = self._conn(host)
            with planning():
                plan = module.plan(PlanContext(conn=ReadOnly(conn), **common), args)
        except ConnectionFailed as exc:  # maybe found before the step started: count its time
            return StepResult(step.id, host, Status.UNREACHABLE, str(exc), duration=exc.seconds)
        except CommandTimeout as exc:
            return StepResult(step.id, host, Status.FAILED, f"timed out while planning: {exc}")
        except ReadOnlyViolation as exc:  # a module bug, never "unknown until applied"
            return StepResult(step.id, host, Status.FAILED, f"module '{step.module}' tried to write: {exc}")
        except PlaybookError as exc:
            if mode == "plan" and changing and not exc.certain:
                return StepResult(
                    step.id,
                    host,
                    Status.UNKNOWN,
                    f"cannot plan before '{changing[0]}' is applied: {exc}",
                    plan=Plan.unknown(str(exc)),
                    outputs=unknown_outputs(step),
                )
            return StepResult(step.id, host, Status.FAILED, str(exc))
        except Exception as exc:  # a bug in a module must not take the run down
            return StepResult(step.id, host, Status.FAILED, internal_error(step, exc, self.opts.verbose))
        if self.opts.expected is not None:
            drift = node_drift(
                self.opts.expected.get((step.id, host)),
                plan,
                upstream_changed=any(r.status == Status.CHANGED for r in upstream),
            )
            if drift:
                return StepResult(step.id, host, Status.FAILED, drift, plan=plan)
        if mode == "plan" or plan.change == Change.NO_CHANGE:
            status = {Change.WILL_CHANGE: Status.CHANGED, Change.NO_CHANGE: Status.OK, Change.UNKNOWN: Status.UNKNOWN}[
                plan.change
            ]
            outputs = dict(plan.outputs)
            if plan.change != Change.NO_CHANGE:
                for name in module.outputs:
                    outputs.setdefault(name, UNKNOWN)
            return StepResult(step.id, host, status, plan.reason, plan=plan, outputs=outputs)
        return self._apply(step, host, module, conn, common, plan)

    def _apply(
        self, step: Step, host: str | None, module: Any, conn: Connection, common: dict[str, Any], plan: Plan
    ) -> StepResult:
        try:
            applied = module.apply(ApplyContext(conn=conn, **common), plan)
        except ConnectionFailed as exc:
            return StepResult(step.id, host, Status.UNREACHABLE, str(exc), plan=plan)
        except CommandTimeout as exc:
            return StepResult(step.id, host, Status.FAILED, f"timed out: {exc}", plan=plan)
        except PlaybookError as exc:
            return StepResult(step.id, host, Status.FAILED, str(exc), plan=plan)
        except Exception as exc:
            return StepResult(step.id, host, Status.FAILED, internal_error(step, exc, self.opts.verbose), plan=plan)
        if isinstance(applied, StepResult):
            return applied
        outputs = dict(plan.outputs)
        outputs.update(applied or {})
        return StepResult(step.id, host, Status.CHANGED, plan.reason, plan=plan, outputs=outputs)


def with_changed(result: StepResult) -> dict[str, Any]:
    """The result's outputs plus the `changed` output the engine gives every step: whether it
    changed (in a plan: would change) something on this host; unknown while that is unknown."""
    outputs = dict(result.outputs)
    if result.status in (Status.CHANGED, Status.OK, Status.SKIPPED):
        outputs.setdefault("changed", result.status == Status.CHANGED)
    elif result.status == Status.UNKNOWN:
        outputs.setdefault("changed", UNKNOWN)
    return outputs


def unknown_outputs(step: Step) -> dict[str, Any]:
    """Every output of the step's module as unknown-until-applied (a dry run's downstream view)."""
    try:
        return {name: UNKNOWN for name in get_module(step.module).outputs}
    except PlaybookError:
        return {}


def internal_error(step: Step, exc: BaseException, verbose: int) -> str:
    """The message for a module's bug: what raised where; the traceback only with -vvv."""
    text = f"internal error in module '{step.module}' (step '{step.id}'): {type(exc).__name__}: {exc}"
    if verbose >= 3:
        text += "\n" + "".join(traceback.format_exception(exc))
    return text
