"""`command`: run a command on each host, guarded so that re-runs can be no-ops."""

from __future__ import annotations

import shlex
from dataclasses import dataclass
from typing import ClassVar

from engine.argschema import enforce
from engine.errors import ModuleError
from engine.model.results import Diff, Plan
from engine.module import ApplyContext, PlanContext, arg, output, register
from modules._support.env_stdin import with_env

__all__ = ["Command", "CommandArgs"]


@dataclass(frozen=True)
class CommandArgs:
    argv: tuple[str, ...] | None = arg(
        None, doc="The command as a list of arguments (no shell).", exactly_one="command", nonempty=True
    )
    shell: str | None = arg(None, doc="A command line run by `/bin/sh -c`.", exactly_one="command")
    creates: str | None = arg(None, doc="Do nothing when this path exists on the host.")
    removes: str | None = arg(None, doc="Do nothing when this path does not exist on the host.")
    unless: str | None = arg(
        None, doc="A shell command run read-only while planning; when it exits 0 the step does nothing."
    )
    chdir: str | None = arg(None, doc="Directory to run the command in.")
    env: dict[str, str] | None = arg(
        None,
        doc="Extra environment variables. The values travel on the command's standard input (read by a shell prologue on the host), never in any process's arguments: the way to hand a command a secret (`TOKEN: '{{ api_token }}'`).",
    )
    stdin: str | None = arg(None, doc="Text fed to the command's standard input (never in its arguments).")
    ok_rc: tuple[int, ...] = arg((0,), doc="Exit codes that count as success.")


def _describe(args: CommandArgs) -> str:
    text = args.shell if args.shell is not None else shlex.join(args.argv or ())
    if args.chdir:
        text = f"(cd {args.chdir}) {text}"
    return text


@register
class Command:
    """Runs `argv` (or a `shell` line) on the host. Without a guard it runs every time and
    reports changed; with `creates`, `removes` or `unless` it plans a no-change when the guard
    says the work is done, which makes it idempotent."""

    name: ClassVar[str] = "command"
    Args: ClassVar[type] = CommandArgs
    summary: ClassVar[str] = "run a command (argv or shell), guarded by creates/removes/unless"
    outputs: ClassVar[dict[str, str]] = {
        "rc": output("exit code", int),
        "stdout": output("standard output (its first 64 MiB)", str),
        "stderr": output("standard error (its first 64 MiB)", str),
    }
    controller_only: ClassVar[bool] = False
    examples: ClassVar[str] = """\
- id: reload_php
  module: command
  fleet: web
  args:
    argv: [sudo, systemctl, reload, php8.2-fpm]
- id: warm_up
  module: command
  fleet: web
  args:
    shell: curl -fsS http://localhost/ > /dev/null
    unless: test -f /var/www/app/.warm
"""

    def plan(self, ctx: PlanContext, args: CommandArgs) -> Plan:
        enforce(args, path=f"{ctx.step}.args")  # the rules declared with the arguments
        fingerprint: dict[str, object] = {}
        if args.creates:
            exists = ctx.probe(["test", "-e", args.creates]).ok
            fingerprint["creates"] = exists
            if exists:
                return Plan.no_change(f"'{args.creates}' exists (creates)", fingerprint=fingerprint)
        if args.removes:
            exists = ctx.probe(["test", "-e", args.removes]).ok
            fingerprint["removes"] = exists
            if not exists:
                return Plan.no_change(f"'{args.removes}' does not exist (removes)", fingerprint=fingerprint)
        if args.unless:
            guard = ctx.probe(args.unless, shell=True, cwd=args.chdir)
            fingerprint["unless_rc"] = guard.rc
            if guard.ok:
                return Plan.no_change("the 'unless' command succeeded", fingerprint=fingerprint)
        text = _describe(args)
        why = (
            "the 'unless' command failed"
            if args.unless
            else ("its guard path is absent" if args.creates else "no guard: a command runs every time")
        )
        return Plan.will_change(
            f"will run ({why})",
            diffs=(Diff(header="command", after=text + "\n"),),
            data={"args": args},
            fingerprint=fingerprint,
        )

    def apply(self, ctx: ApplyContext, plan: Plan) -> dict[str, object]:
        args: CommandArgs = plan.data["args"]
        stdin = args.stdin.encode() if args.stdin is not None else None
        if args.env:  # values on stdin, never in argv (modules/_support/env_stdin.py)
            argv = ["/bin/sh", "-c", args.shell, "sh"] if args.shell is not None else list(args.argv or ())
            argv, stdin = with_env(argv, args.env, stdin, where=f"{ctx.step}.args")
            res = ctx.run(argv, stdin=stdin, cwd=args.chdir)
        elif args.shell is not None:
            res = ctx.run(args.shell, shell=True, stdin=stdin, cwd=args.chdir)
        else:
            res = ctx.run(list(args.argv or ()), stdin=stdin, cwd=args.chdir)
        if res.rc not in args.ok_rc:
            tail = (res.err.strip() or res.out.strip())[-2000:]
            raise ModuleError(f"command exited {res.rc}: {_describe(args)}" + (f"\n{tail}" if tail else ""))
        err = res.err
        if res.dropped:  # past MAX_OUTPUT per stream: read and not kept (engine/connection/base.py)
            err += f"\n[playbook: {res.dropped} more bytes of output were not kept]\n"
        return {"rc": res.rc, "stdout": res.out, "stderr": err}
