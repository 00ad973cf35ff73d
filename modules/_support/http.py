"""HTTP from the controller for modules (`npm_fetch` downloads, `cache_clear` purges), split by
what a step may do: `plan` builds an `HttpReader`, which sends GET and HEAD only; `apply` alone
can build an `Http`, which sends any method (a PURGE, a POST).

The gate sits in the opener itself (a urllib handler every request, redirect or not, passes
through), so the promise holds for whatever request a module builds, not only for the methods
listed here. Errors are urllib's, for the calling module to word at its boundary as before.
"""

from __future__ import annotations

import urllib.request
from typing import Any

from engine.errors import ReadOnlyViolation
from engine.module import ApplyContext, PlanContext, require_apply

__all__ = ["HttpReader", "Http", "SAFE_METHODS"]

#: what a reader sends: the methods HTTP defines as safe, which change nothing on the server
SAFE_METHODS = frozenset({"GET", "HEAD"})


class _Gate(urllib.request.BaseHandler):
    """Refuses a request whose method is not safe: always for a reader, while a plan runs for a
    writer. urllib calls `<scheme>_request` on every request before it is sent."""

    handler_order = 100  # before the handlers that open connections

    def __init__(self, ctx: Any, *, writable: bool) -> None:
        self._ctx = ctx
        self._writable = writable

    def _check(self, req: urllib.request.Request) -> urllib.request.Request:
        method = req.get_method().upper()
        if method in SAFE_METHODS and req.data is None:
            return req
        if not self._writable:
            raise ReadOnlyViolation(
                f"HttpReader refused {method} {req.full_url.split('?')[0]}: a reader sends GET and HEAD only",
                path=str(getattr(self._ctx, "step", "")),
            )
        require_apply(self._ctx, f"HTTP {method}")
        return req

    http_request = _check
    https_request = _check


class HttpReader:
    """GET and HEAD, through an opener with `handlers` (e.g. a redirect policy) and the gate."""

    _writable = False

    def __init__(self, ctx: PlanContext | ApplyContext, *handlers: urllib.request.BaseHandler) -> None:
        self.step = ctx.step
        self._opener = urllib.request.build_opener(*handlers, _Gate(ctx, writable=self._writable))

    def open(self, request: urllib.request.Request | str, *, timeout: float) -> Any:
        """The response (file-like; close it) to a GET or HEAD; urllib's errors as they are."""
        req = request if isinstance(request, urllib.request.Request) else urllib.request.Request(request)
        return self._opener.open(req, timeout=timeout)


class Http(HttpReader):
    """Any method, for `apply` only: it must be handed the step's `ApplyContext`, and refuses to
    be built, or to send an unsafe request, while a plan runs."""

    _writable = True

    def __init__(self, ctx: ApplyContext, *handlers: urllib.request.BaseHandler) -> None:
        require_apply(ctx, "a writing HTTP client (Http)")
        super().__init__(ctx, *handlers)

    def send(self, request: urllib.request.Request, *, timeout: float) -> Any:
        """The response to `request`, whatever its method; urllib's errors as they are."""
        return self._opener.open(request, timeout=timeout)
