"""`s3_fetch`: an S3 object as a deploy source (source type `s3`), verified by sha256.

The object's bytes land in the controller's content-addressed cache (modules/_support/artifacts.py),
hashed while they stream and compared with the digest they must have: the `sha256` the playbook
pins, or else the object's own `ChecksumSHA256` (asked for with `ChecksumMode=ENABLED`; stored
by S3 when the uploader sent `ChecksumAlgorithm=SHA256`). The ETag is never used as a content
hash - for multipart uploads it is not one; it only guards the download against the object
being replaced between the HeadObject and the GetObject (`If-Match`). Bytes that do not match
fail the step naming the object and both digests, and nothing is extracted or deployed.

Planning reads only: HeadObject, and - because the cache is keyed by the verified digest and no
host is touched - a download into the cache when the bytes are not cached yet, so later steps
(rsync) can plan a real per-file diff against the extracted tree. The plan compares the digest
with the one this playbook last deployed from this source (`<state_dir>/artifacts/`): the same
digest is no-change, another one will-change `sha256:old → sha256:new`. The S3 client is a
reader in plan and apply alike: a botocore hook refuses any request but GET and HEAD.

Credentials come from boto3's standard chain (`profile`, environment, shared files, SSO,
container or instance role); the secret parts are registered with the scrubber. No botocore
exception leaves this module: they are translated into `ModuleError`s naming the object.

Longer than ~400 lines: one module, one file (arguments, plan, apply and the wording of each S3
error), as every module is.
"""

from __future__ import annotations

import base64
import binascii
import re
import urllib.parse
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from engine.errors import ArgError, ModuleError, ReadOnlyViolation
from engine.model.results import Diff, Plan
from engine.module import ApplyContext, PlanContext, arg, register
from engine.record.deployed import last_deployed
from engine.secrets import SCRUBBER
from modules._support.artifacts import ArtifactCache, Digest
from modules._support.extract import kind_from_name
from modules._support.transfer_progress import metered

__all__ = ["S3Fetch", "S3FetchArgs", "parse_sha256"]

ExtractMode = Literal["auto", "none", "tar", "tar.gz", "tar.bz2", "tar.xz", "zip"]
_CHUNK = 1 << 20
#: botocore attempts per call ("standard" mode: throttling and connection errors back off and retry)
MAX_ATTEMPTS = 3


@dataclass(frozen=True)
class S3FetchArgs:
    bucket: str = arg(doc="Bucket name.")
    key: str = arg(doc="Object key, e.g. `widgets/widgets-{{ widgets_version }}.tar.gz`.")
    version_id: str | None = arg(None, doc="Fetch this object version (versioned buckets). Unset: the current version.")
    sha256: str | None = arg(
        None,
        doc="Pin the object's content digest (`sha256:<hex>` or 64 hex digits). Other bytes fail the step. Unset: the object's `ChecksumSHA256` is what the bytes are verified against.",
    )
    endpoint_url: str | None = arg(
        None, doc="S3 API endpoint, an http:// or https:// URL (MinIO, Ceph, a test server). Unset: AWS."
    )
    region: str | None = arg(None, doc="AWS region. Unset: from the profile/environment, else `us-east-1`.")
    profile: str | None = arg(
        None,
        doc="Named profile of the AWS config/credentials files. Unset: the standard credential chain (environment, default profile, SSO, container or instance role).",
    )
    extract: ExtractMode = arg(
        "auto",
        doc="`auto`: extract `.tar.gz`/`.tgz`/`.tar`/`.tar.bz2`/`.tar.xz`/`.zip` keys (by suffix) and output the tree; `none`: output the file; or name the archive kind.",
    )
    max_unpacked_mib: int | None = arg(
        None,
        doc="Extraction budget: the most MiB the archive may expand to. Unset: 200 times the archive's size, at least 256 MiB, at most 4 GiB; a larger archive is refused as a bomb.",
    )
    timeout: float = arg(
        20.0,
        doc=f"Seconds to wait for the endpoint to accept a connection, and for each answer (or chunk of a download); {MAX_ATTEMPTS} attempts in all.",
    )


