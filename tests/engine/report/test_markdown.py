"""Markdown plans for merge requests: grouped hosts, folded diffs, a size limit, no secrets."""

from __future__ import annotations

from engine.model.results import Change, Diff, Plan, RunSummary, Status, StepResult
from engine.report.markdown import plan_markdown
from engine.secrets import Scrubber


def summary(n_hosts: int = 12, files: int = 3, extra_host_diff: bool = True) -> RunSummary:
    hosts = [f"web{i:02d}" for i in range(1, n_hosts + 1)]
    results = []
    same = Diff("/var/www/app", items=tuple(("~", f"wp-content/f{i}.php") for i in range(files)))
    for h in hosts:
        diff = same
        if extra_host_diff and h == hosts[-1]:
            diff = Diff("/var/www/app", items=(("+", "only-here.php"),))
        plan = Plan(Change.WILL_CHANGE, f"{len(diff.items)} to update", diffs=(diff,))
        results.append(StepResult("sync", h, Status.CHANGED, plan.reason, plan=plan))
        results.append(StepResult("flush", h, Status.OK, "nothing to clear", plan=Plan(Change.NO_CHANGE, "nothing")))
    return RunSummary("r1", "playbooks/deploy.yml", "plan", hosts, ["sync", "flush"], results)


def test_groups_identical_hosts_and_folds_diffs():
    md = plan_markdown(summary(), mermaid="flowchart TD\n    a --> b\n")
    assert "**11 hosts (web01..web11)**: will change" in md
    assert "**web12**: will change" in md
    assert md.count("<details><summary>") == 3  # two diff groups + the graph
    assert "~ wp-content/f2.php" in md and "+ only-here.php" in md
    assert "| `sync` | 12 | 0 | 0 | 0 |" in md and "| `flush` | 0 | 12 | 0 | 0 |" in md
    assert "```mermaid" in md and "a --> b" in md
    assert "#### `flush`" not in md  # steps with nothing to do are only counted


def test_size_limit_truncates_with_a_notice():
    md = plan_markdown(summary(n_hosts=40, files=2000, extra_host_diff=True), limit=4_000)
    assert len(md) <= 4_000
    assert "Truncated to fit a merge-request note" in md
    assert "**39 hosts (web01..web39)**" in md  # the one-line summary survives


def test_secrets_are_masked():
    scrub = Scrubber(["hunter2-secret-value"])
    s = summary(n_hosts=2, files=1)
    leaked = Diff("config.php", before="pass=old\n", after="pass=hunter2-secret-value\n")
    s.results[0] = StepResult(
        "sync",
        "web01",
        Status.CHANGED,
        "token hunter2-secret-value",
        plan=Plan(Change.WILL_CHANGE, "x", diffs=(leaked,)),
    )
    md = plan_markdown(s, scrubber=scrub)
    assert "hunter2-secret-value" not in md and "********" in md


def test_hosts_whose_changes_differ_only_by_their_own_paths_are_one_group():
    hosts = ["web01", "web02", "web03"]
    results = []
    for h in hosts:
        diff = Diff(f"/srv/fleet/{h}/app", items=(("~", "index.php"), ("->", "current -> releases/r2")))
        plan = Plan(Change.WILL_CHANGE, f"1 to update in /srv/fleet/{h}/app", diffs=(diff,))
        results.append(StepResult("sync", h, Status.CHANGED, plan.reason, plan=plan))
    other = Diff("/srv/fleet/web04/app", items=(("+", "new.php"),))  # really different: its own group
    results.append(
        StepResult(
            "sync", "web04", Status.CHANGED, "1 to add", plan=Plan(Change.WILL_CHANGE, "1 to add", diffs=(other,))
        )
    )
    md = plan_markdown(RunSummary("r1", "pb.yml", "plan", [*hosts, "web04"], ["sync"], results))
    assert "**3 hosts (web01, web02, web03)**: will change" in md
    assert "each at its own path; shown for web01" in md
    assert "**web04**: will change" in md
    assert md.count("<details><summary>") == 2
    # a host name that is only part of a word does not merge hosts: web1 vs web10
    a = Diff("/srv/web1/app", items=(("~", "x"),))
    b = Diff("/srv/web1/app", items=(("~", "x"),))
    r1 = StepResult("sync", "web1", Status.CHANGED, "r", plan=Plan(Change.WILL_CHANGE, "r", diffs=(a,)))
    r10 = StepResult("sync", "web10", Status.CHANGED, "r", plan=Plan(Change.WILL_CHANGE, "r", diffs=(b,)))
    md = plan_markdown(RunSummary("r2", "pb.yml", "plan", ["web1", "web10"], ["sync"], [r1, r10]))
    assert "**web1**" in md and "**web10**" in md  # /srv/web1/app is web1's own path, not web10's


def test_a_run_report_is_titled_as_a_run():
    s = summary(n_hosts=2, files=1, extra_host_diff=False)
    s.mode = "run"
    md = plan_markdown(s)
    assert md.startswith("### playbook run: `playbooks/deploy.yml`")
    assert "plan" not in md.split("\n", 1)[0] and "will change" not in md
    assert "**2 changed**" in md and "**2 hosts (web01, web02)**: changed" in md
    assert "playbook apply" not in md
