"""A playbook or inventory that validated cleanly is not validated again until it, or a schema,
changes; invalid content is validated (and reported) every time."""

from __future__ import annotations

import os
import textwrap

import pytest

from engine.errors import PlaybookError
from engine.load import inventory as inventory_loader
from engine.load import playbook as loader
from engine.load import validcache

PLAYBOOK = """\
    name: demo
    fleets:
      web: {hosts: web}
    steps:
      - id: hello
        module: command
        fleet: web
        args: {argv: [echo, hi]}
    """


@pytest.fixture
def counted(monkeypatch, tmp_path):
    monkeypatch.setenv("PLAYBOOK_CACHE_DIR", str(tmp_path / "cache"))
    calls = []
    real = loader.schema_errors

    def counting(*a, **kw):
        calls.append(1)
        return real(*a, **kw)

    monkeypatch.setattr(loader, "schema_errors", counting)
    monkeypatch.setattr(inventory_loader, "schema_errors", counting)
    return calls


def write(path, text):
    path.write_text(textwrap.dedent(text))
    return str(path)


def test_a_clean_playbook_is_validated_once(counted, tmp_path):
    path = write(tmp_path / "pb.yml", PLAYBOOK)
    first = loader.load_playbook(path)
    assert counted and len(os.listdir(validcache.cache_dir())) == 1
    counted.clear()
    again = loader.load_playbook(path)
    assert counted == [] and again.steps == first.steps
    write(tmp_path / "pb.yml", PLAYBOOK.replace("echo, hi", "echo, ho"))  # edited: validated again
    loader.load_playbook(path)
    assert counted and len(os.listdir(validcache.cache_dir())) == 2


def test_invalid_content_is_reported_every_time_and_never_remembered(counted, tmp_path):
    path = write(tmp_path / "pb.yml", PLAYBOOK.replace("args: {argv: [echo, hi]}", "args: {argv: [echo], bogus: 1}"))
    for _ in range(2):
        with pytest.raises(PlaybookError, match="unknown argument 'bogus'"):
            loader.load_playbook(path)
    assert not os.path.exists(validcache.cache_dir()) or os.listdir(validcache.cache_dir()) == []


def test_a_changed_schema_validates_again(counted, tmp_path, monkeypatch):
    path = write(tmp_path / "pb.yml", PLAYBOOK)
    loader.load_playbook(path)
    stricter = dict(loader.playbook_schema(with_modules=False))
    stricter["required"] = [*stricter.get("required", []), "description"]  # a new version demands more
    monkeypatch.setattr(loader, "playbook_schema", lambda **kw: stricter)
    with pytest.raises(PlaybookError, match="description"):
        loader.load_playbook(path)


def test_inventory_too(counted, tmp_path):
    path = write(
        tmp_path / "inv.yml",
        """\
        hosts:
          web1: {address: 127.0.0.1}
        groups:
          web: {hosts: [web1]}
        """,
    )
    inventory_loader.load_inventory(path)
    counted.clear()
    assert list(inventory_loader.load_inventory(path).hosts) == ["web1"] and counted == []
