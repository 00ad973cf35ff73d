"""git on the controller for modules that commit to a repository (`helm_bump`): one working
directory, one environment (no prompts, OpenSSH held to the engine's host-key rules, an https
token as environment config, never in argv or a URL), errors translated."""

from __future__ import annotations

import base64
import os
import re
import shlex
import subprocess
from typing import Any

from engine.connection import children
from engine.connection.openssh import git_ssh_command, refused_host_key
from engine.errors import CommandTimeout, HostKeyError, ModuleError
from engine.secrets import SCRUBBER, Secret

__all__ = ["Git", "git_environment", "commit", "repo_url", "display_url"]


def git_environment(
    *, known_hosts: str | None, ssh_key: str | None, https_user: str = "", https_token: Any = None
) -> dict[str, str]:
    """Environment for git: no prompts, strict ssh host keys, the https token as config."""
    env = dict(os.environ)
    env["GIT_TERMINAL_PROMPT"] = "0"
    env["GIT_ASKPASS"] = "true"
    env["GIT_SSH_COMMAND"] = shlex.join(git_ssh_command(known_hosts, ssh_key))
    pairs = [("commit.gpgsign", "false"), ("core.hooksPath", "/dev/null"), ("advice.detachedHead", "false")]
    if https_token:
        token = https_token.reveal() if isinstance(https_token, Secret) else str(https_token)
        basic = base64.b64encode(f"{https_user}:{token}".encode()).decode()
        SCRUBBER.add(token)
        SCRUBBER.add(basic)
        pairs.append(("http.extraHeader", f"Authorization: Basic {basic}"))
    env["GIT_CONFIG_COUNT"] = str(len(pairs))
    for i, (k, v) in enumerate(pairs):
        env[f"GIT_CONFIG_KEY_{i}"] = k
        env[f"GIT_CONFIG_VALUE_{i}"] = v
    return env


class Git:
    """git in one working directory, with one environment and errors translated."""

    def __init__(self, env: dict[str, str], step: str, timeout: float | None) -> None:
        self.env = env
        self.step = step
        self.timeout = timeout

    def run(self, *argv: str, cwd: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        try:
            proc = children.run(["git", *argv], cwd=cwd, env=self.env, text=True, timeout=self.timeout)
        except subprocess.TimeoutExpired:
            raise CommandTimeout(f"git {argv[0]} timed out after {self.timeout:g}s", path=self.step) from None
        except FileNotFoundError:
            raise ModuleError("the 'git' program is not installed on the controller", path=self.step) from None
        if check and proc.returncode != 0:
            err = SCRUBBER.scrub(proc.stderr.strip() or proc.stdout.strip())[-800:]
            if refused_host_key(err):
                raise HostKeyError(f"git {argv[0]}: host key unknown or changed (known_hosts): {err}", host=self.step)
            raise ModuleError(f"git {argv[0]} exited {proc.returncode}: {err}", path=self.step)
        return proc


def repo_url(repo: str, base: str) -> str:
    if re.match(r"^[a-z][a-z0-9+.-]*://", repo) or re.match(r"^[^/@:]+@[^/:]+:", repo):
        return repo
    return "file://" + os.path.abspath(os.path.join(base, os.path.expanduser(repo)))


def display_url(url: str) -> str:
    return re.sub(r"//[^/@]*@", "//", url)


def commit(git: Git, repo: str, message: str) -> None:
    try:
        proc = children.run(
            ["git", "commit", "--quiet", "--no-verify", "-F", "-"],
            cwd=repo,
            env=git.env,
            input=message,
            text=True,
            timeout=git.timeout,
        )
    except subprocess.TimeoutExpired:
        raise CommandTimeout(f"git commit timed out after {git.timeout:g}s", path=git.step) from None
    if proc.returncode != 0:
        raise ModuleError(f"git commit exited {proc.returncode}: {proc.stderr.strip()[-800:]}", path=git.step)
