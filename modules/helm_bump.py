"""`helm_bump`: set an image tag or digest in a Helm release YAML in a GitOps repository,
commit and push — what Flux's image automation does, as a reviewable step.

Planning clones the branch shallowly into a temp directory with a `GitReader` (it cannot commit
or push), finds the field (a key path such as `spec.values.image.tag`, or Flux's
`# {"$imagepolicy": "ns:name[:tag|:name|:digest]"}` markers), and computes the edit with
engine/yamlio/scalars.py, which changes only the value's characters (every comment, quote and
blank line stays). The plan shows the YAML diff and the commit message, and
records the remote head it saw. Applying clones again, re-applies the same edit on whatever the
head is now, commits with the configured identity and pushes; a push rejected because the remote
moved is retried on the new head (fetch, reset, re-apply), at most `push_retries` times.

Transport follows the engine's security rules: ssh uses OpenSSH with `StrictHostKeyChecking=yes`
against the configured known_hosts; an https token travels in git's environment config (never in
argv or the URL) and is registered with the scrubber.

Over 400 lines as one idea: the edit (find the field by key path or marker, pick the tag by policy,
compute the new text and the commit) is the module; git itself is modules/_support/git.py.
"""

from __future__ import annotations

import os
import re
import shutil
import string
import tempfile
from dataclasses import dataclass
from typing import Any, ClassVar, Literal

from engine.argschema import enforce
from engine.errors import ArgError, ModuleError
from engine.model.results import UNKNOWN, Diff, Plan, Status, StepResult
from engine.module import ApplyContext, PlanContext, arg, register
from engine.secrets import SCRUBBER
from engine.yamlio.scalars import Target, YamlEditError, find_key_path, find_markers, set_scalars
from modules._support.git import Git, GitReader, commit, display_url, git_environment, repo_url
from modules._support.tagpolicy import ORDERS, TagPolicy, select_tag

__all__ = ["HelmBump", "HelmBumpArgs", "parse_image", "git_env"]

DEFAULT_MESSAGE = "deploy: {image} in {file}"
MESSAGE_FIELDS = ("image", "repository", "tag", "digest", "version", "file", "branch", "old", "policy")
_DIGEST = re.compile(r"sha256:[0-9a-f]{64}|sha512:[0-9a-f]{128}")
_TAG = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}")
_MOVED = (
    "non-fast-forward",
    "fetch first",
    "[rejected]",
    "stale info",
    "failed to update ref",
    "cannot lock ref",
    "incorrect old value",
)

