"""Only the page's own origin may drive it: a strict Origin policy and first-party cookies.

Gradio answers a cross-origin preflight from any origin when the server is reached by a
hostname, with ``Access-Control-Allow-Credentials: true``, and sets its login cookie with
``SameSite=None``: a page on another site could ask questions as a logged-in employee and
read the answers. :class:`SameOriginMiddleware` wraps the whole app:

- a request that carries an ``Origin`` header is served only when that origin is the server's
  own (scheme and ``Host`` of the request, or ``X-Forwarded-Proto``/``-Host`` from a trusted
  proxy is not consulted: the browser's Host is what the page was loaded from) or is listed in
  ``server.allowed_origins``; anything else gets 403 and no CORS header at all;
- CORS headers are only ever sent to the listed origins (none by default; the app's CORS
  middleware is configured with the same list and answers their preflights);
- every ``Set-Cookie`` is rewritten to ``SameSite=Lax``, so the browser does not attach the
  login to requests started by other sites.
"""
from __future__ import annotations

import logging
from typing import Any, Awaitable, Callable, Iterable

log = logging.getLogger(__name__)

Scope = dict[str, Any]
ASGIApp = Callable[[Scope, Callable[[], Awaitable[dict]], Callable[[dict], Awaitable[None]]], Awaitable[None]]


def _header(scope: Scope, name: bytes) -> str | None:
    for k, v in scope.get("headers", []):
        if k.lower() == name:
            return v.decode("latin-1")
    return None


def own_origin(scope: Scope) -> str | None:
    host = _header(scope, b"host")
    if not host:
        return None
    scheme = "https" if scope.get("scheme") in ("https", "wss") else "http"
    return f"{scheme}://{host}".lower()


def _lax(cookie: bytes) -> bytes:
    parts = [p.strip() for p in cookie.decode("latin-1").split(";")]
    kept = [p for p in parts if not p.lower().startswith("samesite")]
    return "; ".join(kept + ["SameSite=Lax"]).encode("latin-1")


class SameOriginMiddleware:
    def __init__(self, app: ASGIApp, allowed_origins: Iterable[str] = ()):
        self.app = app
        self.allowed = {o.rstrip("/").lower() for o in allowed_origins}

    async def __call__(self, scope: Scope, receive, send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        origin = _header(scope, b"origin")
        listed = origin is not None and origin.rstrip("/").lower() in self.allowed
        if origin is not None and not listed and origin.rstrip("/").lower() != own_origin(scope):
            log.warning("cross_origin_refused origin=%s path=%s", origin[:200], scope.get("path", "")[:200])
            if scope["type"] == "websocket":
                await send({"type": "websocket.close", "code": 1008})
                return
            await send({"type": "http.response.start", "status": 403,
                        "headers": [(b"content-type", b"text/plain; charset=utf-8")]})
            await send({"type": "http.response.body", "body": b"cross-origin request refused"})
            return

        async def send_wrapped(message: dict) -> None:
            if message["type"] == "http.response.start":
                headers = []
                for k, v in message.get("headers", []):
                    lk = k.lower()
                    if lk.startswith(b"access-control-") and not listed:
                        continue  # CORS headers only ever go to listed origins
                    if lk == b"set-cookie":
                        v = _lax(v)
                    headers.append((k, v))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_wrapped)
