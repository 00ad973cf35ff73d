"""The commands that look without deploying: `validate`, `graph`, `history`, `lock`, `modules`."""

from __future__ import annotations

import argparse
import os
import sys

from engine.errors import PlaybookError

__all__ = ["cmd_validate", "cmd_graph", "cmd_history", "cmd_lock", "cmd_modules", "cmd_drift"]


def cmd_validate(ns: argparse.Namespace) -> int:
    from engine import api
    from engine.errors import ValidationErrors
    from engine.load.inventory import load_inventory
    from engine.load.playbook import load_playbook
    from engine.report.terminal import console

    err = console(stderr=True)
    out = console()
    extra = api.parse_extra_vars(ns.extra_vars)
    bad = 0
    for path in ns.files:
        try:
            if _looks_like_inventory(path):
                load_inventory(path)
            else:
                pb = load_playbook(path)
                try:
                    inv_path = api.find_inventory(pb, ns.inventory)
                except PlaybookError:
                    inv_path = None
                if inv_path:
                    api.check(api.Loaded(pb, load_inventory(inv_path)), extra)
            out.print(f"[green]ok[/green] {path}")
        except ValidationErrors as exc:
            bad += 1
            for e in exc.errors:
                err.print(f"[red]error:[/red] {e}", markup=True, soft_wrap=True)
        except PlaybookError as exc:
            bad += 1
            err.print(f"[red]error:[/red] {_escape(str(exc))}", soft_wrap=True)
    return 1 if bad else 0


def _escape(text: str) -> str:
    from rich.markup import escape

    return escape(text)


def _looks_like_inventory(path: str) -> bool:
    from engine.yamlio.document import load_file

    try:
        data = load_file(path).data
    except PlaybookError:
        return False
    return isinstance(data, dict) and ("hosts" in data or "groups" in data or "dynamic" in data) and "steps" not in data


def cmd_graph(ns: argparse.Namespace) -> int:
    from engine.execute.graph import to_dot, to_mermaid
    from engine.load.playbook import load_playbook

    pb = load_playbook(ns.playbook)
    sys.stdout.write(to_mermaid(pb) if ns.format == "mermaid" else to_dot(pb))
    return 0


def cmd_history(ns: argparse.Namespace) -> int:
    import datetime
    import json

    from rich.table import Table

    from engine.record.state import open_history
    from engine.report.terminal import console

    if not getattr(ns, "state", "") and not os.path.exists(os.path.join(ns.state_dir, "history.sqlite")):
        raise PlaybookError(f"no history in {ns.state_dir}/ yet (runs are recorded there; see --state-dir)")
    hist = open_history(getattr(ns, "state", ""), ns.state_dir)
    try:
        if getattr(ns, "html", None):
            from engine.report.html import write_report

            shown = [
                (rec, hist.details(rec.run_id))
                for rec in hist.runs(ns.playbook, mode=None if ns.all_modes else "run", limit=ns.n)
            ]
            index = write_report(ns.html, shown)
            sys.stderr.write(f"history report of {len(shown)} run(s) written to {index}\n")
            return 0
        if ns.run:
            rec = hist.run(ns.run)
            if rec is None:
                raise PlaybookError(f"no run '{ns.run}' in the history")
            results = hist.results(rec.run_id)
            if ns.format == "json":
                print(json.dumps({"run": rec.to_dict(), "results": results}, indent=2))
                return 0
            table = Table(title=f"run {rec.run_id} — {rec.name} ({rec.status})")
            for col in ("step", "host", "status", "message"):
                table.add_column(col)
            for res in results:
                table.add_row(res["step"], res["host"] or "controller", res["status"], (res["message"] or "")[:80])
            console().print(table)
            return 0
        runs = hist.runs(ns.playbook, mode=None if ns.all_modes else "run", limit=ns.n)
        if ns.format == "json":
            print(json.dumps([r.to_dict() for r in runs], indent=2))
            return 0
        table = Table()
        for col in ("run", "when (UTC)", "playbook", "user", "release", "status", "exit"):
            table.add_column(col, no_wrap=col in ("run", "release"))  # ids are copied whole, never split
        for r in runs:
            when = datetime.datetime.fromtimestamp(r.started, datetime.UTC).strftime("%Y-%m-%d %H:%M:%S")
            table.add_row(r.run_id, when, r.name, r.user, r.release_id or "", r.status, str(r.exit_code))
        console().print(table)
        return 0
    finally:
        hist.close()


