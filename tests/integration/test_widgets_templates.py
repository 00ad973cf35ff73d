"""The shipped Widgets (S3) and Templates (npm) playbooks, through the CLI, against the real sshd
fleet, moto's S3 server and Verdaccio, all on loopback."""

from __future__ import annotations

import base64
import hashlib
import io
import json
import os
import tarfile
import uuid
from pathlib import Path

import boto3
import pytest
import yaml

from engine.cli import main
from engine.record.deployed import history
from tests.harness.moto import MotoServer

pytestmark = pytest.mark.fleet

PLAYBOOKS = Path(__file__).resolve().parents[2] / "playbooks"
WIDGETS = PLAYBOOKS / "deploy-widgets.yml"
TEMPLATES = PLAYBOOKS / "deploy-templates.yml"


def cli(capsys, *args: str) -> tuple[int, dict]:
    code = main(list(args))
    out, err = capsys.readouterr()
    doc = json.loads(out) if out.strip().startswith("{") else {"stdout": out}
    if "results" not in doc:  # not a run: the error (also an error document on stdout) in words
        doc["stderr"] = err
    return code, doc


def result(doc: dict, step: str, host: str | None = None) -> dict:
    return next(r for r in doc["results"] if r["step"] == step and r["host"] == host)


def tgz(files: dict[str, str], prefix: str = "") -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tf:
        for name, text in sorted(files.items()):
            data = text.encode()
            info = tarfile.TarInfo(prefix + name)
            info.size = len(data)
            info.mtime = 1_700_000_000
            info.mode = 0o644
            tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def fleet_setup(sshd_fleet, tmp_path: Path, root_var: str, app: str) -> list[str]:
    inv = yaml.safe_load(sshd_fleet.write_inventory(tmp_path / "inv.yml").read_text())
    for host in inv["hosts"].values():
        host["vars"][root_var] = f"{host['vars']['root']}/{app}-{tmp_path.name}"
    (tmp_path / "inv.yml").write_text(yaml.safe_dump(inv))
    flush = json.dumps({"cache_flush_command": ["sh", "-c", f"echo flushed >> {{{{ {root_var} }}}}/flushes"]})
    return ["-i", str(tmp_path / "inv.yml"), "--state-dir", str(tmp_path / "state"), "-e", flush, "--format", "json"]


def app_root(host, tmp_path: Path, app: str) -> Path:
    return Path(host.data_dir) / f"{app}-{tmp_path.name}"


