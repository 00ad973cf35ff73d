"""Loading playbooks and inventories: located errors for broken samples, model objects for good ones.

Each file in data/broken/ (playbooks) and data/broken_inventory/ starts with one comment line per
expected error:  `# error: LINE:COL PATH :: keyword; keyword`  (PATH `-` for none). The test
asserts exactly those errors are raised, at that place, with those words.
"""

from __future__ import annotations

import dataclasses
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest

import engine.module as module_registry
from engine.errors import GraphError, LoadError, Location, PlaybookError, ValidationErrors
from engine.load.inventory import load_inventory
from engine.load.playbook import load_playbook
from engine.load.schemas import inventory_schema, playbook_schema
from engine.model.config import CONTROLLER
from engine.module import all_modules, arg

DATA = Path(__file__).parent / "data"
ROOT = Path(__file__).resolve().parents[3]
_EXPECT = re.compile(r"^# error: (\d+):(\d+) (\S+) :: (.+)$")


@dataclass(frozen=True)
class RsyncArgs:
    src: str = arg(doc="Source tree on the controller.")
    dest: str = arg(doc="Destination directory on the host.")
    delete: bool = arg(False, doc="Delete extraneous files.")
    port: int = arg(22, doc="SSH port.")
    excludes: tuple[str, ...] = arg((), doc="Patterns to exclude.")


class FakeRsync:
    name: ClassVar[str] = "rsync"
    Args: ClassVar[type] = RsyncArgs
    summary: ClassVar[str] = "test double"
    outputs: ClassVar[dict] = {"changed": "whether files changed"}
    controller_only: ClassVar[bool] = False

    def plan(self, ctx, args):  # pragma: no cover - never run here
        raise NotImplementedError

    def apply(self, ctx, plan):  # pragma: no cover
        raise NotImplementedError


@dataclass(frozen=True)
class NotifyArgs:
    text: str = arg(doc="Message.")


class FakeNotify(FakeRsync):
    name: ClassVar[str] = "notify"
    Args: ClassVar[type] = NotifyArgs
    controller_only: ClassVar[bool] = True


@pytest.fixture
def fake_modules(monkeypatch):
    """`rsync` and `notify` test doubles, registered only for the test (the registry is restored)."""
    all_modules()  # import the real modules first
    monkeypatch.setitem(module_registry._REGISTRY, "rsync", FakeRsync())
    monkeypatch.setitem(module_registry._REGISTRY, "notify", FakeNotify())


def _expectations(path: Path) -> list[tuple[int, int, str, list[str]]]:
    out = []
    for line in path.read_text().splitlines():
        m = _EXPECT.match(line)
        if m:
            where = "" if m.group(3) == "-" else m.group(3)
            out.append((int(m.group(1)), int(m.group(2)), where, [w.strip() for w in m.group(4).split(";")]))
    assert out, f"{path.name} has no '# error:' line"
    return out


def _errors(exc: PlaybookError) -> list[PlaybookError]:
    return list(exc.errors) if isinstance(exc, ValidationErrors) else [exc]


def _check(path: Path, loader) -> None:
    expected = _expectations(path)
    with pytest.raises(PlaybookError) as info:
        loader(str(path))
    got = _errors(info.value)
    summary = "\n".join(str(e) for e in got)
    assert len(got) == len(expected), summary
    for (line, col, where, words), err in zip(expected, got):
        assert err.location == Location(str(path), line, col), summary
        assert err.path == where, summary
        for word in words:
            assert word in err.message, f"{word!r} not in {err.message!r}"
        assert str(err).startswith(f"{path}:{line}:{col} "), str(err)


@pytest.mark.parametrize("name", sorted(p.name for p in (DATA / "broken").glob("*.yml")))
def test_broken_playbook(name, fake_modules):
    _check(DATA / "broken" / name, load_playbook)


@pytest.mark.parametrize("name", sorted(p.name for p in (DATA / "broken_inventory").glob("*.yml")))
def test_broken_inventory(name):
    _check(DATA / "broken_inventory" / name, load_inventory)


def test_errors_are_sorted_by_line_and_typed(fake_modules):
    with pytest.raises(ValidationErrors) as info:
        load_playbook(str(DATA / "broken" / "many_errors.yml"))
    lines = [e.location.line for e in info.value.errors]
    assert lines == sorted(lines)
    assert isinstance(info.value, ValueError)
    with pytest.raises(GraphError):
        load_playbook(str(DATA / "broken" / "cycle.yml"))


