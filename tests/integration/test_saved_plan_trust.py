"""A saved plan cannot be altered (issue 14, item 1): against the real sshd fleet and real rsync,
through the CLI. Each edit an attacker (or a careless hand) could make to plan.json is refused
by `playbook apply` with exit 1, a message that says why, and no host touched."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import yaml

from engine.cli import main
from engine.record.savedplan import plan_hash

pytestmark = pytest.mark.fleet

PLAYBOOK = Path(__file__).resolve().parents[2] / "playbooks" / "deploy-smartweb.yml"
KEY = "0f4c2b9e8d7a6b5c4d3e2f1a0b9c8d7e6f5a4b3c2d1e0f9a"
OTHER_KEY = "a9f0e1d2c3b4a5f6e7d8c9b0a1f2e3d4c5b6a7f8e9d0c1b2"


def make_tree(root: Path, n: int = 20) -> None:
    for i in range(n):
        p = root / f"app/f{i:02d}.php"
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(f"<?php // {i}\n")
        os.utime(p, (1_700_000_000, 1_700_000_000))


@pytest.fixture
def setup(fleet_factory, tmp_path, monkeypatch):
    monkeypatch.delenv("PLAYBOOK_PLAN_KEY", raising=False)
    monkeypatch.delenv("PLAYBOOK_PLAN_KEY_FILE", raising=False)
    fleet = fleet_factory(3)
    tree = tmp_path / "tree"
    make_tree(tree)
    inv_path = fleet.write_inventory(tmp_path / "inv.yml")
    inv = yaml.safe_load(inv_path.read_text())
    for host in inv["hosts"].values():
        host["vars"]["app_root"] = f"{host['vars']['root']}/app"
    inv_path.write_text(yaml.safe_dump(inv))
    state = tmp_path / "state"
    flush = json.dumps({"cache_flush_command": ["sh", "-c", "echo flushed >> {{ app_root }}/flushes"]})
    base = ["-i", str(inv_path), "-e", f"smartweb_tree={tree}", "--state-dir", str(state), "-e", flush]
    return fleet, base, state


def plan_to(path: Path, base: list[str], capsys) -> dict:
    assert main(["plan", str(PLAYBOOK), *base, "-o", str(path)]) == 2
    capsys.readouterr()
    return json.loads(path.read_text())


def apply(path: Path, state: Path, capsys) -> tuple[int, str]:
    code = main(["apply", str(path), "--state-dir", str(state)])
    out, err = capsys.readouterr()
    assert "Traceback" not in out + err and "internal error" not in out + err
    return code, err


def untouched(fleet, tmp_path: Path) -> None:
    """Nothing ran anywhere: no release, no flush, no directory the edit pointed at."""
    for h in fleet:
        root = Path(h.data_dir) / "app"
        assert not (root / "current").exists() and not (root / "releases").exists(), h.name
        assert not (root / "flushes").exists()
    assert not (tmp_path / "elsewhere").exists()
    assert not (tmp_path / "PWNED").exists()


def rewrite(path: Path, doc: dict) -> None:
    path.write_text(json.dumps(doc, indent=2))


def test_an_edited_extra_var_is_refused_and_no_host_is_touched(setup, tmp_path, capsys):
    fleet, base, state = setup
    plan = tmp_path / "plan.json"
    doc = plan_to(plan, base, capsys)
    doc["extra_vars"]["app_root"] = str(tmp_path / "elsewhere")  # dest pointed at another directory
    doc["extra_vars"]["cache_flush_command"] = ["sh", "-c", f"touch {tmp_path / 'PWNED'}"]
    rewrite(plan, doc)
    code, err = apply(plan, state, capsys)
    assert code == 1
    assert "refusing to apply" in err and "altered" in err and "plan_hash" in err, err
    untouched(fleet, tmp_path)


def test_an_edited_node_diff_or_release_id_is_refused(setup, tmp_path, capsys):
    fleet, base, state = setup
    plan = tmp_path / "plan.json"
    original = plan_to(plan, base, capsys)

    doc = json.loads(json.dumps(original))
    sync = next(n for n in doc["nodes"] if n["step"] == "sync")
    sync["diffs"][0]["items"] = sync["diffs"][0]["items"][1:]  # one file less shown to the reviewer
    rewrite(plan, doc)
    code, err = apply(plan, state, capsys)
    assert code == 1 and "altered" in err, err

    doc = json.loads(json.dumps(original))
    doc["release_id"] = "20990101T000000Z"
    rewrite(plan, doc)
    code, err = apply(plan, state, capsys)
    assert code == 1 and "altered" in err, err
    untouched(fleet, tmp_path)


def test_a_diff_that_no_longer_matches_the_world_is_refused_naming_host_and_step(setup, tmp_path, capsys):
    """Without a key anyone can recompute the hash: then the re-plan still compares every node's
    change and diffs with the saved ones, not only the fingerprints."""
    fleet, base, state = setup
    plan = tmp_path / "plan.json"
    doc = plan_to(plan, base, capsys)
    host = fleet.names[1]
    sync = next(n for n in doc["nodes"] if n["step"] == "sync" and n["host"] == host)
    sync["diffs"][0]["items"] = [["+", "app/innocent.php"]]
    doc["plan_hash"] = plan_hash(doc)
    rewrite(plan, doc)
    code, err = apply(plan, state, capsys)
    assert code == 1
    lines = [line for line in err.splitlines() if host in line and "sync" in line]
    assert lines and "diff" in lines[0], err
    assert "app/innocent.php" in err
    assert fleet.names[0] not in err.split("refusing")[1].split("\n", 1)[1]  # only that host is listed
    untouched(fleet, tmp_path)


def test_signed_plans(setup, tmp_path, capsys, monkeypatch):
    fleet, base, state = setup
    plan = tmp_path / "plan.json"
    monkeypatch.setenv("PLAYBOOK_PLAN_KEY", KEY)
    signed = plan_to(plan, base, capsys)
    assert signed["signature"]["alg"] == "hmac-sha256" and len(signed["signature"]["value"]) == 64
    assert KEY not in plan.read_text()

    # an attacker without the key edits a var and recomputes the hash: the signature gives it away
    doc = json.loads(json.dumps(signed))
    doc["extra_vars"]["cache_flush_command"] = ["sh", "-c", f"touch {tmp_path / 'PWNED'}"]
    doc["plan_hash"] = plan_hash(doc)
    rewrite(plan, doc)
    code, err = apply(plan, state, capsys)
    assert code == 1 and "signature" in err and "does not match" in err, err

    # ... or strips the signature: unsigned plans are refused while a key is configured
    del doc["signature"]
    rewrite(plan, doc)
    code, err = apply(plan, state, capsys)
    assert code == 1 and "not signed" in err and "PLAYBOOK_PLAN_KEY" in err, err

    # the genuine plan, checked with another key: refused, naming both key ids
    rewrite(plan, signed)
    monkeypatch.setenv("PLAYBOOK_PLAN_KEY", OTHER_KEY)
    code, err = apply(plan, state, capsys)
    assert code == 1 and "another key" in err and signed["signature"]["key_id"] in err, err

    # ... and with no key at all: a signed plan is not applied unverified
    monkeypatch.delenv("PLAYBOOK_PLAN_KEY")
    code, err = apply(plan, state, capsys)
    assert code == 1 and "signed" in err and "no key" in err, err
    untouched(fleet, tmp_path)
    assert KEY not in err and OTHER_KEY not in err

    # the key from a file (a GitLab "File" variable) is the same key: the genuine plan applies
    key_file = tmp_path / "plan.key"
    key_file.write_text(KEY + "\n")
    monkeypatch.setenv("PLAYBOOK_PLAN_KEY_FILE", str(key_file))
    code, err = apply(plan, state, capsys)
    assert code == 0, err
    for h in fleet:
        assert os.readlink(Path(h.data_dir) / "app" / "current") == f"releases/{signed['release_id']}"
    assert not (tmp_path / "PWNED").exists()


def test_an_unsigned_plan_is_refused_when_apply_has_a_key(setup, tmp_path, capsys, monkeypatch):
    fleet, base, state = setup
    plan = tmp_path / "plan.json"
    plan_to(plan, base, capsys)
    monkeypatch.setenv("PLAYBOOK_PLAN_KEY", KEY)
    code, err = apply(plan, state, capsys)
    assert code == 1 and "not signed" in err, err
    untouched(fleet, tmp_path)


def test_an_old_or_broken_plan_file_is_a_clear_refusal(setup, tmp_path, capsys):
    fleet, base, state = setup
    plan = tmp_path / "plan.json"
    doc = plan_to(plan, base, capsys)

    old = dict(doc, format="playbook-plan/1")
    old.pop("signature", None)
    rewrite(plan, old)
    code, err = apply(plan, state, capsys)
    assert code == 1 and "playbook-plan/1" in err and "plan again" in err, err

    plan.write_text(plan.read_text()[:200])  # truncated
    code, err = apply(plan, state, capsys)
    assert code == 1 and "plan.json" in err, err

    broken = {k: v for k, v in doc.items() if k != "nodes"}
    broken["plan_hash"] = plan_hash(broken)
    rewrite(plan, broken)
    code, err = apply(plan, state, capsys)
    assert code == 1 and "nodes" in err, err
    untouched(fleet, tmp_path)