def releases(sshd_fleet, tmp_path, app) -> dict[str, list[str]]:
    out = {}
    for h in sshd_fleet:
        d = app_root(h, tmp_path, app) / "releases"
        out[h.name] = sorted(os.listdir(d)) if d.exists() else []
    return out


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def test_widgets_from_s3(sshd_fleet, moto_s3, tmp_path, capsys):
    s3 = boto3.client("s3", endpoint_url=moto_s3)
    bucket = f"widgets-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=bucket)
    key = "widgets/widgets.tar.gz"
    v1 = tgz({"index.html": "<div>widgets v1</div>", "js/widget.js": "w(1)", "css/w.css": "a{}"})
    s3.put_object(Bucket=bucket, Key=key, Body=v1, ChecksumAlgorithm="SHA256")
    base = fleet_setup(sshd_fleet, tmp_path, "widgets_root", "widgets") + [
        "-e",
        f"widgets_bucket={bucket}",
        "-e",
        f"s3_endpoint_url={moto_s3}",
        "-e",
        f"widgets_key={key}",
    ]

    code, doc = cli(capsys, "run", str(WIDGETS), *base, "--release-id", "20260101T000001Z")
    assert code == 0, doc
    src = result(doc, "sources.widgets")
    assert src["status"] == "changed" and src["outputs"]["digest"] == sha256(v1)
    for h in sshd_fleet:
        root = app_root(h, tmp_path, "widgets")
        assert (root / "current" / "js" / "widget.js").read_text() == "w(1)"
        assert (root / "flushes").read_text() == "flushed\n"
    assert history(tmp_path / "state", "deploy-widgets", "widgets")[-1]["digest"] == sha256(v1)
    first = releases(sshd_fleet, tmp_path, "widgets")

    code, doc = cli(capsys, "plan", str(WIDGETS), *base)
    assert code == 0, doc
    assert "already deployed" in result(doc, "sources.widgets")["plan"]["reason"]
    code, doc = cli(capsys, "run", str(WIDGETS), *base, "--release-id", "20260101T000002Z")
    assert code == 0 and {r["status"] for r in doc["results"]} == {"ok"}
    assert releases(sshd_fleet, tmp_path, "widgets") == first

    v2 = tgz({"index.html": "<div>widgets v2</div>", "js/widget.js": "w(1)", "css/w.css": "a{}"})
    s3.put_object(Bucket=bucket, Key=key, Body=v2, ChecksumAlgorithm="SHA256")
    saved = str(tmp_path / "plan.json")
    code, doc = cli(capsys, "plan", str(WIDGETS), *base, "--release-id", "20260101T000003Z", "-o", saved)
    assert code == 2
    assert f"{sha256(v1)} → {sha256(v2)}" in result(doc, "sources.widgets")["plan"]["reason"]
    for h in sshd_fleet:  # the dry run already shows the per-file diff of the new bundle
        sync = result(doc, "sync", h.name)
        items = [tuple(i) for d in sync["plan"]["diffs"] for i in d["items"] if i[0] in "+~-"]
        assert ("~", "index.html") in items and ("~", "js/widget.js") not in items
    code, doc = cli(
        capsys, "apply", saved, "--state-dir", str(tmp_path / "state"), "--format", "json"
    )  # the reviewed plan
    assert code == 0, doc
    for h in sshd_fleet:
        root = app_root(h, tmp_path, "widgets")
        assert (root / "current" / "index.html").read_text() == "<div>widgets v2</div>"
        assert (root / "flushes").read_text() == "flushed\nflushed\n"

    # bytes swapped in the server's storage, checksum and ETag untouched: nothing reaches a host
    v3 = tgz({"index.html": "<div>widgets v3</div>"})
    evil = tgz({"index.html": "<script>evil()</script>"})
    s3.put_object(Bucket=bucket, Key=key, Body=v3, ChecksumAlgorithm="SHA256")
    MotoServer.backend("s3").buckets[bucket].keys[key].value = evil
    before = releases(sshd_fleet, tmp_path, "widgets")
    code, doc = cli(capsys, "run", str(WIDGETS), *base, "--release-id", "20260101T000004Z")
    assert code == 1
    src = result(doc, "sources.widgets")
    assert src["status"] == "failed"
    assert sha256(v3) in src["message"] and sha256(evil) in src["message"] and key in src["message"]
    assert {r["status"] for r in doc["results"] if r["host"]} == {"skipped"}
    assert releases(sshd_fleet, tmp_path, "widgets") == before
    for h in sshd_fleet:
        root = app_root(h, tmp_path, "widgets")
        assert (root / "current" / "index.html").read_text() == "<div>widgets v2</div>"
        assert (root / "flushes").read_text() == "flushed\nflushed\n"
    assert history(tmp_path / "state", "deploy-widgets", "widgets")[-1]["digest"] == sha256(v2)


def publish(verdaccio, tmp_path: Path, name: str, version: str, files: dict[str, str]) -> str:
    pkg = tmp_path / f"pkg-{uuid.uuid4().hex[:6]}"
    pkg.mkdir()
    (pkg / "package.json").write_text(json.dumps({"name": name, "version": version}))
    for rel, text in files.items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_text(text)
    verdaccio.publish(pkg)
    return verdaccio.packument(name)["versions"][version]["dist"]["integrity"]


