"""A real fleet of OpenSSH servers on loopback addresses, for integration tests and benchmarks.

Each host is its own `/usr/sbin/sshd -D` on 127.0.0.(10+i) (127.0.1.x beyond 245), all on
one port, each with its own ed25519 host key and data directory `workdir/hosts/<name>/`. One
client key is authorised on every host and a known_hosts lists them all, so the engine, the
real `ssh`/`rsync` and paramiko all verify host keys strictly against the same file.

Processes are tracked by PID and killed with their descendants (sshd's per-connection
children call setsid(), so a process-group kill would miss them) on `stop()`, at interpreter
exit, and - through PR_SET_PDEATHSIG - when the starting thread dies without cleaning up.
"""

from __future__ import annotations

import atexit
import ctypes
import os
import random
import signal
import socket
import subprocess
import threading
import time
import weakref
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

__all__ = ["SSHD", "FleetHost", "SshdFleet", "FleetError", "host_address"]

SSHD = "/usr/sbin/sshd"
_PRIVSEP_DIR = "/run/sshd"
_READY_TIMEOUT = 15.0


class FleetError(RuntimeError):
    """The fleet could not be started (no sshd, no free port, a server died at start-up)."""


def host_address(i: int) -> str:
    """The loopback address of host index `i` (0-based): 127.0.0.10 ... 127.0.0.254, then 127.0.1.x."""
    n = 10 + i
    if n <= 254:
        return f"127.0.0.{n}"
    n -= 255
    third, fourth = divmod(n, 254)
    return f"127.0.{1 + third}.{1 + fourth}"


@dataclass
class FleetHost:
    """One sshd of the fleet. `data_dir` is this host's deploy root (all hosts share one machine)."""

    index: int
    name: str
    address: str
    port: int
    data_dir: Path
    host_key: Path
    config: Path
    log: Path
    pid: int | None = None
    _proc: subprocess.Popen | None = None

    @property
    def host_key_pub(self) -> str:
        """The public host key line (`ssh-ed25519 AAAA... comment`)."""
        return Path(f"{self.host_key}.pub").read_text().strip()

    @property
    def known_hosts_name(self) -> str:
        """How OpenSSH names this host in known_hosts: `[addr]:port`, or bare `addr` on port 22."""
        return self.address if self.port == 22 else f"[{self.address}]:{self.port}"


_live: weakref.WeakSet[SshdFleet] = weakref.WeakSet()


@atexit.register
def _stop_all_fleets() -> None:
    for fleet in list(_live):
        fleet.stop()


