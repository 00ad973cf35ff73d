"""A module that tries to write while planning fails, by construction, and nothing is written.

A throwaway module is registered for these tests only; its `plan` makes one write attempt
through each client (a writer built from the PlanContext, a writer built from a forged
ApplyContext, a raw mutating call through a reader, a push or a PURGE through a reader). The
executor plans it, in `plan` mode and in the plan half of `run`, against the real services,
which record what reaches them: the kube-apiserver's audit log, a bare git remote with a
pre-receive hook, a loopback HTTP server. Every attempt fails the step with the write named,
and no server saw a write.
"""

from __future__ import annotations

import dataclasses
import json
import subprocess
import time
import urllib.request
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import pytest

from engine.connection.local import LocalConnection
from engine.errors import ReadOnlyViolation
from engine.execute.scheduler import Executor, RunOptions
from engine.model.config import Fleet, Group, Host, Inventory, Playbook, Step
from engine.model.results import Plan, Status
from engine.module import _REGISTRY, ApplyContext, PlanContext, arg, register, require_apply
from modules._support.git import Git, GitReader, commit, git_environment
from modules._support.http import Http, HttpReader
from modules._support.kube import Kube, KubeReader
from tests.harness.recording import RecordingServer
from tests.harness.untouched import KUBE_WRITES, audit_marker, git_state, is_access_review, recording_remote


def _forged(ctx: PlanContext) -> ApplyContext:
    """An ApplyContext a module might build for itself from the one it was given."""
    fields = {f.name: getattr(ctx, f.name) for f in dataclasses.fields(ctx) if f.name != "conn"}
    return ApplyContext(conn=getattr(ctx.conn, "_conn", None), **fields)


def _clone(ctx: PlanContext, url: str) -> tuple[GitReader, str]:
    git = GitReader(ctx, git_environment(known_hosts=None, ssh_key=None), timeout=60)
    work = Path(ctx.state_dir) / f"clone-{uuid.uuid4().hex[:6]}"
    git.run("clone", "--quiet", url, str(work))
    (work / "new.txt").write_text("written during a dry run\n")
    return git, str(work)


def _raw_push(ctx: PlanContext, url: str) -> None:
    git, work = _clone(ctx, url)
    env = {**git.env, "GIT_AUTHOR_NAME": "x", "GIT_AUTHOR_EMAIL": "x@x", "GIT_COMMITTER_NAME": "x"}
    env["GIT_COMMITTER_EMAIL"] = "x@x"
    for argv in (["add", "new.txt"], ["commit", "-q", "-m", "sneak"], ["push", "origin", "HEAD:main"]):
        proc = subprocess.run(["git", *argv], cwd=work, env=env, capture_output=True, text=True)
    raise RuntimeError(f"push through the reader's environment: rc {proc.returncode}: {proc.stderr.strip()}")


def _kube_raw_create(ctx: PlanContext) -> None:
    reader = KubeReader(ctx)
    try:
        assert isinstance(reader.can_i("create", "configmap"), bool)  # the one POST a reader may send
        reader._core.create_namespaced_config_map(reader.namespace, {"metadata": {"name": "sneaked"}})
    finally:
        reader.close()


def _kube_raw_patch(ctx: PlanContext) -> None:
    reader = KubeReader(ctx)
    body = {"data": {"canaryEnv": '{"selector":"green"}'}}
    with reader.call("sneaky patch"):
        reader._core.patch_namespaced_config_map("canary-env", reader.namespace, body)


ATTEMPTS: dict[str, Any] = {
    "kube writer from the plan context": lambda ctx, url: Kube(ctx),
    "kube writer from a forged apply context": lambda ctx, url: Kube(_forged(ctx)),
    "raw patch through a kube reader": lambda ctx, url: _kube_raw_patch(ctx),
    "raw create (a POST, like can_i's) through a kube reader": lambda ctx, url: _kube_raw_create(ctx),
    "git writer from a forged apply context": lambda ctx, url: Git(_forged(ctx), {}),
    "git push through a reader": lambda ctx, url: _clone(ctx, url)[0].run("push", "origin", "HEAD:main"),
    "git commit with a reader": lambda ctx, url: commit(_clone(ctx, url)[0], "/nonexistent", "m"),
    "git push with the reader's environment": lambda ctx, url: _raw_push(ctx, url),
    "http writer from the plan context": lambda ctx, url: Http(ctx),
    "http writer from a forged apply context": lambda ctx, url: Http(_forged(ctx)),
    "http PURGE through a reader": lambda ctx, url: HttpReader(ctx).open(
        urllib.request.Request(url, method="PURGE"), timeout=10
    ),
    "http POST through a reader": lambda ctx, url: HttpReader(ctx).open(
        urllib.request.Request(url, data=b"x"), timeout=10
    ),
    "a command on the full connection": lambda ctx, url: _forged(ctx).run(["true"]),
    "a writer's check from plan": lambda ctx, url: require_apply(ctx, "anything"),
}


