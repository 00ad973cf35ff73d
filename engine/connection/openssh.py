"""The OpenSSH client that rsync and git start, held to the engine's own host-key rules.

The engine's connection is paramiko (engine/connection/ssh.py); rsync's remote shell for large
transfers and git's for `ssh://` remotes are the OpenSSH `ssh` program. Both get the same
strictness: no prompts (BatchMode), unknown or changed host keys refused against the same
known_hosts file the engine reads (and no global one), host keys never updated, and only the
configured key when one is set. `refused_host_key` recognises OpenSSH's refusal in stderr.
"""

from __future__ import annotations

import os
from typing import Any

from engine.connection.keys import DEFAULT_KNOWN_HOSTS

__all__ = ["KEX", "CIPHERS", "ssh_command", "git_ssh_command", "refused_host_key"]

#: rsync's ssh key exchange: the engine's own first (see `ssh_command`), then OpenSSH's classic
#: defaults; written out rather than `^...` so OpenSSH older than 8.7 accepts it too
KEX = (
    "curve25519-sha256,curve25519-sha256@libssh.org,ecdh-sha2-nistp256,ecdh-sha2-nistp384,ecdh-sha2-nistp521,"
    "diffie-hellman-group-exchange-sha256,diffie-hellman-group16-sha512,diffie-hellman-group18-sha512,"
    "diffie-hellman-group14-sha256"
)
#: rsync's ssh ciphers: AES-GCM first. With AES instructions (any x86-64 or ARMv8 server of the
#: last decade) it cost about a third less CPU than OpenSSH's default chacha20-poly1305, on both
#: ends, for the same bytes (measured here: 200 MB, 0.29 -> 0.19 s client, 0.43 -> 0.32 s server)
CIPHERS = "aes128-gcm@openssh.com,aes256-gcm@openssh.com,chacha20-poly1305@openssh.com,aes128-ctr,aes192-ctr,aes256-ctr"


def _strict(known_hosts: str | None) -> list[str]:
    known = os.path.expanduser(known_hosts or DEFAULT_KNOWN_HOSTS)
    return [
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=yes",
        "-o",
        f"UserKnownHostsFile={known}",
        "-o",
        "GlobalKnownHostsFile=/dev/null",
        "-o",
        "UpdateHostKeys=no",
    ]


def _identity(key: str | None) -> list[str]:
    return ["-o", "IdentitiesOnly=yes", "-i", os.path.expanduser(key)] if key else []


def ssh_command(target: Any) -> list[str]:
    """The OpenSSH command rsync uses for an inventory host: strict host keys against the same
    known_hosts the engine uses, no prompts, only the configured key.

    The key exchange the engine's own (paramiko) connection uses, curve25519-sha256, is put
    first. OpenSSH 9's default, the sntrup761x25519 hybrid, costs about 70 ms of client CPU per
    connection here, paid once per host per deploy, and a deploy's traffic is no better
    protected than the engine's connection to the same host anyway. Servers without curve25519
    negotiate one of the classic ECDH/DH exchanges that follow it."""
    cmd = [
        "ssh",
        *_strict(target.known_hosts),
        "-o",
        "GSSAPIAuthentication=no",
        "-o",
        f"KexAlgorithms={KEX}",
        "-o",
        f"Ciphers={CIPHERS}",
        "-o",
        "ConnectTimeout=10",
        "-o",
        "ServerAliveInterval=10",
        "-o",
        "ServerAliveCountMax=3",
        "-p",
        str(target.port),
    ]
    cmd += _identity(target.key)
    if target.user:
        cmd += ["-l", target.user]
    return cmd


def git_ssh_command(known_hosts: str | None, key: str | None) -> list[str]:
    """The OpenSSH command git uses for `ssh://` and `user@host:` remotes (GIT_SSH_COMMAND)."""
    return ["ssh", *_strict(known_hosts), "-o", "ConnectTimeout=10", *_identity(key)]


def refused_host_key(stderr: str) -> bool:
    """True when OpenSSH's stderr says it refused the host's key (unknown or changed)."""
    return "Host key verification failed" in stderr or "REMOTE HOST IDENTIFICATION HAS CHANGED" in stderr