def _pdeathsig() -> None:
    """Runs in the child before exec: die with SIGTERM when the parent thread goes away."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except Exception:  # not Linux: rely on stop()/atexit only
        pass


def _children_map() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat", "rb") as fh:
                stat = fh.read()
        except OSError:
            continue
        # the command name may contain spaces and parentheses: split after the last ')'
        fields = stat[stat.rfind(b")") + 2 :].split()
        kids.setdefault(int(fields[1]), []).append(int(entry))
    return kids


def _kill_tree(pid: int) -> None:
    """SIGKILL `pid` and all its descendants (found through /proc)."""
    kids = _children_map() if os.path.isdir("/proc") else {}
    todo, seen = [pid], []
    while todo:
        p = todo.pop()
        seen.append(p)
        todo.extend(kids.get(p, ()))
    for p in seen:
        try:
            os.kill(p, signal.SIGKILL)
        except ProcessLookupError:
            pass


def _port_free(address: str, port: int) -> bool:
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        # sshd sets SO_REUSEADDR too, so a TIME_WAIT left by an earlier fleet does not matter
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((address, port))
        return True
    except OSError:
        return False
    finally:
        s.close()


def _wait_ready(address: str, port: int, proc: subprocess.Popen, deadline: float) -> str | None:
    """Wait for an SSH banner. Returns None when ready, else why not."""
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return f"sshd exited with status {proc.returncode}"
        try:
            with socket.create_connection((address, port), timeout=1.0) as s:
                s.settimeout(2.0)
                if s.recv(64).startswith(b"SSH-"):
                    return None
        except OSError:
            pass
        time.sleep(0.01)
    return "no SSH banner in time"


class SshdFleet:
    """`n` real sshd servers on loopback. Use as a context manager, or call start()/stop().

    `base_port`: the port to try first (default 22, then a random free high port). Every host
    listens on the same port, each on its own address. Each sshd logs to
    `workdir/sshd/<name>/sshd.log` at `log_level` (default ERROR, or $PLAYBOOK_SSHD_LOGLEVEL).
    """

    def __init__(
        self, n: int, workdir: str | os.PathLike, *, base_port: int | None = None, log_level: str | None = None
    ) -> None:
        if n < 1 or n > 254 * 254:
            raise ValueError(f"'n' must be between 1 and {254 * 254} (got {n})")
        self.n = n
        self.workdir = Path(workdir).resolve()
        self.base_port = base_port
        # PLAYBOOK_SSHD_LOGLEVEL=DEBUG1 helps when a test fails on the server side
        self.log_level = log_level or os.environ.get("PLAYBOOK_SSHD_LOGLEVEL", "ERROR")
        self.port: int | None = None
        self.hosts: list[FleetHost] = []
        self.client_key = self.workdir / "id_ed25519"
        self.known_hosts = self.workdir / "known_hosts"
        self.authorized_keys = self.workdir / "authorized_keys"
        self.startup_seconds: float | None = None
        self._lock = threading.Lock()

    # -- lifecycle -----------------------------------------------------------------------

    def __enter__(self) -> SshdFleet:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def start(self) -> SshdFleet:
        """Generate keys, write configs and known_hosts, start every sshd and wait for banners."""
        if not os.path.exists(SSHD):
            raise FleetError(f"{SSHD} not found: install openssh-server")
        t0 = time.monotonic()
        os.makedirs(_PRIVSEP_DIR, mode=0o755, exist_ok=True)
        (self.workdir / "hosts").mkdir(parents=True, exist_ok=True)
        (self.workdir / "sshd").mkdir(parents=True, exist_ok=True)
        self._generate_keys()
        _live.add(self)
        last = ""
        for port in self._candidate_ports():
            self.port = port
            self._write_configs(port)
            try:
                self._start_all()
            except FleetError as exc:
                # most likely another fleet (another test session) took the port between our
                # check and sshd's bind: try the next one
                last = str(exc)
                self.stop()
                continue
            self._write_known_hosts()
            self.startup_seconds = time.monotonic() - t0
            return self
        raise FleetError(f"could not start {self.n} sshd: {last or 'no free port'}")

    def stop(self) -> None:
        """Kill every sshd of the fleet (and the sessions they forked). Safe to call twice."""
        for h in self.hosts:
            self._kill(h)

    def stop_host(self, i: int) -> None:
        """Kill host `i`'s sshd and its open sessions (a crashed or unreachable host)."""
        self._kill(self.hosts[i])

    def start_host(self, i: int) -> None:
        """(Re)start host `i`'s sshd and wait until it answers."""
        h = self.hosts[i]
        self._kill(h)
        self._spawn(h)
        assert h._proc is not None
        why = _wait_ready(h.address, h.port, h._proc, time.monotonic() + _READY_TIMEOUT)
        if why:
            raise FleetError(f"{h.name} ({h.address}:{h.port}): {why}; see {h.log}")

    # -- views ---------------------------------------------------------------------------

    def __len__(self) -> int:
        return len(self.hosts)

    def __getitem__(self, i: int) -> FleetHost:
        return self.hosts[i]

    def __iter__(self):
        return iter(self.hosts)

    @property
    def names(self) -> list[str]:
        return [h.name for h in self.hosts]

    def model_hosts(self, *, known_hosts: str | os.PathLike | None = None) -> list[Any]:
        """The fleet as `engine.model.config.Host` objects (user root, the client key, our known_hosts)."""
        from engine.model.config import Host

        kh = str(known_hosts if known_hosts is not None else self.known_hosts)
        return [
            Host(
                name=h.name,
                connection="ssh",
                address=h.address,
                port=h.port,
                user="root",
                key=str(self.client_key),
                known_hosts=kh,
                vars={"root": str(h.data_dir)},
            )
            for h in self.hosts
        ]

    def write_inventory(
        self, path: str | os.PathLike, *, group: str = "web", extra_vars: Mapping[str, Any] | None = None
    ) -> Path:
        """Write an inventory YAML for the fleet: all hosts in `group`, `extra_vars` as its vars."""
        hosts = {h.name: {"address": h.address, "port": h.port, "vars": {"root": str(h.data_dir)}} for h in self.hosts}
        grp: dict[str, Any] = {"hosts": self.names}
        if extra_vars:
            grp["vars"] = dict(extra_vars)
        doc = {
            "defaults": {
                "connection": "ssh",
                "user": "root",
                "key": str(self.client_key),
                "known_hosts": str(self.known_hosts),
            },
            "hosts": hosts,
            "groups": {group: grp},
        }
        out = Path(path)
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(yaml.safe_dump(doc, sort_keys=False, default_flow_style=None))
        return out

    def write_known_hosts(self, path: str | os.PathLike, *, only: list[int] | None = None) -> Path:
        """Write a known_hosts with the hosts at indexes `only` (default all), e.g. to omit one."""
        chosen = self.hosts if only is None else [self.hosts[i] for i in only]
        out = Path(path)
        out.write_text("".join(f"{h.known_hosts_name} {_key_only(h.host_key_pub)}\n" for h in chosen))
        return out

    # -- internals -----------------------------------------------------------------------

    def _candidate_ports(self):
        addresses = [host_address(i) for i in range(self.n)]
        tried: set[int] = set()
        first = [self.base_port] if self.base_port else [22]
        if self.base_port:
            first += [self.base_port + k for k in range(1, 5)]
        rng = random.Random()
        others = (rng.randrange(10000, 32000) for _ in range(200))
        for port in (*first, *others):
            if port in tried:
                continue
            tried.add(port)
            if all(_port_free(a, port) for a in addresses):
                yield port
            if len(tried) > 40:
                return

    def _generate_keys(self) -> None:
        jobs: list[tuple[Path, str]] = []
        if not self.client_key.exists():
            jobs.append((self.client_key, "playbook-test-client"))
        self.hosts = []
        for i in range(self.n):
            name = f"host{i + 1:02d}"
            d = self.workdir / "sshd" / name
            d.mkdir(parents=True, exist_ok=True)
            data = self.workdir / "hosts" / name
            data.mkdir(parents=True, exist_ok=True)
            h = FleetHost(
                index=i,
                name=name,
                address=host_address(i),
                port=0,
                data_dir=data,
                host_key=d / "ssh_host_ed25519_key",
                config=d / "sshd_config",
                log=d / "sshd.log",
            )
            self.hosts.append(h)
            if not h.host_key.exists():
                jobs.append((h.host_key, f"{name}-hostkey"))

        def keygen(job: tuple[Path, str]) -> None:
            path, comment = job
            subprocess.run(
                ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
                check=True,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )

        with ThreadPoolExecutor(max_workers=min(8, max(1, len(jobs)))) as ex:
            list(ex.map(keygen, jobs))
        pub = Path(f"{self.client_key}.pub").read_text()
        self.authorized_keys.write_text(pub)
        self.authorized_keys.chmod(0o600)

    def _write_configs(self, port: int) -> None:
        for h in self.hosts:
            h.port = port
            h.config.write_text(
                "\n".join(
                    [
                        f"ListenAddress {h.address}:{port}",
                        f"HostKey {h.host_key}",
                        f"PidFile {h.config.parent / 'sshd.pid'}",
                        f"AuthorizedKeysFile {self.authorized_keys}",
                        "PermitRootLogin prohibit-password",
                        "PasswordAuthentication no",
                        "KbdInteractiveAuthentication no",
                        "UsePAM no",
                        "StrictModes no",
                        "MaxStartups 100:30:200",
                        "SetEnv SHLVL=1",
                        f"LogLevel {self.log_level}",
                        "Subsystem sftp internal-sftp",
                        "UseDNS no",
                        "PrintMotd no",
                        "",
                    ]
                )
            )

    def _write_known_hosts(self) -> None:
        self.write_known_hosts(self.known_hosts)

    def _spawn(self, h: FleetHost) -> None:
        in_main = threading.current_thread() is threading.main_thread()
        log = open(h.log, "ab")
        try:
            # -E (log file) rather than -e: with -e, messages a session's child logs before exec
            # land on that command's stderr, i.e. in test output
            h._proc = subprocess.Popen(
                [SSHD, "-D", "-E", str(h.log), "-f", str(h.config)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                # PDEATHSIG fires when the *thread* that forked exits: only safe from the main thread
                preexec_fn=_pdeathsig if in_main else None,
            )
        finally:
            log.close()
        h.pid = h._proc.pid

    def _start_all(self) -> None:
        for h in self.hosts:
            self._spawn(h)
        deadline = time.monotonic() + _READY_TIMEOUT + self.n * 0.05
        for h in self.hosts:
            assert h._proc is not None
            why = _wait_ready(h.address, h.port, h._proc, deadline)
            if why:
                tail = h.log.read_text(errors="replace").strip().splitlines()[-3:]
                raise FleetError(f"{h.name} ({h.address}:{h.port}): {why}: {' | '.join(tail)}")

    def _kill(self, h: FleetHost) -> None:
        with self._lock:
            proc, h._proc, h.pid = h._proc, None, None
        if proc is None:
            return
        _kill_tree(proc.pid)
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            pass


def _key_only(pub_line: str) -> str:
    """`ssh-ed25519 AAAA... comment` -> `ssh-ed25519 AAAA...`."""
    return " ".join(pub_line.split()[:2])
