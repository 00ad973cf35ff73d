"""`npm_fetch`: a package from an npm registry as a deploy source (source type `npm`).

Resolves `package@version` (an exact version or a dist-tag such as `latest`) from the registry's
packument over HTTP(S), downloads the tarball into the controller's content-addressed cache
keyed by its integrity (never by `name@version`: a version can be unpublished and published
again with other bytes), verifies it against `dist.integrity` (sha512, SRI) - or the pinned
`integrity` - before anything is extracted, and extracts it safely with npm's `package/` prefix
stripped.

The plan compares the resolved version and integrity with what this playbook last deployed from
this source (`<state_dir>/artifacts/`): the same integrity is no-change; the same version with
another integrity is said plainly - `1.0.0 republished: sha512-A… → sha512-B…` - and a run
deploys the new bytes. A pinned `integrity` turns any such change into an error.

Auth: a token from the environment variable named by `token_env`, or from `.npmrc`
(`//host[:port]/path/:_authToken=...`, `${VAR}` expanded, the longest matching path wins, as npm
does). The token is registered with the scrubber, sent only to the registry's host (also on
redirects), and never put in a message or a command line.
"""

from __future__ import annotations

import os
import re
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from engine.errors import ArgError, ModuleError
from engine.model import jsonable
from engine.model.results import Diff, Plan
from engine.module import ApplyContext, PlanContext, arg, register
from engine.record.deployed import last_deployed
from engine.secrets import SCRUBBER
from modules._support.artifacts import ArtifactCache, Digest, digest_to_sri, sri_to_digest
from modules._support.http import HttpReader
from modules._support.transfer_progress import metered

__all__ = ["NpmFetch", "NpmFetchArgs", "parse_npmrc", "token_for", "nerf_dart"]
_NAME = re.compile(r"(?:@[a-z0-9~-][a-z0-9._~-]*/)?[a-z0-9~-][a-z0-9._~-]*\Z")
_CHUNK = 1 << 20
_ACCEPT = "application/vnd.npm.install-v1+json; q=1.0, application/json; q=0.8, */*"


@dataclass(frozen=True)
class NpmFetchArgs:
    package: str = arg(doc="Package name, scoped or not: `@seed/templates`, `left-pad`.")
    version: str = arg(
        "latest",
        doc="An exact version (`1.0.0`) or a dist-tag (`latest`, `next`). Ranges are not accepted: a deploy names what it ships.",
        pattern=r"[^ <>=^~*|/]+",
        expected="an exact version or a dist-tag, not a range",
    )
    registry: str | None = arg(
        None,
        doc="Registry URL, e.g. `https://npm.example.com/`. Unset: the `.npmrc`'s `@scope:registry` or `registry`, else `$NPM_CONFIG_REGISTRY`; one of them is required.",
    )
    token_env: str | None = arg(
        None,
        doc="Name of an environment variable holding the registry token (e.g. `NPM_TOKEN`). Takes precedence over `.npmrc`.",
    )
    npmrc: str | None = arg(
        None,
        doc="An `.npmrc` to read the registry and `//host/:_authToken=` from (relative to the playbook's directory). Unset: `$NPM_CONFIG_USERCONFIG` or `~/.npmrc`, when present.",
    )
    integrity: str | None = arg(
        None,
        doc="Pin the tarball's integrity (`sha512-<base64>`, as `dist.integrity` and the plan show it). Any other bytes - including a republished version - fail the step.",
    )
    timeout: float = arg(60.0, doc="Seconds to wait for each registry response.")
    max_unpacked_mib: int | None = arg(
        None,
        doc="Extraction budget: the most MiB the archive may expand to. Unset: 200 times the archive's size, at least 256 MiB, at most 4 GiB; a larger archive is refused as a bomb.",
    )


# -- .npmrc and tokens ---------------------------------------------------------------------------


