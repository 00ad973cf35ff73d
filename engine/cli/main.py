"""The `playbook` command: a thin shell over `engine.api`.

Exit codes: 0 success / no changes; 1 error or any failed host; 2 changes planned (`plan`);
130 interrupted. A user mistake prints one located message, never a traceback (`-vvv` adds
tracebacks for internal errors).

Longer than ~400 lines: the parser of every command with its help examples; the bodies of
run/apply/rollback/drift are the next to move to their own files, as inspect.py's did.
"""

from __future__ import annotations

import argparse
import atexit
import gc
import os
import signal
import sys
from collections.abc import Sequence
from typing import Any

from engine.errors import PlaybookError

__all__ = ["main", "build_parser", "entry"]


def _common_run_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("playbook", help="playbook YAML file")
    p.add_argument("-i", "--inventory", help="inventory YAML (default: the playbook's `inventory:`)")
    p.add_argument(
        "-e",
        "--extra-vars",
        action="append",
        default=[],
        metavar="VARS",
        help="key=value, @file.yml or a JSON object; highest precedence; repeatable",
    )
    p.add_argument("-l", "--limit", help="host pattern restricting every fleet (see docs/patterns.md)")
    p.add_argument(
        "-f",
        "--forks",
        type=int,
        default=int(os.environ.get("PLAYBOOK_FORKS", "50")),
        help="hosts worked on at once (default 50)",
    )
    p.add_argument(
        "--format",
        choices=["text", "json", "jsonl", "markdown"],
        default="text",
        help="output format (markdown: a plan sized for a merge-request comment)",
    )
    p.add_argument(
        "--secret",
        action="append",
        default=[],
        metavar="NAME[=@FILE]",
        help="a secret var: the value of env var NAME, or the contents of FILE; masked in all output",
    )
    p.add_argument("--release-id", help="release id to use (default: UTC timestamp)")
    p.add_argument(
        "--state-dir",
        default=os.environ.get("PLAYBOOK_STATE_DIR", ".playbook"),
        help="controller state: caches, records (default ./.playbook)",
    )
    p.add_argument("-v", "--verbose", action="count", default=0)
    _state_arg(p)


def _state_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--state",
        default=os.environ.get("PLAYBOOK_STATE", ""),
        metavar="s3://BUCKET/PREFIX",
        help="keep locks, history and journal in a shared S3 backend (default: local, --state-dir; docs/scale.md)",
    )


def _shard_args(p: argparse.ArgumentParser, *, run_id: bool = True) -> None:
    p.add_argument(
        "--shard",
        metavar="I/N|auto|coordinator",
        help="work on shard I of N of the hosts (auto: from CI_NODE_INDEX/CI_NODE_TOTAL or "
        "JOB_COMPLETION_INDEX/PLAYBOOK_SHARD_TOTAL); coordinator: the steps that run once (docs/scale.md)",
    )
    if run_id:  # `apply` uses the saved plan's run id
        p.add_argument(
            "--run-id", help="the run id all parts of a sharded run share (default $PLAYBOOK_RUN_ID, ci$CI_PIPELINE_ID)"
        )


