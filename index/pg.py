"""The Postgres store (``store.backend: postgres``): documents, chunks, ACL rows and vectors of
every index generation in one PostgreSQL database with pgvector, shared by several app nodes.

Layout, the same model as the SQLite store (index/store.py) and its generation folders
(index/generation.py):

- a schema ``kb`` holds the pointer to the published generation (``kb.current``), the manifest of
  every published generation (``kb.generations``) and one sequence that numbers chunk rows
  across generations (a row id is never reused, as in SQLite);
- each generation is a schema ``kb_g_<id>`` with the tables of the SQLite store. Chunk rows
  carry their vector (``embedding vector(dim)``, cosine) and a stored ``tsvector`` (title
  weighted A, text D, ``english`` configuration) with a GIN index;
- an ingest copies the published generation into a new schema, changes it, builds the vector
  index (HNSW with ``index.kind: hnsw``, IVFFlat with ``ivf``, none with ``flat``: exact scan),
  then publishes it by updating the pointer in one transaction. Readers see the old
  generation until that commit; ``kill -9`` of an ingest leaves an unpublished schema that the
  next ingest drops. Two generations are kept (readers may be mid-query on the previous one);
- the ingest lock is a Postgres advisory lock, held by the ingest's own session: it works
  across machines and is freed by the server when that session dies.

The ACL filter runs inside both searches (a join on ``doc_acl``), never after them. pgvector
before 0.8 has no iterative index scan, so a filtered HNSW search can return fewer than k rows
(the index hands out ``hnsw.ef_search`` candidates, then the filter drops the unreadable ones):
a search whose asker reads under :data:`EXACT_SHARE` of the chunks is an exact scan of those
chunks, and one that still comes back short is repeated as an exact scan.
"""
from __future__ import annotations

import hashlib
import json
import logging
import re
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from kb_chatbot.core.errors import IndexError_, IngestBusy
from kb_chatbot.core.settings import IndexConfig, Settings
from kb_chatbot.core.types import Chunk, Document
from kb_chatbot.index.snapshot import SnapshotShortcuts
from kb_chatbot.index.store import (_HIT_COLUMNS, ChunkRow, SourceStats, _chunk_tuple, _iso, _row_to_chunk_row,
                                    porter_stems, text_sha)

log = logging.getLogger(__name__)

CONTROL = "kb"
PREFIX = "kb_g_"
#: Below this share of readable chunks, a dense search is an exact scan of those chunks.
EXACT_SHARE = 0.05
#: hnsw.ef_search: candidates the HNSW scan hands to the ACL filter (pgvector's default is 40).
#: bench/bench_pgvector.py, 100k MiniLM vectors: recall@5 0.69 / 0.81 / 0.91 / 0.96 at 40 / 100 /
#: 200 / 400, p50 1.2 / 1.6 / 2.5 / 6.5 ms: 200 costs a millisecond of a multi-second answer.
EF_SEARCH_MIN = 200
#: The advisory lock key of the ingest (any 64-bit number; "kb-ingest").
LOCK_KEY = int.from_bytes(hashlib.sha256(b"kb-ingest").digest()[:8], "big", signed=True)
_GEN_RE = re.compile(r"^[0-9A-Za-z_-]+$")

_CONTROL_DDL = f"""
CREATE EXTENSION IF NOT EXISTS vector;
CREATE SCHEMA IF NOT EXISTS {CONTROL};
CREATE TABLE IF NOT EXISTS {CONTROL}.current (
    id int PRIMARY KEY DEFAULT 1 CHECK (id = 1), generation text NOT NULL, published_at timestamptz NOT NULL
);
CREATE TABLE IF NOT EXISTS {CONTROL}.generations (
    generation text PRIMARY KEY, manifest jsonb NOT NULL, published_at timestamptz NOT NULL
);
CREATE SEQUENCE IF NOT EXISTS {CONTROL}.chunk_ids;
"""

_COLUMNS = {  # the SQLite store's columns, in its order (copying a generation lists them)
    "meta": "key, value",
    "sources": "name, type, path, last_run_at, last_status, chunker",
    "documents": "doc_id, source, source_type, title, uri, updated_at, content_hash, metadata, acl",
    "chunks": 'id, chunk_id, doc_id, ordinal, text, title, start, "end", heading_path, page, slide, sheet, slack_ts, '
              "text_sha, embedding",
    "doc_acl": "principal, doc_id",
    "source_state": "source, state",
}


def _generation_ddl(s: str, dim: int) -> str:
    return f"""
CREATE SCHEMA {s};
CREATE TABLE {s}.meta (key text PRIMARY KEY, value text NOT NULL);
CREATE TABLE {s}.sources (name text PRIMARY KEY, type text NOT NULL, path text NOT NULL,
    last_run_at text, last_status text, chunker text);
CREATE TABLE {s}.documents (doc_id text PRIMARY KEY, source text NOT NULL, source_type text NOT NULL,
    title text NOT NULL, uri text NOT NULL, updated_at text NOT NULL, content_hash text NOT NULL,
    metadata text NOT NULL DEFAULT '{{}}', acl text NOT NULL DEFAULT '[]');
CREATE INDEX ON {s}.documents (source);
CREATE TABLE {s}.chunks (id bigint PRIMARY KEY, chunk_id text NOT NULL UNIQUE,
    doc_id text NOT NULL REFERENCES {s}.documents (doc_id), ordinal int NOT NULL, text text NOT NULL,
    title text NOT NULL, start int NOT NULL, "end" int NOT NULL, heading_path text NOT NULL DEFAULT '[]',
    page int, slide int, sheet text, slack_ts text, text_sha text NOT NULL, embedding vector({dim}),
    tsv tsvector GENERATED ALWAYS AS (setweight(to_tsvector('english', title), 'A')
        || setweight(to_tsvector('english', text), 'D')) STORED);
CREATE INDEX ON {s}.chunks (doc_id);
CREATE INDEX ON {s}.chunks USING gin (tsv);
CREATE TABLE {s}.doc_acl (principal text NOT NULL, doc_id text NOT NULL, PRIMARY KEY (principal, doc_id));
CREATE INDEX ON {s}.doc_acl (doc_id);
CREATE TABLE {s}.source_state (source text PRIMARY KEY, state text NOT NULL);
"""


