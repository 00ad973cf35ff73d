"""Bounded templates: a time budget, a size limit checked before big values are built, and
SIGTERM ending a run whose template is rendering (the lock released, the run recorded as
interrupted). The CLI runs under an address-space limit; harness timeouts only catch hangs."""

from __future__ import annotations

import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from engine.errors import TemplateError
from engine.template_budget import RenderInterrupted
from engine.templating import render

ADDRESS_SPACE = 256 * 1024 * 1024
ROOT = Path(__file__).parents[2]
LOOP = "{% for i in range(99999) %}{% for j in range(99999) %}{% endfor %}{% endfor %}"


@pytest.fixture(autouse=True)
def bounded_memory():
    """A regression here must fail with MemoryError, not take the shared machine's memory."""
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    with open("/proc/self/status") as fh:
        vm = next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmSize:"))
    limit = vm + 1024 * 1024 * 1024
    if hard != resource.RLIM_INFINITY:
        limit = min(limit, hard)
    resource.setrlimit(resource.RLIMIT_AS, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


@pytest.fixture
def short_budget(monkeypatch):
    monkeypatch.setenv("PLAYBOOK_TEMPLATE_TIMEOUT", "0.5")


def test_a_long_loop_stops_at_the_time_budget(short_budget):
    with pytest.raises(TemplateError, match=r"s\.args\.x: template took longer than its budget of 0\.5 s"):
        render("x" + LOOP, {}, what="s.args.x")


@pytest.mark.parametrize(
    "template",
    [
        "{{ 'x' * 10**10 }}",
        "a{{ [0] * 10**10 }}",
        "{{ 'x'.center(10**10) }}",
        "{{ 'x'|center(10**10) }}",
        "{{ 'ab'|indent(10**10, true) }}",
        "{{ '%10000000000s' % 1 }}",
        "{{ '%10000000000s'|format(1) }}",
        "{{ '{:>10000000000}'.format(1) }}",
        "{{ 'ab'.replace('a', 'x' * 1000000) * 2 }}",
        "{{ 'a-b'|replace('-', 'x' * 1000000) }}",
        "{{ ['a', 'b']|join('x' * 1000000) }}",
        "a{{ 'x'|center(10**10) }}b",
        "{{ 2 ** 100000000 }}",
        "{% for i in range(100000) %}{{ 'x' * 100 }}{% endfor %}",
        "{{ range(100000)|map('string')|map('center', 100000)|join }}",
        "{% set ns = namespace(x='x') %}{% for i in range(40) %}{% set ns.x = ns.x ~ ns.x %}{% endfor %}",
        # widths taken from the arguments: `*` in %-formats, nested fields in str.format
        "{{ '%*d' % (10**10, 1) }}",
        "{{ '%.*f' % (10**10, 1.0) }}",
        "{{ '%-*s|%s' % (10**10, 'a', 'b') }}",
        "{{ '%*d'|format(10**10, 1) }}",
        "{{ '{:{}}'.format('x', 10**10) }}",
        "{{ '{0:>{1}}'.format('x', 10**10) }}",
        "{{ '{:>{w}}'.format('x', w=10**10) }}",
        "{{ '{a:>{w}}'.format_map({'a': 'x', 'w': 10**10}) }}",
        "{{ '{:.{}f}'.format(1.0, 10**10) }}",
        # one value used by many fields
        "{% set v = 'x' * 100000 %}{{ ('{0}' * 100000).format(v) }}",
        "{% set m = {'a': 'x' * 100000} %}{{ ('%(a)s' * 100000) % m }}",
        # the methods and filters that build much more than they are given, in one call
        "{{ ('y' * 100000).join(range(100000)|map('string')) }}",
        "{{ 'x'.encode().center(10**10) }}",
        "{{ ('x' * 1000).encode().replace('x'.encode(), ('y' * 1000000).encode()) }}",
        "{% set t = {120: 'y' * 1000000} %}{{ ('x' * 1000).translate(t) }}",
        "{{ (1).to_bytes(10**10, 'big') }}",
        "{{ [1]|batch(10**10, 'x')|list|length }}",
        "{{ [1]|slice(10**10)|list|length }}",
        "{{ ([[0] * 100000] * 1000)|sum(start=[])|length }}",
        "{{ ('x' * 1000000)|wordwrap(1) }}",
        "{% set ns = namespace(x=3) %}{% for i in range(40) %}{% set ns.x = ns.x * ns.x %}{% endfor %}",
    ],
)
def test_big_values_are_refused_before_they_are_built(template):
    with pytest.raises(TemplateError, match="over the limit of 1048576") as err:
        render(template, {}, what="s.args.x")
    assert str(err.value).startswith("s.args.x: ")


def test_filters_run_only_while_rendering_never_while_compiling():
    from engine import templating

    # Jinja folds `{{ 'ab'|upper }}` to 'AB' at compile time, outside any budget: a 10 GB
    # `format` ran there, where a MemoryError is silently retried at render time
    source = templating._ENV.compile("{{ 'ab'|upper }}", raw=True)
    assert "'AB'" not in source and "upper" in source


def test_the_size_limit_is_configurable(monkeypatch):
    monkeypatch.setenv("PLAYBOOK_TEMPLATE_MAX_SIZE", "2M")
    assert len(render("{{ 'x' * 2000000 }}", {})) == 2_000_000
    monkeypatch.setenv("PLAYBOOK_TEMPLATE_MAX_SIZE", "none")
    with pytest.raises(TemplateError, match="PLAYBOOK_TEMPLATE_MAX_SIZE must be a positive number"):
        render("{{ 1 }}", {})


def test_ordinary_templates_are_unchanged():
    out = render(
        "{{ a|join(',') }} {{ 'a' ~ b }} {{ 3 * 4 }} {{ 'ab' * 2 }} {{ '%s-%s' % (1, 2) }}", {"a": [1, 2], "b": 7}
    )
    assert out == "1,2 a7 12 abab 1-2"
    assert render("{{ 'x'|center(5) }}|{{ 'a\nb'|indent(2) }}|{{ 'a-b'|replace('-', '+') }}", {}) == "  x  |a\n  b|a+b"
    assert render("{{ n ** 2 }}", {"n": 12}) == 144
    # digits in a format's literal text are not widths (a release date was refused as 20 MB)
    assert render("{{ 'release 20261208: %s' % 'x' }}", {}) == "release 20261208: x"
    assert render("{{ 'release 20261208: %s'|format('x') }}", {}) == "release 20261208: x"
    assert render("{{ 'release 20261208: {}'.format('x') }}", {}) == "release 20261208: x"
    assert render("{{ '%*d|%-3s|%.*f|%%' % (4, 7, 'a', 2, 1.5) }}", {}) == "   7|a  |1.50|%"
    assert render("{{ '%(n)05d' % {'n': 3} }}", {}) == "00003"
    assert render("{{ '{:{}}|{w:>{n}}|{:.{}f}'.format('x', 3, 2.5, 2, w='y', n=2) }}", {}) == "x  | y|2.50"
    assert render("{{ ', '.join(['a', 'b']) }}|{{ '-'.join(range(3)|map('string')) }}", {}) == "a, b|0-1-2"
    assert render("{{ 'ab'.translate({97: 'xy'}) }}|{{ (258).to_bytes(2, 'big').hex() }}", {}) == "xyb|0102"
    assert (
        render("{{ [1, 2, 3]|batch(2, 0)|list }}|{{ [1, 2, 3]|slice(2)|list }}", {}) == "[[1, 2], [3, 0]]|[[1, 2], [3]]"
    )
    assert (
        render("{{ [[1], [2, 3]]|sum(start=[]) }}|{{ [1, 2]|sum }}|{{ [{'n': 2}]|sum('n', 1) }}", {}) == "[1, 2, 3]|3|3"
    )
    assert render("{{ 'aa bb cc'|wordwrap(5) }}|{{ 3 * 4 * 5 }}", {}) == "aa bb\ncc|60"


def test_lipsum_is_not_offered():
    # Jinja's `lipsum(n)` builds n paragraphs in one call, out of reach of the budget
    # (`lipsum(10**6)` ran for over a minute and took 1.7 GB), and a deploy has no use for it
    with pytest.raises(TemplateError, match="undefined variable: 'lipsum'"):
        render("{{ lipsum(10**6) }}", {})


def test_a_stop_request_ends_a_render_at_once():
    stop = threading.Event()
    threading.Timer(0.2, stop.set).start()  # the render is already running: nothing else could set it
    with pytest.raises(RenderInterrupted, match="interrupted while rendering"):
        render("x" + LOOP, {}, what="s.args.x", stop=stop)


# -- the real CLI ---------------------------------------------------------------------------------


def playbook(tmp_path: Path, template: str) -> Path:
    (tmp_path / "inv.yml").write_text("hosts:\n  a: {connection: local}\ngroups:\n  web: {hosts: [a]}\n")
    pb = tmp_path / "pb.yml"
    pb.write_text(
        "name: slow\n"
        "inventory: inv.yml\n"
        "fleets:\n"
        "  web: {hosts: web}\n"
        "steps:\n"
        "  - id: render\n"
        "    module: command\n"
        "    fleet: web\n"
        "    timeout: 30\n"
        "    args:\n"
        f"      argv: [echo, {json.dumps(template)}]\n"
    )
    return pb


def cli_env(tmp_path: Path, **extra: str) -> dict[str, str]:
    return {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "COLUMNS": "200",
        "PLAYBOOK_LOCK_DIR": str(tmp_path / "locks"),
        **extra,
    }


def argv(*args: str) -> list[str]:
    prlimit = shutil.which("prlimit")
    if prlimit is None:
        pytest.skip("prlimit (util-linux) is not installed")
    return [prlimit, f"--as={ADDRESS_SPACE}", sys.executable, "-m", "engine.cli", *args]


@pytest.mark.parametrize(
    "template, message",
    [("{{ 'x' * 10**10 }}", "over the limit of"), (LOOP, "took longer than its budget of 1 s")],
)
def test_a_run_refuses_the_template_naming_its_place(tmp_path: Path, template: str, message: str):
    pb = playbook(tmp_path, template)
    proc = subprocess.run(
        argv("run", str(pb), "--state-dir", str(tmp_path / "state")),
        capture_output=True,
        text=True,
        timeout=120,
        env=cli_env(tmp_path, PLAYBOOK_TEMPLATE_TIMEOUT="1"),
    )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert "Traceback" not in out and "internal error" not in out, out
    # validate renders every template, so the run stops before any host, at the argument
    assert f"{pb}:11:20" in out and "render.args.argv[1]" in out and message in out, out
    assert not (tmp_path / "locks" / "web.lock").exists()


# 10^10 iterations only once `first` has run: validate renders it with the placeholder "" (no loop)
LATE_LOOP = "{% for i in range(steps.first.stdout | int) %}{% for j in range(steps.first.stdout | int) %}{% endfor %}{% endfor %}"


def test_sigterm_during_a_render_ends_the_run_and_releases_the_lock(tmp_path: Path):
    pb = playbook(tmp_path, LATE_LOOP)
    text = pb.read_text().replace(
        "steps:\n", "steps:\n  - {id: first, module: command, fleet: web, args: {argv: [echo, '99999']}}\n", 1
    )
    pb.write_text(text.replace("    timeout: 30\n", "    timeout: 30\n    needs: [first]\n", 1))
    state = tmp_path / "state"
    proc = subprocess.Popen(
        argv("run", str(pb), "--state-dir", str(state), "--format", "jsonl"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=cli_env(tmp_path, PLAYBOOK_TEMPLATE_TIMEOUT="3600"),  # only the signal can end it
    )
    try:
        assert proc.stdout is not None
        for line in proc.stdout:  # the step has started: its arguments are rendering next
            event = json.loads(line)
            if event.get("event") == "step_started" and event.get("step") == "render":
                break
        else:
            pytest.fail("the step never started: " + proc.stderr.read() if proc.stderr else "")
        assert (tmp_path / "locks" / "web.lock").is_dir()
        proc.send_signal(signal.SIGTERM)
        rest, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, rest + err
    assert "Traceback" not in err, err
    assert not (tmp_path / "locks" / "web.lock").exists()
    hist = subprocess.run(
        [sys.executable, "-m", "engine.cli", "history", "--state-dir", str(state), "--format", "json"],
        capture_output=True,
        text=True,
        timeout=120,
        env=cli_env(tmp_path),
    )
    assert [run["status"] for run in json.loads(hist.stdout)] == ["interrupted"], hist.stdout + hist.stderr
