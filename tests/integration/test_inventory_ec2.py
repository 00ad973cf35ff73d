"""Dynamic inventory against moto's EC2 in server mode on 127.0.0.1, driven by boto3.

EC2 instances created by tag appear as hosts in the right groups, merged with the static
hosts, groups and vars of the inventory file; the query is made once per run.
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest

from engine.errors import PlaybookError
from engine.load.ec2 import DynamicInventoryError, clear_cache
from engine.load.inventory import load_inventory
from engine.model.hostvars import merged_vars
from engine.model.patterns import select_hosts

boto3 = pytest.importorskip("boto3")
pytest.importorskip("moto.server")

REGION = "eu-west-1"


@pytest.fixture(scope="module")
def moto_ec2(tmp_path_factory):
    """moto on loopback with fake credentials; yields (endpoint, boto3 EC2 client)."""
    from tests.harness.moto import MotoServer, fake_aws_env

    with MotoServer() as server, fake_aws_env(tmp_path_factory.mktemp("aws"), region=REGION):
        yield server.endpoint, boto3.client("ec2", region_name=REGION, endpoint_url=server.endpoint)


@pytest.fixture
def fleet(moto_ec2):
    """Five instances tagged by role and env (one stopped); terminated afterwards."""
    endpoint, ec2 = moto_ec2
    ami = ec2.describe_images()["Images"][0]["ImageId"]
    made = []

    def launch(name: str, role: str, env: str) -> str:
        tags = [{"Key": "Name", "Value": name}, {"Key": "role", "Value": role}, {"Key": "env", "Value": env}]
        iid = ec2.run_instances(
            ImageId=ami, MinCount=1, MaxCount=1, TagSpecifications=[{"ResourceType": "instance", "Tags": tags}]
        )["Instances"][0]["InstanceId"]
        made.append(iid)
        return iid

    ids = {
        name: launch(name, role, env)
        for name, role, env in [
            ("web-1", "web", "prod"),
            ("web-2", "web", "prod"),
            ("db-1", "db", "prod"),
            ("web-9", "web", "staging"),
            ("old-web", "web", "prod"),
        ]
    }
    ec2.stop_instances(InstanceIds=[ids["old-web"]])
    clear_cache()
    yield endpoint, ec2, ids
    ec2.terminate_instances(InstanceIds=made)
    clear_cache()


def _inventory(tmp_path: Path, endpoint: str, extra: str = "", source: str = "") -> Path:
    p = tmp_path / "inventory.yml"
    p.write_text(
        textwrap.dedent("""\
        defaults: {user: deploy}
        vars: {app: shop}
        hosts:
          bastion: {address: 10.9.9.9}
          web-2:                      # a dynamic host pinned by name: the file's settings win
            port: 2222
            vars: {weight: 5}
        groups:
          prod:
            children: [role_web]      # a dynamic group as a child of a static one
            vars: {stage: production}
          canary:
            hosts: [web-1]            # a dynamic host listed by name
          role_db:
            vars: {backup: true}      # vars for a dynamic group
        """)
        + extra
        + textwrap.dedent(f"""\
        dynamic:
          - aws_ec2:
              regions: [{REGION}]
              filters: {{"tag:env": prod}}
              group_by_tags: [role, "{{{{ tags.env }}}}_servers"]
              name: "{{{{ tags.Name }}}}"
              endpoint_url: {endpoint}
              defaults: {{user: ec2-user}}
              vars: {{from_ec2: true}}
        """)
        + source
    )
    return p


def test_instances_by_tag_are_hosts_in_the_right_groups(tmp_path, fleet):
    endpoint, _ec2, ids = fleet
    inv = load_inventory(str(_inventory(tmp_path, endpoint)))
    assert list(inv.hosts) == ["bastion", "web-2", "web-1", "db-1"]  # static order, then dynamic by name
    assert "web-9" not in inv.hosts  # staging: filtered out by tag
    assert "old-web" not in inv.hosts  # stopped: only running instances by default
    assert inv.groups["role_web"].hosts == ("web-1", "web-2")
    assert inv.groups["role_db"].hosts == ("db-1",)
    assert inv.groups["prod_servers"].hosts == ("db-1", "web-1", "web-2")
    assert select_hosts(inv, "prod") == ["web-2", "web-1"]
    assert select_hosts(inv, "canary") == ["web-1"]
    assert select_hosts(inv, "prod_servers:!role_web") == ["db-1"]
    web1 = inv.hosts["web-1"]
    assert web1.user == "ec2-user" and web1.port == 22
    assert web1.address.startswith("10.")
    assert web1.vars["ec2"]["instance_id"] == ids["web-1"]
    assert web1.vars["ec2"]["tags"]["role"] == "web"
    assert set(web1.groups) == {"canary", "role_web", "prod_servers"}


def test_static_vars_and_settings_merge(tmp_path, fleet):
    endpoint, _ec2, _ids = fleet
    inv = load_inventory(str(_inventory(tmp_path, endpoint)))
    web2 = inv.hosts["web-2"]
    assert web2.port == 2222 and web2.user == "ec2-user" and web2.address.startswith("10.")
    values, origin = merged_vars(inv, "web-2")
    assert values["weight"] == 5 and origin["weight"] == "host web-2"
    assert values["stage"] == "production" and origin["stage"] == "group prod"
    assert values["from_ec2"] is True and values["app"] == "shop"
    db_vars, db_origin = merged_vars(inv, "db-1")
    assert db_vars["backup"] is True and db_origin["backup"] == "group role_db"
    assert inv.hosts["bastion"].user == "deploy"


def test_address_and_default_names(tmp_path, fleet):
    endpoint, _ec2, ids = fleet
    p = tmp_path / "inv.yml"
    p.write_text(
        textwrap.dedent(f"""\
        dynamic:
          - aws_ec2:
              regions: [{REGION}]
              filters: {{"tag:role": db}}
              address: private_dns
              endpoint_url: {endpoint}
        """)
    )
    inv = load_inventory(str(p))
    assert list(inv.hosts) == [ids["db-1"]]  # named by instance id by default
    assert inv.hosts[ids["db-1"]].address.endswith(".internal")


def test_queried_once_per_run(tmp_path, fleet):
    endpoint, ec2, ids = fleet
    path = str(_inventory(tmp_path, endpoint))
    assert "db-1" in load_inventory(path).hosts
    ec2.terminate_instances(InstanceIds=[ids["db-1"]])
    assert "db-1" in load_inventory(path).hosts  # the same run sees the same fleet
    clear_cache()
    assert "db-1" not in load_inventory(path).hosts


def test_disk_cache_with_ttl(tmp_path, fleet, monkeypatch):
    endpoint, ec2, ids = fleet
    monkeypatch.setenv("PLAYBOOK_STATE_DIR", str(tmp_path / "state"))
    p = tmp_path / "inv.yml"
    p.write_text(
        textwrap.dedent(f"""\
        dynamic:
          - aws_ec2: {{regions: [{REGION}], name: "{{{{ tags.Name }}}}", endpoint_url: "{endpoint}", cache_ttl: 600}}
        """)
    )
    assert "web-9" in load_inventory(str(p)).hosts
    cached = list((tmp_path / "state" / "inventory-cache").glob("aws_ec2-*.json"))
    assert len(cached) == 1 and json.loads(cached[0].read_text())["instances"]
    ec2.terminate_instances(InstanceIds=[ids["web-9"]])
    clear_cache()  # a new run within the TTL reads the disk cache
    assert "web-9" in load_inventory(str(p)).hosts


def test_static_only_load_does_not_query(tmp_path, fleet):
    _endpoint, _ec2, _ids = fleet
    inv = load_inventory(str(_inventory(tmp_path, "http://127.0.0.1:9")), dynamic=False)
    assert list(inv.hosts) == ["bastion", "web-2", "web-1"]
    assert inv.groups["role_web"].hosts == ()  # a placeholder until the source is read


def test_cli_list_and_show_dynamic_hosts(tmp_path, fleet, capsys):
    endpoint, _ec2, _ids = fleet
    from tests.engine.cli.test_inventory import cli

    path = str(_inventory(tmp_path, endpoint))
    assert cli("-i", path, "list", "prod", "--format", "json") == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == ["web-2", "web-1"]
    assert cli("-i", path, "show", "web-1", "--format", "json") == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["vars"]["from_ec2"] == {"value": True, "from": "host web-1"}


def test_edit_of_a_dynamic_inventory_does_not_query(tmp_path, fleet):
    from engine.load.inventory_edit import add_group

    path = _inventory(tmp_path, "http://127.0.0.1:9")  # nothing listens there
    add_group(str(path), "web_all", children=["role_web"])
    assert load_inventory(str(path), dynamic=False).groups["web_all"].children == ("role_web",)


def test_no_credentials_is_a_clear_error(tmp_path, fleet, monkeypatch):
    endpoint, _ec2, _ids = fleet
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(DynamicInventoryError, match="no AWS credentials found") as info:
        load_inventory(str(_inventory(tmp_path, endpoint)))
    assert "dynamic[0].aws_ec2" in str(info.value)


def test_duplicate_names_are_an_error(tmp_path, fleet):
    endpoint, _ec2, _ids = fleet
    p = tmp_path / "inv.yml"
    p.write_text(
        textwrap.dedent(f"""\
        dynamic:
          - aws_ec2: {{regions: [{REGION}], name: "{{{{ tags.role }}}}", endpoint_url: "{endpoint}"}}
        """)
    )
    with pytest.raises(DynamicInventoryError, match="would both be host 'web'"):
        load_inventory(str(p))


def test_bad_source_is_a_located_schema_error(tmp_path):
    p = tmp_path / "inv.yml"
    p.write_text("dynamic:\n  - aws_ec2:\n      regions: [eu-west-1]\n      adress: public_ip\n")
    with pytest.raises(PlaybookError, match=r"inv.yml:4:7 .*unknown key 'adress' \(did you mean 'address'\?\)"):
        load_inventory(str(p))
