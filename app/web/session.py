"""Login sessions that end, and logins that slow down per client address.

Gradio keeps its login tokens in ``app.tokens`` (token -> user name) for as long as the
process lives and sets the cookie without an expiry. :class:`SessionGuard` wraps the app:

- **Session expiry.** A token is remembered with the time it was issued and last used; a
  request with a token older than ``server.auth.session_hours``, or unused for
  ``server.auth.idle_minutes``, has the token removed from Gradio's table (the page asks for
  the login again) and the cookie is given a ``Max-Age`` so the browser drops it too. A token
  the guard never saw issued (issued before a restart cannot happen: tokens live in memory)
  is expired as well: fail closed.
- **Per-address backoff.** :class:`kb_chatbot.app.auth.UserDirectory` already backs off per user name;
  guessing many names from one address is slowed here: after ``FREE_FAILURES`` failed
  ``POST /login`` from one client address, each further try waits (doubling from 2 s, at most
  15 minutes) and gets 429 with ``Retry-After`` without reaching the password check.
  The address is the socket's peer; behind a reverse proxy every user shares the proxy's
  address, so the proxy should rate-limit logins itself (docs/SECURITY.md).
"""
from __future__ import annotations

import logging
import threading
import time
from http.cookies import SimpleCookie
from typing import Any, Callable

from kb_chatbot.app.auth import Backoff

log = logging.getLogger(__name__)

TOKEN_COOKIE_PREFIX = "access-token"


def _cookie_tokens(scope: dict) -> list[str]:
    out = []
    for k, v in scope.get("headers", []):
        if k.lower() != b"cookie":
            continue
        jar = SimpleCookie()
        try:
            jar.load(v.decode("latin-1"))
        except Exception:  # a malformed cookie header carries no session
            continue
        out += [m.value for name, m in jar.items() if name.startswith(TOKEN_COOKIE_PREFIX) and m.value]
    return out


class AddressBackoff(Backoff):
    """Failed logins per client address -> how long that address must wait."""

    FREE_FAILURES = 10

    def __init__(self, clock: Callable[[], float] = time.monotonic):
        super().__init__(self.FREE_FAILURES, 900.0, clock)


class SessionGuard:
    """ASGI middleware; ``tokens`` is Gradio's token table (``app.tokens``)."""

    #: With shared sessions, a token's "last used" is written at most this often (seconds).
    TOUCH_EVERY_S = 30.0

    def __init__(self, app: Any, tokens: dict[str, str], *, session_hours: float, idle_minutes: float,
                 clock: Callable[[], float] = time.time, backoff: AddressBackoff | None = None,
                 shared: Any = None):
        self.app = app
        self.tokens = tokens
        #: PgSessions (app/web/shared_sessions.py) when every node shares the sessions: it is
        #: ``tokens`` too, and holds when each token was issued and last used
        self.shared = shared
        self.max_age = session_hours * 3600.0
        self.idle = idle_minutes * 60.0
        self.clock = clock
        self.backoff = backoff or AddressBackoff()
        self._seen: dict[str, tuple[float, float]] = {}  # token -> (issued, last used)
        self._lock = threading.Lock()

    # --- sessions ---------------------------------------------------------------------------
    def _expired(self, token: str, now: float) -> bool:
        if self.shared is not None:
            seen = self.shared.times(token)
            if seen is None:
                return False  # no such session anywhere: Gradio asks for the login
            issued, used = seen
            if now - issued > self.max_age or (self.idle > 0 and now - used > self.idle):
                return True
            if now - used > self.TOUCH_EVERY_S:
                self.shared.used(token, now)
            return False
        with self._lock:
            seen = self._seen.get(token)
            if seen is None:
                return token in self.tokens  # a session the guard never saw issued: fail closed
            issued, used = seen
            if now - issued > self.max_age or (self.idle > 0 and now - used > self.idle):
                return True
            self._seen[token] = (issued, now)
            return False

    def _end(self, token: str) -> None:
        if self.shared is not None:
            self.shared.forget(token)
            log.info("session_expired shared=1")
            return
        with self._lock:
            self._seen.pop(token, None)
        user = self.tokens.pop(token, None)
        if user is not None:
            log.info("session_expired user=%s", user)

    def _issued(self, headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
        """Remember tokens set by this response and give their cookies a Max-Age."""
        out = []
        now = self.clock()
        for k, v in headers:
            if k.lower() == b"set-cookie":
                text = v.decode("latin-1")
                name, _, rest = text.partition("=")
                if name.strip().startswith(TOKEN_COOKIE_PREFIX):
                    token = rest.split(";", 1)[0].strip()
                    if token and self.shared is not None:
                        self.shared.issued(token, now)
                    elif token:
                        with self._lock:
                            self._seen[token] = (now, now)
                    if "max-age" not in text.lower():
                        v = f"{text}; Max-Age={int(self.max_age)}".encode("latin-1")
            out.append((k, v))
        return out

    async def __call__(self, scope: dict, receive, send) -> None:
        if scope["type"] not in ("http", "websocket"):
            await self.app(scope, receive, send)
            return
        now = self.clock()
        for token in _cookie_tokens(scope):
            if self._expired(token, now):
                self._end(token)
        path = scope.get("path", "")
        is_login = scope["type"] == "http" and scope.get("method") == "POST" and path.rstrip("/").endswith("/login")
        addr = (scope.get("client") or ("unknown", 0))[0]
        if is_login:
            wait = self.backoff.wait_for(addr)
            if wait > 0:
                log.warning("login_denied client=%s reason=address_backoff seconds=%.0f", addr, wait)
                await send({"type": "http.response.start", "status": 429,
                            "headers": [(b"content-type", b"text/plain; charset=utf-8"),
                                        (b"retry-after", str(int(wait) + 1).encode())]})
                await send({"type": "http.response.body", "body": b"too many failed logins; try again later"})
                return

        async def send_wrapped(message: dict) -> None:
            if message["type"] == "http.response.start":
                message = {**message, "headers": self._issued(list(message.get("headers", [])))}
                if is_login:
                    self.backoff.record(addr, message.get("status", 500) < 400)
            await send(message)

        await self.app(scope, receive, send_wrapped)