def cmd_lock(ns: argparse.Namespace) -> int:

    from rich.table import Table

    from engine import api
    from engine.connection.pool import ConnectionPool
    from engine.errors import ConnectionFailed
    from engine.execute.locks import break_lock, default_lock_path, holder_alive, status
    from engine.execute.options import resolve_fleets

    loaded = api.load(ns.playbook, ns.inventory)
    ns.state = getattr(ns, "state", "") or loaded.playbook.state or loaded.inventory.state
    if ns.state == "local":
        ns.state = ""
    if ns.state:  # the locks are in the shared backend
        from engine.cli.statelock import cmd_shared_lock

        return cmd_shared_lock(ns, loaded)
    if ns.action == "break":
        ns.action, ns.force = "release", True
    fleets = resolve_fleets(loaded.playbook, loaded.inventory, ns.limit)
    table = Table()
    for col in ("fleet", "host", "lock"):
        table.add_column(col)
    refused = 0
    with ConnectionPool() as pool:
        for name, fleet in loaded.playbook.fleets.items():
            if not fleet.lock:
                continue
            path = default_lock_path(name)
            for host in fleets.get(name, []):
                try:
                    conn = pool.get(loaded.inventory.hosts[host])
                    holder = status(conn, path)
                    if holder is None:
                        table.add_row(name, host, "free")
                        continue
                    if ns.action == "status":
                        table.add_row(name, host, f"held by {holder.describe()}")
                        continue
                    alive = holder_alive(holder)  # None: it ran on another controller, unseen from here
                    if alive is not False and not ns.force:
                        refused += 1
                        why = (
                            "is still running"
                            if alive
                            else "ran on another controller, so whether it still runs cannot be seen from here"
                        )
                        table.add_row(name, host, f"kept: {holder.describe()} {why} (use --force)")
                        continue
                    break_lock(conn, path)
                    table.add_row(name, host, f"released (was {holder.describe()})")
                except ConnectionFailed as exc:
                    refused += 1
                    table.add_row(name, host, f"unreachable: {exc}")
    from engine.report.terminal import console

    console().print(table)
    return 1 if refused else 0


def cmd_modules(ns: argparse.Namespace) -> int:
    from engine.docs import module_doc, module_json, module_table

    if getattr(ns, "format", "text") == "json":
        import json

        sys.stdout.write(json.dumps(module_json(ns.name), indent=2, sort_keys=True) + "\n")
        return 0
    if ns.name:
        sys.stdout.write(module_doc(ns.name))
    else:
        sys.stdout.write(module_table())
    return 0


def cmd_drift(ns: argparse.Namespace) -> int:
    """`playbook drift`: 0 no drift, 2 drift, 1 a host could not be read (engine/record/drift.py)."""
    import json

    from engine import api
    from engine.execute.options import RunOptions
    from engine.report.drift import drift_markdown, drift_text

    if ns.forks < 1:
        raise PlaybookError(f"--forks must be at least 1 (got {ns.forks})")
    loaded = api.load(ns.playbook, ns.inventory)
    extra = api.parse_extra_vars(ns.extra_vars)
    extra.update(api.resolve_secrets(loaded.playbook, ns.secret))
    opts = RunOptions(
        mode="plan", forks=ns.forks, limit=ns.limit, extra_vars=extra, state_dir=ns.state_dir, verbose=ns.verbose
    )
    from engine.secrets import SCRUBBER

    report = api.drift(loaded, opts)
    doc = SCRUBBER.scrub_obj(report.to_dict())  # a message or a path may carry a secret's value
    if ns.format == "json":
        sys.stdout.write(json.dumps(doc, indent=2) + "\n")
    elif ns.format == "markdown":
        sys.stdout.write(drift_markdown(doc))
    else:
        sys.stdout.write(drift_text(doc, verbose=ns.verbose > 0))
    return report.exit_code
