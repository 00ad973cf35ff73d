"""Reporters, diff rendering and secret scrubbing, on hand-built results (no engine)."""

from __future__ import annotations

import io
import json

import pytest
from rich.console import Console

from engine.model.events import HostFinished, Message, RunFinished, RunStarted, StepFinished, StepStarted
from engine.model.jsonable import json_safe
from engine.model.results import UNKNOWN, Diff, Plan, RunSummary, Status, StepResult
from engine.report.console import ConsoleReporter
from engine.report.diffs import compress_hosts, describe_hosts, group_hosts, render_diff
from engine.report.jsondoc import JsonLinesReporter, JsonReporter, summary_to_dict
from engine.secrets import MASK, Scrubber, Secret

TOKEN = "s3cr3t-npm-token-42"
PEM = "-----BEGIN KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\nAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA\n-----END KEY-----"
WEB = [f"web{i:02d}" for i in range(1, 13)]

TREE = Diff(
    "/srv/www/releases/2",
    items=(("+", "index.html"), ("~", "app.js"), ("-", "old.css"), ("->", "current -> releases/2")),
)
ENV = Diff("/srv/www/shared/.env", before="A=1\nTOKEN=old\n", after=f"A=1\nTOKEN={TOKEN}\n")


def plan_summary() -> RunSummary:
    results = [
        StepResult(
            "sources.widgets",
            None,
            Status.CHANGED,
            plan=Plan.will_change("widgets 1.4.2 not cached", diffs=(Diff("widgets", before="1.4.1", after="1.4.2"),)),
        )
    ]
    results += [
        StepResult("sync", h, Status.CHANGED, plan=Plan.will_change("2 files to update", diffs=(TREE, ENV)))
        for h in WEB
    ]
    results.append(StepResult("sync", "db1", Status.OK, plan=Plan.no_change("tree is up to date")))
    results += [StepResult("migrate", h, Status.OK, plan=Plan.no_change("already applied")) for h in WEB + ["db1"]]
    results += [StepResult("cache", h, Status.UNKNOWN, plan=Plan.unknown("depends on steps.sync.release")) for h in WEB]
    results.append(
        StepResult("cache", "db1", Status.UNREACHABLE, message=f"ssh: auth failed with {TOKEN}\nretry later")
    )
    return RunSummary(
        "r-1",
        "playbooks/web.yml",
        "plan",
        WEB + ["db1"],
        ["sources.widgets", "sync", "migrate", "cache"],
        results,
        started=100.0,
        finished=104.5,
    )


def run_summary() -> RunSummary:
    results = [StepResult("sources.widgets", None, Status.CHANGED, duration=0.4)]
    for h in ("web01", "web02", "web03"):
        results.append(
            StepResult("sync", h, Status.CHANGED, duration=1.25, plan=Plan.will_change("2 files", diffs=(ENV,)))
        )
    results.append(StepResult("migrate", "web01", Status.OK))
    results.append(StepResult("migrate", "web02", Status.FAILED, message=f"exit 1: bad password {TOKEN}", attempts=2))
    results.append(StepResult("migrate", "web03", Status.UNREACHABLE, message="connection refused"))
    results.append(StepResult("cache", "web01", Status.CHANGED, outputs={"raw": b"flushed", "later": UNKNOWN}))
    results.append(StepResult("cache", "web02", Status.SKIPPED, message="host failed"))
    return RunSummary(
        "r-2",
        "playbooks/web.yml",
        "run",
        ["web01", "web02", "web03"],
        ["sources.widgets", "sync", "migrate", "cache"],
        results,
        aborted="failure budget exceeded (2 of 3 hosts failed)",
        started=100.0,
        finished=112.0,
    )


def feed(reporter, summary: RunSummary, messages=()) -> None:
    reporter(RunStarted(summary.run_id, summary.playbook, summary.mode, summary.hosts, summary.steps))
    for r in summary.results:
        reporter(StepStarted(r.step, r.host))
        reporter(StepFinished(r))
    for m in messages:
        reporter(m)
    for h in summary.hosts:
        reporter(HostFinished(h, "ok"))
    reporter(RunFinished(summary, {"plan_file": "plan.json"}))


def console_output(summary: RunSummary, *, scrubber: Scrubber, verbose: int = 0, messages=()) -> str:
    console = Console(file=io.StringIO(), record=True, width=120)
    rep = ConsoleReporter(console, mode=summary.mode, verbose=verbose, scrubber=scrubber)
    feed(rep, summary, messages)
    rep.close()
    return console.export_text()


