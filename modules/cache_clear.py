"""`cache_clear`: clear caches after a deploy, per host: a remote command or an HTTP purge.

Clearing a cache has no state to compare, so the step plans a change every time it is reached
(the dry run shows the command or the request line) - unless `only_if_changed` names steps that
changed nothing on this host. Put it after the sync step with `needs:`. The purge is sent by an
`Http` client, which only `apply` can build (modules/_support/http.py).
"""

from __future__ import annotations

import shlex
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from engine.argschema import enforce
from engine.errors import ArgError, ModuleError
from engine.model.results import UNKNOWN, Diff, Plan
from engine.module import ApplyContext, PlanContext, arg, register
from engine.secrets import MASK, Secret
from modules._support.http import Http

__all__ = ["CacheClear", "CacheClearArgs", "HttpPurge"]

_SENSITIVE = ("authorization", "cookie", "token", "secret", "key", "pass", "auth", "signature")


@dataclass(frozen=True)
class HttpPurge:
    url: str = arg(doc="URL to request, http or https (e.g. `http://{{ host.address }}/purge`).")
    method: str = arg("PURGE", doc="HTTP method (PURGE, BAN, POST, GET...).")
    headers: dict[str, str] = arg(
        default_factory=dict,
        secret=True,
        doc="Request headers. Values are never shown in plans, logs or errors when the header looks sensitive (Authorization, Cookie, *token*, *key*...) or the value is a secret.",
    )
    expect: tuple[int, ...] = arg((), doc="Status codes that count as success (default: any 2xx).")
    timeout: float = arg(10.0, doc="Seconds to wait for the response.")
    body: str | None = arg(None, doc="Request body (sent as is).")


@dataclass(frozen=True)
class CacheClearArgs:
    command: tuple[str, ...] | None = arg(
        None,
        doc="Command run on the host as the connection user, as a list of arguments (no shell), e.g. `[wp, cache, flush, --allow-root]`.",
        exactly_one="action",
        nonempty=True,
    )
    chdir: str | None = arg(None, doc="Directory to run `command` in (e.g. `{{ steps.sync.release }}`).")
    http: HttpPurge | None = arg(
        None, doc="An HTTP purge request sent from the controller for each host.", exactly_one="action"
    )
    only_if_changed: tuple[str, ...] = arg(
        (),
        doc="Step ids (that this step `needs`): clear only when one of them changed something on this host (an `rsync` step's `changed_files`, else the `changed` output every step has).",
    )


def _sensitive(name: str) -> bool:
    low = name.lower()
    return any(s in low for s in _SENSITIVE)


def _header_text(name: str, value: Any) -> str:
    if isinstance(value, Secret) or _sensitive(name):
        return f"{name}: {MASK}"
    return f"{name}: {value}"


def _safe_url(url: str) -> str:
    """The URL with any user:password@ masked."""
    parts = urllib.parse.urlsplit(url)
    if parts.username or parts.password:
        host = parts.hostname or ""
        if parts.port:
            host += f":{parts.port}"
        return urllib.parse.urlunsplit((parts.scheme, f"{MASK}@{host}", parts.path, parts.query, parts.fragment))
    return url


def _reveal(value: Any) -> str:
    return value.reveal() if isinstance(value, Secret) else str(value)


def _changed(ctx: PlanContext, step_ids: tuple[str, ...]) -> tuple[bool | None, str]:
    """(did any listed step change something here, why). None: not known yet (dry run)."""
    steps: Mapping[str, Any] = ctx.vars.get("steps", {}) if ctx.vars else {}
    unknown = []
    for sid in step_ids:
        if sid not in steps:
            raise ArgError(
                f"'only_if_changed' names step '{sid}', which has not run on this host (add it to 'needs')",
                path=f"{ctx.step}.args",
            )
        outs = steps[sid] or {}
        value = outs.get("changed_files", outs.get("changed", None))
        if value is UNKNOWN:
            unknown.append(sid)
            continue
        if value is None:
            raise ArgError(
                f"'only_if_changed': step '{sid}' reports neither 'changed_files' nor 'changed'",
                path=f"{ctx.step}.args",
            )
        if value:
            return True, f"'{sid}' changed"
    if unknown:
        return None, f"'{unknown[0]}' is not applied yet"
    return False, "no change in " + ", ".join(f"'{s}'" for s in step_ids)