def _as_array(v: Any) -> np.ndarray:
    """A pgvector value as float32 (the text loader gives numpy, the binary one a ``Vector``)."""
    return np.asarray(v.to_numpy() if hasattr(v, "to_numpy") else v, dtype=np.float32)


def schema_of(gen: str) -> str:
    if not _GEN_RE.match(gen):
        raise IndexError_(f"not a generation id: {gen!r}")
    return PREFIX + gen.replace("-", "_").lower()


def connect(url: str):
    """A psycopg connection (autocommit; pgvector's type registered)."""
    import psycopg
    from pgvector.psycopg import register_vector

    try:
        conn = psycopg.connect(url, autocommit=True)
    except psycopg.OperationalError as e:
        raise IndexError_(f"cannot connect to Postgres at store.url ({_safe_url(url)}): "
                          f"{' '.join(str(e).split())[:300]}") from None
    try:
        register_vector(conn)
    except psycopg.ProgrammingError:  # the extension is not created yet (a fresh database)
        conn.execute("CREATE EXTENSION IF NOT EXISTS vector")
        register_vector(conn)
    return conn


def _safe_url(url: str) -> str:
    """The URL without its password (error messages and logs)."""
    return re.sub(r"(://[^:/@]+:)[^@]*@", r"\1***@", url)


def ensure_control(conn) -> None:
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY ^ 1,))  # two nodes creating it at once
        conn.execute(_CONTROL_DDL)


# --- the lock ---------------------------------------------------------------------------------


def _busy(holder: str | None) -> IngestBusy:
    return IngestBusy(f"another ingest is running ({holder or 'a session of another node'}; a Postgres advisory "
                      "lock). Try again when it finishes.")


@contextmanager
def advisory_lock(url: str, timeout: float) -> Iterator[None]:
    """Hold the ingest's advisory lock on a session of its own (freed by the server if this
    process or machine dies). Raises when another session holds it after ``timeout`` s."""
    conn = connect(url)
    try:
        deadline = time.monotonic() + max(0.0, timeout)
        while not conn.execute("SELECT pg_try_advisory_lock(%s)", (LOCK_KEY,)).fetchone()[0]:
            if time.monotonic() >= deadline:
                row = conn.execute(
                    """SELECT a.client_addr::text, a.pid FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
                       WHERE l.locktype = 'advisory' AND l.granted
                       AND (l.classid::bigint << 32 | l.objid::bigint) = (%s::bigint & x'ffffffffffffffff'::bigint)
                       LIMIT 1""", (LOCK_KEY,)).fetchone()
                raise _busy(f"server pid {row[1]} from {row[0] or 'local'}" if row else None)
            time.sleep(0.2)
        try:
            yield
        finally:
            conn.execute("SELECT pg_advisory_unlock(%s)", (LOCK_KEY,))
    finally:
        conn.close()


# --- generations ------------------------------------------------------------------------------


class PgGenerations:
    """The generations of one database: the same questions as :class:`Generations` answers
    for folders."""

    def __init__(self, url: str, conn=None):
        self.url = url
        self._conn = conn
        self._lock = threading.Lock()

    @property
    def conn(self):
        if self._conn is None:
            self._conn = connect(self.url)
            ensure_control(self._conn)
        return self._conn

    def _one(self, sql: str, params: Sequence[Any] = ()) -> tuple | None:
        """One row; a connection the server dropped (a restart, a failover) is opened again once."""
        import psycopg

        with self._lock:
            try:
                return self.conn.execute(sql, params).fetchone()
            except psycopg.OperationalError:
                if self._conn is not None:
                    self._conn.close()
                self._conn = None
                return self.conn.execute(sql, params).fetchone()

    def current(self) -> str | None:
        row = self._one(f"SELECT generation FROM {CONTROL}.current")
        return row[0] if row else None

    def manifest(self, gen: str) -> dict[str, Any]:
        row = self._one(f"SELECT manifest FROM {CONTROL}.generations WHERE generation=%s", (gen,))
        if row is None:
            raise IndexError_(f"generation {gen} has no manifest in Postgres; run `kb reindex`")
        return dict(row[0])

    def check_files(self, gen: str, manifest: dict[str, Any]) -> None:
        """The generation's schema exists (a published one is never dropped while current)."""
        with self._lock:
            ok = self.conn.execute("SELECT 1 FROM information_schema.schemata WHERE schema_name=%s",
                                   (schema_of(gen),)).fetchone()
        if not ok:
            raise IndexError_(f"generation {gen}: schema {schema_of(gen)} is missing; run `kb reindex`")

    def listing(self) -> list[str]:
        """Every generation schema, published or not (as generation ids)."""
        with self._lock:
            schemas = [r[0] for r in self.conn.execute(
                "SELECT schema_name FROM information_schema.schemata WHERE starts_with(schema_name, %s)", (PREFIX,))]
            published = {schema_of(g): g for (g,) in self.conn.execute(f"SELECT generation FROM {CONTROL}.generations")}
        return sorted(published.get(s, s[len(PREFIX):]) for s in schemas)

    def new_id(self) -> str:
        base = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S%fZ")
        existing, gen, n = set(self.listing()), base, 0
        while gen in existing:
            n += 1
            gen = f"{base}-{n}"
        return gen

    def prune(self) -> list[str]:
        """Drop every generation but the current one and its parent (readers may be mid-query on
        it), published or left by a crashed ingest. Call with the ingest lock held."""
        current = self.current()
        keep = {current}
        if current:
            try:
                keep.add(self.manifest(current).get("parent"))
            except IndexError_:
                pass
        keep_schemas = {schema_of(k) for k in keep if k}
        gone = []
        for gen in self.listing():
            s = schema_of(gen)
            if s in keep_schemas:
                continue
            with self._lock, self.conn.transaction():
                self.conn.execute(f"DROP SCHEMA IF EXISTS {s} CASCADE")
                self.conn.execute(f"DELETE FROM {CONTROL}.generations WHERE generation=%s", (gen,))
            gone.append(gen)
        if gone:
            log.info("generations dropped gens=%s kept=%s", ",".join(gone), ",".join(sorted(k for k in keep if k)))
        return gone

    def publish(self, gen: str, manifest: dict[str, Any]) -> None:
        """Record the manifest and point ``kb.current`` at ``gen``, in one transaction."""
        with self._lock, self.conn.transaction():
            self.conn.execute(f"""INSERT INTO {CONTROL}.generations(generation, manifest, published_at)
                                  VALUES (%s, %s, now())""", (gen, json.dumps(manifest)))
            self.conn.execute(f"""INSERT INTO {CONTROL}.current(id, generation, published_at) VALUES (1, %s, now())
                                  ON CONFLICT (id) DO UPDATE SET generation=excluded.generation,
                                  published_at=excluded.published_at""", (gen,))

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None