@pytest.fixture
def scrubber() -> Scrubber:
    return Scrubber([TOKEN])


# -- secrets ---------------------------------------------------------------------------------


def test_secret_masks_itself_and_registers():
    sc = Scrubber()
    s = Secret(TOKEN, scrubber=sc)
    assert str(s) == repr(s) == f"{s}" == "%s" % s == MASK  # noqa: UP031 (%-formatting is what is tested)
    assert f"{s:>10}" == f"{MASK:>10}"
    assert s.reveal() == TOKEN
    assert TOKEN in sc
    assert s == Secret(TOKEN, scrubber=None)
    with pytest.raises(TypeError):
        "token=" + s  # noqa: B018 -- not a str subclass, so concatenation cannot leak
    with pytest.raises(TypeError):
        json.dumps(s)


def test_scrubber_replaces_longest_first_and_ignores_short_values():
    sc = Scrubber()
    sc.add("abc")  # too short to register
    sc.add("pass")
    sc.add("password123")
    assert len(sc) == 2
    assert sc.scrub("abc password123 pass") == f"abc {MASK} {MASK}"
    assert sc.scrub_obj({"k": ["x pass", ("pass",)], "pass": 3}) == {"k": [f"x {MASK}", (MASK,)], MASK: 3}


def test_scrubber_masks_lines_of_multiline_secrets():
    sc = Scrubber([PEM])
    assert sc.scrub(PEM) == MASK
    one_line = PEM.splitlines()[1]
    assert sc.scrub(f"+{one_line}") == f"+{MASK}"


def test_scrubber_many_secrets():
    sc = Scrubber(f"secret-{i:05d}" for i in range(2000))
    assert sc.scrub("a secret-01999 b secret-00000") == f"a {MASK} b {MASK}"


# -- diffs -----------------------------------------------------------------------------------


def test_render_text_diff_is_unified_with_header_as_file_name():
    lines = render_diff(Diff("app.conf", before="a\nb\nc\n", after="a\nB\nc\n"))
    assert lines[:3] == ["--- app.conf", "+++ app.conf", "@@ -1,3 +1,3 @@"]
    assert "-b" in lines and "+B" in lines


def test_render_new_file_and_items_and_flags():
    assert render_diff(Diff("new.txt", after="x\n"))[:2] == ["--- /dev/null", "+++ new.txt"]
    lines = render_diff(TREE)
    assert lines == [
        "/srv/www/releases/2:",
        "  + index.html",
        "  ~ app.js",
        "  - old.css",
        "  -> current -> releases/2",
    ]
    assert render_diff(Diff("logo.png", binary=True)) == ["Binary content differs: logo.png"]
    assert render_diff(Diff("big", before="a", after="b", truncated=True))[-1] == "… (diff truncated)"


def test_render_caps_long_diffs():
    lines = render_diff(Diff("big", after="\n".join(str(i) for i in range(500))), max_lines=200)
    assert len(lines) == 201
    assert lines[-1] == "… 303 more lines"  # 500 added lines + 3 header lines - 200 shown


def test_group_hosts_groups_identical_plans():
    results = [r for r in plan_summary().results if r.step == "sync"]
    groups = group_hosts(results)
    assert [(hosts, r.status) for hosts, r in groups] == [(["db1"], Status.OK), (WEB, Status.CHANGED)]
    # the order is the hosts', not the order they answered in: a plan always prints the same
    assert [(h, r.status) for h, r in group_hosts(reversed(results))] == [(h, r.status) for h, r in groups]
    assert [h for h, _ in group_hosts(results[1:] + results[:1])] == [h for h, _ in groups]
    controller = group_hosts([StepResult("sources.x", None, Status.OK)])
    assert controller[0][0] == ["controller"]


def test_host_lists_compress():
    assert compress_hosts(WEB) == "web01..web12"
    assert describe_hosts(WEB) == "12 hosts (web01..web12)"
    assert describe_hosts(["host01", "host02", "host03"]) == "3 hosts (host01, host02, host03)"
    assert describe_hosts(["web3"]) == "web3"
    assert compress_hosts(["web10", "web2", "web9", "web1", "a", "b", "c", "d", "e"], limit=3) == "a, b, c +6 more"
    assert compress_hosts([f"web{i}" for i in range(1, 13)]) == "web1..web12"


