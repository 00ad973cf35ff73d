"""git on the controller for modules that commit to a repository (`helm_bump`): one working
directory, one environment (no prompts, OpenSSH held to the engine's host-key rules, an https
token as environment config, never in argv or a URL), errors translated.

`plan` builds a `GitReader`: it runs only the subcommands that read (`clone`, `fetch`,
`rev-parse`, `show`...), and its environment rewrites every push URL to one no transport serves,
so nothing it runs can update a remote. `apply` alone can build a `Git`, which adds `add`,
`commit`, `reset` and `push` (engine/module.py, `require_apply`)."""

from __future__ import annotations

import base64
import os
import re
import shlex
import subprocess
from typing import Any

from engine.connection import children
from engine.connection.openssh import git_ssh_command, refused_host_key
from engine.errors import CommandTimeout, HostKeyError, ModuleError, ReadOnlyViolation
from engine.module import ApplyContext, PlanContext, require_apply
from engine.secrets import SCRUBBER, Secret

__all__ = ["GitReader", "Git", "git_environment", "commit", "repo_url", "display_url"]

#: what a reader may run: each reads a remote or a local checkout, none can update a remote
READ_COMMANDS = frozenset(
    {"clone", "fetch", "ls-remote", "rev-parse", "show", "log", "cat-file", "ls-tree", "diff", "status"}
)
#: a push URL no git transport serves (`url.<base>.pushInsteadOf` with an empty prefix matches all)
_NO_PUSH = "playbook-read-only:///"


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


class GitReader:
    """git that reads: clone, fetch and inspect (`READ_COMMANDS`), in one environment, errors
    translated. No commit or push; any other subcommand is refused, and a push would go nowhere."""

    def __init__(self, ctx: PlanContext | ApplyContext, env: dict[str, str], *, timeout: float | None = None) -> None:
        self.env = self._environment(env)
        self.step = ctx.step
        self.timeout = timeout

    def _environment(self, env: dict[str, str]) -> dict[str, str]:
        out = dict(env)
        n = int(out.get("GIT_CONFIG_COUNT", "0") or 0)
        out[f"GIT_CONFIG_KEY_{n}"] = f"url.{_NO_PUSH}.pushInsteadOf"
        out[f"GIT_CONFIG_VALUE_{n}"] = ""
        out["GIT_CONFIG_COUNT"] = str(n + 1)
        return out

    def _allow(self, argv: tuple[str, ...]) -> None:
        if not argv or argv[0] not in READ_COMMANDS:
            raise ReadOnlyViolation(
                f"GitReader refused 'git {argv[0] if argv else ''}': a reader runs only "
                + ", ".join(sorted(READ_COMMANDS)),
                path=self.step,
            )

    def run(self, *argv: str, cwd: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        self._allow(argv)
        return self._run(argv, cwd=cwd, check=check)

    def _run(
        self, argv: tuple[str, ...], *, cwd: str | None, check: bool, stdin: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        try:
            proc = children.run(["git", *argv], cwd=cwd, env=self.env, text=True, timeout=self.timeout, input=stdin)
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


class Git(GitReader):
    """git that also writes (any subcommand: add, commit, reset, push), for `apply` only: it must
    be handed the step's `ApplyContext` and refuses to be built or to run while a plan runs."""

    def __init__(self, ctx: ApplyContext, env: dict[str, str], *, timeout: float | None = None) -> None:
        require_apply(ctx, "a writing git client (Git)")
        super().__init__(ctx, env, timeout=timeout)
        self._ctx = ctx

    def _environment(self, env: dict[str, str]) -> dict[str, str]:
        return dict(env)

    def run(self, *argv: str, cwd: str | None = None, check: bool = True) -> subprocess.CompletedProcess[str]:
        if not argv or argv[0] not in READ_COMMANDS:
            require_apply(self._ctx, f"git {argv[0] if argv else ''}")
        return self._run(argv, cwd=cwd, check=check)

    def with_env(self, extra: dict[str, str]) -> Git:
        """The same client with `extra` added to its environment (e.g. the commit identity)."""
        return Git(self._ctx, {**self.env, **extra}, timeout=self.timeout)


def repo_url(repo: str, base: str) -> str:
    if re.match(r"^[a-z][a-z0-9+.-]*://", repo) or re.match(r"^[^/@:]+@[^/:]+:", repo):
        return repo
    return "file://" + os.path.abspath(os.path.join(base, os.path.expanduser(repo)))


def display_url(url: str) -> str:
    return re.sub(r"//[^/@]*@", "//", url)


def commit(git: Git, repo: str, message: str) -> None:
    """Commit what is staged in `repo` with `message` (on stdin), hooks skipped."""
    if not isinstance(git, Git):
        raise ReadOnlyViolation("git commit needs a writing client (Git), not a GitReader", path=git.step)
    require_apply(git._ctx, "git commit")
    proc = git._run(("commit", "--quiet", "--no-verify", "-F", "-"), cwd=repo, check=False, stdin=message)
    if proc.returncode != 0:
        raise ModuleError(f"git commit exited {proc.returncode}: {proc.stderr.strip()[-800:]}", path=git.step)