def parse_npmrc(text: str, env: Mapping[str, str] | None = None) -> dict[str, str]:
    """`key=value` pairs of an .npmrc, with `${VAR}` expanded from `env` (unset: empty)."""
    env = os.environ if env is None else env
    out: dict[str, str] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line[0] in "#;" or "=" not in line:
            continue
        key, _, value = line.partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "\"'":
            value = value[1:-1]
        value = re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}", lambda m: env.get(m.group(1), ""), value)
        out[key.strip()] = value
    return out


def nerf_dart(url: str) -> str:
    """npm's key for a registry URL: `//host[:port]/path/` (scheme, query and auth dropped)."""
    parts = urllib.parse.urlsplit(url)
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    path = parts.path if parts.path.endswith("/") else parts.path.rsplit("/", 1)[0] + "/"
    return f"//{host}{path or '/'}"


def token_for(registry: str, config: Mapping[str, str]) -> str | None:
    """The `_authToken` of the longest `//host/path/` prefix of `registry` in an .npmrc."""
    dart = nerf_dart(registry)
    while True:
        token = config.get(f"{dart}:_authToken")
        if token:
            return token
        if dart.count("/") <= 3:  # "//host/" reached
            return None
        dart = dart[: dart.rstrip("/").rfind("/") + 1]


def _host(url: str) -> tuple[str, int | None]:
    p = urllib.parse.urlsplit(url)
    return (p.hostname or "", p.port or {"http": 80, "https": 443}.get(p.scheme))


def _origin(url: str) -> str:
    p = urllib.parse.urlsplit(url)
    return f"{p.scheme}://{p.hostname}" + (f":{p.port}" if p.port else "")


class _AuthOnlyToRegistry(urllib.request.HTTPRedirectHandler):
    """Follows redirects but drops the token when one leads to another host (urllib keeps it)."""

    def redirect_request(self, req: Any, fp: Any, code: int, msg: str, headers: Any, newurl: str) -> Any:
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is not None and _host(newurl) != _host(req.full_url):
            new.headers.pop("Authorization", None)
            new.unredirected_hdrs.pop("Authorization", None)
        return new


# -- the module ----------------------------------------------------------------------------------


@dataclass
class _Resolved:
    name: str
    version: str
    tarball: str
    integrity: Digest | None  # what the registry says; None when it only has a sha1 shasum