# --- one generation's store -------------------------------------------------------------------


class PgStore:
    """One generation's tables: the methods of :class:`kb_chatbot.index.store.Store`."""

    def __init__(self, conn, schema: str, *, readonly: bool, dim: int | None = None, url: str | None = None):
        self.conn = conn
        self.url = url  # a reader opens its connection again when the server dropped it
        self.schema = schema
        self.readonly = readonly
        self.dim = dim
        self._lock = threading.RLock()  # one connection shared by reader threads
        self._vocab: dict[str, int] | None = None
        self._titles: list[tuple[str, str]] | None = None
        self._readable: dict[frozenset[str], int] = {}

    def _t(self, table: str) -> str:
        return f"{self.schema}.{table}"

    def _rows(self, sql: str, params: Sequence[Any] = (), *, local: Sequence[str] = ()) -> list[tuple]:
        """The rows of ``sql``; ``local``: SET LOCAL statements for this query only."""
        import psycopg

        def run() -> list[tuple]:
            if not local:
                return self.conn.execute(sql, params).fetchall()
            with self.conn.transaction():
                for stmt in local:
                    self.conn.execute(stmt)
                return self.conn.execute(sql, params).fetchall()

        with self._lock:
            try:
                return run()
            except psycopg.OperationalError:
                if not (self.readonly and self.url):
                    raise  # a writer's transaction is gone with its connection: the ingest fails
                log.warning("postgres connection lost: reconnecting schema=%s", self.schema)
                self.conn.close()
                self.conn = connect(self.url)
                return run()

    def close(self) -> None:
        try:
            self.conn.close()
        except Exception:  # already closed
            pass

    def finalize(self) -> None:
        """Before publishing: analyse the tables (the planner needs row counts)."""
        with self._lock:
            for t in ("documents", "chunks", "doc_acl"):
                self.conn.execute(f"ANALYZE {self._t(t)}")

    # meta and sources
    def get_meta(self, key: str) -> str | None:
        rows = self._rows(f"SELECT value FROM {self._t('meta')} WHERE key=%s", (key,))
        return rows[0][0] if rows else None

    def set_meta(self, key: str, value: str) -> None:
        self._rows(f"""INSERT INTO {self._t('meta')}(key, value) VALUES (%s, %s)
                       ON CONFLICT (key) DO UPDATE SET value=excluded.value RETURNING key""", (key, value))

    def set_source(self, name: str, type_: str, path: str, *, last_run_at: str, last_status: str,
                   chunker: str | None = None) -> None:
        s = self._t("sources")
        self._rows(f"""INSERT INTO {s}(name, type, path, last_run_at, last_status, chunker) VALUES (%s,%s,%s,%s,%s,%s)
                       ON CONFLICT (name) DO UPDATE SET type=excluded.type, path=excluded.path,
                       last_run_at=excluded.last_run_at, last_status=excluded.last_status,
                       chunker=coalesce(excluded.chunker, {s}.chunker) RETURNING name""",
                   (name, type_, path, last_run_at, last_status, chunker))

    def source_chunker(self, name: str) -> str | None:
        rows = self._rows(f"SELECT chunker FROM {self._t('sources')} WHERE name=%s", (name,))
        return rows[0][0] if rows else None

    def source_stats(self) -> list[SourceStats]:
        rows = self._rows(f"""
            WITH names AS (SELECT name FROM {self._t('sources')} UNION SELECT DISTINCT source FROM {self._t('documents')}),
            dc AS (SELECT source, count(*) AS n FROM {self._t('documents')} GROUP BY source),
            cc AS (SELECT d.source, count(*) AS n FROM {self._t('chunks')} c JOIN {self._t('documents')} d
                   ON d.doc_id=c.doc_id GROUP BY d.source)
            SELECT n.name, s.type, s.path, s.last_run_at, s.last_status, coalesce(dc.n, 0), coalesce(cc.n, 0),
                   (SELECT source_type FROM {self._t('documents')} WHERE source=n.name LIMIT 1)
            FROM names n LEFT JOIN {self._t('sources')} s ON s.name=n.name LEFT JOIN dc ON dc.source=n.name
            LEFT JOIN cc ON cc.source=n.name ORDER BY n.name""")
        return [SourceStats(r[0], r[1] or r[7] or "?", r[2] or "", r[3], r[4], int(r[5]), int(r[6])) for r in rows]

    def counts(self) -> dict[str, int]:
        docs = self._rows(f"SELECT count(*) FROM {self._t('documents')}")[0][0]
        chunks = self._rows(f"SELECT count(*) FROM {self._t('chunks')}")[0][0]
        return {"documents": int(docs), "chunks": int(chunks)}

    # writes
    @contextmanager
    def transaction(self) -> Iterator["PgStore"]:
        """``with store.transaction():`` one commit (nested: a savepoint)."""
        with self._lock, self.conn.transaction():
            yield self

    _atomic = transaction

    def source_state(self, source: str) -> dict[str, Any] | None:
        rows = self._rows(f"SELECT state FROM {self._t('source_state')} WHERE source=%s", (source,))
        return json.loads(rows[0][0]) if rows else None

    def set_source_state(self, source: str, state: dict[str, Any]) -> None:
        self._rows(f"""INSERT INTO {self._t('source_state')}(source, state) VALUES (%s, %s)
                       ON CONFLICT (source) DO UPDATE SET state=excluded.state RETURNING source""",
                   (source, json.dumps(state, sort_keys=True, ensure_ascii=False)))

    def source_acls(self, source: str) -> dict[str, frozenset[str]]:
        rows = self._rows(f"SELECT doc_id, acl FROM {self._t('documents')} WHERE source=%s", (source,))
        return {r[0]: frozenset(json.loads(r[1])) for r in rows}

    def set_document_acl(self, doc_id: str, acl: frozenset[str]) -> bool:
        with self._atomic():
            c = self.conn
            row = c.execute(f"SELECT content_hash FROM {self._t('documents')} WHERE doc_id=%s", (doc_id,)).fetchone()
            if row is None:
                return False
            acl_json = json.dumps(sorted(acl), ensure_ascii=False)
            new_hash = "acl:" + hashlib.sha256((row[0] + acl_json).encode("utf-8")).hexdigest()
            c.execute(f"UPDATE {self._t('documents')} SET acl=%s, content_hash=%s WHERE doc_id=%s",
                      (acl_json, new_hash, doc_id))
            self._set_acl_rows(doc_id, acl)
            return True

    def _set_acl_rows(self, doc_id: str, acl: Iterable[str]) -> None:
        c = self.conn
        c.execute(f"DELETE FROM {self._t('doc_acl')} WHERE doc_id=%s", (doc_id,))
        ps = sorted(set(acl))
        if ps:
            with c.cursor() as cur:
                cur.executemany(f"INSERT INTO {self._t('doc_acl')}(principal, doc_id) VALUES (%s, %s)",
                                [(p, doc_id) for p in ps])
        self._readable.clear()

    def doc_hashes(self, source: str) -> dict[str, str]:
        return dict(self._rows(f"SELECT doc_id, content_hash FROM {self._t('documents')} WHERE source=%s", (source,)))

    def upsert_document(self, doc: Document, chunks: Sequence[Chunk]) -> tuple[list[int], list[tuple[int, str]]]:
        """As :meth:`Store.upsert_document`: identical chunk rows keep their id (and vector)."""
        with self._atomic():
            c = self.conn
            old = {r[0]: (r[1], tuple(r[2:])) for r in c.execute(
                f"""SELECT chunk_id, id, ordinal, text, title, start, "end", heading_path, page, slide, sheet,
                    slack_ts FROM {self._t('chunks')} WHERE doc_id=%s""", (doc.id,)).fetchall()}
            c.execute(
                f"""INSERT INTO {self._t('documents')}(doc_id, source, source_type, title, uri, updated_at,
                    content_hash, metadata, acl) VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s)
                    ON CONFLICT (doc_id) DO UPDATE SET source=excluded.source, source_type=excluded.source_type,
                    title=excluded.title, uri=excluded.uri, updated_at=excluded.updated_at,
                    content_hash=excluded.content_hash, metadata=excluded.metadata, acl=excluded.acl""",
                (doc.id, doc.source, doc.source_type, doc.title, doc.uri, _iso(doc.updated_at), doc.content_hash(),
                 json.dumps(dict(doc.metadata), ensure_ascii=False, default=str),
                 json.dumps(sorted(doc.acl), ensure_ascii=False)))
            self._set_acl_rows(doc.id, doc.acl)
            keep = {ch.id for ch in chunks if ch.id in old and old[ch.id][1] == _chunk_tuple(ch, doc.title)}
            removed = [old[cid][0] for cid in old if cid not in keep]
            if removed:
                c.execute(f"DELETE FROM {self._t('chunks')} WHERE id = ANY(%s)", (removed,))
            new = [ch for ch in chunks if ch.id not in keep]
            added: list[tuple[int, str]] = []
            if new:
                ids = [r[0] for r in c.execute(f"SELECT nextval('{CONTROL}.chunk_ids') FROM generate_series(1, %s)",
                                               (len(new),)).fetchall()]
                rows = []
                for rid, ch in zip(ids, new):
                    sha = text_sha(ch.text)
                    rows.append((rid, ch.id, doc.id, *_chunk_tuple(ch, doc.title), sha))
                    added.append((int(rid), sha))
                with c.cursor() as cur:
                    cur.executemany(
                        f"""INSERT INTO {self._t('chunks')}(id, chunk_id, doc_id, ordinal, text, title, start, "end",
                            heading_path, page, slide, sheet, slack_ts, text_sha)
                            VALUES (%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s,%s)""", rows)
            return removed, added

    def delete_document(self, doc_id: str) -> list[int]:
        with self._atomic():
            c = self.conn
            ids = [r[0] for r in c.execute(f"DELETE FROM {self._t('chunks')} WHERE doc_id=%s RETURNING id",
                                           (doc_id,)).fetchall()]
            c.execute(f"DELETE FROM {self._t('doc_acl')} WHERE doc_id=%s", (doc_id,))
            c.execute(f"DELETE FROM {self._t('documents')} WHERE doc_id=%s", (doc_id,))
            self._readable.clear()
            return sorted(int(i) for i in ids)

    def chunk_texts(self, batch: int = 256) -> Iterator[list[tuple[int, str, str]]]:
        last = 0
        while True:
            rows = self._rows(f"SELECT id, text, text_sha FROM {self._t('chunks')} WHERE id > %s ORDER BY id LIMIT %s",
                              (last, batch))
            if not rows:
                return
            yield [(int(r[0]), r[1], r[2]) for r in rows]
            last = rows[-1][0]

    def chunk_ids(self) -> np.ndarray:
        rows = self._rows(f"SELECT id FROM {self._t('chunks')} ORDER BY id")
        return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))

    def text_shas(self) -> set[str]:
        return {r[0] for r in self._rows(f"SELECT DISTINCT text_sha FROM {self._t('chunks')}")}

    # reads with the ACL filter
    def _acl(self, alias: str = "c") -> str:
        return (f"EXISTS (SELECT 1 FROM {self._t('doc_acl')} a WHERE a.doc_id = {alias}.doc_id "
                "AND a.principal = ANY(%s))")

    def readable_chunk_ids(self, principals: Iterable[str]) -> np.ndarray:
        ps = sorted(set(principals))
        if not ps:
            return np.zeros(0, dtype=np.int64)
        rows = self._rows(f"SELECT c.id FROM {self._t('chunks')} c WHERE {self._acl()} ORDER BY c.id", (ps,))
        return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))

    @staticmethod
    def _tsquery(fts_query: str) -> tuple[str, list[str]]:
        """The retriever's FTS5 query (quoted terms joined by OR) as an OR of plainto_tsquery."""
        terms = [t for t in re.findall(r'"([^"]+)"', fts_query) if t.strip()] or [fts_query]
        return " || ".join(["plainto_tsquery('english', %s)"] * len(terms)), terms

    def bm25_search(self, fts_query: str, principals: Iterable[str], limit: int) -> list[tuple[int, float]]:
        """(row id, score) best first: ``ts_rank_cd`` over the tsvector (title weighted A), ACL in SQL."""
        ps = sorted(set(principals))
        if not ps or not fts_query or limit <= 0:
            return []
        q, terms = self._tsquery(fts_query)
        rows = self._rows(
            f"""WITH q AS (SELECT ({q}) AS q)
                SELECT c.id, ts_rank_cd(c.tsv, q.q) AS score FROM {self._t('chunks')} c, q
                WHERE c.tsv @@ q.q AND {self._acl()} ORDER BY score DESC, c.id LIMIT %s""", (*terms, ps, limit))
        return [(int(r[0]), float(r[1])) for r in rows]

    def bm25_scores(self, fts_query: str, ids: Sequence[int]) -> dict[int, float]:
        if not fts_query or not ids:
            return {}
        q, terms = self._tsquery(fts_query)
        rows = self._rows(
            f"""WITH q AS (SELECT ({q}) AS q)
                SELECT c.id, ts_rank_cd(c.tsv, q.q) FROM {self._t('chunks')} c, q
                WHERE c.id = ANY(%s) AND c.tsv @@ q.q""", (*terms, [int(i) for i in ids]))
        return {int(r[0]): float(r[1]) for r in rows}

    def chunk_rows(self, ids: Sequence[int], principals: Iterable[str]) -> dict[int, ChunkRow]:
        ps = sorted(set(principals))
        ids = [int(i) for i in ids]
        if not ids or not ps:
            return {}
        rows = self._rows(
            f"""SELECT {_HIT_COLUMNS}
                FROM {self._t('chunks')} c JOIN {self._t('documents')} d ON d.doc_id = c.doc_id
                WHERE c.id = ANY(%s) AND {self._acl()}""", (ids, ps))
        return {int(r[0]): _row_to_chunk_row(r) for r in rows}

    def term_chunk_count(self, word: str, principals: Iterable[str]) -> int:
        ps = sorted(set(principals))
        if not ps:
            return 0
        rows = self._rows(f"""SELECT count(*) FROM {self._t('chunks')} c
                              WHERE c.tsv @@ plainto_tsquery('english', %s) AND {self._acl()}""", (word, ps))
        n = int(rows[0][0])
        if n == 0 and not self._rows("SELECT numnode(plainto_tsquery('english', %s))", (word,))[0][0]:
            return 1 << 30  # a stop word or no word at all: treat as common, as the SQLite store does
        return n

    def phrase_chunk_count(self, phrase: str, principals: Iterable[str]) -> int:
        """As the SQLite store's: chunks the principals may read holding the words in a row."""
        ps = sorted(set(principals))
        if not ps or not re.findall(r"[^\W_]+", phrase):
            return 0
        rows = self._rows(f"""SELECT count(*) FROM {self._t('chunks')} c
                              WHERE c.tsv @@ phraseto_tsquery('english', %s) AND {self._acl()}""", (phrase, ps))
        return int(rows[0][0])

    def vocabulary(self) -> dict[str, int]:
        """The index's words as the SQLite store's FTS5 porter terms -> chunks holding them (read
        once per generation: the spelling candidates)."""
        if self._vocab is None:
            rows = self._rows(f"""SELECT word, ndoc FROM ts_stat($$SELECT to_tsvector('simple', title || ' ' || text)
                                  FROM {self._t('chunks')}$$)""")
            words = [(w, int(n)) for w, n in rows if w.isalpha()]
            vocab: dict[str, int] = {}
            for (w, n), stem in zip(words, porter_stems([w for w, _ in words])):
                vocab[stem] = max(vocab.get(stem, 0), n)  # a chunk holding two forms counts once at least
            self._vocab = vocab
        return self._vocab

    def surface_forms(self, word: str, principals: Iterable[str]) -> dict[str, int]:
        ps = sorted(set(principals))
        if not ps or not word.isalpha():
            return {}
        [term] = porter_stems([word])
        rows = self._rows(f"""SELECT c.text FROM {self._t('chunks')} c
                              WHERE to_tsvector('simple', c.text) @@ to_tsquery('simple', %s) AND {self._acl()}
                              LIMIT 20""", (term.lower() + ":*", ps))
        seen: dict[str, int] = {}
        for (text,) in rows:
            words = [w for w in re.findall(r"[^\W\d_]+", text) if w.lower().startswith(term.lower())]
            for w, stem in zip(words, porter_stems([w.lower() for w in words])):
                if stem == term:
                    seen[w] = seen.get(w, 0) + 1
        return seen

    def named_documents(self, text: str, principals: Iterable[str]) -> list[str]:
        from kb_chatbot.index.store import titles_named_in

        if self._titles is None:
            self._titles = [(d, t) for d, t in self._rows(f"SELECT doc_id, title FROM {self._t('documents')}")]
        found = titles_named_in(text, self._titles)
        ps = sorted(set(principals))
        if not found or not ps:
            return []
        readable = {r[0] for r in self._rows(
            f"SELECT DISTINCT doc_id FROM {self._t('doc_acl')} WHERE doc_id = ANY(%s) AND principal = ANY(%s)",
            (found, ps))}
        return [d for d in found if d in readable]

    def chunk_ids_of(self, doc_ids: Sequence[str]) -> list[int]:
        if not doc_ids:
            return []
        return [int(r[0]) for r in self._rows(f"SELECT id FROM {self._t('chunks')} WHERE doc_id = ANY(%s) ORDER BY id",
                                              (list(doc_ids),))]

    def readable_chunk_count(self, principals: Iterable[str]) -> int:
        key = frozenset(principals)
        if not key:
            return 0
        if key not in self._readable:
            n = int(self._rows(f"SELECT count(*) FROM {self._t('chunks')} c WHERE {self._acl()}", (sorted(key),))[0][0])
            if len(self._readable) > 256:
                self._readable.clear()
            self._readable[key] = n
        return self._readable[key]

    def document_acl(self, doc_id: str) -> frozenset[str]:
        return frozenset(r[0] for r in self._rows(f"SELECT principal FROM {self._t('doc_acl')} WHERE doc_id=%s",
                                                  (doc_id,)))

    def document_ids(self, source: str | None = None) -> list[str]:
        if source is None:
            return [r[0] for r in self._rows(f"SELECT doc_id FROM {self._t('documents')} ORDER BY doc_id")]
        return [r[0] for r in self._rows(f"SELECT doc_id FROM {self._t('documents')} WHERE source=%s ORDER BY doc_id",
                                         (source,))]