@dataclass(frozen=True)
class SneakyArgs:
    attempt: str = arg(doc="Which write to try while planning.")
    git_url: str = arg("", doc="The git remote it may target.")
    http_url: str = arg("", doc="The HTTP URL it may target.")


class SneakyWriter:
    """Tries one write while planning (never registered outside these tests)."""

    name: ClassVar[str] = "sneaky_writer"
    Args: ClassVar[type] = SneakyArgs
    summary: ClassVar[str] = "tries to write during plan"
    examples: ClassVar[str] = "[]\n"

    def plan(self, ctx: PlanContext, args: SneakyArgs) -> Plan:
        ATTEMPTS[args.attempt](ctx, args.http_url if "http" in args.attempt.lower() else args.git_url)
        return Plan.will_change("wrote during the plan")

    def apply(self, ctx: ApplyContext, plan: Plan) -> None:
        return None


@pytest.fixture
def sneaky():
    register(SneakyWriter)
    try:
        yield
    finally:
        _REGISTRY.pop(SneakyWriter.name, None)


@pytest.fixture(scope="module")
def services(kube_cluster, tmp_path_factory):
    """A canary namespace on the real API server, a bare git remote that records any push, and
    a loopback HTTP server that records every request."""
    from kubernetes import client

    ns = kube_cluster.add_namespace(f"sneak-{uuid.uuid4().hex[:8]}")
    admin = kube_cluster.admin_client()
    try:
        env = json.dumps({"selector": "blue"})
        client.CoreV1Api(admin).create_namespaced_config_map(
            ns, {"metadata": {"name": "canary-env"}, "data": {"canaryEnv": env}}
        )
    finally:
        admin.close()
    remote, marker = recording_remote(tmp_path_factory.mktemp("sneak"), {"release.yaml": "tag: v1\n"})
    with RecordingServer() as http:
        yield ns, remote, marker, http


@pytest.mark.parametrize("mode", ["plan", "run"])
@pytest.mark.parametrize("attempt", sorted(ATTEMPTS))
def test_a_write_while_planning_fails_and_reaches_no_server(attempt, mode, sneaky, services, kube_cluster, tmp_path):
    ns, remote, marker, http = services
    target = Host(
        "wp-prod", connection="kubernetes", kubeconfig=str(kube_cluster.kubeconfig), context="test", namespace=ns
    )
    inv = Inventory("inv.yml", {"wp-prod": target}, {"k8s": Group("k8s", hosts=("wp-prod",))})
    step = Step("sneak", SneakyWriter.name, "k8s", {"attempt": attempt, "git_url": remote.url, "http_url": http.url})
    pb = Playbook("sneak.yml", "sneak", {}, {"k8s": Fleet("k8s", "k8s")}, (step,))
    opts = RunOptions(mode=mode, run_id=f"sneak-{time.time_ns()}", state_dir=str(tmp_path), forks=1)
    refs, audit_from, http_from = git_state(remote), len(kube_cluster.audit_events()), len(http.requests)
    summary = Executor(pb, inv, opts, connect=LocalConnection).execute()

    [result] = [r for r in summary.results if r.step == "sneak"]
    assert result.status == Status.FAILED, result
    if attempt == "git push with the reader's environment":
        assert "playbook-read-only" in result.message  # the push URL went nowhere
    else:
        assert "tried to write" in result.message, result.message
    assert git_state(remote) == refs and not marker.exists(), "a push reached the remote"
    assert http.requests[http_from:] == [], f"the HTTP server got {http.requests[http_from:]}"
    audit_marker(kube_cluster, ns)
    events = kube_cluster.audit_events()[audit_from:]
    writes = [e["requestURI"] for e in events if e["verb"] in KUBE_WRITES and not is_access_review(e)]
    assert writes == [], f"the API server got writes: {writes}"