def test_templates_from_npm_with_the_1_0_0_republish(sshd_fleet, verdaccio, tmp_path, capsys, monkeypatch):
    name = f"@seed/templates-{uuid.uuid4().hex[:8]}"
    token = verdaccio.add_user("templates-ci")
    monkeypatch.setenv("TEMPLATES_TEST_TOKEN", token)
    a = publish(verdaccio, tmp_path, name, "1.0.0", {"base.html": "<html>A</html>", "parts/nav.html": "<nav/>"})
    base = fleet_setup(sshd_fleet, tmp_path, "templates_root", "templates") + [
        "-e",
        f"templates_package={name}",
        "-e",
        f"npm_registry={verdaccio.url}",
        "-e",
        "npm_token_env=TEMPLATES_TEST_TOKEN",
    ]

    code, doc = cli(capsys, "run", str(TEMPLATES), *base, "--release-id", "20260101T000001Z")
    assert code == 0, doc
    assert result(doc, "sources.templates")["outputs"]["integrity"] == a
    for h in sshd_fleet:
        root = app_root(h, tmp_path, "templates")
        assert (root / "current" / "base.html").read_text() == "<html>A</html>"
        assert (root / "current" / "package.json").exists() and not (root / "current" / "package").exists()
    code, doc = cli(capsys, "plan", str(TEMPLATES), *base)
    assert code == 0, doc
    assert token not in json.dumps(doc)

    # CI republishes 1.0.0 with other bytes
    verdaccio.unpublish(f"{name}@1.0.0")
    b = publish(verdaccio, tmp_path, name, "1.0.0", {"base.html": "<html>B</html>", "parts/nav.html": "<nav/>"})
    assert a != b
    code, doc = cli(capsys, "plan", str(TEMPLATES), *base)
    assert code == 2
    assert result(doc, "sources.templates")["plan"]["reason"] == f"{name} 1.0.0 republished: {a} → {b}"
    code, doc = cli(capsys, "run", str(TEMPLATES), *base, "--release-id", "20260101T000002Z")
    assert code == 0, doc
    for h in sshd_fleet:
        root = app_root(h, tmp_path, "templates")
        assert (root / "current" / "base.html").read_text() == "<html>B</html>"
        assert (root / "flushes").read_text() == "flushed\nflushed\n"
    code, doc = cli(capsys, "plan", str(TEMPLATES), *base)
    assert code == 0, doc
    assert [e["digest"] for e in history(tmp_path / "state", "deploy-templates", "templates")] == [a, b]

    # pinned integrity: the republish is an error, nothing deployed
    code, doc = cli(capsys, "plan", str(TEMPLATES), *base, "-e", f"templates_integrity={a}")
    assert code == 1
    msg = result(doc, "sources.templates")["message"]
    assert a in msg and b in msg

    # the tarball replaced in the registry's storage behind its back
    verdaccio.unpublish(f"{name}@1.0.0")
    c = publish(verdaccio, tmp_path, name, "1.0.0", {"base.html": "<html>C</html>"})
    evil = tgz(
        {"package.json": json.dumps({"name": name, "version": "1.0.0"}), "base.html": "<script>x</script>"},
        prefix="package/",
    )
    verdaccio.tarball_path(name, "1.0.0").write_bytes(evil)
    before = releases(sshd_fleet, tmp_path, "templates")
    code, doc = cli(capsys, "run", str(TEMPLATES), *base, "--release-id", "20260101T000003Z")
    assert code == 1
    msg = result(doc, "sources.templates")["message"]
    evil_sri = "sha512-" + base64.b64encode(hashlib.sha512(evil).digest()).decode()
    assert c in msg and evil_sri in msg and name in msg
    assert {r["status"] for r in doc["results"] if r["host"]} == {"skipped"}
    assert releases(sshd_fleet, tmp_path, "templates") == before
    for h in sshd_fleet:
        assert (app_root(h, tmp_path, "templates") / "current" / "base.html").read_text() == "<html>B</html>"


def keep_two(path: Path, tmp_path: Path) -> Path:
    """A copy of a shipped playbook that keeps only two releases, so a third deploy removes one."""
    text = path.read_text()
    assert "keep: 5" in text
    copy = tmp_path / path.name
    copy.write_text(text.replace("keep: 5", "keep: 2"))
    return copy


def current(host, tmp_path: Path, app: str) -> str:
    return os.readlink(app_root(host, tmp_path, app) / "current")


