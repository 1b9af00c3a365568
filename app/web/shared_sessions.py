"""Login sessions shared by every app node (``store.backend: postgres``).

Gradio keeps a login as a token in ``app.tokens`` (token -> user name), in one process's
memory, under a cookie named after a random per-process id: a login on one node is unknown to
the next. With the Postgres store both move to the database:

- :class:`PgSessions` is ``app.tokens`` (a mapping over ``kb.sessions``) and also the session
  guard's record of when each token was issued and last used, so expiry and sign-out hold on
  every node;
- :func:`shared_cookie_id` is one id for the cookie's name, made once and kept in
  ``kb.web_settings``, so every node reads the same cookie.

Tokens are stored as SHA-256 hashes: a copy of the table signs nobody in.
"""
from __future__ import annotations

import hashlib
import secrets
import threading
import time
from collections.abc import MutableMapping
from typing import Iterator

_SCHEMA = """
CREATE SCHEMA IF NOT EXISTS kb;
CREATE TABLE IF NOT EXISTS kb.sessions (
    token_sha text PRIMARY KEY, username text NOT NULL, issued double precision NOT NULL,
    used double precision NOT NULL
);
CREATE TABLE IF NOT EXISTS kb.web_settings (key text PRIMARY KEY, value text NOT NULL);
"""


#: Keys handed out by iteration: the stored hash, marked (a Gradio token never has a colon).
HASHED = "sha256:"


def _sha(token: str) -> str:
    if token.startswith(HASHED):
        return token[len(HASHED):]
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


class PgSessions(MutableMapping):
    """token -> user name, in Postgres; plus (issued, last used) for the session guard."""

    def __init__(self, url: str, clock=time.time):
        self.url = url
        self.clock = clock
        self._conn = None
        self._lock = threading.Lock()

    def _q(self, sql: str, params: tuple = ()) -> list[tuple]:
        import psycopg

        with self._lock:
            for attempt in (1, 2):
                try:
                    if self._conn is None or self._conn.closed:
                        self._conn = psycopg.connect(self.url, autocommit=True)
                        with self._conn.transaction():
                            self._conn.execute("SELECT pg_advisory_xact_lock(7240119)")
                            self._conn.execute(_SCHEMA)
                    cur = self._conn.execute(sql, params)
                    return cur.fetchall() if cur.description else []
                except psycopg.OperationalError:
                    if self._conn is not None:
                        self._conn.close()
                    self._conn = None
                    if attempt == 2:
                        raise
        return []

    # --- Gradio's token table ---------------------------------------------------------------
    def __getitem__(self, token: str) -> str:
        if not isinstance(token, str):  # Gradio asks with None when there is no cookie
            raise KeyError(token)
        rows = self._q("SELECT username FROM kb.sessions WHERE token_sha=%s", (_sha(token),))
        if not rows:
            raise KeyError(token)
        return rows[0][0]

    def __setitem__(self, token: str, username: str) -> None:
        now = self.clock()
        self._q("""INSERT INTO kb.sessions(token_sha, username, issued, used) VALUES (%s, %s, %s, %s)
                   ON CONFLICT (token_sha) DO UPDATE SET username=excluded.username""",
                (_sha(token), username, now, now))

    def __delitem__(self, token: str) -> None:
        if not self._q("DELETE FROM kb.sessions WHERE token_sha=%s RETURNING token_sha", (_sha(token),)):
            raise KeyError(token)

    def __iter__(self) -> Iterator[str]:
        # only hashes are stored: keys are the marked hashes, which this mapping accepts back
        # (Gradio's sign-out loops over the keys to end every session of the user)
        return iter([HASHED + r[0] for r in self._q("SELECT token_sha FROM kb.sessions")])

    def __len__(self) -> int:
        return int(self._q("SELECT count(*) FROM kb.sessions")[0][0])

    def __contains__(self, token: object) -> bool:
        return isinstance(token, str) and bool(self._q("SELECT 1 FROM kb.sessions WHERE token_sha=%s",
                                                       (_sha(token),)))

    # --- the session guard's times ----------------------------------------------------------
    def times(self, token: str) -> tuple[float, float] | None:
        rows = self._q("SELECT issued, used FROM kb.sessions WHERE token_sha=%s", (_sha(token),))
        return (float(rows[0][0]), float(rows[0][1])) if rows else None

    def issued(self, token: str, now: float) -> None:
        """Gradio set a cookie for ``token``: its session starts now (the row may follow it)."""
        self._q("UPDATE kb.sessions SET issued=%s, used=%s WHERE token_sha=%s", (now, now, _sha(token)))

    def used(self, token: str, now: float) -> None:
        self._q("UPDATE kb.sessions SET used=%s WHERE token_sha=%s", (now, _sha(token)))

    def forget(self, token: str) -> None:
        self._q("DELETE FROM kb.sessions WHERE token_sha=%s", (_sha(token),))

    def prune(self, max_age_s: float) -> int:
        return len(self._q("DELETE FROM kb.sessions WHERE issued < %s RETURNING token_sha",
                           (self.clock() - max_age_s,)))


def shared_cookie_id(url: str) -> str:
    """The id in the login cookie's name, the same on every node (made once, kept in Postgres)."""
    store = PgSessions(url)
    store._q("INSERT INTO kb.web_settings(key, value) VALUES ('cookie_id', %s) ON CONFLICT (key) DO NOTHING",
             (secrets.token_urlsafe(32),))
    return store._q("SELECT value FROM kb.web_settings WHERE key='cookie_id'")[0][0]
