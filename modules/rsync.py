"""`rsync`: sync a controller directory to hosts with the real rsync over SSH.

Planning starts no rsync process: the module compares a manifest of the source (built once per
run and shared by every host) with one `find` probe of the target over the engine's open
connection, the way rsync itself would compare (size + whole-second mtime, or content with
`checksum`), and lists exactly the paths to create (+), update (~) and delete (-). Applying
sends exactly those paths (`--files-from`; deletions by the shell that starts the host's rsync),
so a host that is in sync costs one probe and no transfer. rsync's remote shell is the engine's
own connection for small transfers (`engine/connection/relay.py`), OpenSSH for large ones
(modules/_support/rsync_transfer.py).

With `releases: true` the tree goes to `DEST/releases/<release-id>/`, seeded from the current
release by a hard-link copy, and `DEST/current` is switched atomically (see modules/_support/releases.py).

Over 400 lines as one idea: planning a tree by manifest and applying exactly that plan (with the
release layout) are the module; the rsync process is modules/_support/rsync_transfer.py.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import posixpath
import re
import time
from dataclasses import dataclass
from typing import Any, ClassVar

from engine.argschema import enforce
from engine.errors import ArgError, ModuleError
from engine.model.results import Diff, Plan
from engine.module import ApplyContext, PlanContext, arg, output, register
from modules._support import releases as rel
from modules._support.manifest import (
    ChmodRules,
    Entry,
    ExcludeRules,
    cached_manifest,
    compare_trees,
    manifest_digest,
    tree_digest,
)
from modules._support.memo import Memo
from modules._support.rsync_transfer import transfer_and_delete
from modules._support.tree_record import save_listing

__all__ = ["Rsync", "RsyncArgs", "source_manifest", "clear_manifest_cache", "expected_digest"]

MAX_DIFF_ITEMS = 2000  # per host in the shown diff; apply always has the full list
_NAME = r"[A-Za-z0-9_][A-Za-z0-9_.-]*"
_CHOWN = re.compile(rf"(?:{_NAME}(?::{_NAME})?|:{_NAME})\Z")


@dataclass(frozen=True)
class RsyncArgs:
    src: str = arg(
        doc="Directory on the controller to sync (its contents, like `rsync SRC/`), e.g. `{{ sources.app.path }}`. Relative paths are relative to the playbook's directory."
    )
    dest: str = arg(
        doc="Absolute directory on the host. With `releases`, the deploy root that holds `releases/`, `shared/` and `current`."
    )
    delete: bool = arg(True, doc="Delete files on the host that are not in `src` (excluded paths are kept).")
    exclude: tuple[str, ...] = arg(
        (), doc="rsync exclude patterns: `*.log` (any depth), `/cache/` (at the root, directories only), `**/tmp`."
    )
    checksum: bool = arg(False, doc="Compare files by content (sha256) instead of size and modification time.")
    chown: str | None = arg(
        None,
        doc="Owner of the synced files as `user:group` (`user`, `:group`; names or ids), like rsync `--chown`. Unset: files belong to the connection user.",
    )
    chmod: str | None = arg(
        None,
        doc="Permission rules like rsync `--chmod`, e.g. `D755,F644` or `ug+rwX,o-w`. Unset: modes are copied from `src`.",
    )
    releases: bool = arg(
        False,
        doc="Atomic release layout: sync into `dest/releases/<release-id>/` (seeded from the current release) and switch the `dest/current` symlink by rename.",
    )
    keep: int = arg(
        5,
        minimum=1,
        doc="With `releases`: how many releases to keep. The one `current` points to and the previous one are never removed.",
    )
    shared: tuple[str, ...] = arg(
        (),
        doc="With `releases`: paths (relative to the release) symlinked to `dest/shared/<path>` in every release, e.g. `wp-content/uploads`. Missing ones are created as directories; `src` content at these paths is not synced.",
    )


# -- the source manifest, once per run -----------------------------------------------------------

# per-run memos: each key is computed once however many hosts ask at once
_sources = Memo()  # source manifests
_counts = Memo()  # files in a source manifest
_expected = Memo()  # expected host trees
_compared = Memo()  # compared probe answers


def source_manifest(path: str, run_id: str, state_dir: str | None = None) -> tuple[dict[str, Entry], str]:
    """The manifest and content digest of `path`, computed once per (run, path) even when 200
    hosts ask at once."""

    def compute() -> tuple[dict[str, Entry], str]:
        manifest = cached_manifest(path, state_dir, run_id)
        return manifest, tree_digest(manifest)

    return _sources.get((run_id, path), compute)


def _file_count(local: dict[str, Entry], run_id: str, src: str) -> int:
    """How many regular files the source has: once per run and source, not once per host."""
    return _counts.get((run_id, src), lambda: sum(1 for e in local.values() if e.kind == "f"))


def expected_digest(
    local: dict[str, Entry], excludes: Any, chmod: Any, run_id: str, src: str
) -> tuple[str, dict[str, Entry], tuple[dict[bytes, str], bytes]]:
    """The tree a host has once `src` is synced to it (excluded paths left out, `chmod` applied),
    its `canonical_digest` and its listing as the probe sends it; once per run and source."""
    key = (run_id, src, tuple(getattr(excludes, "patterns", ())), getattr(chmod, "spec", ""))
    return _expected.get(key, lambda: _compute_expected(local, excludes, chmod))


def _compute_expected(local: dict[str, Entry], excludes: Any, chmod: Any) -> tuple:
    tree = {}
    for rel_path, e in local.items():
        if excludes.excluded(rel_path, is_dir=e.kind == "d"):
            continue
        mode = chmod.apply(e.mode, is_dir=e.kind == "d") if e.kind in ("f", "d") else e.mode
        tree[rel_path] = Entry(e.kind, mode, e.size, e.mtime, target=e.target)
    lines, payload = rel.expected_listing(tree)
    digest = hashlib.sha256(payload).hexdigest()  # == rel.canonical_digest(tree)
    return digest, tree, (lines, payload)


def clear_manifest_cache() -> None:
    """Forget cached source manifests (tests; a long-lived process between runs)."""
    for memo in (_sources, _counts, _expected, _compared):
        memo.clear()


# -- the module ----------------------------------------------------------------------------------


def _validate(ctx: PlanContext, args: RsyncArgs) -> tuple[str, ExcludeRules, ChmodRules, tuple[str, ...]]:
    where = f"{ctx.step}.args"
    enforce(args, path=where)  # the rules declared with the arguments (keep >= 1)
    base = str(ctx.vars.get("playbook_dir", ".")) if ctx.vars else "."
    src = os.path.normpath(os.path.join(base, os.path.expanduser(args.src)))
    if not os.path.isdir(src):
        raise ModuleError(f"'src' must be an existing directory on the controller (got '{src}')", path=ctx.step)
    if not args.dest.startswith("/") or posixpath.normpath(args.dest) == "/":
        raise ArgError(f"'dest' must be an absolute path other than / (got {args.dest!r})", path=where)
    if args.chown and not _CHOWN.match(args.chown):
        raise ArgError(f"'chown' must be user, user:group or :group (got {args.chown!r})", path=where)
    try:
        chmod = ChmodRules(args.chmod or "")
    except ValueError as exc:
        raise ArgError(str(exc), path=where) from None
    shared: list[str] = []
    for p in args.shared:
        norm = posixpath.normpath(p.strip("/")) if p else ""
        if not p or p.startswith("/") or norm in (".", "") or norm.startswith("..") or rel.RELEASE_INFO == norm:
            raise ArgError(f"'shared' paths must be relative paths inside the release (got {p!r})", path=where)
        shared.append(norm)
    if shared and not args.releases:
        raise ArgError("'shared' needs 'releases: true'", path=where)
    return src, ExcludeRules(tuple(args.exclude)), chmod, tuple(shared)


@register
class Rsync:
    """Syncs `src` to `dest` on each host with the real rsync over SSH, after a dry-run
    comparison that needs no rsync process; optionally as atomic releases (`releases/<id>` +
    `current` switched by rename, `keep`, `shared`)."""

    name: ClassVar[str] = "rsync"
    Args: ClassVar[type] = RsyncArgs
    summary: ClassVar[str] = "sync a tree to hosts with rsync over SSH; atomic releases optional"
    outputs: ClassVar[dict[str, str]] = {
        "release": output("the directory holding the deployed tree (`dest`, or `dest/releases/<id>`)", str),
        "release_name": output("the release directory name (empty without releases)", str),
        "changed_files": output("how many paths were (or would be) created, updated or deleted", int),
        "source_digest": output("sha256 over the synced source's names, modes and contents", str),
        "tree_digest": output(
            "the recorded tree a host has once synced (`<state dir>/trees/<digest>.listing`; what `playbook drift` compares with)",
            str,
        ),
    }
    controller_only: ClassVar[bool] = False
    examples: ClassVar[str] = """\
