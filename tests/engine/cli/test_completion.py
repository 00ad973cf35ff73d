"""Shell completion generated from the parser: commands, options and choices complete in a real
bash (the completion function called as bash calls it) and in a real interactive zsh (typed into
a terminal under tmux, TAB pressed)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

from engine.cli import build_parser
from engine.cli.completion import bash_script, zsh_script

ROOT = Path(__file__).resolve().parents[3]


def complete_bash(tmp_path: Path, *words: str) -> list[str]:
    script = tmp_path / "playbook.bash"
    script.write_text(bash_script(build_parser()))
    words_q = " ".join(f"'{w}'" for w in words)
    prog = f'source {script}; COMP_WORDS=({words_q}); COMP_CWORD={len(words) - 1}; _playbook; printf "%s\\n" "${{COMPREPLY[@]}}"'
    out = subprocess.run(["bash", "-c", prog], capture_output=True, text=True, timeout=30, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    return [w for w in out.stdout.splitlines() if w]


def test_bash_completes_commands_options_and_choices(tmp_path):
    (tmp_path / "deploy.yml").write_text("name: x\n")
    assert complete_bash(tmp_path, "playbook", "pl") == ["plan"]
    assert set(complete_bash(tmp_path, "playbook", "")) >= {"run", "plan", "apply", "rollback", "history", "--version"}
    assert complete_bash(tmp_path, "playbook", "plan", "--fo") == ["--forks", "--format"]
    assert complete_bash(tmp_path, "playbook", "plan", "x.yml", "--format", "j") == ["json", "jsonl"]
    assert complete_bash(tmp_path, "playbook", "run", "dep") == ["deploy.yml"]  # playbooks are files
    assert complete_bash(tmp_path, "playbook", "run", "x.yml", "-i", "dep") == ["deploy.yml"]
    assert complete_bash(tmp_path, "playbook", "inventory", "add-") == ["add-host", "add-group"]
    assert "--group" in complete_bash(tmp_path, "playbook", "inventory", "add-host", "web9", "--")
    assert complete_bash(tmp_path, "playbook", "completion", "") == ["bash", "zsh"]
    assert complete_bash(tmp_path, "playbook", "dr") == ["drift"]
    assert complete_bash(tmp_path, "playbook", "drift", "x.yml", "--format", "") == ["text", "json", "markdown"]


def test_the_script_is_what_the_command_prints():
    out = subprocess.run(
        [sys.executable, "-m", "engine.cli", "completion", "bash"], capture_output=True, text=True, timeout=60, cwd=ROOT
    )
    assert out.returncode == 0 and out.stdout == bash_script(build_parser())
    assert subprocess.run(["bash", "-n"], input=out.stdout, text=True, timeout=30).returncode == 0


def _need(program: str) -> None:
    if shutil.which(program) is None:
        if os.environ.get("CI"):
            pytest.fail(f"{program} is missing and CI is set")
        pytest.skip(f"{program} not installed")


def _wait_for(pane: str, text: str, deadline: float = 30.0) -> str:
    """The pane's content once it shows `text` (the shell has drawn the completion)."""
    end = time.monotonic() + deadline
    while True:
        shown = subprocess.run(
            ["tmux", "-L", pane, "capture-pane", "-p", "-t", "t"], capture_output=True, text=True
        ).stdout
        if text in shown or time.monotonic() > end:
            return shown
        time.sleep(0.05)


def test_zsh_completes_in_a_real_terminal(tmp_path):
    _need("zsh")
    _need("tmux")
    home = tmp_path / "zdot"
    home.mkdir()
    (home / "comp.zsh").write_text(zsh_script(build_parser()))
    (home / ".zshrc").write_text(f"PS1='%% '\nsource {home / 'comp.zsh'}\nprint READY\n")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "playbook").write_text("#!/bin/sh\nexit 0\n")
    (bindir / "playbook").chmod(0o755)
    socket = f"pbcomp{os.getpid()}"
    env = {**os.environ, "ZDOTDIR": str(home), "PATH": f"{bindir}:{os.environ['PATH']}", "TERM": "xterm"}
    subprocess.run(
        ["tmux", "-L", socket, "new-session", "-d", "-s", "t", "-x", "150", "-y", "20", "zsh"],
        env=env,
        check=True,
        timeout=30,
    )
    try:
        assert "READY" in _wait_for(socket, "READY")
        subprocess.run(
            ["tmux", "-L", socket, "send-keys", "-t", "t", "playbook plan x.yml --format js", "Tab"],
            check=True,
            timeout=30,
        )
        assert "--format json" in _wait_for(socket, "--format json")
        subprocess.run(
            ["tmux", "-L", socket, "send-keys", "-t", "t", "C-u", "playbook roll", "Tab"], check=True, timeout=30
        )
        assert "playbook rollback" in _wait_for(socket, "playbook rollback")
    finally:
        subprocess.run(["tmux", "-L", socket, "kill-server"], capture_output=True, timeout=30)
