"""What a dry run must leave untouched, and the check that it did (tests/integration/
test_dry_run_readonly.py, test_plan_cannot_write.py).

`World` holds the real services a scenario uses - the sshd fleet, a bare git remote with a
pre-receive hook that records any push, a loopback purge server, recording proxies in front of
Verdaccio or moto, the kube-apiserver with its audit log - and `assert_untouched` compares them
with a snapshot taken before the plan: the hosts' trees, the remote's refs and objects, only
GET/HEAD at the HTTP servers, no create/update/patch/delete by the deployer in the audit log.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from engine import api
from engine.execute.options import RunOptions
from tests.harness.gitrepo import GitRemote
from tests.harness.recording import RecordingProxy, RecordingServer

__all__ = ["World", "SAFE", "KUBE_WRITES", "is_access_review", "tree", "git_state", "recording_remote", "audit_marker"]

SAFE = {"GET", "HEAD"}
KUBE_WRITES = {"create", "update", "patch", "delete", "deletecollection"}


def is_access_review(event: dict) -> bool:
    """A SelfSubjectAccessReview (`KubeReader.can_i`): audited as a `create`, but a question the
    API server answers and stores nothing for, so a dry run may ask it."""
    return (event.get("objectRef") or {}).get("resource") == "selfsubjectaccessreviews"


def tree(root: Path) -> dict[str, tuple]:
    """Every entry under `root`: type, mode, size, mtime and link target (a write changes one)."""
    out: dict[str, tuple] = {}
    for base, dirs, files in os.walk(root):
        for name in dirs + files:
            p = os.path.join(base, name)
            st = os.lstat(p)
            link = os.readlink(p) if os.path.islink(p) else None
            out[os.path.relpath(p, root)] = (st.st_mode, st.st_size, st.st_mtime_ns, link)
    return out


def git_state(remote: GitRemote) -> tuple[str, str]:
    refs = subprocess.run(["git", "for-each-ref"], cwd=remote.bare, capture_output=True, text=True, check=True)
    objects = subprocess.run(["git", "count-objects", "-v"], cwd=remote.bare, capture_output=True, text=True)
    return refs.stdout, objects.stdout


@dataclass
class World:
    """The real services a scenario may use, and what they recorded."""

    request: Any
    tmp: Path
    fleet: Any
    http: RecordingServer
    proxies: list[RecordingProxy] = field(default_factory=list)
    git: GitRemote | None = None
    push_marker: Path | None = None
    kube: Any = None
    k8s_host: dict | None = None
    env: dict[str, str] = field(default_factory=dict)
    checks: list[Any] = field(default_factory=list)  # more asserts on the plan's results
    app: str = field(default_factory=lambda: f"dry-{uuid.uuid4().hex[:8]}")

    def proxy(self, upstream: str) -> RecordingProxy:
        p = RecordingProxy(upstream).start()
        self.proxies.append(p)
        return p

    def remote(self, files: dict[str, str]) -> GitRemote:
        self.git, self.push_marker = recording_remote(self.tmp, files)
        return self.git

    def inventory(self) -> Path:
        path = self.fleet.write_inventory(self.tmp / "inv.yml")
        if self.k8s_host:
            doc = yaml.safe_load(path.read_text())
            doc["hosts"]["wp-prod"] = self.k8s_host
            doc["groups"]["k8s"] = {"hosts": ["wp-prod"]}
            path.write_text(yaml.safe_dump(doc))
        return path

    def execute(self, playbook: dict, mode: str, **kw: Any) -> dict[tuple[str, str | None], Any]:
        pb = self.tmp / f"{playbook['name']}.yml"
        pb.write_text(yaml.safe_dump(playbook, sort_keys=False))
        loaded = api.load(str(pb), str(self.inventory()))
        opts = RunOptions(mode=mode, state_dir=str(self.tmp / "state"), forks=5, locks=False, **kw)
        summary = api.execute(loaded, opts)
        return {(r.step, r.host): r for r in summary.results}

    def snapshot(self) -> dict[str, Any]:
        return {
            "hosts": {h.name: tree(Path(h.data_dir)) for h in self.fleet},
            "git": git_state(self.git) if self.git else None,
        }

    def assert_untouched(self, before: dict[str, Any], kube_from: int) -> None:
        after = self.snapshot()
        for host, entries in before["hosts"].items():
            now = after["hosts"][host]
            changed = sorted(k for k in set(entries) | set(now) if entries.get(k) != now.get(k))
            assert not changed, f"{host}: the dry run changed {changed[:10]}"
        if self.git:
            assert after["git"] == before["git"], "the dry run changed the git remote"
            assert self.push_marker and not self.push_marker.exists(), "the dry run pushed (receive-pack ran)"
        assert self.http.requests == [], f"the dry run sent {self.http.requests} to the purge server"
        for p in self.proxies:
            assert p.methods() <= SAFE, f"the dry run sent {p.requests} (only GET/HEAD allowed)"
        if self.kube:
            audit_marker(self.kube, self.k8s_host["namespace"] if self.k8s_host else "default")
            writes = [
                (e["verb"], e["requestURI"])
                for e in self.kube.audit_events()[kube_from:]
                if e["verb"] in KUBE_WRITES and not is_access_review(e)
            ]
            assert writes == [], f"the dry run wrote to the API server: {writes}"


def recording_remote(root: Path, files: dict[str, str]) -> tuple[GitRemote, Path]:
    """A bare remote seeded with `files`, whose pre-receive hook writes the returned marker file
    and refuses, so any push that reaches receive-pack leaves a trace and changes nothing."""
    remote = GitRemote(root / "git", files)
    marker = root / "pushed"
    hook = remote.bare / "hooks" / "pre-receive"
    hook.write_text(f"#!/bin/sh\necho receive-pack >> '{marker}'\nexit 1\n")
    hook.chmod(0o755)
    return remote, marker


def audit_marker(cluster: Any, namespace: str) -> None:
    """A request of our own: once its audit event is logged, every request made before it (each
    logged when received, so before it was answered) is logged too."""
    from kubernetes import client, config

    name = f"audit-marker-{uuid.uuid4().hex[:8]}"
    api_client = config.new_client_from_config(config_file=str(cluster.kubeconfig), context="test")
    try:
        client.CoreV1Api(api_client).read_namespaced_config_map(name, namespace)
    except client.exceptions.ApiException:
        pass  # 404 is expected; the request is what counts
    finally:
        api_client.close()
    cluster.wait_for(lambda: any(name in e.get("requestURI", "") for e in cluster.audit_events()), 30, "audit marker")
