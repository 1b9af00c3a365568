"""The answer log: every answer with its route, scores and timings, and users' feedback on them.

SQLite at ``settings.app_db`` (WAL, created on first use; survives index generations), or, with
``store.backend: postgres``, tables ``kb.answers`` and ``kb.feedback`` in the shared database
(:class:`PgAnswerLog`: every app node's answers and feedback in one place for the admin tab). A row
holds only what its user was shown: the answer, its citations and the ids of the chunks the
model saw, all already ACL-filtered for that user. The chat page's admin tab reads
:meth:`AnswerLog.recent_answers` and :meth:`AnswerLog.feedback_summary`; fine-tuning reads
:meth:`AnswerLog.feedback` (thumbs and corrections) as training signal.
"""
from __future__ import annotations

import json
import logging
import sqlite3
import threading
import uuid
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

from kb_chatbot.core.errors import KBError
from kb_chatbot.core.types import Answer, Principal

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
    id TEXT PRIMARY KEY,
    ts TEXT NOT NULL,
    username TEXT NOT NULL,
    question TEXT NOT NULL,
    standalone_question TEXT NOT NULL,
    answer TEXT NOT NULL,
    citations TEXT NOT NULL,        -- JSON list of Answer.to_dict()["citations"]
    source_chunk_ids TEXT NOT NULL, -- JSON list: the chunks the model saw
    confidence REAL NOT NULL,
    route TEXT NOT NULL,
    corrected INTEGER NOT NULL,
    escalated INTEGER NOT NULL,
    scores TEXT NOT NULL,           -- JSON: confidence features
    timings TEXT NOT NULL,          -- JSON: seconds per stage
    model TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS answers_ts ON answers(ts);
CREATE INDEX IF NOT EXISTS answers_user ON answers(username, ts);
CREATE TABLE IF NOT EXISTS feedback (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    answer_id TEXT NOT NULL REFERENCES answers(id) ON DELETE CASCADE,
    ts TEXT NOT NULL,
    username TEXT NOT NULL,
    rating INTEGER NOT NULL CHECK (rating IN (-1, 1)),
    comment TEXT,
    correction TEXT
);
CREATE INDEX IF NOT EXISTS feedback_answer ON feedback(answer_id);
"""

_JSON_COLUMNS = ("citations", "source_chunk_ids", "scores", "timings")


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _username(user: Principal | str) -> str:
    return user.username if isinstance(user, Principal) else str(user)


class AnswerLog:
    #: The column that orders rows as they were inserted (ties of ``ts``).
    _insert_order = "rowid"

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self._ready = False

    @contextmanager
    def _conn(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            if not self._ready:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=30)
            try:
                conn.row_factory = sqlite3.Row
                conn.execute("PRAGMA foreign_keys=ON")
                if not self._ready:
                    conn.execute("PRAGMA journal_mode=WAL")
                    conn.executescript(SCHEMA)
                    self._ready = True
                with conn:
                    yield conn
            finally:
                conn.close()

    # --- writing ---------------------------------------------------------------------
    def record_answer(self, answer: Answer, user: Principal | str) -> str:
        """Store one answer; returns its id (for feedback)."""
        answer_id = uuid.uuid4().hex
        d = answer.to_dict()
        row = (
            answer_id, _now(), _username(user), answer.question, answer.standalone_question, answer.text,
            json.dumps(d["citations"], ensure_ascii=False),
            json.dumps([h.chunk.id for h in answer.sources]),
            float(answer.confidence), answer.route, int(answer.corrected), int(answer.escalated),
            json.dumps(d["scores"]), json.dumps(d["timings"]), answer.model_id,
        )
        with self._conn() as c:
            c.execute("INSERT INTO answers VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)", row)
        return answer_id

    def record_feedback(
        self, answer_id: str, user: Principal | str, rating: int, comment: str | None = None, correction: str | None = None
    ) -> int:
        """Thumbs up (+1) or down (-1) on an answer, optionally with a comment and a corrected answer.

        Only the user who got the answer may rate it (raises :class:`KBError` otherwise).
        """
        if rating not in (1, -1):
            raise ValueError(f"rating must be +1 or -1, got {rating!r}")
        name = _username(user)
        with self._conn() as c:
            row = c.execute("SELECT username FROM answers WHERE id = ?", (answer_id,)).fetchone()
            if row is None:
                raise KBError(f"no answer with id {answer_id!r} in the answer log {self.path}")
            if row["username"] != name:
                raise KBError(f"answer {answer_id} belongs to another user; {name!r} cannot rate it")
            row = c.execute(
                "INSERT INTO feedback (answer_id, ts, username, rating, comment, correction) VALUES (?,?,?,?,?,?) "
                "RETURNING id", (answer_id, _now(), name, rating, (comment or None), (correction or None)),
            ).fetchone()
            return int(row["id"])

    # --- reading ---------------------------------------------------------------------
    @staticmethod
    def _row(r: sqlite3.Row) -> dict[str, Any]:
        d = dict(r)
        for k in _JSON_COLUMNS:
            if k in d and isinstance(d[k], str):
                d[k] = json.loads(d[k])
        for k in ("corrected", "escalated"):
            if k in d:
                d[k] = bool(d[k])
        return d

    def get_answer(self, answer_id: str) -> dict[str, Any] | None:
        with self._conn() as c:
            r = c.execute("SELECT * FROM answers WHERE id = ?", (answer_id,)).fetchone()
        return self._row(r) if r else None

    def recent_answers(self, limit: int = 50, *, username: str | None = None) -> list[dict[str, Any]]:
        """Newest first; ``username`` restricts to one user's answers."""
        sql = ("SELECT * FROM answers" + (" WHERE username = ?" if username else "")
               + f" ORDER BY ts DESC, {self._insert_order} DESC LIMIT ?")
        args: tuple = (username, int(limit)) if username else (int(limit),)
        with self._conn() as c:
            return [self._row(r) for r in c.execute(sql, args)]

    def feedback(self, rating: int | None = None) -> list[dict[str, Any]]:
        """Feedback rows joined with their answer (question, answer, citations, chunk ids), oldest first."""
        sql = (
            "SELECT f.id, f.answer_id, f.ts, f.username, f.rating, f.comment, f.correction, "
            "a.question, a.standalone_question, a.answer, a.citations, a.source_chunk_ids, a.route, a.confidence, a.model "
            "FROM feedback f JOIN answers a ON a.id = f.answer_id"
        )
        args: tuple = ()
        if rating is not None:
            sql += " WHERE f.rating = ?"
            args = (int(rating),)
        with self._conn() as c:
            return [self._row(r) for r in c.execute(sql + " ORDER BY f.ts, f.id", args)]

    def feedback_summary(self) -> dict[str, Any]:
        """Counts for the admin view: answers per route, thumbs up/down, corrections, mean confidence."""
        with self._conn() as c:
            routes = {r["route"]: r["n"] for r in c.execute("SELECT route, COUNT(*) AS n FROM answers GROUP BY route")}
            a = c.execute("SELECT COUNT(*) AS n, AVG(confidence) AS conf FROM answers").fetchone()
            f = c.execute(
                "SELECT COUNT(*) AS n, SUM(CASE WHEN rating = 1 THEN 1 ELSE 0 END) AS up, "
                "SUM(CASE WHEN rating = -1 THEN 1 ELSE 0 END) AS down, "
                "SUM(CASE WHEN correction IS NOT NULL THEN 1 ELSE 0 END) AS corrections FROM feedback"
            ).fetchone()
        return {
            "answers": int(a["n"]),
            "mean_confidence": round(float(a["conf"]), 4) if a["conf"] is not None else None,
            "routes": routes,
            "feedback": int(f["n"]),
            "up": int(f["up"] or 0),
            "down": int(f["down"] or 0),
            "corrections": int(f["corrections"] or 0),
        }