Order = Literal["auto", "timestamp", "build", "semver", "alphabetical"]
assert set(Order.__args__) == set(ORDERS)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class HelmBumpArgs:
    repo: str = arg(
        doc="The GitOps repository: `file:///path/repo.git`, `ssh://git@host/org/repo.git`, `git@host:org/repo.git` or `https://host/org/repo.git`. A plain path is a local repository (relative to the playbook)."
    )
    file: str = arg(doc="The YAML file to edit, relative to the repository root (a HelmRelease or a values file).")
    author_name: str = arg(doc="Commit author name (explicit: the controller's git config is not used).")
    author_email: str = arg(doc="Commit author email.")
    branch: str = arg("main", doc="Branch to clone, commit on and push to.")
    key_path: str | None = arg(
        None,
        doc="Dotted path of the field to set in every document that has it, e.g. `spec.values.image.tag` or `spec.template.spec.containers[0].image`. Give `key_path`, `policy` or both.",
    )
    policy: str | None = arg(
        None,
        doc='Flux image policy `namespace:name`: every field marked `# {"$imagepolicy": "namespace:name"}` (whole image), `...:tag`, `...:name` or `...:digest` is set.',
    )
    value: Literal["auto", "tag", "digest", "image", "name"] = arg(
        "auto",
        doc="What the `key_path` field holds: `tag`, `digest`, `name` (the repository) or `image` (`repo:tag[@digest]`). `auto`: from the key's name (`tag`, `digest`, `repository`/`name`, else `image`).",
    )
    image: str | None = arg(
        None,
        doc="The image repository, e.g. `registry.example.com/shop/web`. Unset: whole-image fields keep the repository they have.",
    )
    tag: str | None = arg(None, doc="The tag to set. Unset: picked from `tags` by the tag policy.")
    tags: tuple[str, ...] = arg((), doc="Candidate tags (e.g. from the registry or CI) for the tag policy.")
    tag_pattern: str | None = arg(
        None,
        doc="Which tags qualify: a glob (`master-*`, `stag-*`) or a regex starting with `^` (named groups `ts`, `build` or `version` give the ordering key).",
    )
    tag_order: Order = arg(
        "auto",
        doc="How qualifying tags are ordered, newest/highest wins: `timestamp` (a date-time or epoch in the tag), `build` (the first number after the prefix), `semver`, `alphabetical`; `auto` picks timestamp, else build.",
    )
    semver_range: str | None = arg(
        None,
        doc="With semantic-version tags: an npm-style range such as `^1.4`, `>=1.2.0 <2`, `~2.3`; implies `tag_order: semver`.",
    )
    digest: str | None = arg(
        None,
        doc="Image digest `sha256:<hex>` to pin; set in `:digest` fields and appended (`@sha256:...`) to whole-image fields.",
    )
    message: str = arg(
        DEFAULT_MESSAGE,
        doc="Commit message; placeholders `{image}`, `{repository}`, `{tag}`, `{digest}`, `{version}` (tag or digest), `{file}`, `{branch}`, `{old}`, `{policy}`.",
    )
    committer_name: str | None = arg(None, doc="Committer name (default: the author's).")
    committer_email: str | None = arg(None, doc="Committer email (default: the author's).")
    push_retries: int = arg(
        5, minimum=0, doc="How many times a push rejected because the remote moved is retried on the new head."
    )
    depth: int = arg(1, minimum=1, doc="Clone depth (shallow clone).")
    known_hosts: str | None = arg(
        None, doc="ssh: known_hosts file for strict host-key checking (default `~/.ssh/known_hosts`)."
    )
    ssh_key: str | None = arg(None, doc="ssh: private key file (default: the ssh agent / default keys).")
    https_token: str | None = arg(
        None,
        secret=True,
        doc="https: access token, sent as HTTP basic auth through git's environment config (never in argv or URLs).",
    )
    https_user: str = arg("x-access-token", doc="https: user name sent with `https_token`.")


# -- image references ------------------------------------------------------------------------------


def parse_image(ref: str) -> tuple[str, str | None, str | None]:
    """`registry:5000/org/app:tag@sha256:...` as (repository, tag, digest)."""
    name, _, digest = ref.partition("@")
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        return name[:colon], name[colon + 1 :], digest or None
    return name, None, digest or None


def _image_ref(repo: str, tag: str | None, digest: str | None) -> str:
    return repo + (f":{tag}" if tag else "") + (f"@{digest}" if digest else "")


def _kind_for(path: tuple[Any, ...], value: str) -> str:
    if value != "auto":
        return value
    last = str(path[-1]).lower() if path else ""
    if last == "tag":
        return "tag"
    if last == "digest":
        return "digest"
    if last in ("repository", "repo", "name"):
        return "name"
    return "image"


def _new_value(kind: str, current: Any, repo: str | None, tag: str | None, digest: str | None) -> str | None:
    """The value a field of `kind` gets, or None when this bump has nothing for it."""
    if kind == "tag":
        return tag
    if kind == "digest":
        return digest
    if kind == "name":
        return repo
    cur_repo, cur_tag, _ = parse_image(str(current)) if isinstance(current, str) else ("", None, None)
    r = repo or cur_repo
    if not r:
        return None
    return _image_ref(r, tag if (tag or digest) else cur_tag, digest)


# -- git -------------------------------------------------------------------------------------------


def git_env(args: HelmBumpArgs) -> dict[str, str]:
    """git's environment for this step's repository (modules/_support/git.py)."""
    return git_environment(
        known_hosts=args.known_hosts, ssh_key=args.ssh_key, https_user=args.https_user, https_token=args.https_token
    )