def test_rollback_rebuilds_a_removed_widgets_release_from_its_s3_version(sshd_fleet, moto_s3, tmp_path, capsys):
    s3 = boto3.client("s3", endpoint_url=moto_s3)
    bucket = f"widgets-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=bucket)
    s3.put_bucket_versioning(Bucket=bucket, VersioningConfiguration={"Status": "Enabled"})
    key = "widgets/widgets.tar.gz"
    pb = keep_two(WIDGETS, tmp_path)
    base = fleet_setup(sshd_fleet, tmp_path, "widgets_root", "widgets") + [
        "-e",
        f"widgets_bucket={bucket}",
        "-e",
        f"s3_endpoint_url={moto_s3}",
        "-e",
        f"widgets_key={key}",
    ]
    bundles = {}
    for n in (1, 2, 3):
        bundles[n] = tgz({"index.html": f"<div>widgets v{n}</div>", "js/widget.js": "w(1)"})
        s3.put_object(Bucket=bucket, Key=key, Body=bundles[n], ChecksumAlgorithm="SHA256")
        code, doc = cli(capsys, "run", str(pb), *base, "--release-id", f"20260201T00000{n}Z")
        assert code == 0, doc
    assert set(map(tuple, releases(sshd_fleet, tmp_path, "widgets").values())) == {
        ("20260201T000002Z", "20260201T000003Z")
    }  # keep: 2 removed the first release everywhere

    # the controller's cache is gone and the key now holds other bytes: only the S3 version recorded
    # for the first release can give its bytes back
    import shutil

    shutil.rmtree(tmp_path / "state" / "cache")
    s3.put_object(Bucket=bucket, Key=key, Body=tgz({"index.html": "v4"}), ChecksumAlgorithm="SHA256")
    code, doc = cli(capsys, "rollback", str(pb), *base, "--to", "20260201T000001Z", "--plan")
    assert code == 2, doc
    assert "fetched again" in result(doc, "sources.widgets")["plan"]["reason"]
    for h in sshd_fleet:
        step = result(doc, "rollback_sync", h.name)
        assert "no longer on this host" in step["plan"]["reason"] and "rebuild" in step["plan"]["reason"]
        items = [tuple(i) for d in step["plan"]["diffs"] for i in d["items"]]
        assert ("~", "index.html") in items and ("->", "current -> releases/20260201T000001Z") in items
        assert current(h, tmp_path, "widgets") == "releases/20260201T000003Z"  # --plan changed nothing

    code, doc = cli(capsys, "rollback", str(pb), *base, "--to", "20260201T000001Z")
    assert code == 0, doc
    for h in sshd_fleet:
        assert result(doc, "rollback_sync", h.name)["outputs"]["rebuilt"] is True
        root = app_root(h, tmp_path, "widgets")
        assert current(h, tmp_path, "widgets") == "releases/20260201T000001Z"
        assert (root / "current" / "index.html").read_text() == "<div>widgets v1</div>"
        assert (root / "flushes").read_text() == "flushed\n" * 4  # three deploys, then the rollback's flush
    assert history(tmp_path / "state", "deploy-widgets", "widgets")[-1]["digest"] == sha256(bundles[1])

    # back to the newest release (a default rollback would go back from it, the newest live one):
    # still on every host, so only `current` moves. The first host is already there (switched by
    # hand): nothing moves there, so its cache is not flushed either
    first = list(sshd_fleet)[0]
    link = app_root(first, tmp_path, "widgets") / "current"
    os.symlink("releases/20260201T000003Z", str(link) + ".tmp")
    os.replace(str(link) + ".tmp", link)
    code, doc = cli(capsys, "rollback", str(pb), *base, "--to", "20260201T000003Z")
    assert code == 0, doc
    for h in sshd_fleet:
        assert result(doc, "rollback_sync", h.name)["outputs"]["rebuilt"] is False
        assert (app_root(h, tmp_path, "widgets") / "current" / "index.html").read_text() == "<div>widgets v3</div>"
        flushed = (app_root(h, tmp_path, "widgets") / "flushes").read_text()
        assert flushed == "flushed\n" * (4 if h is first else 5), (h.name, flushed)
    assert result(doc, "rollback_flush_cache", first.name)["status"] == "ok"


def test_rollback_of_templates_from_the_cache_and_when_the_bytes_are_gone(
    sshd_fleet, verdaccio, tmp_path, capsys, monkeypatch
):
    name = f"@seed/templates-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("TEMPLATES_TEST_TOKEN", verdaccio.add_user("templates-rb"))
    pb = keep_two(TEMPLATES, tmp_path)
    base = fleet_setup(sshd_fleet, tmp_path, "templates_root", "templates") + [
        "-e",
        f"templates_package={name}",
        "-e",
        f"npm_registry={verdaccio.url}",
        "-e",
        "npm_token_env=TEMPLATES_TEST_TOKEN",
    ]
    integrity = {}
    for n, text in enumerate(("A", "B", "C"), start=1):  # CI republishes 1.0.0 every time
        if n > 1:
            verdaccio.unpublish(f"{name}@1.0.0")
        integrity[text] = publish(verdaccio, tmp_path, name, "1.0.0", {"base.html": f"<html>{text}</html>"})
        code, doc = cli(capsys, "run", str(pb), *base, "--release-id", f"20260301T00000{n}Z")
        assert code == 0, doc
    first = "20260301T000001Z"
    assert all(first not in r for r in releases(sshd_fleet, tmp_path, "templates").values())

    # 1.0.0 is C in the registry now; A's bytes come from the controller's cache, by integrity
    code, doc = cli(capsys, "rollback", str(pb), *base, "--to", first)
    assert code == 0, doc
    assert "from the controller's cache" in result(doc, "sources.templates")["plan"]["reason"]
    for h in sshd_fleet:
        assert (app_root(h, tmp_path, "templates") / "current" / "base.html").read_text() == "<html>A</html>"
    code, doc = cli(capsys, "rollback", str(pb), *base)  # nothing is older than the live A
    assert code == 1 and "is older than the live 20260301T000001Z" in doc["stderr"], doc
    code, doc = cli(capsys, "rollback", str(pb), *base, "--to", "20260301T000003Z")  # back to C: a switch
    assert code == 0, doc

    # A's bytes are nowhere now (cache emptied, registry serves C as 1.0.0), and the last host has
    # lost the release: that host cannot be rolled back, so no host is, and the refusal says why
    import shutil

    shutil.rmtree(tmp_path / "state" / "cache")
    last = list(sshd_fleet)[-1]
    shutil.rmtree(app_root(last, tmp_path, "templates") / "releases" / first)
    code, doc = cli(capsys, "rollback", str(pb), *base, "--to", first)
    assert code == 1, doc
    err = doc["stderr"]
    assert "1 host(s) cannot be rolled back, so nothing was changed on any host" in err, err
    (failed,) = [line for line in err.splitlines() if line.startswith("  ")]
    assert failed.startswith(f"  {last.name}  rollback_sync: failed")
    assert "cannot be rebuilt" in failed and integrity["A"] in failed
    assert integrity["C"] in failed  # what the registry serves instead
    for h in sshd_fleet:
        assert current(h, tmp_path, "templates") == "releases/20260301T000003Z"
    assert (app_root(last, tmp_path, "templates") / "current" / "base.html").read_text() == "<html>C</html>"

    # the hosts that still have it, with --limit: they switch, the last one keeps its live release
    code, doc = cli(capsys, "rollback", str(pb), *base, "--to", first, "--limit", f"!{last.name}")
    assert code == 0, doc
    src = result(doc, "sources.templates")
    assert src["status"] == "ok" and src["outputs"]["available"] is False
    for h in list(sshd_fleet)[:-1]:
        assert result(doc, "rollback_sync", h.name)["status"] == "changed"
        assert current(h, tmp_path, "templates") == f"releases/{first}"
    assert current(last, tmp_path, "templates") == "releases/20260301T000003Z"