# --- vectors: a column of the chunks table ----------------------------------------------------


class PgVectors:
    """The part of :class:`kb_chatbot.index.vectors.FaissIndex` the ingest and the retriever use,
    over ``chunks.embedding`` of one generation. Removing a chunk row removes its vector."""

    def __init__(self, store: PgStore, cfg: IndexConfig, dim: int):
        self.store = store
        self.cfg = cfg
        self.dim = dim

    @property
    def kind(self) -> str:
        return self.cfg.kind

    @property
    def structure(self) -> str:
        return {"flat": "pgvector-exact", "hnsw": "pgvector-hnsw", "ivf": "pgvector-ivfflat"}[self.cfg.kind]

    @property
    def ntotal(self) -> int:
        return int(self.store._rows(f"SELECT count(*) FROM {self.store._t('chunks')} WHERE embedding IS NOT NULL")[0][0])

    def __len__(self) -> int:
        return self.ntotal

    def add(self, ids: Any, vecs: Any) -> None:
        ids = [int(i) for i in np.asarray(ids, dtype=np.int64).reshape(-1)]
        vecs = np.asarray(vecs, dtype=np.float32).reshape(len(ids), -1) if ids else np.zeros((0, self.dim))
        if not ids:
            return
        if vecs.shape[1] != self.dim:
            raise ValueError(f"vectors of dim {vecs.shape[1]} added to an index of dim {self.dim}")
        with self.store.transaction():
            with self.store.conn.cursor() as cur:
                cur.executemany(f"UPDATE {self.store._t('chunks')} SET embedding=%s WHERE id=%s",
                                [(v, i) for i, v in zip(ids, vecs)])

    def remove(self, ids: Any) -> int:
        """The chunk rows are gone already (their vectors with them); clears any left."""
        ids = [int(i) for i in np.asarray(ids, dtype=np.int64).reshape(-1)]
        if not ids:
            return 0
        rows = self.store._rows(f"UPDATE {self.store._t('chunks')} SET embedding=NULL WHERE id = ANY(%s) RETURNING id",
                                (ids,))
        return len(rows)

    def clear(self) -> None:
        """Every vector dropped, the column retyped to ``dim`` (the embedder changed)."""
        with self.store.transaction():
            self.store.conn.execute(f"ALTER TABLE {self.store._t('chunks')} ALTER COLUMN embedding "
                                    f"TYPE vector({self.dim}) USING NULL")

    def settle(self) -> bool:
        return False

    def rebuild(self) -> None:
        """The vector index is built at publish time from ``index.kind``: nothing to do here."""

    def build_index(self) -> None:
        t = self.store._t("chunks")
        name = "chunks_embedding_ann"
        with self.store._lock:
            self.store.conn.execute(f"DROP INDEX IF EXISTS {self.store.schema}.{name}")
            if self.cfg.kind == "hnsw":
                self.store.conn.execute(f"""CREATE INDEX {name} ON {t} USING hnsw (embedding vector_cosine_ops)
                                            WITH (m = {int(self.cfg.hnsw_m)}, ef_construction = 64)""")
            elif self.cfg.kind == "ivf":
                lists = max(1, min(int(self.cfg.ivf_nlist), self.ntotal // 39 or 1))
                self.store.conn.execute(f"""CREATE INDEX {name} ON {t} USING ivfflat (embedding vector_cosine_ops)
                                            WITH (lists = {lists})""")

    def ids(self) -> np.ndarray:
        rows = self.store._rows(f"SELECT id FROM {self.store._t('chunks')} WHERE embedding IS NOT NULL ORDER BY id")
        return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))

    def vectors(self, ids: Any = None) -> tuple[np.ndarray, np.ndarray]:
        t = self.store._t("chunks")
        if ids is None:
            rows = self.store._rows(f"SELECT id, embedding FROM {t} WHERE embedding IS NOT NULL ORDER BY id")
        else:
            want = [int(i) for i in np.asarray(ids, dtype=np.int64).reshape(-1)]
            rows = self.store._rows(f"SELECT id, embedding FROM {t} WHERE id = ANY(%s) AND embedding IS NOT NULL "
                                    "ORDER BY id", (want,))
        if not rows:
            return np.zeros(0, dtype=np.int64), np.zeros((0, self.dim), dtype=np.float32)
        return (np.asarray([r[0] for r in rows], dtype=np.int64),
                np.stack([_as_array(r[1]) for r in rows]))

    def save(self, path: Any) -> None:
        """Nothing to write: the vectors are in Postgres."""

    def search_acl(self, query: Any, k: int, principals: frozenset[str]) -> tuple[np.ndarray, np.ndarray]:
        """Cosine top ``k`` among the chunks ``principals`` may read, the ACL inside the query."""
        ps = sorted(principals)
        if not ps or k <= 0:
            return np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.int64)
        q = np.asarray(query, dtype=np.float32).reshape(-1)
        store = self.store
        readable = store.readable_chunk_count(principals)
        if not readable:
            return np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.int64)
        t = store._t("chunks")
        exact = self.cfg.kind == "flat" or readable < EXACT_SHARE * max(1, self.ntotal_cached())
        rows: list[tuple] = []
        if not exact:
            rows = store._rows(
                f"""SELECT c.id, 1 - (c.embedding <=> %s) FROM {t} c
                    WHERE c.embedding IS NOT NULL AND {store._acl()}
                    ORDER BY c.embedding <=> %s LIMIT %s""", (q, ps, q, k),
                local=(f"SET LOCAL hnsw.ef_search = {max(EF_SEARCH_MIN, 4 * k)}",
                       f"SET LOCAL ivfflat.probes = {int(self.cfg.ivf_nprobe)}"))
            # pgvector < 0.8 filters after the index scan: fewer than k rows can come back
            exact = len(rows) < min(k, readable)
            if exact:
                log.debug("dense search: the ANN scan returned %d of %d readable rows; exact scan", len(rows), k)
        if exact:
            rows = store._rows(
                f"""WITH r AS MATERIALIZED (SELECT c.id, c.embedding FROM {t} c
                        WHERE c.embedding IS NOT NULL AND {store._acl()})
                    SELECT id, 1 - (embedding <=> %s) AS s FROM r ORDER BY embedding <=> %s, id LIMIT %s""",
                (ps, q, q, k))
        return (np.asarray([r[1] for r in rows], dtype=np.float32), np.asarray([r[0] for r in rows], dtype=np.int64))

    def ntotal_cached(self) -> int:
        if getattr(self, "_ntotal", None) is None or not self.store.readonly:
            self._ntotal = self.ntotal
        return self._ntotal