class _Version(argparse.Action):
    """`--version`: the installed package's version, read only when asked (importlib.metadata
    costs a few milliseconds that no other command should pay)."""

    def __init__(self, option_strings: Sequence[str], dest: str, **kw: Any) -> None:
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kw)

    def __call__(self, parser: argparse.ArgumentParser, *_args: Any) -> None:
        from importlib.metadata import PackageNotFoundError, version

        try:
            found = version("playbook")
        except PackageNotFoundError:  # run from a checkout that was never installed
            found = "unknown (not installed)"
        sys.stdout.write(f"playbook {found}\n")
        parser.exit(0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="playbook",
        description="Declarative deployments: plan, review, apply.",
    )
    parser.add_argument("--version", action=_Version, help="print playbook's version and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("run", help="apply a playbook to its fleets")
    _common_run_args(p)
    p.add_argument(
        "--resume", metavar="RUN_ID", help="redo only the host/steps that did not finish in that run (same release id)"
    )
    _shard_args(p)
    p = sub.add_parser("plan", help="dry run: show what would change (exit 2 when something would)")
    _common_run_args(p)
    p.add_argument("-o", "--out", metavar="PLAN.json", help="save the plan for `playbook apply`")
    _shard_args(p)

    p = sub.add_parser("apply", help="apply exactly a saved plan; refuses if anything drifted since")
    p.add_argument("plan_file", metavar="PLAN.json")
    p.add_argument("-f", "--forks", type=int, default=int(os.environ.get("PLAYBOOK_FORKS", "50")))
    p.add_argument("--format", choices=["text", "json", "jsonl"], default="text")
    p.add_argument("--secret", action="append", default=[], metavar="NAME[=@FILE]")
    p.add_argument("--state-dir", default=os.environ.get("PLAYBOOK_STATE_DIR", ".playbook"))
    p.add_argument("-v", "--verbose", action="count", default=0)
    _shard_args(p, run_id=False)
    _state_arg(p)

    p = sub.add_parser("rollback", help="return the fleet to a recorded release (default: the previous one)")
    _common_run_args(p)
    p.add_argument("--to", metavar="RELEASE", help="the release to return to (see `playbook history`)")
    p.add_argument(
        "--with-migrations",
        action="store_true",
        help="first run the down commands of migrations applied by the releases being undone",
    )
    p.add_argument("--plan", action="store_true", help="only show what the rollback would do")

    p = sub.add_parser(
        "drift",
        help="compare every host with what the history says was deployed there (exit 2 on drift)",
        description="Compare every host with what the history says was deployed there: the release\n"
        "`current` points at, the files of the live tree, canary images and colours, Helm image\n"
        "values. Changes nothing. Exit 0: no drift; 2: drift; 1: a host could not be read.",
    )
    p.add_argument("playbook", help="playbook YAML file")
    p.add_argument("-i", "--inventory", help="inventory YAML (default: the playbook's `inventory:`)")
    p.add_argument("-e", "--extra-vars", action="append", default=[], metavar="VARS", help="as for `run`")
    p.add_argument("-l", "--limit", help="host pattern restricting every fleet")
    p.add_argument(
        "-f", "--forks", type=int, default=int(os.environ.get("PLAYBOOK_FORKS", "50")), help="hosts read at once"
    )
    p.add_argument(
        "--format", choices=["text", "json", "markdown"], default="text", help="markdown: for an issue opened by CI"
    )
    p.add_argument("--secret", action="append", default=[], metavar="NAME[=@FILE]")
    p.add_argument("--state-dir", default=os.environ.get("PLAYBOOK_STATE_DIR", ".playbook"))
    p.add_argument("-v", "--verbose", action="count", default=0, help="list the hosts without drift too")

    p = sub.add_parser("validate", help="check playbooks (and their inventory) without contacting any host")
    p.add_argument("files", nargs="+", help="playbook files (an inventory file is checked on its own)")
    p.add_argument("-i", "--inventory")
    p.add_argument("-e", "--extra-vars", action="append", default=[])

    p = sub.add_parser("graph", help="print the step graph")
    p.add_argument("playbook")
    p.add_argument("--format", choices=["mermaid", "dot"], default="mermaid")

    p = sub.add_parser("history", help="list recorded runs (newest first), or one run's results")
    p.add_argument("playbook", nargs="?", help="only runs of this playbook (name or path)")
    p.add_argument("--run", help="show the results of one run (id or prefix)")
    p.add_argument("-n", type=int, default=20, help="how many runs (default 20)")
    p.add_argument("--all-modes", action="store_true", help="include plans, not only runs")
    p.add_argument("--format", choices=["text", "json"], default="text")
    p.add_argument("--html", metavar="DIR", help="write a static report (DIR/index.html) to open in a browser")
    p.add_argument("--state-dir", default=os.environ.get("PLAYBOOK_STATE_DIR", ".playbook"))
    _state_arg(p)

    p = sub.add_parser("lock", help="inspect or break the deploy locks of a playbook's fleets")
    p.add_argument("action", choices=["status", "release", "break"])
    p.add_argument("playbook")
    p.add_argument("-i", "--inventory")
    p.add_argument("-l", "--limit")
    p.add_argument(
        "--force", action="store_true", help="release: break locks even when their holder may still be running"
    )
    _state_arg(p)

    p = sub.add_parser(
        "completion",
        help="print a shell completion script (bash or zsh)",
        description="Shell completion for playbook, generated from its own options.",
        epilog="examples:\n  source <(playbook completion bash)      # in ~/.bashrc\n"
        "  source <(playbook completion zsh)       # in ~/.zshrc",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("shell", choices=["bash", "zsh"])

    p = sub.add_parser("modules", help="list modules, or document one")
    p.add_argument("name", nargs="?")
    p.add_argument(
        "--format",
        choices=["text", "json"],
        default="text",
        help="json: as `ansible-doc -j` (arguments with their schema)",
    )

    from engine.cli import inventory as inventory_cli

    inventory_cli.register(sub)
    for name, choice in sub.choices.items():
        if name in EXAMPLES:
            choice.epilog = "examples:\n" + "\n".join(f"  {line}" for line in EXAMPLES[name])
            choice.formatter_class = argparse.RawDescriptionHelpFormatter
    parser.epilog = "examples:\n" + "\n".join(f"  {line}" for line in EXAMPLES[""])
    parser.formatter_class = argparse.RawDescriptionHelpFormatter
    return parser


#: what `--help` shows under "examples:"; tests/engine/cli/test_main.py parses every line
EXAMPLES: dict[str, list[str]] = {
    "": [
        "playbook run playbooks/demo.yml                       # deploy",
        "playbook plan playbooks/demo.yml -o plan.json --format markdown   # the MR comment",
        "playbook apply plan.json                              # exactly what was reviewed",
        "playbook inventory add-host web07 --group web -i inventory/prod.yml",
        "playbook history --html report/                       # a report to look at",
        "playbook COMMAND --help                               # each command's options and examples",
    ],
    "run": [
        "playbook run playbooks/demo.yml",
        "playbook run playbooks/demo.yml --limit demo-web1 -e site_name=Hello",
        "playbook run playbooks/deploy-smartweb.yml -i inventory/prod.yml --format jsonl",
        "playbook run playbooks/demo.yml --resume 3f2a9c1b7d20   # finish an interrupted run",
    ],
    "plan": [
        "playbook plan playbooks/demo.yml                      # exit 2: something would change",
        "playbook plan playbooks/demo.yml -o plan.json --format markdown > plan.md",
    ],
    "apply": ["playbook apply plan.json", "PLAYBOOK_PLAN_KEY=... playbook apply plan.json --format json"],
    "rollback": [
        "playbook rollback playbooks/deploy-smartweb.yml --plan   # what going back would do",
        "playbook rollback playbooks/deploy-smartweb.yml --to 20261124T051500Z",
    ],
    "drift": [
        "playbook drift playbooks/deploy-smartweb.yml -i inventory/prod.yml   # exit 2: a host drifted",
        "playbook drift playbooks/deploy-smartweb.yml --format markdown > drift.md",
        "playbook drift playbooks/deploy-smartweb.yml --limit web1 --format json",
    ],
    "validate": ["playbook validate playbooks/*.yml", "playbook validate inventory/demo.yml"],
    "graph": [
        "playbook graph playbooks/demo.yml",
        "playbook graph playbooks/demo.yml --format dot | dot -Tsvg > g.svg",
    ],
    "history": [
        "playbook history",
        "playbook history deploy-smartweb -n 5",
        "playbook history --run 3f2a9c --format json",
        "playbook history --html report/",
    ],
    "lock": [
        "playbook lock status playbooks/demo.yml",
        "playbook lock release playbooks/demo.yml --limit demo-web1",
        "playbook lock break playbooks/demo.yml --state s3://deploy-state/prod",
    ],
    "modules": ["playbook modules", "playbook modules rsync", "playbook modules rsync --format json"],
}


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


def _cmd_execute(ns: argparse.Namespace, mode: str) -> int:
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


def _cmd_rollback(ns: argparse.Namespace) -> int:
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


def _cmd_apply(ns: argparse.Namespace) -> int:
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    if not ns.command:
        parser.print_help()
        return 1
    verbose = getattr(ns, "verbose", 0)
    from engine.cli import inspect

    try:
        if ns.command in ("run", "plan"):
            return _cmd_execute(ns, ns.command)
        if ns.command == "rollback":
            return _cmd_rollback(ns)
        if ns.command == "apply":
            return _cmd_apply(ns)
        if ns.command == "drift":
            return inspect.cmd_drift(ns)
        if ns.command == "validate":
            return inspect.cmd_validate(ns)
        if ns.command == "graph":
            return inspect.cmd_graph(ns)
        if ns.command == "inventory":
            from engine.cli import inventory as inventory_cli

            return inventory_cli.run(ns)
        if ns.command == "lock":
            return inspect.cmd_lock(ns)
        if ns.command == "history":
            return inspect.cmd_history(ns)
        if ns.command == "modules":
            return inspect.cmd_modules(ns)
        if ns.command == "completion":
            from engine.cli.completion import bash_script, zsh_script

            sys.stdout.write((bash_script if ns.shell == "bash" else zsh_script)(build_parser()))
            return 0
    except PlaybookError as exc:
        from engine.secrets import SCRUBBER

        _print_error_json(exc, getattr(ns, "format", "text"))
        sys.stderr.write(f"error: {SCRUBBER.scrub(str(exc))}\n")
        return 1
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130
    except BrokenPipeError:
        return 1
    except Exception as exc:  # an internal error: say so plainly, traceback only on request
        if verbose >= 3:
            raise
        sys.stderr.write(f"internal error: {type(exc).__name__}: {exc} (run with -vvv for a traceback)\n")
        return 1
    return 1


def _print_error_json(exc: PlaybookError, fmt: str) -> None:
    """With `--format json`/`jsonl`, an error that ends the command is JSON on stdout too
    (schemas/run.schema.json, schemas/events.schema.json), for the CI job that parses it."""
    if fmt not in ("json", "jsonl"):
        return
    import json

    from engine.report.jsondoc import error_document, error_event

    if fmt == "json":
        sys.stdout.write(json.dumps(error_document(exc), indent=2) + "\n")
    else:
        sys.stdout.write(json.dumps(error_event(exc), separators=(",", ":")) + "\n")


def entry() -> None:
    """The `playbook` command: `main`, then a fast exit.

    Everything a command writes is closed or flushed by the time `main` returns (history,
    saved plans, artifacts, the report). What is left is the interpreter tearing down ~800
    modules and the objects of 25+ closed SSH transports: ~100 ms of CPU, a tenth of a 25-host
    no-change run, for nothing. So stdout and stderr are flushed, the atexit handlers run, and
    the process ends with os._exit. `main` itself returns normally (tests call it in-process).

    The cyclic garbage collector's first threshold is raised from 700 to 100,000 allocations:
    importing paramiko, networkx, jinja2 and rich triggered ~145 collections, 45-65 ms of CPU,
    that found almost nothing (the objects are module-level and live for the whole run).
    Reference counting still frees everything else at once, and cycles are still collected.
    """
    gc.set_threshold(100_000, 50, 100)
    rc = main()
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe or stream: nothing more to deliver
            pass
    run_exit_handlers = getattr(atexit, "_run_exitfuncs", None)  # CPython; elsewhere, a normal exit
    if run_exit_handlers is None:
        sys.exit(rc)
    run_exit_handlers()
    os._exit(rc or 0)


if __name__ == "__main__":
    entry()