# -- console ---------------------------------------------------------------------------------


def test_plan_output_groups_hosts_and_shows_diffs_and_reasons(scrubber):
    out = console_output(plan_summary(), scrubber=scrubber)
    assert "~ sync  on 12 hosts (web01..web12): will change — 2 files to update" in out
    assert out.count("~ sync") == 1  # twelve identical plans, one block
    assert "+ index.html" in out and "-> current -> releases/2" in out and "-TOKEN=old" in out
    assert "= sync  on db1: no change — tree is up to date" in out
    assert "= migrate  on 13 hosts: no change — already applied" in out
    assert "? cache  on 12 hosts (web01..web12): unknown — depends on steps.sync.release" in out
    assert "! cache  on db1: unreachable" in out and "retry later" in out
    assert "~ sources.widgets  on controller: will change" in out
    assert out.index("Sources") < out.index("sources.widgets") < out.index("Steps") < out.index("~ sync")
    assert "Plan: 13 will change, 14 unchanged, 12 unknown, 1 unreachable across 13 hosts." in out


def test_plan_verbose_lists_unchanged_groups(scrubber):
    out = console_output(plan_summary(), scrubber=scrubber, verbose=1)
    assert "= migrate  on 13 hosts (db1, web01..web12): no change — already applied" in out


def test_run_streams_one_line_per_step_and_recaps(scrubber):
    out = console_output(
        run_summary(),
        scrubber=scrubber,
        messages=[Message("disk almost full", "warning", "web01"), Message("chatter", "info")],
    )
    lines = out.splitlines()
    assert any(line.split() == ["changed", "web01", "sync", "(1.2s)"] for line in lines)
    assert any(line.split()[:3] == ["failed", "web02", "migrate"] and "[2 attempts]" in line for line in lines)
    assert "warning: [web01] disk almost full" in out
    assert "chatter" not in out
    recap = {
        line.split()[0]: [int(x) for x in line.replace("│", " ").split()[1:]]
        for line in lines
        if line.startswith(("web0", "controller")) and "│" in line
    }
    #                    ok changed failed unreachable skipped
    assert recap == {
        "controller": [0, 1, 0, 0, 0],
        "web01": [1, 2, 0, 0, 0],
        "web02": [0, 1, 1, 0, 1],
        "web03": [0, 1, 0, 1, 0],
    }
    assert "Aborted: failure budget exceeded (2 of 3 hosts failed)" in out
    assert "Run failed on 2 hosts (web02, web03)" in out


def test_run_success_verdict(scrubber):
    summary = RunSummary("r", "p.yml", "run", ["a"], ["s"], [StepResult("s", "a", Status.OK)], started=1, finished=2)
    out = console_output(summary, scrubber=scrubber)
    assert "Run succeeded: 0 changed, 1 ok on 1 host in 1.0s." in out
    assert "controller" not in out  # no controller steps ran


def test_interrupted_is_reported(scrubber):
    summary = RunSummary("r", "p.yml", "run", ["a"], ["s"], [], interrupted=True)
    out = console_output(summary, scrubber=scrubber)
    assert "Interrupted" in out and "Run interrupted" in out


def test_markup_in_messages_is_not_interpreted(scrubber):
    summary = RunSummary(
        "r", "p.yml", "run", ["a"], ["s"], [StepResult("s", "a", Status.FAILED, message="[bold red]oops[/] [link=x]y")]
    )
    out = console_output(summary, scrubber=scrubber)
    assert "[bold red]oops[/] [link=x]y" in out


def test_live_display_on_a_terminal_does_not_break_output(scrubber):
    console = Console(file=io.StringIO(), width=100, force_terminal=True)
    rep = ConsoleReporter(console, mode="run", scrubber=scrubber)
    feed(rep, run_summary())
    rep.close()
    rep.close()
    out = console.file.getvalue()
    assert "Recap" in out and TOKEN not in out


# -- secrets never leak ----------------------------------------------------------------------


@pytest.mark.parametrize("make", [plan_summary, run_summary])
def test_secret_never_in_console_output(scrubber, make):
    for verbose in (0, 2):
        out = console_output(
            make(),
            scrubber=scrubber,
            verbose=verbose,
            messages=[Message(f"token is {TOKEN}", "error", step="sync"), Message(f"debug {TOKEN}", "info")],
        )
        assert TOKEN not in out
        assert MASK in out


