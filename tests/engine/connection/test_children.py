"""The controller's children: started in their own session, killed with a SIGKILLed
controller, and reported like `subprocess` would report them."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from engine.connection import children
from tests.harness.terminal import wait_for

ROOT = Path(__file__).resolve().parents[3]


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] == "Z"
    except FileNotFoundError:
        return True


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
@pytest.mark.parametrize("how", ["setpriv", "preexec_fn"])
def test_a_child_dies_with_its_sigkilled_controller(tmp_path, how):
    # the child holds no pipe to the controller (`sleep`, output to a file): only the death
    # signal can end it
    pidfile = tmp_path / "pid"
    script = textwrap.dedent(f"""\
        import subprocess, sys, time
        from engine.connection import children
        if {how!r} == "preexec_fn":
            children._SETPRIV, children._PREEXEC = None, children._death_signal()
        children.popen(["sh", "-c", 'echo $$ > "$1.tmp"; mv "$1.tmp" "$1"; exec sleep 100000', "sh", {str(pidfile)!r}],
                       stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        print("started", flush=True)
        time.sleep(100000)
        """)
    ctl = subprocess.Popen([sys.executable, "-c", script], cwd=ROOT, stdout=subprocess.PIPE, text=True)
    try:
        assert ctl.stdout is not None and ctl.stdout.readline() == "started\n"
        wait_for(pidfile.exists, what="the child to write its pid")
        child = int(pidfile.read_text())
        assert not _gone(child)
        assert os.getsid(child) == child  # a session of its own: a terminal's Ctrl-C is not for it
        os.kill(ctl.pid, signal.SIGKILL)
        ctl.wait()
        wait_for(lambda: _gone(child), what=f"the child {child} to die with its controller")
    finally:
        ctl.kill()
        ctl.wait()


def test_a_missing_program_and_the_args_are_reported_as_subprocess_does(tmp_path):
    with pytest.raises(FileNotFoundError):
        children.run(["playbook-no-such-program"])
    with pytest.raises(FileNotFoundError):
        children.run(["./not-here"], cwd=str(tmp_path))
    with pytest.raises(FileNotFoundError):
        children.run(["sh", "-c", "true"], env={"PATH": str(tmp_path)})
    done = children.run(["sh", "-c", 'echo "$0 $1"', "a", "b"], text=True)
    assert done.args == ["sh", "-c", 'echo "$0 $1"', "a", "b"] and done.stdout == "a b\n"
