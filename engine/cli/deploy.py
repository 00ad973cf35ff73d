"""The commands that change hosts: `run` and `plan` (`cmd_execute`), `apply`, `rollback`.

Each loads and checks what it needs, then `_run` calls `api.run` with the chosen reporter and
the terminal's interrupts: the first Ctrl-C lets the steps in flight finish and starts nothing
new, the second aborts. The commands that only look are in inspect.py.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
from typing import Any

from engine.errors import PlaybookError

__all__ = ["cmd_execute", "cmd_rollback", "cmd_apply"]


def _reporter(fmt: str, mode: str, verbose: int, playbook: Any = None) -> Any:
    if fmt == "markdown":
        from engine.execute.graph import to_mermaid
        from engine.report.markdown import MarkdownReporter

        return MarkdownReporter(sys.stdout, mermaid=to_mermaid(playbook) if playbook else "")
    if fmt == "json":
        from engine.report.jsondoc import JsonReporter

        return JsonReporter(sys.stdout)
    if fmt == "jsonl":
        from engine.report.jsondoc import JsonLinesReporter

        return JsonLinesReporter(sys.stdout)
    from engine.report.console import ConsoleReporter

    return ConsoleReporter(mode=mode, verbose=verbose)


def cmd_execute(ns: argparse.Namespace, mode: str) -> int:
    from engine import api
    from engine.execute.options import RunOptions

    if ns.forks < 1:
        raise PlaybookError(f"--forks must be at least 1 (got {ns.forks})")
    loaded = api.load(ns.playbook, ns.inventory)
    extra = api.parse_extra_vars(ns.extra_vars)
    secrets = api.resolve_secrets(loaded.playbook, ns.secret)
    extra.update(secrets)
    save_to = getattr(ns, "out", None) if mode == "plan" else None
    key = api.plan_key() if save_to else None  # a bad key setting fails before any host is contacted
    shard = _shard(ns)
    if shard is not None and save_to:
        raise PlaybookError("plan -o saves the whole plan: drop --shard, and apply it with `apply PLAN --shard I/N`")
    pool = None if shard else api.open_early(loaded, ns.limit, ns.forks)  # handshakes overlap the checks below
    try:
        api.check(loaded, extra, ns.limit, release_id=ns.release_id)
        opts = RunOptions(
            mode=mode,
            forks=ns.forks,
            limit=ns.limit,
            extra_vars=extra,
            release_id=ns.release_id or "",
            state_dir=ns.state_dir,
            verbose=ns.verbose,
            state=_state_of(ns, loaded),
        )
        resume = getattr(ns, "resume", None)
        if shard is not None:
            if resume and shard.coordinator:
                raise PlaybookError("--resume with --shard coordinator: run the coordinator again instead")
            loaded = api.prepare_part(loaded, opts, shard, resume or _shared_run_id(ns), resume=bool(resume))
            resume = opts.run_id if resume else None
        if resume and not api.prepare_resume(loaded, opts, resume):
            sys.stderr.write(
                f"run {opts.resumed_from} already finished (release {opts.release_id}): nothing to resume\n"
            )
            return 0
        summary = _run(ns, loaded, opts, pool=pool)
    finally:  # a failed check: nothing ran on any host; close what was opened (execute closes it too)
        if pool is not None:
            pool.close_all()
    if save_to:
        digest = api.save_plan(save_to, summary, loaded, opts, secret_names=set(secrets), key=key)
        signed = f"signed with key id {key.key_id}" if key else "unsigned"
        sys.stderr.write(
            f"plan saved to {save_to} ({digest[:19]}…, {signed}); apply it with: playbook apply {save_to}\n"
        )
    return summary.exit_code()


def _state_of(ns: argparse.Namespace, loaded: Any) -> str:
    """`--state` / `$PLAYBOOK_STATE`, else the playbook's `state:`, else the inventory's; "" = local."""
    state = ns.state or loaded.playbook.state or loaded.inventory.state
    return "" if state == "local" else state


def _shard(ns: argparse.Namespace) -> Any:
    from engine.execute.shard import parse_shard

    return parse_shard(ns.shard) if getattr(ns, "shard", None) else None


def _shared_run_id(ns: argparse.Namespace) -> str:
    from engine.execute.sharded import shared_run_id

    return shared_run_id(ns.run_id)


def _warn(text: str) -> None:
    from engine.secrets import SCRUBBER

    sys.stderr.write(f"warning: {SCRUBBER.scrub(text)}\n")


def _run(
    ns: argparse.Namespace, loaded: Any, opts: Any, *, plan_hash: str = "", pool: Any = None, rollback: bool = False
) -> Any:
    """`api.run` with the chosen reporter, and SIGINT/SIGTERM asking the run to stop: in-flight
    steps finish, nothing new starts; a second Ctrl-C aborts (children killed, in-flight steps
    reported unknown, the run recorded as interrupted); a third, or a second before the run
    started, raises KeyboardInterrupt."""
    from engine import api
    from engine.connection import children

    children.reset_abort()

    reporter = _reporter(ns.format, opts.mode, ns.verbose, loaded.playbook)
    executors: list[Any] = []
    interrupts = {"n": 0}

    def on_signal(signum: int, _frame: Any) -> None:
        # os.write, not sys.stderr: the main thread may be inside a write to it (not reentrant)
        interrupts["n"] += 1
        if interrupts["n"] == 1 or signum != signal.SIGINT:
            for ex in executors:
                ex.request_stop()
            if interrupts["n"] == 1:
                os.write(
                    2,
                    b"\ninterrupt: letting the steps in flight finish, starting nothing new (Ctrl-C again to abort)\n",
                )
            return
        os.write(2, b"\ninterrupt: aborting, stopping the steps in flight\n")
        woken = [ex.abort() for ex in executors]
        if interrupts["n"] > 2 or not any(woken):
            children.abort()
            raise KeyboardInterrupt

    old_int = signal.signal(signal.SIGINT, on_signal)
    old_term = signal.signal(signal.SIGTERM, on_signal)
    try:
        return api.run(
            loaded,
            opts,
            subscribers=[reporter],
            on_executor=executors.append,
            pool=pool,
            plan_hash=plan_hash,
            rollback=rollback,
            warn=_warn,
        )
    finally:
        signal.signal(signal.SIGINT, old_int)
        signal.signal(signal.SIGTERM, old_term)
        close = getattr(reporter, "close", None)
        if close:
            close()


def cmd_rollback(ns: argparse.Namespace) -> int:
    from engine import api
    from engine.execute.options import RunOptions

    loaded = api.load(ns.playbook, ns.inventory)
    extra = api.parse_extra_vars(ns.extra_vars)
    extra.update(api.resolve_secrets(loaded.playbook, ns.secret))
    opts = RunOptions(
        mode="plan" if ns.plan else "run",
        forks=ns.forks,
        limit=ns.limit,
        extra_vars=extra,
        state_dir=ns.state_dir,
        verbose=ns.verbose,
        state=_state_of(ns, loaded),
    )
    rb = api.prepare_rollback(loaded, opts, to=ns.to, with_migrations=ns.with_migrations)
    plan = rb.plan
    sys.stderr.write(
        f"rollback of {loaded.playbook.name}: {plan.live_text()} -> {plan.target}"
        f" ({len(plan.undone)} run(s) undone, {len(plan.migrations)} migration(s) to revert)\n"
    )
    for note in plan.notes:
        sys.stderr.write(f"note: {note}\n")
    summary = _run(ns, rb.loaded, rb.options, rollback=True)
    if rb.options.mode == "run":
        sys.stderr.write(f"{api.rollback_report(rb, summary)}\n")
    return summary.exit_code()


def cmd_apply(ns: argparse.Namespace) -> int:
    from engine import api

    ready = api.prepare_apply(
        ns.plan_file,
        secrets=ns.secret,
        forks=ns.forks,
        state_dir=ns.state_dir,
        verbose=ns.verbose,
        shard=_shard(ns),
        state=ns.state,
    )
    return _run(ns, ready.loaded, ready.options, plan_hash=ready.plan_hash).exit_code()
