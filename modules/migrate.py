"""`migrate`: a database (or any) migration with `up` and `down` commands, recorded per host.

A ledger file per migration on the target (`<ledger_dir>/<name>.json`, default
`$HOME/.playbook-migrations`) says it was applied, in which release and how to undo it, so the
plan reads the truth from the host and a rollback knows what to revert.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from typing import ClassVar, Literal

from engine.argschema import enforce
from engine.errors import ModuleError
from engine.model import jsonable
from engine.model.results import Diff, Plan
from engine.module import ApplyContext, PlanContext, arg, register

__all__ = ["Migrate", "MigrateArgs"]

# $1 ledger dir ('' = default), $2 name; prints the ledger entry or exits 3
_READ = r'''d="${1:-$HOME/.playbook-migrations}"; [ -f "$d/$2.json" ] || exit 3; cat -- "$d/$2.json"'''
_WRITE = r'''d="${1:-$HOME/.playbook-migrations}"; mkdir -p -- "$d" && cat > "$d/.$2.tmp" && mv -f -- "$d/.$2.tmp" "$d/$2.json"'''
_REMOVE = r'''d="${1:-$HOME/.playbook-migrations}"; rm -f -- "$d/$2.json"'''


@dataclass(frozen=True)
class MigrateArgs:
    name: str = arg(
        doc="Migration id, unique per playbook, e.g. `2026_11_add_orders_index`.",
        pattern=r"[A-Za-z0-9][A-Za-z0-9_.-]*",
        expected="letters, digits and _.-",
    )
    up: str = arg(doc="Shell command that applies the migration.")
    down: str = arg(doc="Shell command that reverts it; run by `playbook rollback --with-migrations`.")
    chdir: str | None = arg(None, doc="Directory to run the commands in (e.g. `{{ steps.sync.release }}`).")
    action: Literal["up", "down"] = arg("up", doc="`up` applies (the default); `down` reverts (used by rollback).")
    ledger_dir: str | None = arg(
        None, doc="Where the host records applied migrations (default `$HOME/.playbook-migrations`)."
    )


@register
class Migrate:
    """Applies a migration once per host: the plan reads the host's ledger and says no change
    when the migration is already applied. Each applied migration records its `down` command
    and release, so `playbook rollback` can refuse to leave a migration behind, or revert it
    with `--with-migrations`."""

    name: ClassVar[str] = "migrate"
    Args: ClassVar[type] = MigrateArgs
    summary: ClassVar[str] = "apply a migration once (up), revert it on rollback (down); recorded per host"
    outputs: ClassVar[dict[str, str]] = {
        "migration": "the migration name",
        "action": "up or down",
        "down": "the command that reverts it",
        "release": "the release that applied it",
    }
    controller_only: ClassVar[bool] = False
    examples: ClassVar[str] = """\
- id: add_orders_index
  module: migrate
  fleet: db
  args:
    name: 2026_11_add_orders_index
    up: psql -c 'CREATE INDEX CONCURRENTLY orders_created ON orders (created)'
    down: psql -c 'DROP INDEX CONCURRENTLY orders_created'
"""

    def _ledger(self, ctx: PlanContext, args: MigrateArgs) -> dict | None:
        res = ctx.probe(["sh", "-c", _READ, "sh", args.ledger_dir or "", args.name])
        if res.rc == 3:
            return None
        if not res.ok:
            raise ModuleError(f"cannot read the migration ledger: {res.err.strip()[-300:]}", path=ctx.step)
        try:
            return jsonable.loads(res.stdout or b"{}")
        except ValueError:
            return {"release": "unknown"}

    def plan(self, ctx: PlanContext, args: MigrateArgs) -> Plan:
        enforce(args, path=f"{ctx.step}.args")  # the rules declared with the arguments ('name')
        entry = self._ledger(ctx, args)
        outputs = {"migration": args.name, "action": args.action, "down": args.down, "release": ctx.release_id}
        fingerprint = {"applied": entry is not None}
        if args.action == "up":
            if entry is not None:
                return Plan.no_change(
                    f"migration {args.name} applied in release {entry.get('release', '?')}",
                    outputs={**outputs, "release": entry.get("release", "")},
                    fingerprint=fingerprint,
                )
            return Plan.will_change(
                f"will apply migration {args.name}",
                outputs=outputs,
                fingerprint=fingerprint,
                diffs=(Diff(header=f"migration {args.name} (up)", after=args.up + "\n"),),
                data={"args": args},
            )
        if entry is None:
            return Plan.no_change(f"migration {args.name} is not applied", outputs=outputs, fingerprint=fingerprint)
        down = entry.get("down") or args.down
        return Plan.will_change(
            f"will revert migration {args.name} (applied in release {entry.get('release', '?')})",
            outputs={**outputs, "down": down},
            fingerprint=fingerprint,
            diffs=(Diff(header=f"migration {args.name} (down)", after=down + "\n"),),
            data={"args": args, "down": down},
        )

    def apply(self, ctx: ApplyContext, plan: Plan) -> dict[str, object]:
        args: MigrateArgs = plan.data["args"]
        if args.action == "up":
            res = ctx.run(args.up, shell=True, cwd=args.chdir)
            if not res.ok:
                raise ModuleError(f"migration {args.name} (up) exited {res.rc}: {(res.err or res.out).strip()[-2000:]}")
            entry = {
                "name": args.name,
                "release": ctx.release_id,
                "run_id": ctx.run_id,
                "time": time.time(),
                "down": args.down,
            }
            w = ctx.run(["sh", "-c", _WRITE, "sh", args.ledger_dir or "", args.name], stdin=json.dumps(entry).encode())
            if not w.ok:
                raise ModuleError(f"migration {args.name} applied, but recording it failed: {w.err.strip()[-300:]}")
            return dict(plan.outputs)
        res = ctx.run(plan.data["down"], shell=True, cwd=args.chdir)
        if not res.ok:
            raise ModuleError(f"migration {args.name} (down) exited {res.rc}: {(res.err or res.out).strip()[-2000:]}")
        rm = ctx.run(["sh", "-c", _REMOVE, "sh", args.ledger_dir or "", args.name])
        if not rm.ok:
            raise ModuleError(
                f"migration {args.name} reverted, but updating the ledger failed: {rm.err.strip()[-300:]}"
            )
        return dict(plan.outputs)
