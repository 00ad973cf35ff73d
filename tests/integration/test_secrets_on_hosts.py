"""Secrets stay secret on the hosts too: never in a process's arguments (the real sshd fleet).

Every user of a host can read every process's arguments (`ps`, `/proc/<pid>/cmdline`). A
command gets a secret through `env` (or `stdin`), whose values travel on standard input; a
secret rendered into the arguments is refused before any host is touched; a secret too short to
be masked is refused at load.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import uuid
from pathlib import Path

import pytest

from engine.cli import main
from engine.secrets import SCRUBBER

pytestmark = pytest.mark.fleet

ROOT = Path(__file__).resolve().parents[2]


def cmdlines() -> list[bytes]:
    found = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                with open(f"/proc/{pid}/cmdline", "rb") as fh:
                    found.append(fh.read())
            except OSError:  # gone meanwhile
                pass
    return found


def wait_for(cond, proc: subprocess.Popen, timeout: float = 120.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not cond():
        if proc.poll() is not None:
            raise AssertionError(f"playbook exited ({proc.returncode}) early: {proc.stderr.read()}")
        assert time.monotonic() < deadline, f"timed out after {timeout:g}s"
        time.sleep(0.02)


@pytest.mark.parametrize("module", ["command", "cache_clear"])
def test_a_secret_in_env_is_never_in_any_process_arguments_on_the_host(sshd_fleet, tmp_path, module):
    secret = f"S3cret-{module}-{uuid.uuid4().hex}"  # unique: no other process can have it by chance
    app = f"sec-{module}-{tmp_path.name}"
    for h in sshd_fleet:
        (h.data_dir / app).mkdir(parents=True, exist_ok=True)
        os.mkfifo(h.data_dir / app / "go")
    # the command reports the secret it got (so it did get it), then waits for the test
    script = 'printf %s "$API_TOKEN" > got; printf %s "$(cat)" > got-stdin; touch started; read _ < go'
    argv_field = "argv" if module == "command" else "command"
    pb = tmp_path / "pb.yml"
    pb.write_text(
        textwrap.dedent(f"""\
        secrets:
          api_token: {{env: TEST_API_TOKEN}}
        fleets:
          web: {{hosts: web}}
        steps:
          - id: hook
            module: {module}
            fleet: web
            args:
              {argv_field}: [sh, -c, '{script}']
              chdir: "{{{{ root }}}}/{app}"
              env: {{API_TOKEN: "{{{{ api_token }}}}"}}
              stdin: "stdin {{{{ api_token }}}}"
        """)
    )
    inv = sshd_fleet.write_inventory(tmp_path / "inv.yml")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TEST_API_TOKEN": secret}
    proc = subprocess.Popen(
        [sys.executable, "-m", "engine.cli", "run", str(pb), "-i", str(inv), "--state-dir", str(tmp_path / "st")],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(lambda: all((h.data_dir / app / "started").exists() for h in sshd_fleet), proc)
        # every host's command is running now (waiting on its FIFO): look at every process here,
        # the fleet's sshds and their sessions included
        leaked = [c for c in cmdlines() if secret.encode() in c]
        assert leaked == []
        for h in sshd_fleet:
            with open(h.data_dir / app / "go", "w") as fh:
                fh.write("go\n")
        out, err = proc.communicate(timeout=120)
    finally:
        for h in sshd_fleet:  # whatever happened, no host command stays blocked
            unblock(h.data_dir / app / "go")
        if proc.poll() is None:
            proc.kill()
            proc.wait()
            main(["lock", "release", str(pb), "-i", str(inv), "--force"])
    assert proc.returncode == 0, out + err
    for h in sshd_fleet:
        assert (h.data_dir / app / "got").read_text() == secret  # the command did get it
        assert (h.data_dir / app / "got-stdin").read_text() == f"stdin {secret}"  # and its own stdin after
    assert secret not in out + err


def unblock(fifo: Path) -> None:
    try:
        fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
    except OSError:  # no reader (it finished) or no FIFO
        return
    os.write(fd, b"go\n")
    os.close(fd)


@pytest.mark.parametrize(
    ("module", "field", "value"),
    [
        ("command", "argv", '[curl, -H, "Authorization: Bearer {{ api_token }}", "http://127.0.0.1/"]'),
        ("command", "shell", '"curl -u admin:{{ auth }} http://127.0.0.1/"'),
        ("cache_clear", "command", '[wp, cache, flush, "--token={{ api_token }}"]'),
    ],
)
def test_validate_refuses_a_secret_rendered_into_arguments(sshd_fleet, tmp_path, capsys, module, field, value):
    pb = tmp_path / "pb.yml"
    pb.write_text(
        textwrap.dedent(f"""\
        secrets:
          api_token: {{env: TEST_API_TOKEN}}
        vars:
          auth: "{{{{ api_token }}}}"
        fleets:
          web: {{hosts: web}}
        steps:
          - id: hook
            module: {module}
            fleet: web
            args:
              {field}: {value}
        """)
    )
    inv = sshd_fleet.write_inventory(tmp_path / "inv.yml")
    assert main(["validate", str(pb), "-i", str(inv)]) == 1
    err = capsys.readouterr().err
    assert f"{pb}:12:" in err  # located at the field
    assert "secret 'api_token'" in err or "secret 'auth'" in err
    assert f"('{field}')" in err and "process list" in err and "'env'" in err
    secret = "A-real-value-0123456789"
    os.environ["TEST_API_TOKEN"] = secret
    try:  # run refuses too, before any host is touched
        assert main(["run", str(pb), "-i", str(inv), "--state-dir", str(tmp_path / "st")]) == 1
        assert "process list" in capsys.readouterr().err
    finally:
        del os.environ["TEST_API_TOKEN"]
        SCRUBBER.add(secret)


def test_a_secret_shorter_than_eight_characters_is_refused_at_load(sshd_fleet, tmp_path, capsys, monkeypatch):
    pb = tmp_path / "pb.yml"
    pb.write_text(
        textwrap.dedent("""\
        secrets:
          pin: {env: TEST_PIN}
        fleets:
          web: {hosts: web}
        steps:
          - id: hook
            module: command
            fleet: web
            args: {argv: ["true"], env: {PIN: "{{ pin }}"}}
        """)
    )
    monkeypatch.setenv("TEST_PIN", "1234567")
    inv = sshd_fleet.write_inventory(tmp_path / "inv.yml")
    assert main(["run", str(pb), "-i", str(inv), "--state-dir", str(tmp_path / "st")]) == 1
    err = capsys.readouterr().err
    assert "secret 'pin'" in err and "7 characters" in err and "at least 8" in err
    assert "1234567" not in err
    assert not (tmp_path / "st" / "history.sqlite").exists()  # refused before anything ran