def test_a_rollback_renders_with_every_output_the_target_recorded(sshd_fleet, verdaccio, tmp_path, capsys, monkeypatch):
    """npm `version`/`integrity` and the release name, as the release being returned to recorded
    them, reach the cache flush after the switch; nothing in the rollback's history is None."""
    name = f"@seed/templates-{uuid.uuid4().hex[:8]}"
    monkeypatch.setenv("TEMPLATES_TEST_TOKEN", verdaccio.add_user("templates-out"))
    base = fleet_setup(sshd_fleet, tmp_path, "templates_root", "templates") + [
        "-e",
        f"templates_package={name}",
        "-e",
        f"npm_registry={verdaccio.url}",
        "-e",
        "npm_token_env=TEMPLATES_TEST_TOKEN",
    ]
    pb = tmp_path / "templates.yml"
    step = 'command: "{{ cache_flush_command }}"'
    pb.write_text(
        TEMPLATES.read_text().replace(
            step,
            "command: [sh, -c, 'echo {{ sources.templates.version }} {{ sources.templates.integrity }}"
            " {{ steps.sync.release_name }} >> {{ templates_root }}/flushes']",
        )
    )
    integrity = {}
    for n, text in enumerate(("A", "B"), start=1):  # 1.0.0 republished
        if n > 1:
            verdaccio.unpublish(f"{name}@1.0.0")
        integrity[text] = publish(verdaccio, tmp_path, name, "1.0.0", {"base.html": f"<html>{text}</html>"})
        code, doc = cli(capsys, "run", str(pb), *base, "--release-id", f"20260401T00000{n}Z")
        assert code == 0, doc
    first = "20260401T000001Z"
    code, doc = cli(capsys, "rollback", str(pb), *base)
    assert code == 0, doc
    for h in sshd_fleet:
        root = app_root(h, tmp_path, "templates")
        assert current(h, tmp_path, "templates") == f"releases/{first}"
        assert (root / "current" / "base.html").read_text() == "<html>A</html>"
        assert (root / "flushes").read_text().splitlines()[-1] == f"1.0.0 {integrity['A']} {first}"
    src = result(doc, "sources.templates")["outputs"]
    assert (src["version"], src["integrity"], src["digest"]) == ("1.0.0", integrity["A"], integrity["A"])
    code, shown = cli(
        capsys, "history", "--state-dir", str(tmp_path / "state"), "--run", doc["run_id"], "--format", "json"
    )
    assert code == 0
    values = [v for r in shown["results"] for v in r["outputs"].values()] + [r["message"] for r in shown["results"]]
    assert None not in values and not any("None" in str(v) for v in values), shown["results"]
    assert shown["run"]["release_id"] == first and shown["run"]["status"] == "ok"