class _Registry:
    """HTTP access to one registry with an optional token (a `Bearer` header, never in a URL):
    GETs only, through an `HttpReader`, in `plan` and in `apply` alike."""

    def __init__(self, ctx: PlanContext | ApplyContext, url: str, token: str | None, timeout: float, what: str) -> None:
        self.http = HttpReader(ctx, _AuthOnlyToRegistry())
        self.url = url if url.endswith("/") else url + "/"
        self.token = token
        self.timeout = timeout
        self.what = what

    def _open(self, url: str, accept: str) -> Any:
        headers = {"Accept": accept, "User-Agent": "playbook npm_fetch"}
        if self.token and _host(url) == _host(self.url):
            headers["Authorization"] = f"Bearer {self.token}"
        req = urllib.request.Request(url, headers=headers)
        shown = SCRUBBER.scrub(url)
        try:
            return self.http.open(req, timeout=self.timeout)
        except urllib.error.HTTPError as exc:
            exc.close()
            if exc.code in (401, 403):
                raise ModuleError(f"{self.what}: {self._refusal(url, exc)}") from None
            if exc.code == 404:
                raise ModuleError(f"{self.what}: not found in the registry ({shown}, HTTP 404)") from None
            raise ModuleError(f"{self.what}: GET {shown} failed: HTTP {exc.code} {exc.reason}") from None
        except (urllib.error.URLError, TimeoutError, OSError, ValueError) as exc:
            reason = getattr(exc, "reason", exc)
            raise ModuleError(
                f"{self.what}: cannot reach the registry at {shown}: {SCRUBBER.scrub(str(reason))}"
            ) from None

    def _refusal(self, url: str, exc: urllib.error.HTTPError) -> str:
        """Why a 401/403 came: no token, a refused token, or a host the token is never sent to
        (a tarball URL or a redirect to another host: only the registry's host gets it)."""
        answered = exc.geturl() or url
        shown = SCRUBBER.scrub(answered)
        if not self.token:
            how = "no token was given (token_env or an .npmrc _authToken)"
        elif _host(answered) != _host(self.url):
            via = f", reached by a redirect from {SCRUBBER.scrub(url)}" if answered != url else ""
            how = (
                f"the token was never sent there: it goes only to the registry's host "
                f"({_origin(self.url)}), and this answer came from {_origin(answered)}{via}"
            )
        else:
            how = "the token was refused"
        return f"{'registry' if _host(answered) == _host(self.url) else 'host'} refused access to {shown} (HTTP {exc.code}): {how}"

    def resolve(self, name: str, spec: str) -> _Resolved:
        url = self.url + name.replace("/", "%2f")
        with self._open(url, _ACCEPT) as resp:
            try:
                doc = jsonable.loads(resp.read())
            except (ValueError, OSError) as exc:
                raise ModuleError(f"{self.what}: the registry's answer is not JSON: {exc}") from None
        if not isinstance(doc, dict):
            raise ModuleError(f"{self.what}: the registry's answer is not a packument")
        tags = doc.get("dist-tags") or {}
        versions = doc.get("versions") or {}
        version = tags.get(spec) if spec in tags else spec
        meta = versions.get(version)
        if not isinstance(meta, dict):
            known = ", ".join(f"{t}={v}" for t, v in sorted(tags.items())) or "none"
            newest = ", ".join(list(versions)[-5:]) or "none"
            raise ModuleError(f"{self.what}: no version or dist-tag '{spec}' (dist-tags: {known}; versions: {newest})")
        dist = meta.get("dist") or {}
        tarball = dist.get("tarball")
        if not isinstance(tarball, str) or not tarball:
            raise ModuleError(f"{self.what}: version {version} has no dist.tarball")
        integrity = None
        if isinstance(dist.get("integrity"), str):
            try:
                integrity = sri_to_digest(dist["integrity"])
            except ValueError as exc:
                raise ModuleError(f"{self.what}: version {version}: {exc}") from None
        assert isinstance(version, str)  # meta was found under it, and JSON object keys are strings
        return _Resolved(name, version, tarball, integrity)

    def chunks(self, url: str, progress: Callable[..., None] = lambda *_: None) -> Iterator[bytes]:
        """The tarball's bytes, telling `progress(done, total)` (Content-Length) as they come."""
        resp = self._open(url, "application/octet-stream, */*")
        length = resp.headers.get("Content-Length")
        yield from metered(self._read(resp, url), progress, int(length) if length and length.isdigit() else None)

    def _read(self, resp: Any, url: str) -> Iterator[bytes]:
        try:
            while True:
                try:
                    chunk = resp.read(_CHUNK)
                except (OSError, ValueError) as exc:
                    raise ModuleError(f"{self.what}: download of {SCRUBBER.scrub(url)} failed: {exc}") from None
                if not chunk:
                    return
                yield chunk
        finally:
            resp.close()


def _budget(args: NpmFetchArgs) -> int | None:
    return args.max_unpacked_mib * 2**20 if args.max_unpacked_mib else None


def _parse_integrity(value: str, where: str) -> Digest:
    try:
        return sri_to_digest(value)
    except ValueError as exc:
        raise ArgError(f"'integrity' must be 'sha512-<base64>' ({exc})", path=where) from None


