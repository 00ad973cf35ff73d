"""Host keys and private keys for the engine's SSH connections.

`KnownHosts` parses a known_hosts file once per run and answers lookups from many threads;
`host_key_names` gives the names OpenSSH would look a host up under. `load_private_key` loads
a key file once per run (cached by path and modification time). The OpenSSH client that rsync
and git start is configured from the same rules in engine/connection/openssh.py.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterable

from engine.connection._paramiko import paramiko
from engine.errors import ConnectionFailed, LoadError
from engine.model.config import Host

__all__ = ["DEFAULT_KNOWN_HOSTS", "KnownHosts", "host_key_names", "load_private_key"]

# not `from paramiko.hostkeys import ...`: that would import paramiko without the guard above
HostKeyEntry = paramiko.hostkeys.HostKeyEntry


DEFAULT_KNOWN_HOSTS = "~/.ssh/known_hosts"


class KnownHosts:
    """A known_hosts file parsed once and shared by every connection of a run.

    Handles hashed (`|1|...`) names, `[host]:port` forms and `@revoked` keys; wildcard patterns
    and `@cert-authority` lines are not supported (skipped, so such hosts are unknown).
    Lookups only read immutable data, so they are safe from many threads at once.
    A missing file is empty: every host is then unknown, and the error names the path.
    """

    def __init__(self, path: str | os.PathLike = DEFAULT_KNOWN_HOSTS) -> None:
        self.path = os.path.expanduser(os.fspath(path))
        self._plain: dict[str, dict[str, paramiko.PKey]] = {}
        self._hashed: list[tuple[str, paramiko.PKey]] = []
        self._revoked: set[bytes] = set()
        try:
            with open(self.path, encoding="utf-8", errors="replace") as fh:
                lines = fh.readlines()
        except FileNotFoundError:
            lines = []
        except OSError as exc:
            raise LoadError(f"cannot read known_hosts: {exc.strerror or exc}", path=self.path) from None
        for lineno, raw in enumerate(lines, 1):
            line = raw.strip()
            if not line or line.startswith("#"):
                continue
            marker = ""
            if line.startswith("@"):
                marker, _, line = line.partition(" ")
                if marker != "@revoked":
                    continue  # @cert-authority: host certificates are not supported; skip like unknown lines
            try:
                entry = HostKeyEntry.from_line(line, lineno)
            except (paramiko.SSHException, ValueError):
                entry = None  # OpenSSH skips malformed lines too
            if entry is None or entry.key is None:
                continue
            if marker == "@revoked":
                self._revoked.add(entry.key.asbytes())
                continue
            for name in entry.hostnames:
                if name.startswith("|1|"):
                    self._hashed.append((name, entry.key))
                else:
                    self._plain.setdefault(name, {}).setdefault(entry.key.get_name(), entry.key)

    def is_revoked(self, key: paramiko.PKey) -> bool:
        """True when the file marks this key `@revoked`."""
        return key.asbytes() in self._revoked

    def lookup(self, names: Iterable[str]) -> dict[str, paramiko.PKey]:
        """All keys known for any of `names`, by key type (first name wins per type)."""
        found: dict[str, paramiko.PKey] = {}
        for name in names:
            for ktype, key in self._plain.get(name, {}).items():
                found.setdefault(ktype, key)
            for hashed, key in self._hashed:
                if paramiko.HostKeys.hash_host(name, hashed) == hashed:
                    found.setdefault(key.get_name(), key)
        return found

    def __len__(self) -> int:
        return sum(len(v) for v in self._plain.values()) + len(self._hashed)


def host_key_names(host: Host) -> list[str]:
    """The names OpenSSH would look a host up under: `[addr]:port` (bare on port 22), then the name."""
    candidates = [host.hostname, host.name]
    names: list[str] = []
    for c in candidates:
        n = c if host.port == 22 else f"[{c}]:{host.port}"
        if n not in names:
            names.append(n)
    return names


_key_cache: dict[tuple[str, int], paramiko.PKey] = {}


_key_lock = threading.Lock()


def load_private_key(path: str, *, host: str = "") -> paramiko.PKey:
    """Load an ed25519/ecdsa/rsa private key file once per run (cached by path and mtime)."""
    full = os.path.expanduser(path)
    try:
        mtime = os.stat(full).st_mtime_ns
    except FileNotFoundError:
        raise ConnectionFailed(f"key file {full}: no such file", host=host) from None
    except OSError as exc:
        raise ConnectionFailed(f"key file {full}: {exc.strerror or exc}", host=host) from None
    with _key_lock:
        cached = _key_cache.get((full, mtime))
    if cached is not None:
        return cached
    try:
        key = paramiko.PKey.from_path(full)
    except paramiko.PasswordRequiredException:
        raise ConnectionFailed(
            f"key file {full} is encrypted: load it into ssh-agent and leave 'key' unset", host=host
        ) from None
    except (paramiko.SSHException, ValueError, TypeError, OSError) as exc:
        raise ConnectionFailed(f"key file {full}: cannot load private key ({exc})", host=host) from None
    with _key_lock:
        _key_cache[(full, mtime)] = key
    return key