def parse_sha256(value: str, *, where: str) -> Digest:
    """`sha256:<hex>` or bare hex into a `Digest`, with an attrs-style error otherwise."""
    text = value.strip().lower()
    if text.startswith("sha256:"):
        text = text[len("sha256:") :]
    if not re.fullmatch(r"[0-9a-f]{64}", text):
        raise ArgError(f"'sha256' must be 'sha256:' followed by 64 hex digits (got {value!r})", path=where)
    return Digest("sha256", text)


def _checksum_digest(head: dict[str, Any], checksum_type: str | None) -> Digest | None:
    """The object's full-content sha256 from HeadObject, or None: absent, or a composite
    multipart checksum (a checksum of the parts' checksums, not of the content), known by
    `checksum_type` COMPOSITE or by a `-N` suffix."""
    value = head.get("ChecksumSHA256")
    if not value or checksum_type == "COMPOSITE" or "-" in value:
        return None
    try:
        raw = base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        return None
    return Digest("sha256", raw.hex()) if len(raw) == 32 else None


def _checksum_type(client: Any, head: dict[str, Any], args: S3FetchArgs) -> str | None:
    """COMPOSITE or FULL_OBJECT for an object with a ChecksumSHA256. HeadObject says so in
    `ChecksumType`; servers that leave it out (older S3-compatible ones, moto) are asked with
    GetObjectAttributes. If that is refused too, a multipart ETag (`…-N`) means COMPOSITE: S3
    keeps no full-object SHA-256 of a multipart upload."""
    import botocore.exceptions as be

    if not head.get("ChecksumSHA256"):
        return None
    if head.get("ChecksumType"):
        return str(head["ChecksumType"])
    kw: dict[str, Any] = {"Bucket": args.bucket, "Key": args.key, "ObjectAttributes": ["Checksum"]}
    if args.version_id:
        kw["VersionId"] = args.version_id
    try:
        attrs = client.get_object_attributes(**kw)
        found = (attrs.get("Checksum") or {}).get("ChecksumType")
        if found:
            return str(found)
    except (be.BotoCoreError, be.ClientError):
        pass
    return "COMPOSITE" if re.search(r"-\d+\"?$", str(head.get("ETag") or "")) else "FULL_OBJECT"


def _client(args: S3FetchArgs, what: str) -> Any:
    import boto3
    import botocore.exceptions
    from botocore.config import Config

    try:
        session = boto3.Session(profile_name=args.profile, region_name=args.region)
        creds = session.get_credentials()
        if creds is not None:
            frozen = creds.get_frozen_credentials()
            for value in (frozen.access_key, frozen.secret_key, frozen.token):
                if value:
                    SCRUBBER.add(value)
        region = args.region or session.region_name or "us-east-1"
        opts: dict[str, Any] = dict(
            retries={"max_attempts": MAX_ATTEMPTS, "mode": "standard"},
            connect_timeout=args.timeout,
            read_timeout=args.timeout,
        )
        try:
            # botocore >= 1.36 validates response checksums itself; this module verifies every
            # byte against the digest it names in its errors, so keep botocore's check off.
            config = Config(
                response_checksum_validation="when_required", request_checksum_calculation="when_required", **opts
            )
        except TypeError:  # older botocore: no flexible checksums at all
            config = Config(**opts)
        client = session.client("s3", endpoint_url=args.endpoint_url or None, region_name=region, config=config)
        client.meta.events.register("before-send.s3", _reads_only)
        return client
    except botocore.exceptions.ProfileNotFound:
        raise ModuleError(f"{what}: AWS profile '{args.profile}' is not configured") from None
    except botocore.exceptions.BotoCoreError as exc:
        raise ModuleError(f"{what}: cannot set up the S3 client: {_text(exc)}") from None