def test_unreadable_file_is_a_load_error(tmp_path):
    with pytest.raises(LoadError, match="cannot read file"):
        load_playbook(str(tmp_path / "missing.yml"))
    with pytest.raises(LoadError, match=r"not a regular file \(a directory\)"):
        load_inventory(str(tmp_path))
    bad = tmp_path / "latin1.yml"
    bad.write_bytes(b"name: caf\xe9\n")
    with pytest.raises(LoadError, match="not UTF-8"):
        load_playbook(str(bad))


def test_good_playbook_model(fake_modules):
    path = str(DATA / "good" / "full.yml")
    pb = load_playbook(path)
    assert pb.name == "deploy-shop"
    assert pb.inventory == "../inventory.yml"
    assert pb.vars == {"app": "shop", "keep": 3, "ratio": 0.5}
    assert pb.location == Location(path, 2, 1)

    assert list(pb.sources) == ["site"]
    site = pb.sources["site"]
    assert (site.type, site.module, dict(site.args)) == ("local", "local_tree", {"path": "../site"})
    assert site.location == Location(path, 11, 3)

    web, db = pb.fleets["web"], pb.fleets["db"]
    assert (web.hosts, web.serial, web.max_fail_percentage, web.forks) == ("web:!web07", "25%", 20.0, 10)
    assert (db.hosts, db.serial, db.max_fail_percentage, db.forks) == ("db1,db2", 1, None, None)
    assert (web.lock, db.lock) == (True, False)

    assert [s.id for s in pb.steps] == ["sources.site", "migrate", "sync", "announce"]
    source_step = pb.steps[0]
    assert (source_step.module, source_step.fleet, dict(source_step.args)) == (
        "local_tree",
        CONTROLLER,
        {"path": "../site"},
    )
    assert source_step.args_locations == {("path",): Location(path, 13, 11)}

    migrate = pb.step("migrate")
    assert (migrate.fleet, migrate.timeout, migrate.retries, migrate.retry_delay) == ("db", 30.0, 2, 0.5)
    assert migrate.args == {"argv": ["./manage.py", "migrate"], "chdir": "/srv/shop"}
    assert migrate.location == Location(path, 31, 5)
    assert migrate.args_locations[("argv", 1)] == Location(path, 35, 27)

    sync = pb.step("sync")
    assert sync.args == {
        "src": "{{ sources.site.path }}/",
        "delete": True,
        "dest": "/srv/{{ app }}",
        "port": "{{ ssh_port }}",
    }
    assert sync.needs == ("migrate", "sources.site")  # declared first, then inferred
    assert sync.description == "Ship the tree."
    assert sync.args_locations[("dest",)] == Location(path, 48, 13)
    assert sync.args_locations[("src",)] == Location(path, 27, 8)  # merged from the anchor
    assert (sync.timeout, sync.retries, sync.retry_delay) == (None, 0, 1.0)

    announce = pb.step("announce")
    assert announce.fleet == CONTROLLER  # controller-only module, fleet omitted
    assert announce.when == "steps.sync.changed"
    assert announce.needs == ("sources.site", "sync")


def test_minimal_playbook_name_defaults_to_file_stem():
    pb = load_playbook(str(DATA / "good" / "minimal.yml"))
    assert (pb.name, pb.steps, pb.sources, pb.fleets, pb.inventory) == ("minimal", (), {}, {}, None)


def test_good_inventory_model():
    path = str(DATA / "good" / "inventory.yml")
    inv = load_inventory(path)
    here = os.path.dirname(os.path.abspath(path))
    assert list(inv.hosts) == ["web01", "web02", "local1", "db1", "web03"]
    assert list(inv.groups) == ["web", "canary", "db", "web01"]
    assert "all" not in inv.groups
    assert inv.vars == {"app": "shop"}

    web01 = inv.hosts["web01"]
    assert (web01.address, web01.port, web01.user, web01.connection) == ("127.0.0.2", 2222, "deploy", "ssh")
    assert web01.key == os.path.join(here, "keys", "id_ed25519")
    assert web01.known_hosts == os.path.expanduser("~/known_hosts")
    assert web01.groups == ("web", "web01")  # a group may share a host's name
    assert web01.hostname == "127.0.0.2"
    assert web01.location == Location(path, 11, 3)

    web02 = inv.hosts["web02"]
    assert (web02.user, web02.key, web02.port, dict(web02.vars)) == ("root", "/etc/keys/root", 22, {"weight": 2})
    assert inv.hosts["local1"].connection == "local"
    assert inv.hosts["db1"].groups == ("db",)
    web03 = inv.hosts["web03"]  # only listed in groups: gets the defaults
    assert (web03.user, web03.groups, web03.hostname) == ("deploy", ("web", "canary"), "web03")
    assert web03.location == Location(path, 25, 27)

    web = inv.groups["web"]
    assert (web.hosts, web.children, dict(web.vars)) == (("web01", "web02", "web03"), ("canary",), {"role": "web"})
    assert web.location == Location(path, 24, 3)
    assert inv.defaults["key"] == os.path.join(here, "keys", "id_ed25519")