PG_SCHEMA = """
CREATE SCHEMA IF NOT EXISTS kb;
CREATE TABLE IF NOT EXISTS kb.answers (
    seq bigserial UNIQUE, id text PRIMARY KEY, ts text NOT NULL, username text NOT NULL, question text NOT NULL,
    standalone_question text NOT NULL, answer text NOT NULL, citations text NOT NULL,
    source_chunk_ids text NOT NULL, confidence double precision NOT NULL, route text NOT NULL,
    corrected int NOT NULL, escalated int NOT NULL, scores text NOT NULL, timings text NOT NULL, model text NOT NULL
);
CREATE INDEX IF NOT EXISTS answers_ts ON kb.answers (ts);
CREATE INDEX IF NOT EXISTS answers_user ON kb.answers (username, ts);
CREATE TABLE IF NOT EXISTS kb.feedback (
    id bigserial PRIMARY KEY, answer_id text NOT NULL REFERENCES kb.answers (id) ON DELETE CASCADE,
    ts text NOT NULL, username text NOT NULL, rating int NOT NULL CHECK (rating IN (-1, 1)),
    comment text, correction text
);
CREATE INDEX IF NOT EXISTS feedback_answer ON kb.feedback (answer_id);
"""


class _PgConn:
    """The few calls AnswerLog makes on a sqlite3 connection, on psycopg (``?`` -> ``%s``, dict rows)."""

    def __init__(self, conn):
        self.conn = conn

    def execute(self, sql: str, params: tuple = ()):
        sql = sql.replace("%", "%%").replace("?", "%s")
        if sql.lstrip().upper().startswith("INSERT INTO ANSWERS VALUES"):  # the explicit column list of kb.answers
            sql = sql.replace("INSERT INTO answers VALUES", "INSERT INTO answers (id, ts, username, question, "
                              "standalone_question, answer, citations, source_chunk_ids, confidence, route, corrected, "
                              "escalated, scores, timings, model) VALUES")
        return self.conn.execute(sql, params)


class PgAnswerLog(AnswerLog):
    """The answer log in Postgres (``store.backend: postgres``): one log for every app node."""

    _insert_order = "seq"

    def __init__(self, url: str):
        self.url = url
        self.path = Path("postgres:kb.answers")  # named in error messages
        self._lock = threading.Lock()
        self._ready = False
        self._pg = None

    @contextmanager
    def _conn(self) -> Iterator[Any]:
        import psycopg
        from psycopg.rows import dict_row

        with self._lock:
            if self._pg is None or self._pg.closed:
                self._pg = psycopg.connect(self.url, autocommit=True, row_factory=dict_row)
                self._pg.execute("SET search_path TO kb")
            if not self._ready:
                with self._pg.transaction():
                    self._pg.execute("SELECT pg_advisory_xact_lock(7240117)")  # two nodes creating it at once
                    self._pg.execute(PG_SCHEMA)
                self._ready = True
            try:
                with self._pg.transaction():
                    yield _PgConn(self._pg)
            except psycopg.OperationalError:
                self._pg.close()  # the next call reconnects
                raise


def open_answer_log(settings) -> AnswerLog:
    """The answer log of the configured store."""
    if settings.store.backend == "postgres":
        return PgAnswerLog(settings.store.url)
    return AnswerLog(settings.app_db)
