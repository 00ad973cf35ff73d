"""`when: steps.X.changed` after a `canary_switch` step, against the real kube-apiserver (issue 15,
item 3): it used to fail at run time, after the image was deployed, because canary_switch has no
`changed` output of its own; the engine now gives every step one."""

from __future__ import annotations

from pathlib import Path

import yaml

from tests.integration.test_canary import PLAYBOOK, B, canary, cli, results  # noqa: F401  (the fixture)


def test_a_step_after_the_deploy_runs_only_when_it_changed(canary, capsys, tmp_path):  # noqa: F811
    _ns, _core, _apps, base = canary
    marker = tmp_path / "announced"
    doc = yaml.safe_load(Path(PLAYBOOK).read_text())
    doc["steps"].append(
        {
            "id": "announce",
            "module": "command",
            "fleet": "canary",
            "when": "steps.canary.changed",
            "args": {"argv": ["sh", "-c", 'echo "$1" >> "$2"', "sh", "{{ steps.canary.image }}", str(marker)]},
        }
    )
    pb = tmp_path / "canary.yml"
    pb.write_text(yaml.safe_dump(doc, sort_keys=False))
    deploy = ["-e", "canary_colour=green", "-e", f"canary_image={B}", "-e", "rollout_timeout=60"]

    assert cli(capsys, "validate", str(pb), "-i", base[1])[0] == 0
    code, doc = cli(capsys, "run", str(pb), *base, *deploy)
    assert code == 0, doc
    assert results(doc)["announce"]["status"] == "changed", doc
    assert marker.read_text() == f"{B}\n"

    code, doc = cli(capsys, "run", str(pb), *base, *deploy)  # nothing to change: no announcement
    assert code == 0, doc
    assert results(doc)["canary"]["status"] == "ok" and results(doc)["announce"]["status"] == "skipped", doc
    assert marker.read_text() == f"{B}\n"