def _reads_only(request: Any, **_kw: Any) -> None:
    """botocore's last hook before a request leaves: this module only reads S3 (in plan and
    apply alike), so its client is a reader; anything but GET or HEAD is refused here."""
    if str(request.method).upper() not in ("GET", "HEAD"):
        path = str(request.url).split("?")[0]
        raise ReadOnlyViolation(f"the S3 client refused {request.method} {path}: s3_fetch only reads")


def _text(exc: BaseException) -> str:
    return SCRUBBER.scrub(str(exc))


def _translate(exc: BaseException, what: str, action: str, args: S3FetchArgs | None = None) -> ModuleError:
    """A botocore exception as a `ModuleError` naming the object; nothing of botocore escapes."""
    import botocore.exceptions as be

    endpoint = (args.endpoint_url if args else None) or "AWS"
    if isinstance(exc, be.ReadTimeoutError) and args is not None:
        return ModuleError(
            f"{what}: the S3 endpoint {endpoint} did not answer within {args.timeout:g} s "
            f"({action}, {MAX_ATTEMPTS} attempts); raise 'timeout' if it is only slow"
        )
    if isinstance(exc, be.ConnectTimeoutError) and args is not None:
        return ModuleError(
            f"{what}: cannot reach the S3 endpoint {endpoint}: no connection within {args.timeout:g} s "
            f"({MAX_ATTEMPTS} attempts)"
        )
    if isinstance(exc, be.ClientError):
        err = exc.response.get("Error", {}) if isinstance(exc.response, dict) else {}
        code = str(err.get("Code", ""))
        status = (
            exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") if isinstance(exc.response, dict) else None
        )
        if code in ("404", "NoSuchKey", "NotFound", "NoSuchVersion"):
            return ModuleError(f"{what}: no such object (or version)")
        if code == "NoSuchBucket":
            return ModuleError(f"{what}: no such bucket" + (f" '{args.bucket}'" if args else ""))
        if code in ("403", "AccessDenied", "Forbidden", "InvalidAccessKeyId", "SignatureDoesNotMatch", "ExpiredToken"):
            return ModuleError(f"{what}: access denied ({code}); check the credentials and the bucket policy")
        if code in ("412", "PreconditionFailed"):
            return ModuleError(f"{what}: the object was replaced while it was being fetched; plan again")
        msg = err.get("Message") or ""
        return ModuleError(f"{what}: {action} failed: {code or status} {SCRUBBER.scrub(str(msg))}".rstrip())
    if isinstance(exc, be.NoCredentialsError):
        return ModuleError(
            f"{what}: no AWS credentials found (profile, environment, shared credentials file, "
            "container or instance role)"
        )
    if isinstance(exc, (be.EndpointConnectionError, be.ConnectTimeoutError)):
        return ModuleError(f"{what}: cannot reach the S3 endpoint: {_text(exc)}")
    return ModuleError(f"{what}: {action} failed: {_text(exc)}")


def _where(args: S3FetchArgs) -> str:
    uri = f"s3://{args.bucket}/{args.key}"
    return uri + (f"?versionId={args.version_id}" if args.version_id else "")


