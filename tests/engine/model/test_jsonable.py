"""JSON from outside the process nested past the decoder's recursion is malformed JSON like any
other: a plan file, a lock's info.json written on a host, a registry's answer."""

from __future__ import annotations

from pathlib import Path

import pytest

from engine.cli import main
from engine.execute.locks import LockInfo
from engine.model import jsonable

DEEP = b'{"a": ' + b"[" * 20000 + b"]" * 20000 + b"}"


def test_deep_json_is_a_value_error():
    with pytest.raises(ValueError, match="nested too deeply"):
        jsonable.loads(DEEP)
    assert jsonable.loads(b'{"a": [[1]]}') == {"a": [[1]]}


def test_a_lock_whose_info_is_deep_json_has_an_unknown_holder():
    info = LockInfo.from_json(DEEP, fallback_time=12.0)
    assert info.owner == "unknown" and info.time == 12.0


def test_apply_of_a_deep_json_plan_is_refused(tmp_path: Path, capsys):
    # it was "internal error: RecursionError"
    plan = tmp_path / "plan.json"
    plan.write_bytes(DEEP)
    assert main(["apply", str(plan), "--state-dir", str(tmp_path / "s")]) == 1
    err = capsys.readouterr().err
    assert f"{plan}: not a readable plan file: JSON nested too deeply" in err, err