# --- the embedding queue: chunk rows without a vector -----------------------------------------

#: Chunk rows one worker locks and embeds at a time.
EMBED_BATCH = 64


def embed_pending(conn, schema: str, embedder, *, batch: int = EMBED_BATCH, on_batch=None) -> int:
    """Embed the rows of ``schema.chunks`` that have no vector, ``batch`` at a time, each batch
    locked with ``FOR UPDATE SKIP LOCKED`` so that any number of processes and machines can run
    this at once without doing a row twice. A worker that dies rolls its batch back; the rows
    are free again for the others. Returns how many rows this call embedded."""
    done = 0
    while True:
        with conn.transaction():
            rows = conn.execute(f"""SELECT id, text FROM {schema}.chunks WHERE embedding IS NULL ORDER BY id
                                    LIMIT %s FOR UPDATE SKIP LOCKED""", (batch,)).fetchall()
            if not rows:
                return done
            vecs = np.asarray(embedder.embed_documents([r[1] for r in rows]), dtype=np.float32)
            with conn.cursor() as cur:
                cur.executemany(f"UPDATE {schema}.chunks SET embedding=%s WHERE id=%s",
                                [(v, r[0]) for r, v in zip(rows, vecs)])
        done += len(rows)
        if on_batch is not None:
            on_batch(len(rows))


