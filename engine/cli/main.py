"""The `playbook` command: a thin shell over `engine.api`.

Exit codes: 0 success / no changes; 1 error or any failed host; 2 changes planned (`plan`);
130 interrupted. A user mistake prints one located message, never a traceback (`-vvv` adds
tracebacks for internal errors).

Here: the parser of every command with its help examples, and the dispatch. The commands that
change hosts are in deploy.py, those that only look in inspect.py, `inventory` in inventory.py.
"""

from __future__ import annotations

import argparse
import atexit
import gc
import os
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    ns = parser.parse_args(argv)
    if not ns.command:
        parser.print_help()
        return 1
    verbose = getattr(ns, "verbose", 0)
    from engine.cli import deploy, inspect

    try:
        if ns.command in ("run", "plan"):
            return deploy.cmd_execute(ns, ns.command)
        if ns.command == "rollback":
            return deploy.cmd_rollback(ns)
        if ns.command == "apply":
            return deploy.cmd_apply(ns)
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