# -- the edit --------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Wanted:
    repo: str | None
    tag: str | None
    digest: str | None
    candidates: tuple[str, ...]


def _resolve(args: HelmBumpArgs, where: str) -> _Wanted:
    if not args.key_path and not args.policy:
        raise ArgError("give 'key_path', 'policy' or both", path=where)
    if args.policy and not re.fullmatch(r"[a-z0-9][a-z0-9.-]*:[a-z0-9][a-z0-9.-]*", args.policy):
        raise ArgError(f"'policy' must be 'namespace:name' (got {args.policy!r})", path=where)
    if args.digest and not _DIGEST.fullmatch(args.digest):
        raise ArgError(f"'digest' must be sha256:<64 hex> (got {args.digest!r})", path=where)
    enforce(args, path=where)  # the rules declared with the arguments (push_retries, depth)
    for name in ("author_name", "author_email"):
        if not str(getattr(args, name)).strip():
            raise ArgError(f"'{name}' must not be empty", path=where)
    candidates: tuple[str, ...] = ()
    tag = args.tag
    if tag is None and (args.tags or args.tag_pattern or args.semver_range):
        try:
            tag, ordered = select_tag(args.tags, TagPolicy(args.tag_pattern, args.tag_order, args.semver_range))
        except ArgError as exc:
            raise ArgError(exc.message, path=where) from None
        candidates = tuple(ordered)
    if tag is not None and not _TAG.fullmatch(tag):
        raise ArgError(f"'tag' must be a valid image tag (got {tag!r})", path=where)
    if tag is None and args.digest is None and args.image is None:
        raise ArgError("nothing to set: give 'tag', 'tags' with a tag policy, 'digest' or 'image'", path=where)
    return _Wanted(args.image, tag, args.digest, candidates)


def _edits(text: str, args: HelmBumpArgs, want: _Wanted, name: str) -> list[tuple[Target, str]]:
    edits: dict[tuple[int, int], tuple[Target, str]] = {}
    if args.policy:
        markers = [m for m in find_markers(text, name=name) if m.policy == args.policy]
        if not markers:
            raise ModuleError(f'no \'# {{"$imagepolicy": "{args.policy}[:field]"}}\' marker in the file', path=name)
        for m in markers:
            new = _new_value(m.field or "image", m.target.value, want.repo, want.tag, want.digest)
            if new is not None:
                edits[(m.target.line, m.target.col)] = (m.target, new)
    if args.key_path:
        try:
            targets = find_key_path(text, args.key_path, name=name)
        except YamlEditError as exc:
            raise ArgError(exc.message, path=name) from None
        if not targets:
            raise ModuleError(f"no document has the key path '{args.key_path}'", path=name)
        for t in targets:
            kind = _kind_for(t.path, args.value)
            new = _new_value(kind, t.value, want.repo, want.tag, want.digest)
            if new is None:
                raise ArgError(f"'{args.key_path}' holds a {kind}, but this bump has no {kind} to set", path=name)
            edits[(t.line, t.col)] = (t, new)
    if not edits:
        raise ModuleError("the marked fields need values this bump does not have (tag, digest or image)", path=name)
    return list(edits.values())


def _message(args: HelmBumpArgs, want: _Wanted, changes: list[tuple[Target, str]], where: str) -> str:
    repo = want.repo
    if repo is None:
        for t, new in changes:
            if _kind_for(t.path, "auto") in ("image", "name"):
                repo = parse_image(new)[0]
                break
    fields = {
        "image": _image_ref(repo, want.tag, want.digest) if repo else (want.tag or want.digest or ""),
        "repository": repo or "",
        "tag": want.tag or "",
        "digest": want.digest or "",
        "version": want.tag or want.digest or "",
        "file": args.file,
        "branch": args.branch,
        "old": str(changes[0][0].value) if changes else "",
        "policy": args.policy or "",
    }
    for _, fname, spec, conv in string.Formatter().parse(args.message):
        if fname is not None and (fname not in MESSAGE_FIELDS or spec or conv):
            raise ArgError(
                f"'message' placeholder {{{fname}}} must be one of {', '.join('{' + f + '}' for f in MESSAGE_FIELDS)}",
                path=where,
            )
    return args.message.format_map(fields).strip() + "\n"