@register
class CacheClear:
    """Clears caches on each host after a deploy: runs `command` on the host, or sends an HTTP
    purge from the controller. It always runs when reached (a cache has no state to diff);
    `only_if_changed` skips it on hosts where the named steps changed nothing."""

    name: ClassVar[str] = "cache_clear"
    Args: ClassVar[type] = CacheClearArgs
    summary: ClassVar[str] = "clear caches after a deploy: a remote command or an HTTP purge"
    outputs: ClassVar[dict[str, str]] = {
        "rc": "exit code of the command",
        "status": "HTTP status of the purge",
        "output": "the command's output or the response body (first 4 KiB)",
    }
    controller_only: ClassVar[bool] = False
    examples: ClassVar[str] = """\
- id: flush_cache
  module: cache_clear
  fleet: web
  needs: [sync]
  args:
    command: [wp, cache, flush]
    chdir: /var/www/app/current
    only_if_changed: [sync]
- id: purge_varnish
  module: cache_clear
  fleet: web
  args:
    http:
      url: "http://{{ host.address }}/"
      method: PURGE
      expect: [200, 204]
"""

    def plan(self, ctx: PlanContext, args: CacheClearArgs) -> Plan:
        where = f"{ctx.step}.args"
        enforce(args, path=where)  # the rules declared with the arguments
        if args.http is not None:
            scheme = urllib.parse.urlsplit(args.http.url).scheme
            if scheme not in ("http", "https"):
                raise ArgError(f"'http.url' must be an http or https URL (got scheme {scheme!r})", path=where)
            if not args.http.method or not args.http.method.isalpha():
                raise ArgError(f"'http.method' must be a word like PURGE (got {args.http.method!r})", path=where)
        if args.only_if_changed:
            changed, why = _changed(ctx, tuple(args.only_if_changed))
            if changed is False:
                return Plan.no_change(f"nothing to clear: {why}")
        if args.command is not None:
            text = shlex.join(args.command)
            if args.chdir:
                text = f"(cd {shlex.quote(args.chdir)}) {text}"
            diff = Diff(header="command", after=text + "\n")
        else:
            h = args.http
            assert h is not None  # exactly one of 'command' and 'http', checked above
            text = f"{h.method.upper()} {_safe_url(h.url)}"
            lines = [text] + [_header_text(k, v) for k, v in h.headers.items()]
            diff = Diff(header="http request", after="\n".join(lines) + "\n")
        return Plan.will_change(f"will run: {text}", diffs=(diff,), data={"args": args})

    def apply(self, ctx: ApplyContext, plan: Plan) -> dict[str, Any]:
        args: CacheClearArgs = plan.data["args"]
        if args.command is not None:
            res = ctx.run(list(args.command), cwd=args.chdir)
            if res.rc != 0:
                tail = (res.err.strip() or res.out.strip())[-1500:]
                raise ModuleError(
                    f"cache clear command exited {res.rc}: {shlex.join(args.command)}" + (f"\n{tail}" if tail else ""),
                    path=ctx.host or "",
                )
            return {"rc": res.rc, "output": res.out[-4096:]}
        assert args.http is not None  # plan refused arguments without exactly one of 'command' and 'http'
        return _purge(ctx, args.http)


def _purge(ctx: ApplyContext, h: HttpPurge) -> dict[str, Any]:
    shown = f"{h.method.upper()} {_safe_url(h.url)}"
    headers = {k: _reveal(v) for k, v in h.headers.items()}
    data = h.body.encode() if h.body is not None else None
    req = urllib.request.Request(h.url, data=data, headers=headers, method=h.method.upper())
    timeout = h.timeout
    left = ctx.remaining()
    if left is not None:
        timeout = min(timeout, left)
    try:
        with Http(ctx).send(req, timeout=timeout) as resp:
            status = resp.status
            body = resp.read(4096)
    except urllib.error.HTTPError as exc:
        status = exc.code
        body = exc.read(4096) if exc.fp else b""
    except (urllib.error.URLError, TimeoutError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise ModuleError(f"cache purge {shown} failed: {reason}", path=ctx.host or "") from None
    ok = status in h.expect if h.expect else 200 <= status < 300
    text = body.decode("utf-8", "replace")
    if not ok:
        want = ", ".join(str(s) for s in h.expect) if h.expect else "2xx"
        raise ModuleError(
            f"cache purge {shown}: got status {status}, expected {want}"
            + (f"\n{text.strip()[:500]}" if text.strip() else ""),
            path=ctx.host or "",
        )
    return {"status": status, "output": text}