def _settings(ctx: PlanContext | ApplyContext, args: NpmFetchArgs, where: str) -> tuple[str, str | None]:
    """(registry URL, token or None) from the args, the environment and the .npmrc."""
    base = str(ctx.vars.get("playbook_dir", ".")) if ctx.vars else "."
    rc_path = args.npmrc
    explicit = rc_path is not None
    if rc_path is None:
        rc_path = os.environ.get("NPM_CONFIG_USERCONFIG") or os.path.expanduser("~/.npmrc")
    else:
        rc_path = os.path.normpath(os.path.join(base, os.path.expanduser(rc_path)))
    config: dict[str, str] = {}
    try:
        with open(rc_path, encoding="utf-8") as fh:
            config = parse_npmrc(fh.read())
    except FileNotFoundError:
        if explicit:
            raise ArgError(f"'npmrc': file '{rc_path}' does not exist", path=where) from None
    except OSError as exc:
        raise ArgError(f"'npmrc': cannot read '{rc_path}': {exc.strerror}", path=where) from None
    for key, value in config.items():
        if key.endswith((":_authToken", ":_auth", ":_password")) and value:
            SCRUBBER.add(value)
    scope = args.package.split("/")[0] if args.package.startswith("@") else ""
    registry = (
        args.registry
        or (config.get(f"{scope}:registry") if scope else None)
        or config.get("registry")
        or os.environ.get("NPM_CONFIG_REGISTRY")
        or os.environ.get("npm_config_registry")
    )
    if not registry:
        # a deploy should name the registry it trusts: no built-in public default
        raise ArgError("no registry: set 'registry', a `registry=` in the .npmrc, or $NPM_CONFIG_REGISTRY", path=where)
    parts = urllib.parse.urlsplit(registry)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ArgError(f"'registry' must be an http(s) URL (got {registry!r})", path=where)
    if parts.username or parts.password:
        raise ArgError("'registry' must not carry credentials in the URL: use token_env or an .npmrc", path=where)
    token: str | None
    if args.token_env:
        token = os.environ.get(args.token_env)
        if not token:
            raise ArgError(f"'token_env': environment variable {args.token_env} is not set", path=where)
    else:
        token = token_for(registry, config)
    if token:
        SCRUBBER.add(token)
    return registry, token