def pending_count(conn, schema: str) -> int:
    return int(conn.execute(f"SELECT count(*) FROM {schema}.chunks WHERE embedding IS NULL").fetchone()[0])


def building_schemas(url: str) -> list[str]:
    """The schemas of generations being built now (not published, not the empty one)."""
    gens = PgGenerations(url)
    try:
        published = {schema_of(g) for (g,) in gens.conn.execute(f"SELECT generation FROM {CONTROL}.generations")}
        return [schema_of(g) for g in gens.listing() if schema_of(g) not in published]
    finally:
        gens.close()


def _worker_main(url: str, schema: str, embedding: dict, batch: int) -> None:
    """A local embedding worker process (spawned): its own connection and embedder."""
    from kb_chatbot.core.settings import EmbeddingConfig
    from kb_chatbot.index.embedder import load_embedder

    conn = connect(url)
    try:
        n = embed_pending(conn, schema, load_embedder(EmbeddingConfig(**embedding)), batch=batch)
        log.info("embed worker done schema=%s embedded=%d", schema, n)
    finally:
        conn.close()


# --- writing and reading generations ----------------------------------------------------------


class PgGenerationWriter:
    """The next generation in a new schema, created on first change: the interface of
    :class:`kb_chatbot.index.generation.GenerationWriter`."""

    def __init__(self, settings: Settings, *, model_id: str, dim: int, on_stage=None):
        url = settings.store.url
        self.settings = settings
        self.on_stage = on_stage or (lambda _stage: None)
        self.conn = connect(url)
        ensure_control(self.conn)
        self.gens = PgGenerations(url, self.conn)
        self.model_id, self.dim = model_id, dim
        self.gen: str | None = None
        self._store: PgStore | None = None
        self._vectors: PgVectors | None = None
        self.changed = False
        self.recovered_from: str | None = None
        self.base = self.gens.current()
        self.base_manifest = self.gens.manifest(self.base) if self.base else None
        m = self.base_manifest or {}
        self.reembed_needed = bool(self.base) and (m.get("embedder") != model_id or int(m.get("dim", 0)) != dim)
        self.kind_changed = bool(self.base) and m.get("index_kind") != settings.index.kind
        self._base_store = PgStore(self.conn, schema_of(self.base), readonly=True) if self.base else None

    @property
    def read_store(self) -> PgStore:
        if self._store is not None:
            return self._store
        if self._base_store is None:
            self._base_store = _empty_store(self.conn, self.dim)
        return self._base_store

    def _begin(self) -> None:
        self.gen = self.gens.new_id()
        s = schema_of(self.gen)
        base_dim = int((self.base_manifest or {}).get("dim", self.dim))
        with self.conn.transaction():
            self.conn.execute(_generation_ddl(s, self.dim if self.reembed_needed or not self.base else base_dim))
            if self.base:
                b = schema_of(self.base)
                for table, cols in _COLUMNS.items():
                    if table == "chunks" and self.reembed_needed:
                        cols_no_vec = cols.replace(", embedding", "")
                        self.conn.execute(f"INSERT INTO {s}.chunks ({cols_no_vec}) SELECT {cols_no_vec} FROM {b}.chunks")
                    else:
                        self.conn.execute(f"INSERT INTO {s}.{table} ({cols}) SELECT {cols} FROM {b}.{table}")
        self._store = PgStore(self.conn, s, readonly=False, dim=self.dim)
        self._vectors = PgVectors(self._store, self.settings.index, self.dim)
        log.info("generation started gen=%s base=%s schema=%s", self.gen, self.base, s)

    @property
    def store(self) -> PgStore:
        if self._store is None:
            self._begin()
        self.changed = True
        return self._store  # type: ignore[return-value]

    @property
    def vectors(self) -> PgVectors:
        if self._vectors is None:
            self._begin()
        self.changed = True
        return self._vectors  # type: ignore[return-value]

    def embed_pending(self, embedder, *, workers: int = 0, progress=None) -> int:
        """Embed every chunk row left without a vector, with ``workers`` local processes besides
        this one (and any `kb embed-worker` on other machines); returns the rows this process
        embedded. ``progress(done, total)`` is told after each batch."""
        import multiprocessing

        store = self.store
        total = pending_count(self.conn, store.schema)
        if not total:
            return 0
        procs = []
        ctx = multiprocessing.get_context("spawn")  # no torch or connection state is forked
        for _ in range(workers):
            p = ctx.Process(target=_worker_main, daemon=False,
                            args=(self.settings.store.url, store.schema,
                                  self.settings.embedding.model_dump(mode="json"), EMBED_BATCH))
            p.start()
            procs.append(p)
        mine = 0

        def tick(n: int) -> None:
            if progress is not None:
                progress(total - pending_count(self.conn, store.schema), total)

        try:
            while True:
                mine += embed_pending(self.conn, store.schema, embedder, on_batch=tick)
                if all(not p.is_alive() for p in procs) or not pending_count(self.conn, store.schema):
                    for p in procs:
                        p.join()
                    if not pending_count(self.conn, store.schema):  # a dead worker's batch is free again
                        break
                else:
                    time.sleep(0.2)  # the rest is locked by workers still embedding
        finally:
            for p in procs:
                if p.is_alive():
                    p.terminate()
                p.join()
        log.info("embedded rows=%d here=%d workers=%d", total, mine, workers)
        return mine

    def new_vectors(self) -> PgVectors:
        """Empty vectors for every chunk (the embedder changed): the column is retyped."""
        v = self.vectors
        v.clear()
        return v

    def replace_vectors(self, vectors: PgVectors) -> None:
        self._vectors = vectors
        self.changed = True

    def publish(self, *, extra: dict[str, Any] | None = None) -> str:
        store, vectors = self.store, self.vectors
        assert self.gen is not None
        missing = store._rows(f"SELECT count(*) FROM {store._t('chunks')} WHERE embedding IS NULL")[0][0]
        if missing:
            raise IndexError_(f"generation {self.gen}: {missing} chunks have no vector; not published")
        vectors.build_index()
        counts = store.counts()
        store.set_meta("generation", self.gen)
        store.set_meta("embedder", self.model_id)
        store.finalize()
        self.on_stage("faiss_written")
        manifest = {
            "generation": self.gen, "parent": self.base,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "embedder": self.model_id, "dim": self.dim, "store": "postgres",
            "index_kind": self.settings.index.kind, "index_structure": vectors.structure,
            "documents": counts["documents"], "chunks": counts["chunks"], "vectors": counts["chunks"],
            **(extra or {}),
        }
        self.on_stage("manifest_written")
        self.gens.publish(self.gen, manifest)
        log.info("generation published gen=%s documents=%d chunks=%d", self.gen, counts["documents"], counts["chunks"])
        self.gens.prune()
        return self.gen

    def discard(self) -> None:
        if self.gen is not None:
            try:
                self.conn.execute(f"DROP SCHEMA IF EXISTS {schema_of(self.gen)} CASCADE")
                log.info("generation discarded gen=%s", self.gen)
            except Exception as e:  # the connection is gone: the next ingest's prune drops it
                log.warning("generation not dropped gen=%s: %r", self.gen, e)
        self.gen = None
        self.close()

    def close(self) -> None:
        try:
            self.conn.close()
        except Exception:
            pass


