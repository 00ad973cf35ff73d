"""`steps.X.changed` and `only_if_changed: [X]` work for every module (issue 15, item 3): the
engine gives every step a `changed` output (true when it changed something on that host), so a
step after a module that does not report one itself (command, canary_switch, ...) neither fails
at run time nor after the upstream step was applied."""

from __future__ import annotations

import dataclasses

import pytest

from engine.model.config import Step
from engine.model.results import Status
from engine.module import all_modules
from tests.engine.execute.test_scheduler import Fleet_, cmd, execute, inventory, playbook


def _cache_clear(step_id: str, needs: str) -> Step:
    return Step(step_id, "cache_clear", "web", {"command": ["flush"], "only_if_changed": [needs]}, needs=(needs,))


def test_only_if_changed_reads_the_engine_changed_output_of_a_command_step():
    inv = inventory(2)
    fleet = Fleet_(inv)
    fleet.conns["h02"].files["/srv/h02/done"] = b""
    pb = playbook(
        [cmd("mark", argv=["touch", "{{ root }}/done"], creates="{{ root }}/done"), _cache_clear("flush", "mark")]
    )
    _summary, res = execute(pb, inv, fleet, "run")
    assert res[("mark", "h01")].status == Status.CHANGED and res[("mark", "h02")].status == Status.OK
    assert res[("flush", "h01")].status == Status.CHANGED, res[("flush", "h01")].message
    assert res[("flush", "h02")].status == Status.OK and "no change in 'mark'" in res[("flush", "h02")].message
    assert ("run", ("flush",)) in fleet.conns["h01"].calls and ("run", ("flush",)) not in fleet.conns["h02"].calls


def test_when_steps_changed_works_after_a_module_without_its_own_changed_output():
    inv = inventory(2)
    fleet = Fleet_(inv)
    fleet.conns["h02"].files["/srv/h02/done"] = b""
    after = dataclasses.replace(cmd("after", argv=["touch", "/after"], needs=("mark",)), when="steps.mark.changed")
    pb = playbook([cmd("mark", argv=["touch", "{{ root }}/done"], creates="{{ root }}/done"), after])
    _summary, res = execute(pb, inv, fleet, "run")
    assert res[("after", "h01")].status == Status.CHANGED, res[("after", "h01")].message
    assert res[("after", "h02")].status == Status.SKIPPED


def test_a_skipped_step_reports_changed_false():
    inv = inventory(1)
    fleet = Fleet_(inv)
    skipped = dataclasses.replace(cmd("maybe", argv=["touch", "/x"]), when="false")
    after = dataclasses.replace(
        cmd("after", argv=["touch", "/after"], needs=("maybe",)), when="not steps.maybe.changed"
    )
    _summary, res = execute(playbook([skipped, after]), inv, fleet, "run")
    assert res[("maybe", "h01")].status == Status.SKIPPED
    assert res[("after", "h01")].status == Status.CHANGED, res[("after", "h01")].message


@pytest.mark.parametrize("name", sorted(all_modules()))
def test_every_module_documents_changed_as_an_output(name):
    assert "changed" in all_modules()[name].outputs