def test_repository_samples_load():
    load_playbook(str(ROOT / "playbooks" / "demo.yml"))
    inv = load_inventory(str(ROOT / "inventory" / "demo.yml"))
    assert inv.hosts["demo-web1"].connection == "local"


def test_200_host_inventory_loads(tmp_path):
    # speed is measured in bench/, not asserted here
    lines = ["defaults: {user: deploy, port: 22}", "hosts:"]
    for i in range(200):
        lines += [f"  web{i:03d}:", f"    address: web{i:03d}.example.invalid", "    vars: {weight: 1, role: web}"]
    lines += ["groups:", "  web:", "    hosts: [" + ", ".join(f"web{i:03d}" for i in range(200)) + "]"]
    path = tmp_path / "big.yml"
    path.write_text("\n".join(lines) + "\n")
    inv = load_inventory(str(path))
    assert len(inv.hosts) == 200
    assert inv.hosts["web199"].address == "web199.example.invalid"
    assert inv.groups["web"].hosts[-1] == "web199"


def test_playbook_schema_describes_each_module(fake_modules):
    schema = playbook_schema()
    step = schema["$defs"]["step"]
    assert "rsync" in step["properties"]["module"]["enum"]
    clause = next(c for c in step["allOf"] if c["if"]["properties"]["module"]["const"] == "rsync")
    args = clause["then"]["properties"]["args"]
    assert args["required"] == ["src", "dest"]
    assert args["properties"]["delete"]["description"] == "Delete extraneous files."
    source = schema["$defs"]["source"]
    local = next(c for c in source["allOf"] if c["if"]["properties"]["type"]["const"] == "local")
    assert "path" in local["then"]["properties"]
    assert set(inventory_schema()["properties"]) == {
        "defaults",
        "vars",
        "hosts",
        "groups",
        "dynamic",
        "notify",
        "state",
    }


def test_schemas_accept_the_good_samples(fake_modules):
    import jsonschema

    from engine.yamlio.document import load_file

    jsonschema.Draft202012Validator.check_schema(playbook_schema())
    jsonschema.Draft202012Validator.check_schema(inventory_schema())

    jsonschema.Draft202012Validator(playbook_schema()).validate(load_file(str(DATA / "good" / "full.yml")).data)
    jsonschema.Draft202012Validator(inventory_schema()).validate(load_file(str(DATA / "good" / "inventory.yml")).data)


def test_steps_are_frozen_models(fake_modules):
    pb = load_playbook(str(DATA / "good" / "full.yml"))
    with pytest.raises(dataclasses.FrozenInstanceError):
        pb.steps[0].id = "x"  # type: ignore[misc]


def test_documented_examples_load(tmp_path):
    """The first example of each format doc is a valid file."""
    for doc, loader in (("playbook-format.md", load_playbook), ("inventory.md", load_inventory)):
        text = (ROOT / "docs" / doc).read_text()
        example = text.split("```yaml\n", 1)[1].split("```", 1)[0]
        path = tmp_path / f"example-{doc}.yml"
        path.write_text(example)
        loader(str(path))


def test_needs_naming_a_source_without_prefix_suggests_it(tmp_path):
    path = tmp_path / "p.yml"
    path.write_text(
        "sources:\n  app: {type: local, path: x}\n"
        "steps:\n  - {id: a, module: command, fleet: controller, needs: [app], args: {argv: [ls]}}\n"
    )
    with pytest.raises(GraphError) as info:
        load_playbook(str(path))
    assert info.value.message == "needs unknown step 'app' (did you mean 'sources.app'?)"
    assert info.value.location == Location(str(path), 4, 57)
