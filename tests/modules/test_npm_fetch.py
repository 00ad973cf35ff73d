"""npm_fetch against a real Verdaccio on loopback, publishing with the real npm CLI."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import tarfile
import uuid
from pathlib import Path

import pytest

from engine.errors import ArgError, ModuleError
from engine.model.results import Change
from engine.module import PlanContext
from engine.record.deployed import record_deployed
from engine.secrets import SCRUBBER
from modules._support.artifacts import DigestMismatch
from modules.npm_fetch import NpmFetch, NpmFetchArgs, nerf_dart, parse_npmrc, token_for


def make_package(root: Path, name: str, version: str, files: dict[str, str]) -> Path:
    pkg = root / f"{name.replace('/', '_')}-{version}-{uuid.uuid4().hex[:6]}"
    pkg.mkdir(parents=True)
    (pkg / "package.json").write_text(json.dumps({"name": name, "version": version, "files": sorted(files)}))
    for rel, text in files.items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_text(text)
    return pkg


def unique(scope: str = "@seed") -> str:
    return f"{scope}/templates-{uuid.uuid4().hex[:8]}"


def ctx(state: Path, vars_extra: dict | None = None):
    messages: list[str] = []
    c = PlanContext(
        host=None,
        step="sources.templates",
        vars={"run": {"playbook": "deploy-templates"}, **(vars_extra or {})},
        run_id="r1",
        release_id="rel",
        state_dir=str(state),
        mode="plan",
        emit=messages.append,
    )
    return c


@pytest.fixture
def npmrc(verdaccio, tmp_path):
    return verdaccio.npmrc(tmp_path / ".npmrc")


def fetch(state: Path, **kw):
    return NpmFetch().plan(ctx(state), NpmFetchArgs(**kw))


def test_scoped_package_with_npmrc_token(verdaccio, npmrc, tmp_path):
    name = unique()
    verdaccio.publish(make_package(tmp_path, name, "1.0.0", {"index.html": "<h1>t1</h1>", "css/site.css": "a{}"}))
    plan = fetch(tmp_path / "state", package=name, npmrc=str(npmrc))  # registry from the .npmrc
    served = verdaccio.packument(name)["versions"]["1.0.0"]["dist"]["integrity"]
    assert plan.change == Change.WILL_CHANGE and plan.outputs["version"] == "1.0.0"
    assert plan.outputs["integrity"] == served == plan.outputs["digest"]
    assert f"first deploy ({served})" in plan.reason
    tree = Path(plan.outputs["path"])
    assert (tree / "index.html").read_text() == "<h1>t1</h1>" and (tree / "package.json").exists()
    hexd = base64.b64decode(served[len("sha512-") :]).hex()
    assert tree.parent == tmp_path / "state" / "cache" / "sha512" / hexd  # keyed by integrity, not name@version
    assert hashlib.sha512((tree.parent / "blob").read_bytes()).hexdigest() == hexd

    record_deployed(tmp_path / "state", "deploy-templates", "templates", digest=served, version="1.0.0")
    again = fetch(tmp_path / "state", package=name, npmrc=str(npmrc))
    assert again.change == Change.NO_CHANGE and "already deployed" in again.reason


def test_token_env_dist_tags_and_errors(verdaccio, tmp_path, monkeypatch):
    name = unique()
    token = verdaccio.add_user()
    rc = verdaccio.npmrc(tmp_path / "publish.npmrc")
    verdaccio.publish(make_package(tmp_path, name, "1.0.0", {"a.txt": "1"}))
    pkg2 = make_package(tmp_path, name, "2.0.0-rc.1", {"a.txt": "2"})
    verdaccio.npm("publish", "--tag", "next", cwd=pkg2)
    monkeypatch.setenv("TEMPLATES_NPM_TOKEN", token)
    state = tmp_path / "state"
    common = dict(package=name, registry=verdaccio.url, token_env="TEMPLATES_NPM_TOKEN", npmrc=str(tmp_path / "empty"))
    (tmp_path / "empty").write_text("")
    assert fetch(state, **common).outputs["version"] == "1.0.0"
    nxt = fetch(state, **common, version="next")
    assert nxt.outputs["version"] == "2.0.0-rc.1" and (Path(nxt.outputs["path"]) / "a.txt").read_text() == "2"
    assert fetch(state, **common, version="1.0.0").outputs["version"] == "1.0.0"
    with pytest.raises(ModuleError, match=r"no version or dist-tag '9.9.9' \(dist-tags: latest=1.0.0, next=2.0.0-rc.1"):
        fetch(state, **common, version="9.9.9")
    with pytest.raises(ArgError, match="'version' must be an exact version or a dist-tag"):
        fetch(state, **common, version="^1.0.0")
    with pytest.raises(ArgError, match="'package' must be an npm package name"):
        fetch(state, **{**common, "package": "../etc"})
    # no token: the registry refuses, and says where a token comes from
    with pytest.raises(ModuleError, match=r"refused access .*HTTP 401\): no token was given"):
        fetch(state, package=name, registry=verdaccio.url, npmrc=str(tmp_path / "empty"))
    monkeypatch.setenv("BAD_TOKEN", "not-the-token-at-all")
    with pytest.raises(ModuleError) as err:
        fetch(state, package=name, registry=verdaccio.url, token_env="BAD_TOKEN", npmrc=str(tmp_path / "empty"))
    assert "token was refused" in str(err.value) and "not-the-token-at-all" not in str(err.value)
    assert token in SCRUBBER and "not-the-token-at-all" in SCRUBBER
    monkeypatch.delenv("BAD_TOKEN")
    with pytest.raises(ArgError, match="environment variable BAD_TOKEN is not set"):
        fetch(state, package=name, registry=verdaccio.url, token_env="BAD_TOKEN")
    assert rc.stat().st_mode & 0o077 == 0


def test_republished_version_is_detected_and_a_pin_refuses_it(verdaccio, npmrc, tmp_path):
    name = unique()
    state = tmp_path / "state"
    verdaccio.publish(make_package(tmp_path, name, "1.0.0", {"index.html": "first build"}))
    first = fetch(state, package=name, npmrc=str(npmrc))
    a = first.outputs["integrity"]
    record_deployed(state, "deploy-templates", "templates", digest=a, version="1.0.0")
    verdaccio.unpublish(f"{name}@1.0.0")
    verdaccio.publish(make_package(tmp_path, name, "1.0.0", {"index.html": "second build"}))
    plan = fetch(state, package=name, npmrc=str(npmrc))
    b = plan.outputs["integrity"]
    assert a != b
    assert plan.change == Change.WILL_CHANGE
    assert plan.reason == f"{name} 1.0.0 republished: {a} → {b}"
    assert plan.diffs[0].before == f"1.0.0 {a}\n" and plan.diffs[0].after == f"1.0.0 {b}\n"
    assert (Path(plan.outputs["path"]) / "index.html").read_text() == "second build"
    assert (Path(first.outputs["path"]) / "index.html").read_text() == "first build"  # old bytes still cached
    with pytest.raises(ModuleError) as err:
        fetch(state, package=name, npmrc=str(npmrc), integrity=a)
    assert a in str(err.value) and b in str(err.value) and "republished" in str(err.value)
    with pytest.raises(ArgError, match="'integrity' must be"):
        fetch(state, package=name, npmrc=str(npmrc), integrity="md5-xyz")


def test_tarball_swapped_in_storage_fails_with_both_integrities(verdaccio, npmrc, tmp_path):
    name = unique(scope="@other")
    verdaccio.publish(make_package(tmp_path, name, "1.0.0", {"index.html": "genuine"}))
    served = verdaccio.packument(name)["versions"]["1.0.0"]["dist"]["integrity"]
    evil = io.BytesIO()
    with tarfile.open(fileobj=evil, mode="w:gz") as tf:
        data = b"tampered"
        info = tarfile.TarInfo("package/index.html")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    verdaccio.tarball_path(name, "1.0.0").write_bytes(evil.getvalue())
    actual = "sha512-" + base64.b64encode(hashlib.sha512(evil.getvalue()).digest()).decode()
    state = tmp_path / "state"
    with pytest.raises(DigestMismatch) as err:
        fetch(state, package=name, npmrc=str(npmrc))
    text = str(err.value)
    assert served in text and actual in text and f"{name}@1.0.0" in text and "dist.integrity" in text
    assert not (state / "cache" / "sha512").exists() or os.listdir(state / "cache" / "sha512") == []
    assert os.listdir(state / "cache" / "tmp") == []


def test_npmrc_parsing_and_token_matching():
    cfg = parse_npmrc(
        "; comment\nregistry=https://npm.example.com/\n@seed:registry = https://npm.example.com/seed/\n"
        '//npm.example.com/:_authToken=${ROOT_TOKEN}\n//npm.example.com/seed/:_authToken="seedtoken"\n',
        env={"ROOT_TOKEN": "roottoken"},
    )
    assert cfg["registry"] == "https://npm.example.com/" and cfg["@seed:registry"] == "https://npm.example.com/seed/"
    assert token_for("https://npm.example.com/seed/", cfg) == "seedtoken"
    assert token_for("https://npm.example.com/other/deep/", cfg) == "roottoken"
    assert token_for("https://elsewhere.example.com/", cfg) is None
    assert nerf_dart("http://127.0.0.1:4873") == "//127.0.0.1:4873/"
    assert nerf_dart("https://u:p@h.example/a/b?x=1") == "//h.example/a/"


class _Redirector:
    """A real HTTP server on 127.0.0.1 that answers every GET with a 302 to `target` + path."""

    def __init__(self, target: str) -> None:
        import http.server
        import threading

        base = target.rstrip("/")

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                self.send_response(302)
                self.send_header("Location", base + self.path)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *a: object) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def test_a_401_from_a_host_that_never_got_the_token_does_not_blame_the_token(verdaccio, tmp_path, monkeypatch):
    """The registry redirects to another host (a CDN, a mirror): the token stays behind, as it
    must, so the other host's 401 is not "the token was refused"."""
    name = unique()
    token = verdaccio.add_user()
    verdaccio.npmrc(tmp_path / "publish.npmrc")
    verdaccio.publish(make_package(tmp_path, name, "1.0.0", {"a.txt": "1"}))
    monkeypatch.setenv("REDIRECT_NPM_TOKEN", token)
    (tmp_path / "empty").write_text("")
    front = _Redirector(verdaccio.url)
    try:
        with pytest.raises(ModuleError) as err:
            fetch(
                tmp_path / "state",
                package=name,
                registry=front.url,
                token_env="REDIRECT_NPM_TOKEN",
                npmrc=str(tmp_path / "empty"),
            )
    finally:
        front.close()
    text = str(err.value)
    assert "HTTP 401" in text and "token was refused" not in text
    assert "never sent" in text and verdaccio.url.rstrip("/") in text and front.url.rstrip("/") in text
    assert token not in text