def _edit_file(path: str, args: HelmBumpArgs, want: _Wanted, where: str) -> tuple[str, str, list[tuple[Target, str]]]:
    """(before, after, changes) for the file in a checkout."""
    try:
        with open(path, encoding="utf-8", newline="") as fh:
            before = fh.read()
    except FileNotFoundError:
        raise ModuleError(f"'{args.file}' does not exist on branch '{args.branch}'", path=where) from None
    except UnicodeDecodeError:
        raise ModuleError(f"'{args.file}' is not UTF-8 text", path=where) from None
    name = f"{args.file}"
    edits = _edits(before, args, want, name)
    changes = [(t, new) for t, new in edits if t.value != new]
    if not changes:
        return before, before, []
    after, _how = set_scalars(before, changes, name=name)
    return before, after, changes


def _clone(git: GitReader, url: str, args: HelmBumpArgs, into: str) -> str:
    git.run(
        "clone",
        "--quiet",
        "--depth",
        str(args.depth),
        "--single-branch",
        "--branch",
        args.branch,
        "--no-tags",
        url,
        into,
    )
    return git.run("rev-parse", "HEAD", cwd=into).stdout.strip()


def _workdir(ctx: Any) -> str:
    base = os.path.join(ctx.state_dir, "helm_bump") if ctx.state_dir else None
    if base:
        os.makedirs(base, exist_ok=True)
    return tempfile.mkdtemp(prefix="clone-", dir=base)