EMPTY = "kb_empty"


def _empty_store(conn, dim: int) -> PgStore:
    """The store of "nothing indexed yet" (before the first publish): an empty schema with the
    generation tables, created once."""
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(%s)", (LOCK_KEY ^ 2,))
        if not conn.execute("SELECT 1 FROM information_schema.schemata WHERE schema_name=%s", (EMPTY,)).fetchone():
            conn.execute(_generation_ddl(EMPTY, dim))
    return PgStore(conn, EMPTY, readonly=True, dim=dim)


@dataclass
class PgSnapshot:
    """One published generation: the interface of :class:`IndexSnapshot`."""

    generation: str | None
    store: PgStore
    vectors: PgVectors
    manifest: dict[str, Any]
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def dense(self, qvec: np.ndarray, principals: frozenset[str], k: int) -> list[tuple[int, float]]:
        scores, ids = self.vectors.search_acl(qvec, k, principals)
        return [(int(i), float(s)) for i, s in zip(ids, scores)]

    def allowed_ids(self, principals: frozenset[str]) -> np.ndarray | None:
        return self.store.readable_chunk_ids(principals)


class PgIndexReader(SnapshotShortcuts):
    """The published generation, followed at every question (one indexed SELECT of the
    pointer): a re-index published from any node is seen by all at their next question."""

    def __init__(self, settings: Settings, *, missing_ok: bool = False, empty_dim: int = 384):
        self.settings = settings
        self.url = settings.store.url
        self.missing_ok = missing_ok
        self.empty_dim = empty_dim
        self.gens = PgGenerations(self.url)
        self._lock = threading.Lock()
        self._snap: PgSnapshot | None = None
        self.snapshot()

    def snapshot(self) -> PgSnapshot:
        gen = self.gens.current()
        snap = self._snap
        if snap is not None and snap.generation == gen:
            return snap
        with self._lock:
            if self._snap is not None and self._snap.generation == gen:
                return self._snap
            if gen is None:
                if not self.missing_ok:
                    raise IndexError_("no index yet in Postgres (store.url): run `kb reindex`")
                conn = connect(self.url)
                store = _empty_store(conn, self.empty_dim)
                snap = PgSnapshot(None, store, PgVectors(store, self.settings.index, self.empty_dim), {})
            else:
                manifest = self.gens.manifest(gen)
                store = PgStore(connect(self.url), schema_of(gen), readonly=True, dim=int(manifest.get("dim", 0)),
                                url=self.url)
                snap = PgSnapshot(gen, store, PgVectors(store, self.settings.index, int(manifest["dim"])), manifest)
                log.info("index generation opened gen=%s chunks=%s", gen, manifest.get("chunks"))
            self._snap = snap
        # readers mid-query on the old snapshot keep their reference; its connection closes
        # when the last one lets go (psycopg closes a collected connection)
        return snap
