"""A real npm registry for tests: Verdaccio 6.8.0 on loopback, storage in a temp dir.

Verdaccio is installed by `.ci/install-verdaccio.sh` into
`${PLAYBOOK_TEST_CACHE:-~/.cache/playbook-tests}/verdaccio-6.8.0` (outside the clone).
`Verdaccio` starts it on 127.0.0.1:<free port> with `uplinks: {}` (nothing is proxied) and an
htpasswd auth where every read and publish needs a login, like the seed's private registry.
`add_user()` logs in through the registry's own adduser API (what `npm adduser` calls) and
returns the token; `npmrc()` writes a 0600 `.npmrc` holding it, for the real `npm` CLI
(`publish()`, `unpublish()`) - the token never appears in a command line.
"""

from __future__ import annotations

import atexit
import glob
import json
import os
import shutil
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

__all__ = ["Verdaccio", "VerdaccioError", "verdaccio_binary", "require_verdaccio", "VERSION"]

VERSION = "6.8.0"
HERE = Path(__file__).resolve().parent / "verdaccio"
_live: list[Verdaccio] = []


class VerdaccioError(RuntimeError):
    pass


def verdaccio_binary() -> Path:
    """Where .ci/install-verdaccio.sh puts the `verdaccio` launcher (it may not exist)."""
    cache = os.environ.get("PLAYBOOK_TEST_CACHE") or os.path.expanduser("~/.cache/playbook-tests")
    return Path(cache) / f"verdaccio-{VERSION}" / "node_modules" / ".bin" / "verdaccio"


def require_verdaccio() -> Path:
    """The launcher, or skip the test (fail when CI is set: CI must run the npm tests)."""
    import pytest

    binary = verdaccio_binary()
    missing = []
    if not binary.exists():
        missing.append(f"Verdaccio {VERSION} ({binary}; run .ci/install-verdaccio.sh)")
    for tool in ("node", "npm"):
        if shutil.which(tool) is None:
            missing.append(tool)
    if not missing:
        return binary
    why = "not installed: " + ", ".join(missing)
    if os.environ.get("CI"):
        pytest.fail(f"{why}; CI is set, so the npm registry tests must run")
    pytest.skip(f"{why}; npm registry tests skipped")


def _free_port(address: str) -> int:
    with socket.socket() as s:
        s.bind((address, 0))
        return s.getsockname()[1]


@atexit.register
def _stop_all() -> None:
    for reg in list(_live):
        reg.stop()


