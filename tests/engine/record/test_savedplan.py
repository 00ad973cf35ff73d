"""Saved plan files: the hash covers every field, the key policy, old formats, drift by diffs."""

from __future__ import annotations

import json

import pytest

from engine.errors import LoadError, UntrustedPlan
from engine.model.results import Change, Diff, Plan, RunSummary, Status, StepResult
from engine.record.plansign import plan_key
from engine.record.savedplan import FORMAT, drift, load_plan, node_drift, plan_hash, save_plan
from engine.secrets import SCRUBBER

KEY = "k" * 32


def summary() -> RunSummary:
    s = RunSummary(run_id="r1", playbook="pb.yml", mode="plan", hosts=["h1"], steps=["sync"])
    diff = Diff(header="/srv/app", items=(("+", "a.php"), ("~", "b.php")))
    plan = Plan(Change.WILL_CHANGE, "2 to update", diffs=(diff,), fingerprint={"current": None})
    s.results.append(StepResult("sync", "h1", Status.CHANGED, "2 to update", plan=plan))
    return s


@pytest.fixture
def files(tmp_path):
    pb, inv = tmp_path / "pb.yml", tmp_path / "inv.yml"
    pb.write_text("name: x\n")
    inv.write_text("hosts: {}\n")
    return pb, inv


def write(tmp_path, files, key=None, **kw):
    pb, inv = files
    path = tmp_path / "plan.json"
    save_plan(
        str(path),
        kw.pop("summary", None) or summary(),
        playbook=str(pb),
        inventory=str(inv),
        extra_vars=kw.pop("extra_vars", {"root": "/srv", "pw": "hunter2-secret"}),
        secret_names={"pw"},
        limit=None,
        release_id="REL1",
        scrubber=SCRUBBER,
        key=key,
    )
    return path


def test_every_field_is_covered_by_the_hash(tmp_path, files):
    path = write(tmp_path, files)
    doc = json.loads(path.read_text())
    assert doc["format"] == FORMAT and "pw" not in doc["extra_vars"] and doc["secret_vars"] == ["pw"]
    assert load_plan(str(path)).release_id == "REL1"
    edits = {
        "extra_vars": {"root": "/elsewhere"},
        "secret_vars": [],
        "limit": "h1",
        "release_id": "REL2",
        "playbook": "/other.yml",
        "playbook_hash": "sha256:" + "0" * 64,
        "inventory_hash": "sha256:" + "0" * 64,
        "run_id": "r2",
        "created": 1.0,
    }
    for field, value in edits.items():
        path.write_text(json.dumps(dict(doc, **{field: value})))
        with pytest.raises(UntrustedPlan, match="altered after it was written"):
            load_plan(str(path))
    for edit in (
        lambda n: n["diffs"][0]["items"].pop(),
        lambda n: n["fingerprint"].update(current="releases/x"),
        lambda n: n.update(change="no_change"),
        lambda n: n.update(host="h2"),
    ):
        changed = json.loads(json.dumps(doc))
        edit(changed["nodes"][0])
        path.write_text(json.dumps(changed))
        with pytest.raises(UntrustedPlan, match="altered"):
            load_plan(str(path))


def test_a_secret_value_is_scrubbed_before_hashing(tmp_path, files):
    SCRUBBER.add("hunter2-secret")
    s = summary()
    leaky = Plan(Change.WILL_CHANGE, "", diffs=(Diff(header="cmd", after="token hunter2-secret"),))
    s.results[0] = StepResult("sync", "h1", Status.CHANGED, "", plan=leaky)
    path = write(tmp_path, files, summary=s)
    assert "hunter2-secret" not in path.read_text()
    assert load_plan(str(path)).nodes[("sync", "h1")]["diffs"][0]["after"] == "token ********"


def test_key_policy(tmp_path, files):
    key, other = plan_key({"PLAYBOOK_PLAN_KEY": KEY}), plan_key({"PLAYBOOK_PLAN_KEY": "o" * 32})
    assert key is not None and other is not None and key.key_id != other.key_id
    unsigned = write(tmp_path, files)
    assert load_plan(str(unsigned), key=None).signed_by == ""
    with pytest.raises(UntrustedPlan, match="not signed"):
        load_plan(str(unsigned), key=key)
    signed = write(tmp_path, files, key=key)
    assert load_plan(str(signed), key=key).signed_by == key.key_id
    with pytest.raises(UntrustedPlan, match="another key"):
        load_plan(str(signed), key=other)
    with pytest.raises(UntrustedPlan, match="no key is configured"):
        load_plan(str(signed), key=None)
    doc = json.loads(signed.read_text())
    doc["release_id"] = "REL9"
    doc["plan_hash"] = plan_hash(doc)  # recomputed by whoever edited it
    signed.write_text(json.dumps(doc))
    with pytest.raises(UntrustedPlan, match="signature does not match"):
        load_plan(str(signed), key=key)
    assert KEY not in json.dumps(doc)


def test_key_configuration_errors(tmp_path):
    assert plan_key({}) is None
    with pytest.raises(LoadError, match="only one"):
        plan_key({"PLAYBOOK_PLAN_KEY": KEY, "PLAYBOOK_PLAN_KEY_FILE": "/x"})
    with pytest.raises(LoadError, match="at least 16"):
        plan_key({"PLAYBOOK_PLAN_KEY": "short-key"})
    with pytest.raises(LoadError, match="cannot read"):
        plan_key({"PLAYBOOK_PLAN_KEY_FILE": str(tmp_path / "missing")})
    f = tmp_path / "key"
    f.write_text(KEY + "\n")
    from_file = plan_key({"PLAYBOOK_PLAN_KEY_FILE": str(f)})
    assert from_file is not None and from_file.key_id == plan_key({"PLAYBOOK_PLAN_KEY": KEY}).key_id
    assert KEY not in repr(from_file) and KEY not in str(from_file)


def test_other_formats_and_garbage(tmp_path, files):
    path = write(tmp_path, files)
    doc = json.loads(path.read_text())
    path.write_text(json.dumps(dict(doc, format="playbook-plan/1")))
    with pytest.raises(LoadError, match="plan again"):
        load_plan(str(path))
    for text in ("[]", '{"format": "x"}', "{", '"a string"'):
        path.write_text(text)
        with pytest.raises(LoadError):
            load_plan(str(path))
    bad = dict(doc, nodes=[{"step": "sync"}])
    bad["plan_hash"] = plan_hash(bad)
    path.write_text(json.dumps(bad))
    with pytest.raises(LoadError, match="malformed plan file: no 'host'"):
        load_plan(str(path))


def test_drift_compares_diffs_not_only_fingerprints(tmp_path, files):
    saved = load_plan(str(write(tmp_path, files)))
    fresh = summary()
    assert drift(saved, fresh) == []
    other = Plan(
        Change.WILL_CHANGE,
        "",
        diffs=(Diff(header="/srv/app", items=(("+", "evil.php"),)),),
        fingerprint={"current": None},
    )
    fresh.results[0] = StepResult("sync", "h1", Status.CHANGED, "", plan=other)
    ((host, step, why),) = drift(saved, fresh)
    assert (host, step) == ("h1", "sync")
    assert why == "diff of /srv/app differs: the plan shows + a.php, ~ b.php, a fresh plan shows + evil.php"
    assert node_drift(saved.nodes[("sync", "h1")], other, upstream_changed=False).endswith("shows + evil.php")
    assert node_drift(saved.nodes[("sync", "h1")], other, upstream_changed=True) == ""