@register
class HelmBump:
    """Sets an image tag/digest (picked by policy) in a YAML file of a GitOps repository by key
    path or Flux image-policy markers, keeping every other byte; commits with an explicit
    identity and pushes, retrying on a moved remote. No commit when the value is already set."""

    name: ClassVar[str] = "helm_bump"
    Args: ClassVar[type] = HelmBumpArgs
    summary: ClassVar[str] = (
        "bump an image tag/digest in Helm release YAML in git (key path or Flux markers), commit, push"
    )
    outputs: ClassVar[dict[str, str]] = {
        "tag": "the tag set (picked by the policy when not given)",
        "image": "the image reference set in whole-image fields (repository:tag[@digest])",
        "commit": "the commit pushed (the remote head when nothing changed)",
        "remote_head": "the remote branch head seen while planning",
    }
    controller_only: ClassVar[bool] = True
    examples: ClassVar[str] = """\
- id: bump_chart
  module: helm_bump
  fleet: controller
  args:
    repo: git@gitlab.example.com:ops/gitops.git
    file: apps/shop/values.yaml
    key_path: image.tag
    tags: [1.4.0, 1.4.1, 1.4.2]
    tag_order: semver
    author_name: Deploy Bot
    author_email: deploy@example.com
"""

    def plan(self, ctx: PlanContext, args: HelmBumpArgs) -> Plan:
        where = f"{ctx.step}.args"
        want = _resolve(args, where)
        url = repo_url(args.repo, str(ctx.vars.get("playbook_dir", ".")) if ctx.vars else ".")
        git = GitReader(ctx, git_env(args), timeout=ctx.remaining())  # clone and read: no commit, no push
        work = _workdir(ctx)
        try:
            head = _clone(git, url, args, os.path.join(work, "repo"))
            before, after, changes = _edit_file(os.path.join(work, "repo", args.file), args, want, ctx.step)
        finally:
            shutil.rmtree(work, ignore_errors=True)
        image = _image_ref(want.repo, want.tag, want.digest) if want.repo else (want.tag or want.digest or "")
        outputs = {"tag": want.tag or "", "image": image, "remote_head": head}
        fingerprint = {"remote_head": head, "branch": args.branch}
        shown = f"{display_url(url)} {args.branch}:{args.file}"
        if not changes:
            what = want.tag or want.digest or want.repo
            return Plan.no_change(
                f"{args.file} already has {what} (at {head[:12]})",
                outputs={**outputs, "commit": head},
                fingerprint=fingerprint,
            )
        message = _message(args, want, changes, where)
        committer = (args.committer_name or args.author_name, args.committer_email or args.author_email)
        commit_text = (
            f"Author: {args.author_name} <{args.author_email}>\n"
            f"Committer: {committer[0]} <{committer[1]}>\n"
            f"Push: {args.branch} (parent {head[:12]})\n\n{message}"
        )
        lines = ", ".join(f"{t.dotted()} {t.value} -> {new}" for t, new in changes)
        diffs = (Diff(header=shown, before=before, after=after), Diff(header="commit", after=commit_text))
        reason = f"{len(changes)} field(s) in {args.file}: {lines}"
        if want.candidates:
            reason += f" (policy picked {want.tag} of {len(want.candidates)} tags)"
        data = {"args": args, "url": url, "message": message, "want": want, "planned_head": head}
        return Plan.will_change(
            reason, diffs=diffs, data=data, outputs={**outputs, "commit": UNKNOWN}, fingerprint=fingerprint
        )

    def apply(self, ctx: ApplyContext, plan: Plan) -> dict[str, Any] | StepResult:
        d = plan.data
        args: HelmBumpArgs = d["args"]
        want: _Wanted = d["want"]
        git = Git(ctx, git_env(args), timeout=ctx.remaining())
        committer = (args.committer_name or args.author_name, args.committer_email or args.author_email)
        ident = {
            "GIT_AUTHOR_NAME": args.author_name,
            "GIT_AUTHOR_EMAIL": args.author_email,
            "GIT_COMMITTER_NAME": committer[0],
            "GIT_COMMITTER_EMAIL": committer[1],
        }
        commit_git = git.with_env(ident)
        work = _workdir(ctx)
        repo = os.path.join(work, "repo")
        try:
            head = _clone(git, d["url"], args, repo)
            for attempt in range(args.push_retries + 1):
                _, after, changes = _edit_file(os.path.join(repo, args.file), args, want, ctx.step)
                if not changes:  # a commit that landed since the plan set the same value
                    what = want.tag or want.digest or want.repo
                    return StepResult(
                        ctx.step,
                        ctx.host,
                        Status.OK,
                        f"no change: {args.file} already has {what} at {head[:12]}, set by a commit that "
                        "landed after the plan; nothing was pushed",
                        plan=plan,
                        outputs={**plan.outputs, "commit": head, "tag": want.tag or "", "pushed": False},
                    )
                with open(os.path.join(repo, args.file), "w", encoding="utf-8", newline="") as fh:
                    fh.write(after)
                commit_git.run("add", "--", args.file, cwd=repo)
                commit(commit_git, repo, d["message"])
                sha = git.run("rev-parse", "HEAD", cwd=repo).stdout.strip()
                push = git.run("push", "--porcelain", "origin", f"HEAD:refs/heads/{args.branch}", cwd=repo, check=False)
                if push.returncode == 0:
                    ctx.emit(
                        f"helm_bump: pushed {sha[:12]} to {args.branch}"
                        + (f" after {attempt} retr{'y' if attempt == 1 else 'ies'}" if attempt else "")
                    )
                    return {"commit": sha, "tag": want.tag or "", "pushed": True, "attempts": attempt + 1}
                text = push.stdout + push.stderr
                if not any(m in text for m in _MOVED):
                    raise ModuleError(
                        f"git push exited {push.returncode}: {SCRUBBER.scrub(text.strip())[-800:]}", path=ctx.step
                    )
                ctx.emit(f"helm_bump: {args.branch} moved on the remote; re-applying on the new head")
                git.run("fetch", "--quiet", "--depth", str(args.depth), "origin", args.branch, cwd=repo)
                git.run("reset", "--quiet", "--hard", "FETCH_HEAD", cwd=repo)
                head = git.run("rev-parse", "HEAD", cwd=repo).stdout.strip()
            raise ModuleError(
                f"push to '{args.branch}' still rejected after {args.push_retries} retries (the remote keeps moving)",
                path=ctx.step,
            )
        finally:
            shutil.rmtree(work, ignore_errors=True)