@register
class S3Fetch:
    """Fetches one S3 object into the controller's content-addressed cache, verifies its sha256
    (pinned, or the object's `ChecksumSHA256`; never the ETag) and extracts archives safely.
    No-change when this playbook last deployed the same digest."""

    name: ClassVar[str] = "s3_fetch"
    source_type: ClassVar[str] = "s3"
    Args: ClassVar[type] = S3FetchArgs
    summary: ClassVar[str] = "an S3 object, verified by sha256, cached and safely extracted (path, digest, version)"
    outputs: ClassVar[dict[str, str]] = {
        "path": "the extracted tree (archives) or the cached file (`extract: none`), on the controller",
        "digest": "`sha256:<hex>` of the object's bytes",
        "version": "the S3 version id (null for an unversioned bucket)",
        "uri": "`s3://bucket/key`",
    }
    controller_only: ClassVar[bool] = True
    examples: ClassVar[str] = """\
sources:
  widgets:
    type: s3
    bucket: artifacts
    key: "widgets/widgets-{{ widgets_version }}.tar.gz"
    region: eu-central-1
"""

    def plan(self, ctx: PlanContext, args: S3FetchArgs) -> Plan:
        where = f"{ctx.step}.args"
        if not args.bucket or not args.key:
            raise ArgError("'bucket' and 'key' must not be empty", path=where)
        if args.endpoint_url:
            url = urllib.parse.urlsplit(args.endpoint_url)
            if url.scheme not in ("http", "https") or not url.hostname:
                raise ArgError(
                    "'endpoint_url' must be an http:// or https:// URL, e.g. 'https://minio.example.com:9000' "
                    f"(got {args.endpoint_url!r})",
                    path=where,
                )
        if args.timeout <= 0:
            raise ArgError(f"'timeout' must be > 0 seconds (got {args.timeout:g})", path=where)
        pin = parse_sha256(args.sha256, where=where) if args.sha256 else None
        if args.max_unpacked_mib is not None and args.max_unpacked_mib < 1:
            raise ArgError(f"'max_unpacked_mib' must be >= 1 (got {args.max_unpacked_mib})", path=where)
        what = _where(args)
        client = _client(args, what)
        head = self._head(client, args, what)
        version = head.get("VersionId") if head.get("VersionId") not in (None, "", "null") else None
        checksum_type = _checksum_type(client, head, args)
        claimed = _checksum_digest(head, checksum_type)
        if pin is not None and claimed is not None and pin != claimed:
            raise ModuleError(
                f"{what}: the playbook pins {pin}, but the object's ChecksumSHA256 is {claimed}; "
                "nothing was fetched or deployed"
            )
        expected = pin or claimed
        expected_from = "the pinned sha256 is" if pin else "the object's ChecksumSHA256 is"
        cache = ArtifactCache(ctx.state_dir)
        if expected is not None and cache.verify(expected, on_damage=lambda text: ctx.warn(f"{what}: {text}")):
            digest = expected
        else:
            if expected is None:
                has = (
                    "only a composite multipart ChecksumSHA256 (of its parts, not of its content)"
                    if checksum_type == "COMPOSITE"
                    else "no ChecksumSHA256"
                )
                ctx.warn(
                    f"{what}: unverified: no sha256 pinned and the object has {has}; its digest is "
                    "computed from the downloaded bytes (pin 'sha256' to verify them)"
                )
            size = head.get("ContentLength")
            ctx.emit(f"fetching {what}" + (f" ({size} bytes)" if size is not None else ""))
            digest = self._download(
                client,
                args,
                what,
                cache,
                expected,
                expected_from,
                version_id=args.version_id or version,
                etag=head.get("ETag"),
                progress=ctx.progress,
            )
        path = self._materialise(cache, digest, args, what, ctx.warn)
        outputs = {"path": path, "digest": str(digest), "version": version, "uri": f"s3://{args.bucket}/{args.key}"}
        data = {"args": args, "digest": str(digest), "version": version}
        fingerprint = {"digest": str(digest), "version": version}
        playbook = str((ctx.vars.get("run") or {}).get("playbook", ""))
        source = ctx.step[len("sources.") :] if ctx.step.startswith("sources.") else ctx.step
        last = last_deployed(ctx.state_dir, playbook, source)
        vtext = f" (version {version})" if version else ""
        if last is not None and last.get("digest") == str(digest):
            return Plan.no_change(
                f"{what}: {digest} already deployed{vtext}", outputs=outputs, fingerprint=fingerprint, data=data
            )
        before = None
        if last is not None:
            old_v = f"\nversion: {last.get('version')}" if last.get("version") else ""
            before = f"{last.get('digest')}{old_v}\n"
            reason = f"{what}: {last.get('digest')} → {digest}{vtext}"
        else:
            reason = f"{what}: first deploy of {digest}{vtext}"
        after = f"{digest}" + (f"\nversion: {version}" if version else "") + "\n"
        diff = Diff(header=what, before=before, after=after)
        return Plan.will_change(reason, diffs=(diff,), outputs=outputs, fingerprint=fingerprint, data=data)

    def apply(self, ctx: ApplyContext, plan: Plan) -> dict[str, Any]:
        args: S3FetchArgs = plan.data["args"]
        digest = Digest("sha256", plan.data["digest"].split(":", 1)[1])
        what = _where(args)
        cache = ArtifactCache(ctx.state_dir)
        # cache cleared or damaged since the plan (or a saved plan applied elsewhere): fetch again
        if not cache.verify(digest, on_damage=lambda text: ctx.warn(f"{what}: {text}")):
            client = _client(args, what)
            version = plan.data.get("version")
            self._download(
                client,
                args,
                what,
                cache,
                digest,
                "the plan recorded",
                version_id=args.version_id or version,
                etag=None,
                progress=ctx.progress,
            )
        path = self._materialise(cache, digest, args, what, ctx.warn)
        return {
            "path": path,
            "digest": str(digest),
            "version": plan.data.get("version"),
            "uri": f"s3://{args.bucket}/{args.key}",
        }

    # -- helpers ---------------------------------------------------------------------------------

    @staticmethod
    def _head(client: Any, args: S3FetchArgs, what: str) -> dict[str, Any]:
        import botocore.exceptions as be

        kw: dict[str, Any] = {"Bucket": args.bucket, "Key": args.key, "ChecksumMode": "ENABLED"}
        if args.version_id:
            kw["VersionId"] = args.version_id
        try:
            return client.head_object(**kw)
        except (be.BotoCoreError, be.ClientError) as exc:
            error = _translate(exc, what, "HeadObject", args)
        if "no such object" in error.message:  # a HEAD answer has no body to tell a missing bucket
            try:
                client.head_bucket(Bucket=args.bucket)
            except be.ClientError as exc:
                if str(exc.response.get("Error", {}).get("Code")) in ("404", "NoSuchBucket"):
                    error = ModuleError(f"{what}: no such bucket '{args.bucket}'")
            except be.BotoCoreError:
                pass
        raise error

    @staticmethod
    def _download(
        client: Any,
        args: S3FetchArgs,
        what: str,
        cache: ArtifactCache,
        expected: Digest | None,
        expected_from: str,
        *,
        version_id: str | None,
        etag: str | None,
        progress: Callable[..., None] = lambda *_: None,
    ) -> Digest:
        import botocore.exceptions as be

        kw: dict[str, Any] = {"Bucket": args.bucket, "Key": args.key}
        if version_id:
            kw["VersionId"] = version_id
        if etag:
            kw["IfMatch"] = etag  # the object the plan saw, not one replaced since (ETag as identity only)
        try:
            resp = client.get_object(**kw)
        except (be.BotoCoreError, be.ClientError) as exc:
            raise _translate(exc, what, "GetObject", args) from None
        body = resp["Body"]

        def chunks() -> Iterator[bytes]:
            try:
                yield from body.iter_chunks(_CHUNK)
            except (be.BotoCoreError, be.ClientError) as exc:
                raise _translate(exc, what, "download", args) from None
            except OSError as exc:
                raise ModuleError(f"{what}: download failed: {exc}") from None
            finally:
                body.close()

        label = what + (f" (version {version_id})" if version_id and not args.version_id else "")
        digest, _ = cache.store(
            metered(chunks(), progress, resp.get("ContentLength")),
            algo="sha256",
            expected=expected,
            artifact=label,
            expected_from=expected_from,
        )
        return digest

    @staticmethod
    def _materialise(
        cache: ArtifactCache, digest: Digest, args: S3FetchArgs, what: str, warn: Callable[[str], None]
    ) -> str:
        if args.extract == "none":
            return str(cache.blob(digest))
        if args.extract == "auto":
            if kind_from_name(args.key) is None:
                return str(cache.blob(digest))
            kind = None  # by the bytes' magic number: the suffix only says "this is an archive"
        else:
            kind = args.extract
        budget = args.max_unpacked_mib * 2**20 if args.max_unpacked_mib else None
        return str(cache.tree(digest, kind=kind, label=what, max_bytes=budget, on_damage=warn))