class Verdaccio:
    """One Verdaccio process. Use as a context manager or `start()`/`stop()`."""

    def __init__(
        self, binary: str | os.PathLike[str], workdir: str | os.PathLike[str], address: str = "127.0.0.1"
    ) -> None:
        if not address.startswith("127."):
            raise ValueError(f"'address' must be a loopback address (got {address!r})")
        self.binary = Path(binary)
        self.workdir = Path(workdir)
        self.address = address
        self.port = 0
        self.storage = self.workdir / "storage"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = self.workdir / "verdaccio.log"
        self._tokens: dict[str, str] = {}

    @property
    def url(self) -> str:
        return f"http://{self.address}:{self.port}/"

    # -- lifecycle -------------------------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> Verdaccio:
        self.storage.mkdir(parents=True, exist_ok=True)
        self.port = _free_port(self.address)
        config = (HERE / "config.yaml.tmpl").read_text()
        for key, value in {
            "storage": str(self.storage),
            "htpasswd": str(self.workdir / "htpasswd"),
            "port": str(self.port),
        }.items():
            config = config.replace("{{" + key + "}}", json.dumps(value) if key != "port" else value)
        cfg = self.workdir / "config.yaml"
        cfg.write_text(config)
        env = dict(os.environ, NODE_ENV="production", VERDACCIO_HANDLE_KILL_SIGNALS="true")
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [str(self.binary), "--config", str(cfg), "--listen", f"{self.address}:{self.port}"],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=self.workdir,
                start_new_session=True,
            )
        _live.append(self)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise VerdaccioError(f"verdaccio exited with {self.proc.returncode}:\n{self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(self.url + "-/ping", timeout=2) as resp:
                    if resp.status == 200:
                        return self
            except (urllib.error.URLError, OSError):
                pass
            time.sleep(0.1)
        self.stop()
        raise VerdaccioError(f"verdaccio did not answer on {self.url} within {timeout:g}s")

    def stop(self) -> None:
        if self in _live:
            _live.remove(self)
        proc, self.proc = self.proc, None
        if proc is None or proc.poll() is not None:
            return
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=10)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            proc.wait(timeout=10)

    def __enter__(self) -> Verdaccio:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- users and the npm CLI -------------------------------------------------------------------

    def add_user(self, name: str = "deployer", password: str = "s3cret-Passw0rd") -> str:
        """Create (or log in) a user through the adduser API `npm adduser` uses; returns its token."""
        if name in self._tokens:
            return self._tokens[name]
        body = json.dumps(
            {
                "name": name,
                "password": password,
                "type": "user",
                "roles": [],
                "date": time.strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
        ).encode()
        req = urllib.request.Request(
            f"{self.url}-/user/org.couchdb.user:{name}",
            data=body,
            method="PUT",
            headers={"Content-Type": "application/json"},
        )
        try:
            with urllib.request.urlopen(req, timeout=30) as resp:
                token = json.load(resp)["token"]
        except urllib.error.HTTPError as exc:
            raise VerdaccioError(f"adduser {name}: HTTP {exc.code} {exc.read()[:300]!r}") from None
        self._tokens[name] = token
        return token

    def nerf_dart(self) -> str:
        return f"//{self.address}:{self.port}/"

    def npmrc(self, path: str | os.PathLike[str], token: str | None = None, *, with_registry: bool = True) -> Path:
        """Write an `.npmrc` (mode 0600) with the registry and `//host:port/:_authToken=`."""
        token = token or self.add_user()
        path = Path(path)
        lines = [f"registry={self.url}"] if with_registry else []
        lines.append(f"{self.nerf_dart()}:_authToken={token}")
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as fh:
            fh.write("\n".join(lines) + "\n")
        return path

    def npm(
        self, *args: str, cwd: str | os.PathLike[str] | None = None, check: bool = True
    ) -> subprocess.CompletedProcess[str]:
        """Run the real `npm` CLI against this registry, logged in through a private `.npmrc`."""
        rc = self.workdir / "npmrc"
        if not rc.exists():
            self.npmrc(rc)
        env = {k: v for k, v in os.environ.items() if not k.lower().startswith("npm_config_")}
        env.update(
            npm_config_userconfig=str(rc),
            npm_config_cache=str(self.workdir / "npm-cache"),
            npm_config_registry=self.url,
            npm_config_update_notifier="false",
            npm_config_fund="false",
            npm_config_audit="false",
        )
        res = subprocess.run(
            ["npm", *args, "--registry", self.url],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
        )
        if check and res.returncode != 0:
            raise VerdaccioError(
                f"npm {' '.join(args)} exited {res.returncode}:\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}"
            )
        return res

    def publish(self, package_dir: str | os.PathLike[str]) -> None:
        """`npm publish` a package directory (scoped packages with `--access public`)."""
        self.npm("publish", "--access", "public", cwd=package_dir)

    def unpublish(self, spec: str) -> None:
        """`npm unpublish NAME@VERSION --force`."""
        self.npm("unpublish", spec, "--force", cwd=self.workdir)

    # -- storage, behind the registry's back ----------------------------------------------------

    def tarball_path(self, name: str, version: str) -> Path:
        """The stored tarball of `name@version` in Verdaccio's storage directory."""
        base = name.split("/")[-1]
        hits = glob.glob(str(self.storage / name / f"{base}-{version}.tgz"))
        if not hits:
            raise VerdaccioError(f"no stored tarball for {name}@{version} under {self.storage / name}")
        return Path(hits[0])

    def packument(self, name: str, token: str | None = None) -> dict[str, Any]:
        token = token or self.add_user()
        req = urllib.request.Request(self.url + name.replace("/", "%2f"), headers={"Authorization": f"Bearer {token}"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            return json.load(resp)