@register
class NpmFetch:
    """Resolves a package version from an npm registry (token auth, scoped packages), downloads
    its tarball into the content-addressed cache, verifies `dist.integrity` before anything is
    visible and extracts it safely. Detects a version republished with other bytes."""

    name: ClassVar[str] = "npm_fetch"
    source_type: ClassVar[str] = "npm"
    Args: ClassVar[type] = NpmFetchArgs
    summary: ClassVar[str] = "an npm package, verified by dist.integrity, cached by integrity and safely extracted"
    outputs: ClassVar[dict[str, str]] = {
        "path": "the extracted package (the tarball's `package/` contents), on the controller",
        "digest": "the tarball's integrity, `sha512-<base64>` (same as `integrity`)",
        "integrity": "the tarball's integrity, `sha512-<base64>`",
        "version": "the resolved version",
        "package": "the package name",
        "tarball": "the tarball URL it was downloaded from",
    }
    controller_only: ClassVar[bool] = True
    examples: ClassVar[str] = """\
sources:
  templates:
    type: npm
    package: "@seed/templates"
    version: 2.3.1
    registry: https://npm.example.com/
    token_env: NPM_TOKEN
"""

    def plan(self, ctx: PlanContext, args: NpmFetchArgs) -> Plan:
        where = f"{ctx.step}.args"
        if not _NAME.match(args.package or ""):
            raise ArgError(
                f"'package' must be an npm package name like 'name' or '@scope/name' (got {args.package!r})", path=where
            )
        if not args.version or any(c in args.version for c in " <>=^~*|/"):
            raise ArgError(f"'version' must be an exact version or a dist-tag (got {args.version!r})", path=where)
        pin = _parse_integrity(args.integrity, where) if args.integrity else None
        if args.max_unpacked_mib is not None and args.max_unpacked_mib < 1:
            raise ArgError(f"'max_unpacked_mib' must be >= 1 (got {args.max_unpacked_mib})", path=where)
        registry, token = _settings(ctx, args, where)
        what = f"npm {args.package}@{args.version}"
        reg = _Registry(ctx, registry, token, args.timeout, what)
        res = reg.resolve(args.package, args.version)
        what = f"npm {res.name}@{res.version}"
        reg.what = what
        playbook = str((ctx.vars.get("run") or {}).get("playbook", "")) if ctx.vars else ""
        source = ctx.step[len("sources.") :] if ctx.step.startswith("sources.") else ctx.step
        last = last_deployed(ctx.state_dir, playbook, source)
        served = res.integrity
        if pin is not None and served is not None and pin.algo != served.algo:
            raise ArgError(
                f"'integrity' must use {served.algo} like the registry's dist.integrity "
                f"(got {pin.algo}): pin {served.sri()} after reviewing it",
                path=where,
            )
        if pin is not None and served is not None and digest_to_sri(pin) != digest_to_sri(served):
            again = (
                f" ({res.version} republished since it was deployed as {last.get('digest')}?)"
                if last and last.get("version") == res.version and last.get("digest") != served.sri()
                else ""
            )
            raise ModuleError(
                f"{what}: the playbook pins integrity {pin.sri()}, but the registry serves "
                f"{served.sri()}{again}; nothing was fetched or deployed"
            )
        expected = pin or served
        if expected is None:
            raise ModuleError(
                f"{what}: the registry gives no dist.integrity (only a sha1 shasum); "
                "pin 'integrity' (sha512) to deploy it"
            )
        cache = ArtifactCache(ctx.state_dir)
        if not cache.verify(expected, on_damage=lambda text: ctx.warn(f"{what}: {text}")):
            ctx.emit(f"fetching {what} from {SCRUBBER.scrub(res.tarball)}")
            source_of = "the pinned integrity is" if pin else "the registry's dist.integrity is"
            cache.store(
                reg.chunks(res.tarball, ctx.progress),
                algo=expected.algo,
                expected=expected,
                artifact=f"{what} ({SCRUBBER.scrub(res.tarball)})",
                expected_from=source_of,
            )
        path = str(cache.tree(expected, strip_components=1, label=what, max_bytes=_budget(args), on_damage=ctx.warn))
        integrity = expected.sri()
        outputs = {
            "path": path,
            "digest": integrity,
            "integrity": integrity,
            "version": res.version,
            "package": res.name,
            "tarball": res.tarball,
        }
        data = {
            "args": args,
            "integrity": integrity,
            "version": res.version,
            "tarball": res.tarball,
            "registry": registry,
        }
        fingerprint = {"integrity": integrity, "version": res.version}
        if last is not None and last.get("digest") == integrity:
            return Plan.no_change(
                f"{what} ({integrity}) already deployed", outputs=outputs, data=data, fingerprint=fingerprint
            )
        if last is None:
            reason = f"{what}: first deploy ({integrity})"
            before = None
        elif last.get("version") == res.version:
            reason = f"{res.name} {res.version} republished: {last.get('digest')} → {integrity}"
            before = f"{last.get('version')} {last.get('digest')}\n"
        else:
            reason = f"{res.name} {last.get('version')} → {res.version} ({integrity})"
            before = f"{last.get('version')} {last.get('digest')}\n"
        diff = Diff(header=f"npm {res.name}", before=before, after=f"{res.version} {integrity}\n")
        return Plan.will_change(reason, diffs=(diff,), outputs=outputs, data=data, fingerprint=fingerprint)

    def apply(self, ctx: ApplyContext, plan: Plan) -> dict[str, Any]:
        args: NpmFetchArgs = plan.data["args"]
        digest = sri_to_digest(plan.data["integrity"])
        what = f"npm {args.package}@{plan.data['version']}"
        cache = ArtifactCache(ctx.state_dir)
        # the cache was cleared or damaged since the plan: fetch exactly what was planned
        if not cache.verify(digest, on_damage=lambda text: ctx.warn(f"{what}: {text}")):
            _, token = _settings(ctx, args, f"{ctx.step}.args")
            reg = _Registry(ctx, plan.data["registry"], token, args.timeout, what)
            cache.store(
                reg.chunks(plan.data["tarball"], ctx.progress),
                algo=digest.algo,
                expected=digest,
                artifact=f"{what} ({SCRUBBER.scrub(plan.data['tarball'])})",
                expected_from="the plan recorded",
            )
        path = str(cache.tree(digest, strip_components=1, label=what, max_bytes=_budget(args), on_damage=ctx.warn))
        return {**plan.outputs, "path": path}
