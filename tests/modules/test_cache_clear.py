"""cache_clear: remote command and HTTP purge (a real HTTP server on loopback)."""

from __future__ import annotations

import http.server
import threading

import pytest

from engine.connection.base import ReadOnly
from engine.connection.local import LocalConnection
from engine.errors import ArgError, ModuleError
from engine.model.results import UNKNOWN, Change
from engine.module import ApplyContext, PlanContext, get_module
from engine.secrets import Secret
from modules.cache_clear import CacheClearArgs, HttpPurge

MODULE = get_module("cache_clear")


def ctxs(steps=None):
    common = dict(
        host="web1", step="flush", vars={"steps": steps or {}}, run_id="r", release_id="rel", state_dir="/tmp"
    )
    conn = LocalConnection("web1")
    return PlanContext(conn=ReadOnly(conn), **common), ApplyContext(conn=conn, **common)


def run(args, steps=None):
    pctx, actx = ctxs(steps)
    p = MODULE.plan(pctx, args)
    return p, (MODULE.apply(actx, p) if p.change == Change.WILL_CHANGE else None)


def test_command_plans_and_runs(tmp_path):
    marker = tmp_path / "flushed"
    p, out = run(CacheClearArgs(command=("touch", "flushed"), chdir=str(tmp_path)))
    assert p.change == Change.WILL_CHANGE
    assert p.diffs[0].after == f"(cd {tmp_path}) touch flushed\n"
    assert marker.exists() and out["rc"] == 0


def test_command_failure_names_exit_code_and_stderr():
    with pytest.raises(ModuleError) as err:
        run(
            CacheClearArgs(
                command=("sh", "-c", "echo 'Error: YIKES! It looks like you are running this as root.' >&2; exit 1")
            )
        )
    assert "exited 1" in str(err.value) and "running this as root" in str(err.value)


def test_only_if_changed():
    args = CacheClearArgs(command=("true",), only_if_changed=("sync",))
    p, out = run(args, steps={"sync": {"changed_files": 0}})
    assert p.change == Change.NO_CHANGE and "no change in 'sync'" in p.reason and out is None
    assert run(args, steps={"sync": {"changed_files": 3}})[0].change == Change.WILL_CHANGE
    assert run(args, steps={"sync": {"changed_files": UNKNOWN}})[0].change == Change.WILL_CHANGE
    with pytest.raises(ArgError, match="add it to 'needs'"):
        run(args, steps={})
    with pytest.raises(ArgError, match="neither"):
        run(args, steps={"sync": {"rc": 0}})


def test_exactly_one_action():
    with pytest.raises(ArgError, match="exactly one"):
        run(CacheClearArgs())
    with pytest.raises(ArgError, match="exactly one"):
        run(CacheClearArgs(command=("true",), http=HttpPurge(url="http://127.0.0.1/")))
    with pytest.raises(ArgError, match="http or https"):
        run(CacheClearArgs(http=HttpPurge(url="file:///etc/passwd")))


class _Handler(http.server.BaseHTTPRequestHandler):
    seen: list = []
    status = 200

    def _any(self):
        length = int(self.headers.get("Content-Length") or 0)
        _Handler.seen.append((self.command, self.path, dict(self.headers), self.rfile.read(length)))
        self.send_response(_Handler.status)
        self.end_headers()
        self.wfile.write(b"purged" if _Handler.status < 300 else b"denied")

    do_PURGE = do_BAN = do_POST = do_GET = _any

    def log_message(self, *a):
        pass


@pytest.fixture
def server():
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    _Handler.seen.clear()
    _Handler.status = 200
    yield f"http://127.0.0.1:{srv.server_address[1]}"
    srv.shutdown()


def test_http_purge(server):
    token = Secret("s3cr3t-purge-token", scrubber=None)
    args = CacheClearArgs(
        http=HttpPurge(url=f"{server}/wp/purge", headers={"X-Purge-Token": token, "Host": "www.example.org"})
    )
    p, out = run(args)
    text = p.diffs[0].after
    assert "PURGE " + server + "/wp/purge" in text and "Host: www.example.org" in text
    assert "s3cr3t" not in text and "X-Purge-Token: ********" in text
    assert out == {"status": 200, "output": "purged"}
    method, path, headers, _ = _Handler.seen[0]
    assert method == "PURGE" and path == "/wp/purge" and headers["X-Purge-Token"] == "s3cr3t-purge-token"


def test_http_unexpected_status_fails_without_secrets(server):
    _Handler.status = 403
    args = CacheClearArgs(
        http=HttpPurge(url=f"{server}/purge", method="BAN", headers={"Authorization": "Bearer abcdef123"})
    )
    with pytest.raises(ModuleError) as err:
        run(args)
    msg = str(err.value)
    assert "got status 403, expected 2xx" in msg and "denied" in msg and "abcdef123" not in msg
    _Handler.status = 202
    assert run(CacheClearArgs(http=HttpPurge(url=f"{server}/p", expect=(202,))))[1]["status"] == 202
    with pytest.raises(ModuleError, match="got status 202, expected 200"):
        run(CacheClearArgs(http=HttpPurge(url=f"{server}/p", expect=(200,))))


def test_http_unreachable_and_credentials_in_url_masked():
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    args = CacheClearArgs(http=HttpPurge(url=f"http://admin:hunter22@127.0.0.1:{port}/purge", timeout=2))
    plan = MODULE.plan(ctxs()[0], args)
    assert "hunter22" not in plan.diffs[0].after and "hunter22" not in plan.reason
    with pytest.raises(ModuleError) as err:
        MODULE.apply(ctxs()[1], plan)
    assert "failed" in str(err.value) and "hunter22" not in str(err.value)