def test_multiline_secret_in_a_diff_is_masked():
    sc = Scrubber([PEM])
    summary = RunSummary(
        "r",
        "p.yml",
        "plan",
        ["a"],
        ["key"],
        [
            StepResult(
                "key",
                "a",
                Status.CHANGED,
                plan=Plan.will_change("key rotated", diffs=(Diff("id_rsa", before="old\n", after=PEM + "\n"),)),
            )
        ],
    )
    out = console_output(summary, scrubber=sc)
    for line in PEM.splitlines()[1:3]:
        assert line not in out
    stream = io.StringIO()
    JsonReporter(stream, scrubber=sc)(RunFinished(summary))
    assert all(line not in stream.getvalue() for line in PEM.splitlines()[1:3])


@pytest.mark.parametrize("make", [plan_summary, run_summary])
def test_secret_never_in_json_or_json_lines(scrubber, make):
    summary = make()
    doc_stream, lines_stream = io.StringIO(), io.StringIO()
    messages = [Message(f"token is {TOKEN}", "error")]
    feed(JsonReporter(doc_stream, scrubber=scrubber), summary, messages)
    feed(JsonLinesReporter(lines_stream, scrubber=scrubber), summary, messages)
    assert TOKEN not in doc_stream.getvalue()
    assert TOKEN not in lines_stream.getvalue()
    assert MASK in doc_stream.getvalue() and MASK in lines_stream.getvalue()


# -- JSON ------------------------------------------------------------------------------------


def test_json_document_has_documented_keys(scrubber):
    stream = io.StringIO()
    rep = JsonReporter(stream, scrubber=scrubber)
    feed(rep, run_summary(), [Message("slow host", "warning", "web03")])
    doc = json.loads(stream.getvalue())
    assert set(doc) >= {
        "format_version",
        "run_id",
        "playbook",
        "mode",
        "started",
        "finished",
        "duration",
        "exit_code",
        "aborted",
        "interrupted",
        "changes",
        "failed_hosts",
        "steps",
        "hosts",
        "results",
        "messages",
        "extra",
    }
    assert doc["mode"] == "run" and doc["run_id"] == "r-2"
    assert doc["exit_code"] == 1 and doc["duration"] == 12.0
    assert doc["started"].startswith("1970-01-01T00:01:40")
    assert doc["failed_hosts"] == ["web02", "web03"]
    assert doc["hosts"]["web02"]["failed"] == 1 and doc["hosts"]["controller"]["changed"] == 1
    assert doc["messages"] == [{"level": "warning", "text": "slow host", "host": "web03", "step": None}]
    assert doc["extra"] == {"plan_file": "plan.json"}
    first = doc["results"][0]
    assert set(first) == {"step", "host", "status", "message", "duration", "attempts", "plan", "outputs"}
    assert first["host"] is None and first["plan"] is None
    sync = doc["results"][1]
    assert sync["plan"]["change"] == "will_change"
    assert set(sync["plan"]) == {"change", "reason", "diffs", "fingerprint"}
    assert sync["plan"]["diffs"][0]["header"] == "/srv/www/shared/.env"
    assert sync["plan"]["diffs"][0]["after"] == f"A=1\nTOKEN={MASK}\n"
    cache = next(r for r in doc["results"] if r["step"] == "cache" and r["host"] == "web01")
    assert cache["outputs"] == {"raw": "flushed", "later": None}
    assert rep.document == doc


def test_plan_document_exit_code_and_unknown():
    doc = summary_to_dict(plan_summary(), scrubber=Scrubber())
    json.dumps(doc)
    assert doc["exit_code"] == 1  # db1 unreachable
    statuses = {r["status"] for r in doc["results"]}
    assert statuses == {"changed", "ok", "unknown", "unreachable"}
    assert doc["results"][0]["plan"]["diffs"][0]["before"] == "1.4.1"


def test_json_lines_one_object_per_event(scrubber):
    stream = io.StringIO()
    summary = run_summary()
    feed(JsonLinesReporter(stream, scrubber=scrubber), summary)
    events = [json.loads(line) for line in stream.getvalue().splitlines()]
    names = [e["event"] for e in events]
    assert names[0] == "run_started" and names[-1] == "run_finished"
    assert names.count("step_finished") == len(summary.results)
    finished = [e for e in events if e["event"] == "step_finished"]
    assert finished[1]["step"] == "sync" and finished[1]["status"] == "changed"
    assert events[-1]["summary"]["exit_code"] == 1
    assert all("time" in e for e in events)