- id: sync
  module: rsync
  fleet: web
  args:
    src: "{{ sources.code.path }}"
    dest: /var/www/app
    releases: true
    keep: 5
    shared: [wp-content/uploads]
    exclude: [/.git/, "*.log"]
- id: static
  module: rsync
  fleet: web
  args:
    src: public/
    dest: /srv/static
    chmod: D755,F644
"""

    def plan(self, ctx: PlanContext, args: RsyncArgs) -> Plan:
        src, excludes, chmod, shared = _validate(ctx, args)
        dest = posixpath.normpath(args.dest)
        local, source_digest = source_manifest(src, ctx.run_id, ctx.state_dir)
        expect, expected, listing = expected_digest(local, excludes, chmod, ctx.run_id, src)
        save_listing(ctx.state_dir, expect, listing[1])  # once per tree: what `playbook drift` compares with
        # the fast path compares what rsync -a keeps
        expected_tree = None if (args.checksum or args.chown or shared) else expected
        if expected_tree is not None:
            state, tree = rel.delta_probe(
                ctx, dest, expected_tree, releases=args.releases, timeout=ctx.remaining(), listing=listing
            )
            if tree is not None and not state.extra.get("delta"):
                # the host's tree is exactly the source's: in sync, and nothing was listed or parsed here
                files = _file_count(local, ctx.run_id, src)
                fingerprint = {
                    "remote": "canonical:" + expect,
                    "current": state.current_target,
                    "releases": list(state.releases),
                    "source": source_digest,
                }
                common = {"source_digest": source_digest, "tree_digest": expect, "changed_files": 0}
                if not args.releases:
                    return Plan.no_change(
                        f"in sync: {files} files",
                        fingerprint=fingerprint,
                        outputs={"release": dest, "release_name": "", **common},
                    )
                if state.current_release is not None:
                    live = state.current_release
                    return Plan.no_change(
                        f"in sync: {files} files (release {live})",
                        fingerprint=fingerprint,
                        outputs={"release": f"{dest}/releases/{live}", "release_name": live, **common},
                    )
            state = dataclasses.replace(state, tree=tree)
        else:
            state = rel.parse_probe(
                dest,
                ctx.probe(
                    rel.probe_argv(dest, releases=args.releases, checksum=args.checksum, owners=bool(args.chown))
                ),
                releases=args.releases,
                host=ctx.host or "",
            )
        if state.current_blocked:
            raise ModuleError(
                f"'{dest}/current' exists and is not a symlink: move it away before using releases", path=ctx.host or ""
            )
        if state.tree_not_dir:
            where = state.tree_path or dest
            raise ModuleError(f"'{where}' exists and is not a directory", path=ctx.host or "")
        ignore = (rel.RELEASE_INFO, *shared) if args.releases else ()
        remote_tree = state.tree
        if remote_tree is not None and shared:
            # directories made only to hold a shared link are part of the layout, not strays
            holders = {"/".join(p.split("/")[:n]) for p in shared for n in range(1, p.count("/") + 1)}
            remote_tree = {k: v for k, v in remote_tree.items() if k not in holders or k in local}

        def compare() -> tuple[Any, str]:
            delta = compare_trees(
                local,
                remote_tree,
                checksum=args.checksum,
                delete=args.delete,
                excludes=excludes,
                chmod=chmod,
                chown=args.chown or "",
                ignore=ignore,
            )
            if state.tree is None:
                return delta, "absent"
            seen = {k: v for k, v in state.tree.items() if not excludes.excluded(k, is_dir=v.kind == "d")}
            return delta, manifest_digest(seen)

        answer = state.extra.get("delta") if expected_tree is not None else None
        if answer:  # hosts that answered the probe alike compare alike: once per run
            key = (
                ctx.run_id,
                src,
                tuple(getattr(excludes, "patterns", ())),
                getattr(chmod, "spec", ""),
                args.delete,
                args.releases,
                hashlib.sha256(b"\0".join(answer)).digest(),
            )
            delta, remote_digest = _compared.get(key, compare)
        else:
            delta, remote_digest = compare()
        fingerprint = {
            "remote": remote_digest,
            "current": state.current_target,
            "releases": list(state.releases),
            "source": source_digest,
        }
        common = {"source_digest": source_digest, "tree_digest": expect}
        if not args.releases:
            outputs = {"release": dest, "release_name": "", "changed_files": delta.changed, **common}
            if not delta.changed:
                files = _file_count(local, ctx.run_id, src)
                return Plan.no_change(f"in sync: {files} files", outputs=outputs, fingerprint=fingerprint)
            diff = Diff(header=dest, items=_shown(delta.items()), truncated=len(delta.items()) > MAX_DIFF_ITEMS)
            return Plan.will_change(
                _summary(delta),
                diffs=(diff,),
                outputs=outputs,
                fingerprint=fingerprint,
                data=_data(args, src, dest, delta, source_digest),
            )

        current = state.current_release
        links_ok = (
            current is not None
            and state.tree is not None
            and all(
                (e := state.tree.get(p)) is not None
                and e.kind == "l"
                and e.target == rel.shared_link_target(dest, current, p)
                for p in shared
            )
        )
        if current is not None and state.tree is not None and not delta.changed and links_ok:
            files = _file_count(local, ctx.run_id, src)
            outputs = {"release": f"{dest}/releases/{current}", "release_name": current, "changed_files": 0, **common}
            return Plan.no_change(
                f"in sync: {files} files (release {current})", outputs=outputs, fingerprint=fingerprint
            )

        release_id = ctx.release_id or time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        name = rel.release_name_for(release_id, state.releases, current)
        remove = rel.releases_to_remove([*state.releases, name], args.keep, protect=(name, current))
        seed = state.tree_path if state.tree is not None else None
        items = _shown(delta.items()) + (("->", f"current -> releases/{name}"),)
        diffs = [
            Diff(
                header=dest,
                before=f"current -> {state.current_target}\n" if state.current_target else None,
                after=f"current -> releases/{name}\n",
                items=items,
                truncated=len(delta.items()) > MAX_DIFF_ITEMS,
            )
        ]
        if remove:
            diffs.append(
                Diff(header=f"{dest}/releases (keep {args.keep})", items=tuple(("-", f"releases/{r}") for r in remove))
            )
        reason = _summary(delta) + f"; new release {name}"
        if not delta.changed and current is not None:
            reason = f"shared links need updating; new release {name}"
        data = _data(args, src, dest, delta, source_digest)
        data.update({"release": name, "seed": seed, "remove": remove, "shared": list(shared), "previous": current})
        outputs = {"release": f"{dest}/releases/{name}", "release_name": name, "changed_files": delta.changed, **common}
        return Plan.will_change(reason, diffs=tuple(diffs), outputs=outputs, fingerprint=fingerprint, data=data)

    def apply(self, ctx: ApplyContext, plan: Plan) -> dict[str, Any]:
        d = plan.data
        dest = d["dest"]
        local, digest = source_manifest(d["src"], ctx.run_id)
        if digest != d["source_digest"]:
            raise ModuleError(
                f"'{d['src']}' changed since the plan was made ({d['source_digest'][:19]}… is now "
                f"{digest[:19]}…): plan again",
                path=ctx.host or "",
            )
        paths = sorted(d["transfer"])
        files = {p: (e.size, e.mtime) for p in paths if (e := local.get(p)) is not None and e.kind == "f"}
        if not d.get("releases"):
            ctx.emit(f"rsync: {len(paths)} paths to {dest}, {len(d['delete_roots'])} to delete")
            transfer_and_delete(
                ctx, d["src"], dest, paths, d["delete_roots"], files, chown=d["chown"], chmod=d["chmod"]
            )
            return {"changed_files": d["changed"]}

        name = d["release"]
        assert ctx.conn is not None
        partial = rel.prepare_release(ctx.conn, dest, name, d["seed"], timeout=ctx.remaining())
        try:
            ctx.emit(f"rsync: {len(paths)} paths to release {name}, {len(d['delete_roots'])} to delete")
            transfer_and_delete(
                ctx, d["src"], partial, paths, d["delete_roots"], files, chown=d["chown"], chmod=d["chmod"]
            )
            info = {
                "release": name,
                "source_digest": d["source_digest"],
                "run_id": ctx.run_id,
                "previous": d.get("previous"),
                "time": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            }
            rel.finish_release(ctx.conn, dest, name, d["shared"], info=info, timeout=ctx.remaining())
        except BaseException:
            rel.discard_release(ctx.conn, dest, name)
            raise
        if d["remove"]:
            try:
                rel.remove_releases(ctx.conn, dest, d["remove"], timeout=ctx.remaining())
            except Exception as exc:  # the deploy itself succeeded; the next run retries the cleanup
                ctx.emit(f"warning: old releases not removed: {exc}")
        return {"changed_files": d["changed"], "release": f"{dest}/releases/{name}", "release_name": name}


def _shown(items: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str], ...]:
    return items[:MAX_DIFF_ITEMS]


def _summary(delta: Any) -> str:
    return f"{len(delta.created)} to create, {len(delta.updated)} to update, {len(delta.deleted)} to delete"


def _data(args: RsyncArgs, src: str, dest: str, delta: Any, digest: str) -> dict[str, Any]:
    """What apply needs, JSON-friendly (a saved plan carries it)."""
    return {
        "args": dataclasses.asdict(args),
        "src": src,
        "dest": dest,
        "releases": args.releases,
        "transfer": list(delta.transfer),
        "delete_roots": list(delta.delete_roots),
        "changed": delta.changed,
        "chown": args.chown,
        "chmod": args.chmod,
        "source_digest": digest,
    }