def test_writers_work_in_apply_and_readers_never_write(services, kube_cluster, tmp_path):
    """The same clients, handed an ApplyContext outside a plan, write; a reader still refuses."""
    ns, _remote, _marker, http = services
    target = Host(
        "wp-prod", connection="kubernetes", kubeconfig=str(kube_cluster.kubeconfig), context="test", namespace=ns
    )
    common: dict[str, Any] = dict(
        host="wp-prod", step="s", vars={}, run_id="r", release_id="rel", state_dir=str(tmp_path)
    )
    actx = ApplyContext(mode="run", target=target, **common)
    kube = Kube(actx)
    try:
        kube.patch(
            "configmap", "canary-env", {"metadata": {"labels": {"applied": "yes"}}}, "application/merge-patch+json"
        )
        assert kube.read("configmap", "canary-env").metadata.labels == {"applied": "yes"}
        assert "canary-env" in [c.metadata.name for c in kube.list("configmap").items]
    finally:
        kube.close()
    with Http(actx).send(urllib.request.Request(http.url + "/purge", method="PURGE"), timeout=10) as resp:
        assert resp.status == 200
    assert http.requests[-1] == ("PURGE", "/purge")
    reader = KubeReader(actx)
    try:
        assert not hasattr(reader, "patch") and not hasattr(reader, "core")
        with pytest.raises(ReadOnlyViolation, match="KubeReader refused PATCH"):
            reader._core.patch_namespaced_config_map("canary-env", ns, {"data": {}})
    finally:
        reader.close()
    with pytest.raises(ReadOnlyViolation, match="GitReader refused 'git push'"):
        GitReader(actx, {}).run("push")


def test_the_s3_client_sends_reads_only(moto_s3):
    """s3_fetch only reads, in plan and apply: its client refuses a PUT before it is sent."""
    import boto3

    from modules.s3_fetch import S3FetchArgs, _client

    bucket = f"sneak-{uuid.uuid4().hex[:8]}"
    boto3.client("s3", endpoint_url=moto_s3).create_bucket(Bucket=bucket)
    reader = _client(S3FetchArgs(bucket=bucket, key="k", endpoint_url=moto_s3), "s3://x")
    assert reader.list_objects_v2(Bucket=bucket).get("KeyCount") == 0
    with pytest.raises(ReadOnlyViolation, match="the S3 client refused PUT"):
        reader.put_object(Bucket=bucket, Key="k", Body=b"written")
    assert boto3.client("s3", endpoint_url=moto_s3).list_objects_v2(Bucket=bucket).get("KeyCount") == 0


def test_a_write_after_a_changing_step_is_failed_not_unknown(sneaky, services, kube_cluster, tmp_path):
    """A plan error after a step that will change is usually 'unknown until applied'; a write
    attempt is a bug in the module and stays 'failed'."""
    ns, remote, _marker, http = services
    target = Host(
        "wp-prod", connection="kubernetes", kubeconfig=str(kube_cluster.kubeconfig), context="test", namespace=ns
    )
    inv = Inventory("inv.yml", {"wp-prod": target}, {"k8s": Group("k8s", hosts=("wp-prod",))})
    first = Step("first", "command", "k8s", {"argv": ["true"], "creates": str(tmp_path / "absent")})
    args = {"attempt": "http PURGE through a reader", "git_url": remote.url, "http_url": http.url}
    sneak = Step("sneak", SneakyWriter.name, "k8s", args, needs=("first",))
    pb = Playbook("sneak.yml", "sneak", {}, {"k8s": Fleet("k8s", "k8s")}, (first, sneak))
    opts = RunOptions(mode="plan", run_id=f"sneak-{time.time_ns()}", state_dir=str(tmp_path), forks=1)
    http_from = len(http.requests)
    results = {r.step: r for r in Executor(pb, inv, opts, connect=LocalConnection).execute().results}
    assert results["first"].status == Status.CHANGED
    assert results["sneak"].status == Status.FAILED and "HttpReader refused PURGE" in results["sneak"].message
    assert http.requests[http_from:] == []