def test_json_safe_converts_odd_values():
    assert json_safe(
        {
            "a": (1, b"\xff"),
            "b": {2, 1},
            "c": float("nan"),
            "d": Secret("x" * 8, scrubber=None),
            "e": UNKNOWN,
            "f": Status.OK,
        }
    ) == {"a": [1, "\ufffd"], "b": [1, 2], "c": None, "d": MASK, "e": None, "f": "ok"}


def test_the_live_view_never_waits_for_the_reporter_lock(scrubber):
    """rich's refresh thread renders the live view while holding rich's lock; the reporter's
    event handler holds its own lock and may wait for rich's. The view must therefore never
    wait for the reporter's lock (it deadlocked a run under load)."""
    import threading

    out = io.StringIO()
    rep = ConsoleReporter(Console(file=out, force_terminal=True, width=100), mode="run", live=True, scrubber=scrubber)
    rep(RunStarted("r1", "pb.yml", "run", ["web01"], ["sync"]))
    held, release, rendered = threading.Event(), threading.Event(), threading.Event()

    def hold_the_reporter_lock():
        with rep._lock:
            held.set()
            release.wait(60)

    holder = threading.Thread(target=hold_the_reporter_lock, daemon=True)
    holder.start()
    assert held.wait(60)
    view = threading.Thread(target=lambda: (rep._live_renderable(), rendered.set()), daemon=True)
    view.start()
    view.join(30)  # a bound for a broken build, not a timing assumption: a correct one returns at once
    rendered_while_held = rendered.is_set()
    release.set()
    holder.join(60)
    rep.close()
    assert rendered_while_held


def to_a_pipe_and_through_rich(
    summary: RunSummary, width: int, scrubber: Scrubber, monkeypatch
) -> tuple[str, list[str], str]:
    """The reporter's output on a pipe console (no colour, no live display), the plain text of
    what it handed to rich's `print` there, and the same run on a recording console (rich)."""
    fast_file = io.StringIO()
    fast = Console(file=fast_file, width=width, highlight=False)
    printed: list[str] = []
    real_print = fast.print
    monkeypatch.setattr(
        fast, "print", lambda *a, **kw: (printed.extend(getattr(x, "plain", "") for x in a), real_print(*a, **kw))[1]
    )
    rep = ConsoleReporter(fast, mode="run", scrubber=scrubber)
    feed(rep, summary)
    rep.close()
    slow = Console(file=io.StringIO(), record=True, width=width, highlight=False)
    rep = ConsoleReporter(slow, mode="run", scrubber=scrubber)
    feed(rep, summary)
    rep.close()
    return fast_file.getvalue(), printed, slow.export_text()


def test_step_lines_to_a_pipe_are_what_rich_prints_without_rich(scrubber, monkeypatch):
    """In a pipe (no colour, no live display) a step's line is written straight to the file;
    the bytes are those rich prints, checked against a recording console that renders with rich."""
    from engine.report.terminal import PIPE_WIDTH

    summary = run_summary()
    fast, printed, slow = to_a_pipe_and_through_rich(summary, PIPE_WIDTH, scrubber, monkeypatch)
    assert fast == slow
    step_lines = [ln for ln in fast.splitlines() if ln.startswith("  ") and "(" in ln]
    assert len(step_lines) >= len(summary.results)
    assert not any(p in step_lines for p in printed)  # none went through rich


@pytest.mark.parametrize("host", ["web01", "数" * 45], ids=["ascii", "wide characters"])
def test_the_recap_to_a_pipe_is_what_rich_prints(host, scrubber, monkeypatch):
    """The recap goes to a pipe without rich when every line fits; a line rich would wrap (45
    wide characters are 90 columns: under the width by length, over it by cells) goes through rich."""
    results = [StepResult("sync", host, Status.CHANGED), StepResult("sync", "web02", Status.FAILED, message="exit 1")]
    summary = RunSummary("r-3", "pb.yml", "run", [host, "web02"], ["sync"], results, started=1.0, finished=2.0)
    fast, printed, slow = to_a_pipe_and_through_rich(summary, 80, scrubber, monkeypatch)
    assert fast == slow
    assert "Recap\n" in fast
    through_rich = any(p.startswith("Recap\n") for p in printed)
    assert through_rich == (host != "web01")
