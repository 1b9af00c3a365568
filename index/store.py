"""SQLite store of one index generation: documents, chunks, ACL principals, sources, FTS5.

``chunks.id`` (INTEGER PRIMARY KEY AUTOINCREMENT, never reused) is the FAISS id of the
chunk's vector; ``chunks.chunk_id`` is the chunker's deterministic id. ``chunks_fts`` is an
external-content FTS5 table over chunk text and document title (porter + unicode61), kept in
step with ``chunks`` by triggers. ``doc_acl`` holds one row per (principal, document), keyed by
principal, so "chunks readable by these principals" is an index lookup plus a join.

A published generation is never written again, so readers open it read-only and immutable
(no locks, no -wal/-shm files). The ingest writes a fresh copy in WAL mode and switches it
back to a single-file (DELETE journal) database before publishing.
"""
from __future__ import annotations

import hashlib
import json
import re
import sqlite3
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

import numpy as np

from kb_chatbot.core.types import Chunk, Document

SCHEMA_VERSION = 1
#: bm25() column weights for (text, title): a title match counts double.
BM25_WEIGHTS = (1.0, 2.0)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS sources (
    name TEXT PRIMARY KEY, type TEXT NOT NULL, path TEXT NOT NULL,
    last_run_at TEXT, last_status TEXT, chunker TEXT
);
CREATE TABLE IF NOT EXISTS documents (
    doc_id TEXT PRIMARY KEY, source TEXT NOT NULL, source_type TEXT NOT NULL,
    title TEXT NOT NULL, uri TEXT NOT NULL, updated_at TEXT NOT NULL,
    content_hash TEXT NOT NULL, metadata TEXT NOT NULL DEFAULT '{}', acl TEXT NOT NULL DEFAULT '[]'
);
CREATE INDEX IF NOT EXISTS documents_source ON documents(source);
CREATE TABLE IF NOT EXISTS chunks (
    id INTEGER PRIMARY KEY AUTOINCREMENT, chunk_id TEXT NOT NULL UNIQUE,
    doc_id TEXT NOT NULL REFERENCES documents(doc_id), ordinal INTEGER NOT NULL,
    text TEXT NOT NULL, title TEXT NOT NULL, start INTEGER NOT NULL, "end" INTEGER NOT NULL,
    heading_path TEXT NOT NULL DEFAULT '[]', page INTEGER, slide INTEGER, sheet TEXT, slack_ts TEXT,
    text_sha TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS chunks_doc ON chunks(doc_id);
CREATE TABLE IF NOT EXISTS doc_acl (
    principal TEXT NOT NULL, doc_id TEXT NOT NULL, PRIMARY KEY (principal, doc_id)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS doc_acl_doc ON doc_acl(doc_id);
CREATE TABLE IF NOT EXISTS source_state (source TEXT PRIMARY KEY, state TEXT NOT NULL);
CREATE VIRTUAL TABLE IF NOT EXISTS chunks_fts USING fts5(
    text, title, content='chunks', content_rowid='id', tokenize='porter unicode61 remove_diacritics 2'
);
CREATE TRIGGER IF NOT EXISTS chunks_ai AFTER INSERT ON chunks BEGIN
    INSERT INTO chunks_fts(rowid, text, title) VALUES (new.id, new.text, new.title);
END;
CREATE TRIGGER IF NOT EXISTS chunks_ad AFTER DELETE ON chunks BEGIN
    INSERT INTO chunks_fts(chunks_fts, rowid, text, title) VALUES ('delete', old.id, old.text, old.title);
END;
CREATE TRIGGER IF NOT EXISTS chunks_au AFTER UPDATE ON chunks BEGIN
    INSERT INTO chunks_fts(chunks_fts, rowid, text, title) VALUES ('delete', old.id, old.text, old.title);
    INSERT INTO chunks_fts(rowid, text, title) VALUES (new.id, new.text, new.title);
END;
"""

_HIT_COLUMNS = """c.id, c.chunk_id, c.doc_id, c.ordinal, c.text, c.start, c."end", c.heading_path,
    c.page, c.slide, c.sheet, c.slack_ts, d.title, d.uri, d.source, d.source_type"""


def text_sha(text: str) -> str:
    """The embedding-cache key of a chunk text."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


@dataclass(frozen=True)
class ChunkRow:
    """A chunk joined with its document: what a Hit is made of."""

    id: int
    chunk: Chunk
    doc_title: str
    doc_uri: str
    source: str
    source_type: str


@dataclass(frozen=True)
class SourceStats:
    name: str
    type: str
    path: str
    last_run_at: str | None
    last_status: str | None
    documents: int
    chunks: int


def _chunk_tuple(c: Chunk, title: str) -> tuple:
    """What a stored chunk row must equal for the row (and its vector) to be kept as is."""
    return (c.ordinal, c.text, title, c.start, c.end, json.dumps(list(c.heading_path), ensure_ascii=False),
            c.page, c.slide, c.sheet, c.slack_ts)


#: Variables per statement, well under SQLite's limit of 32,766.
_MAX_VARS = 10_000


_STEMMER: sqlite3.Connection | None = None
_STEMMER_LOCK = threading.Lock()


def porter_stems(words: Sequence[str]) -> list[str]:
    """Each word's term as the index's FTS5 tokenizer makes it ('services' -> 'servic'), from
    the same tokenizer in an in-memory table, so a question word and the index always agree."""
    global _STEMMER
    out = []
    with _STEMMER_LOCK:
        if _STEMMER is None:
            _STEMMER = sqlite3.connect(":memory:", check_same_thread=False)
            _STEMMER.execute("CREATE VIRTUAL TABLE w USING fts5(t, tokenize='porter unicode61 remove_diacritics 2')")
            _STEMMER.execute("CREATE VIRTUAL TABLE wv USING fts5vocab(w, 'instance')")
        for word in words:
            _STEMMER.execute("DELETE FROM w")
            _STEMMER.execute("INSERT INTO w(rowid, t) VALUES (1, ?)", (word,))
            terms = [r[0] for r in _STEMMER.execute("SELECT term FROM wv ORDER BY offset")]
            out.append(terms[0] if len(terms) == 1 else word.lower())
    return out


def titles_named_in(text: str, titles: Sequence[tuple[str, str]]) -> list[str]:
    """The doc ids of ``titles`` ((doc id, title) pairs) whose title is written in ``text``: a
    file name with or without its extension, or a title of two or more words; whole words,
    case aside."""
    low = " ".join(text.lower().split())
    found = []
    for doc_id, title in titles:
        name = " ".join(title.lower().split())
        stem = name.rsplit(".", 1)[0] if re.search(r"\.[a-z0-9]{2,5}$", name) else None
        forms = [f for f in (name, stem) if f and len(f) >= 5 and (" " in f or f != stem and "." in f)]
        if any(re.search(r"(?<!\w)" + re.escape(f) + r"(?!\w)", low) for f in forms):
            found.append(doc_id)
    return found


def _placeholders(n: int) -> str:
    return ",".join("?" * n)


class Store:
    """One generation's SQLite database. Use :meth:`create`/:meth:`open_writable` to write,
    :meth:`open_readonly` to read a published generation."""

    def __init__(self, conn: sqlite3.Connection, path: Path | None, *, readonly: bool):
        self.conn = conn
        self.path = path
        self.readonly = readonly
        self._lock = threading.RLock()  # one connection shared by reader threads

    # --- opening ------------------------------------------------------------------------

    @classmethod
    def create(cls, path: str | Path) -> "Store":
        """A new, empty database (``path`` must not exist)."""
        path = Path(path)
        if path.exists():
            raise FileExistsError(f"{path} already exists")
        return cls.open_writable(path)

    @classmethod
    def open_writable(cls, path: str | Path) -> "Store":
        path = Path(path)
        conn = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        conn.execute("PRAGMA journal_mode=WAL")
        # an unpublished generation is thrown away after a crash: no need to sync each commit
        conn.execute("PRAGMA synchronous=OFF")
        conn.executescript(_SCHEMA)
        conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        return cls(conn, path, readonly=False)

    @classmethod
    def open_readonly(cls, path: str | Path) -> "Store":
        path = Path(path)
        if not path.is_file():
            from kb_chatbot.core.errors import IndexError_

            raise IndexError_(f"index database missing: {path}; run `kb reindex`")
        uri = f"{path.resolve().as_uri()}?mode=ro&immutable=1"
        conn = sqlite3.connect(uri, uri=True, check_same_thread=False)
        return cls(conn, path, readonly=True)

    @classmethod
    def empty(cls) -> "Store":
        """An in-memory store with the schema and nothing in it (before the first ingest)."""
        conn = sqlite3.connect(":memory:", check_same_thread=False, isolation_level=None)
        conn.executescript(_SCHEMA)
        return cls(conn, None, readonly=True)

    def copy_to(self, path: str | Path) -> "Store":
        """Copy this database to ``path`` with SQLite's backup API and open the copy for writing."""
        path = Path(path)
        dst = sqlite3.connect(str(path))
        with self._lock:
            self.conn.backup(dst)
        dst.close()
        return Store.open_writable(path)

    def close(self) -> None:
        self.conn.close()

    def finalize(self) -> None:
        """Before publishing: fold the WAL into the file, one file, fsynced, closed."""
        with self._lock:
            self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            self.conn.execute("PRAGMA journal_mode=DELETE")
            self.conn.execute("PRAGMA synchronous=FULL")
            self.conn.close()
        if self.path is not None:
            import os

            fd = os.open(self.path, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)

    # --- meta and sources ---------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        with self._lock:
            row = self.conn.execute("SELECT value FROM meta WHERE key=?", (key,)).fetchone()
        return row[0] if row else None

    def set_meta(self, key: str, value: str) -> None:
        with self._lock:
            self.conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, value))

    def set_source(self, name: str, type_: str, path: str, *, last_run_at: str, last_status: str,
                   chunker: str | None = None) -> None:
        """Record a source's last run; ``chunker`` is the chunker fingerprint its chunks were made with."""
        with self._lock:
            self.conn.execute(
                """INSERT INTO sources(name, type, path, last_run_at, last_status, chunker) VALUES (?,?,?,?,?,?)
                   ON CONFLICT(name) DO UPDATE SET type=excluded.type, path=excluded.path,
                   last_run_at=excluded.last_run_at, last_status=excluded.last_status,
                   chunker=coalesce(excluded.chunker, sources.chunker)""",
                (name, type_, path, last_run_at, last_status, chunker),
            )

    def source_chunker(self, name: str) -> str | None:
        with self._lock:
            row = self.conn.execute("SELECT chunker FROM sources WHERE name=?", (name,)).fetchone()
        return row[0] if row else None

    def source_stats(self) -> list[SourceStats]:
        """Every source that has a row or documents, with document and chunk counts."""
        with self._lock:
            rows = self.conn.execute(
                """
                WITH names AS (SELECT name FROM sources UNION SELECT DISTINCT source FROM documents),
                dc AS (SELECT source, count(*) AS n FROM documents GROUP BY source),
                cc AS (SELECT d.source, count(*) AS n FROM chunks c JOIN documents d ON d.doc_id=c.doc_id
                       GROUP BY d.source)
                SELECT n.name, s.type, s.path, s.last_run_at, s.last_status,
                       coalesce(dc.n, 0), coalesce(cc.n, 0),
                       (SELECT source_type FROM documents WHERE source=n.name LIMIT 1)
                FROM names n LEFT JOIN sources s ON s.name=n.name LEFT JOIN dc ON dc.source=n.name
                LEFT JOIN cc ON cc.source=n.name ORDER BY n.name
                """
            ).fetchall()
        return [SourceStats(r[0], r[1] or r[7] or "?", r[2] or "", r[3], r[4], r[5], r[6]) for r in rows]

    def counts(self) -> dict[str, int]:
        with self._lock:
            docs = self.conn.execute("SELECT count(*) FROM documents").fetchone()[0]
            chunks = self.conn.execute("SELECT count(*) FROM chunks").fetchone()[0]
        return {"documents": docs, "chunks": chunks}

    # --- writes -------------------------------------------------------------------------

    def transaction(self):
        """``with store.transaction():`` groups writes into one commit."""
        return _Transaction(self)

    @contextmanager
    def _atomic(self) -> Iterator[None]:
        """All-or-nothing, inside or outside an open transaction (a SAVEPOINT)."""
        with self._lock:
            self.conn.execute("SAVEPOINT kb_write")
            try:
                yield
            except BaseException:
                self.conn.execute("ROLLBACK TO kb_write")
                self.conn.execute("RELEASE kb_write")
                raise
            self.conn.execute("RELEASE kb_write")

    def source_state(self, source: str) -> dict[str, Any] | None:
        """What an API connector stored after its last published sync (cursors, watermarks, the
        permission inputs of each document); None before the first one."""
        with self._lock:
            try:
                row = self.conn.execute("SELECT state FROM source_state WHERE source=?", (source,)).fetchone()
            except sqlite3.OperationalError:  # a generation written before the table existed
                return None
        return json.loads(row[0]) if row else None

    def set_source_state(self, source: str, state: dict[str, Any]) -> None:
        with self._lock:
            self.conn.execute("INSERT OR REPLACE INTO source_state(source, state) VALUES (?, ?)",
                              (source, json.dumps(state, sort_keys=True, ensure_ascii=False)))

    def source_acls(self, source: str) -> dict[str, frozenset[str]]:
        """Every document of ``source`` with the ACL it was indexed with."""
        with self._lock:
            rows = self.conn.execute("SELECT doc_id, acl FROM documents WHERE source=?", (source,)).fetchall()
        return {r[0]: frozenset(json.loads(r[1])) for r in rows}

    def set_document_acl(self, doc_id: str, acl: frozenset[str]) -> bool:
        """Replace a document's readers without touching its text, chunks or vectors (a sharing
        or membership change at the source). False when the document is not indexed."""
        with self._atomic():
            c = self.conn
            row = c.execute("SELECT content_hash FROM documents WHERE doc_id=?", (doc_id,)).fetchone()
            if row is None:
                return False
            acl_json = json.dumps(sorted(acl), ensure_ascii=False)
            # not the hash of any real content: the next full read of the document rewrites it
            new_hash = "acl:" + hashlib.sha256((row[0] + acl_json).encode("utf-8")).hexdigest()
            c.execute("UPDATE documents SET acl=?, content_hash=? WHERE doc_id=?", (acl_json, new_hash, doc_id))
            c.execute("DELETE FROM doc_acl WHERE doc_id=?", (doc_id,))
            c.executemany("INSERT INTO doc_acl(principal, doc_id) VALUES (?, ?)", [(p, doc_id) for p in sorted(acl)])
            return True

    def doc_hashes(self, source: str) -> dict[str, str]:
        with self._lock:
            rows = self.conn.execute("SELECT doc_id, content_hash FROM documents WHERE source=?", (source,))
            return dict(rows.fetchall())

    def upsert_document(self, doc: Document, chunks: Sequence[Chunk]) -> tuple[list[int], list[tuple[int, str]]]:
        """Insert or replace ``doc`` and its chunks.

        Chunk rows that are identical to the stored ones (same chunk id, text, offsets,
        location and title) are kept with their row id, so their vectors stay as they are.
        Returns (row ids removed, [(new row id, text sha)] added): the caller removes and adds
        the matching vectors.
        """
        with self._atomic():
            c = self.conn
            old = {r[0]: (r[1], tuple(r[2:])) for r in c.execute(
                """SELECT chunk_id, id, ordinal, text, title, start, "end", heading_path, page, slide, sheet,
                   slack_ts FROM chunks WHERE doc_id=?""", (doc.id,))}
            c.execute(
                """INSERT INTO documents(doc_id, source, source_type, title, uri, updated_at, content_hash, metadata, acl)
                   VALUES (?,?,?,?,?,?,?,?,?)
                   ON CONFLICT(doc_id) DO UPDATE SET source=excluded.source, source_type=excluded.source_type,
                   title=excluded.title, uri=excluded.uri, updated_at=excluded.updated_at,
                   content_hash=excluded.content_hash, metadata=excluded.metadata, acl=excluded.acl""",
                (doc.id, doc.source, doc.source_type, doc.title, doc.uri, _iso(doc.updated_at), doc.content_hash(),
                 json.dumps(dict(doc.metadata), ensure_ascii=False, default=str),
                 json.dumps(sorted(doc.acl), ensure_ascii=False)),
            )
            c.execute("DELETE FROM doc_acl WHERE doc_id=?", (doc.id,))
            c.executemany("INSERT INTO doc_acl(principal, doc_id) VALUES (?, ?)", [(p, doc.id) for p in sorted(doc.acl)])
            keep: set[str] = set()
            for ch in chunks:
                prev = old.get(ch.id)
                if prev is not None and prev[1] == _chunk_tuple(ch, doc.title):
                    keep.add(ch.id)
            removed = [old[cid][0] for cid in old if cid not in keep]
            for i in range(0, len(removed), _MAX_VARS):  # SQLite allows 32,766 variables a statement
                part = removed[i:i + _MAX_VARS]
                c.execute(f"DELETE FROM chunks WHERE id IN ({_placeholders(len(part))})", part)
            added: list[tuple[int, str]] = []
            for ch in chunks:
                if ch.id in keep:
                    continue
                sha = text_sha(ch.text)
                cur = c.execute(
                    """INSERT INTO chunks(chunk_id, doc_id, ordinal, text, title, start, "end", heading_path,
                       page, slide, sheet, slack_ts, text_sha) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)""",
                    (ch.id, doc.id, *_chunk_tuple(ch, doc.title), sha),
                )
                added.append((int(cur.lastrowid), sha))
            return removed, added

    def delete_document(self, doc_id: str) -> list[int]:
        """Delete a document with its chunks (FTS rows by trigger) and ACL rows; returns row ids."""
        with self._atomic():
            c = self.conn
            ids = [r[0] for r in c.execute("SELECT id FROM chunks WHERE doc_id=?", (doc_id,))]
            c.execute("DELETE FROM chunks WHERE doc_id=?", (doc_id,))
            c.execute("DELETE FROM doc_acl WHERE doc_id=?", (doc_id,))
            c.execute("DELETE FROM documents WHERE doc_id=?", (doc_id,))
            return ids

    def chunk_texts(self, batch: int = 256) -> Iterator[list[tuple[int, str, str]]]:
        """All (row id, text, text sha), in batches (re-embedding after a model change)."""
        last = 0
        while True:  # keyset pagination: memory stays at one batch
            with self._lock:
                rows = self.conn.execute("SELECT id, text, text_sha FROM chunks WHERE id > ? ORDER BY id LIMIT ?",
                                         (last, batch)).fetchall()
            if not rows:
                return
            yield rows
            last = rows[-1][0]

    def chunk_ids(self) -> np.ndarray:
        with self._lock:
            rows = self.conn.execute("SELECT id FROM chunks ORDER BY id").fetchall()
        return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))

    def text_shas(self) -> set[str]:
        with self._lock:
            return {r[0] for r in self.conn.execute("SELECT DISTINCT text_sha FROM chunks")}

    # --- reads with the ACL filter ------------------------------------------------------

    def readable_chunk_ids(self, principals: Iterable[str]) -> np.ndarray:
        """Sorted row ids of the chunks whose document any of ``principals`` may read."""
        ps = sorted(set(principals))
        if not ps:
            return np.zeros(0, dtype=np.int64)
        with self._lock:
            rows = self.conn.execute(
                f"""SELECT DISTINCT c.id FROM doc_acl a JOIN chunks c ON c.doc_id = a.doc_id
                    WHERE a.principal IN ({_placeholders(len(ps))}) ORDER BY c.id""", ps).fetchall()
        return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))

    def bm25_search(self, fts_query: str, principals: Iterable[str], limit: int) -> list[tuple[int, float]]:
        """(row id, score) best first; score is -bm25 (higher is better). ACL applied in SQL.

        ``fts_query`` must be built by the caller from quoted terms (see retriever)."""
        ps = sorted(set(principals))
        if not ps or not fts_query or limit <= 0:
            return []
        with self._lock:
            rows = self.conn.execute(
                f"""SELECT f.rowid, -bm25(chunks_fts, ?, ?) AS score
                    FROM chunks_fts f JOIN chunks c ON c.id = f.rowid
                    WHERE chunks_fts MATCH ? AND EXISTS (
                        SELECT 1 FROM doc_acl a WHERE a.doc_id = c.doc_id
                        AND a.principal IN ({_placeholders(len(ps))}))
                    ORDER BY bm25(chunks_fts, ?, ?) LIMIT ?""",
                (*BM25_WEIGHTS, fts_query, *ps, *BM25_WEIGHTS, limit)).fetchall()
        return [(int(r[0]), float(r[1])) for r in rows]

    def bm25_scores(self, fts_query: str, ids: Sequence[int]) -> dict[int, float]:
        """-bm25 for the given row ids that match ``fts_query`` (to annotate dense hits)."""
        if not fts_query or not ids:
            return {}
        with self._lock:
            rows = self.conn.execute(
                f"""SELECT rowid, -bm25(chunks_fts, ?, ?) FROM chunks_fts
                    WHERE chunks_fts MATCH ? AND rowid IN ({_placeholders(len(ids))})""",
                (*BM25_WEIGHTS, fts_query, *[int(i) for i in ids])).fetchall()
        return {int(r[0]): float(r[1]) for r in rows}

    def chunk_rows(self, ids: Sequence[int], principals: Iterable[str]) -> dict[int, ChunkRow]:
        """Chunk + document fields for the ids ``principals`` may read (others are left out)."""
        ps = sorted(set(principals))
        ids = [int(i) for i in ids]
        if not ids or not ps:
            return {}
        with self._lock:
            rows = self.conn.execute(
                f"""SELECT {_HIT_COLUMNS} FROM chunks c JOIN documents d ON d.doc_id = c.doc_id
                    WHERE c.id IN ({_placeholders(len(ids))}) AND EXISTS (
                        SELECT 1 FROM doc_acl a WHERE a.doc_id = c.doc_id
                        AND a.principal IN ({_placeholders(len(ps))}))""", (*ids, *ps)).fetchall()
        return {int(r[0]): _row_to_chunk_row(r) for r in rows}

    def term_chunk_count(self, word: str, principals: Iterable[str]) -> int:
        """In how many chunks that ``principals`` may read ``word`` occurs (FTS5's porter-stemmed
        terms, text or title): how specific a question's word is to what the asker can see.
        Unreadable chunks never count, so the answer reveals nothing about them."""
        ps = sorted(set(principals))
        if not ps:
            return 0
        term = '"' + word.replace('"', " ") + '"'
        with self._lock:
            try:
                return int(self.conn.execute(
                    f"""SELECT count(*) FROM chunks_fts f JOIN chunks c ON c.id = f.rowid
                        WHERE chunks_fts MATCH ? AND EXISTS (SELECT 1 FROM doc_acl a WHERE a.doc_id = c.doc_id
                        AND a.principal IN ({_placeholders(len(ps))}))""", [term, *ps]).fetchone()[0])
            except sqlite3.OperationalError:  # not a term FTS5 can look up: treat as common
                return 1 << 30

    def phrase_chunk_count(self, phrase: str, principals: Iterable[str]) -> int:
        """In how many chunks ``principals`` may read these words occur next to each other, in
        this order (stemmed: "annual leaves" counts "annual leave"); the speller's context.
        Unreadable chunks never count."""
        words = re.findall(r"[^\W_]+", phrase)
        if not words:
            return 0
        return self.term_chunk_count(" ".join(words), principals)  # a quoted FTS5 string is a phrase

    def vocabulary(self) -> dict[str, int]:
        """Every FTS5 term of the index (porter stems of chunk text and titles) -> the number of
        chunks holding it; read once per store (a published generation never changes). The
        candidates of spelling correction: a candidate is shown to a user only after
        :meth:`term_chunk_count` finds it in a chunk they may read."""
        if getattr(self, "_vocab", None) is None:
            with self._lock:
                self.conn.execute("CREATE VIRTUAL TABLE IF NOT EXISTS temp.chunks_vocab "
                                  "USING fts5vocab(main, 'chunks_fts', 'row')")
                self._vocab = {t: int(n) for t, n in self.conn.execute("SELECT term, doc FROM temp.chunks_vocab")
                               if t.isalpha()}
        return self._vocab

    def surface_forms(self, word: str, principals: Iterable[str]) -> dict[str, int]:
        """How the index term of ``word`` (a word, or a term that is its own stem: FTS5 stems
        the query) is written in (up to 20) chunks ``principals`` may read, case kept, with
        counts ({"services": 9, "Services": 1, "service": 4} for "services"); empty when none
        of them holds it."""
        ps = sorted(set(principals))
        if not ps or not word.isalpha():
            return {}
        with self._lock:
            try:
                rows = self.conn.execute(
                    f"""SELECT highlight(chunks_fts, 0, char(1), char(2)) FROM chunks_fts f JOIN chunks c
                        ON c.id = f.rowid WHERE chunks_fts MATCH ? AND EXISTS (SELECT 1 FROM doc_acl a
                        WHERE a.doc_id = c.doc_id AND a.principal IN ({_placeholders(len(ps))})) LIMIT 20""",
                    [f'text:"{word}"', *ps]).fetchall()
            except sqlite3.OperationalError:
                return {}
        seen: dict[str, int] = {}
        for (text,) in rows:
            for piece in (text or "").split("\x01")[1:]:
                form = piece.split("\x02", 1)[0]
                seen[form] = seen.get(form, 0) + 1
        return seen

    def named_documents(self, text: str, principals: Iterable[str]) -> list[str]:
        """Documents ``principals`` may read whose title is written in ``text``: a file name
        ("Benefits Details.pdf", with or without its extension) or a title of two or more words
        ("Paid parental leave"), whole words, case aside. One-word titles never count: they are
        ordinary words in questions."""
        if getattr(self, "_titles", None) is None:
            with self._lock:
                self._titles = [(d, t) for d, t in self.conn.execute("SELECT doc_id, title FROM documents")]
        found = titles_named_in(text, self._titles)
        if not found:
            return []
        ps = sorted(set(principals))
        with self._lock:
            readable = {r[0] for r in self.conn.execute(
                f"""SELECT DISTINCT doc_id FROM doc_acl WHERE doc_id IN ({_placeholders(len(found))})
                    AND principal IN ({_placeholders(len(ps))})""", [*found, *ps])} if ps else set()
        return [d for d in found if d in readable]

    def chunk_ids_of(self, doc_ids: Sequence[str]) -> list[int]:
        """The chunk row ids of ``doc_ids`` (callers check access: :meth:`chunk_rows` does)."""
        if not doc_ids:
            return []
        with self._lock:
            return [int(r[0]) for r in self.conn.execute(
                f"SELECT id FROM chunks WHERE doc_id IN ({_placeholders(len(doc_ids))}) ORDER BY id", list(doc_ids))]

    def readable_chunk_count(self, principals: Iterable[str]) -> int:
        """How many chunks ``principals`` may read."""
        ps = sorted(set(principals))
        if not ps:
            return 0
        with self._lock:
            return int(self.conn.execute(
                f"""SELECT count(*) FROM chunks c WHERE EXISTS (SELECT 1 FROM doc_acl a WHERE a.doc_id = c.doc_id
                    AND a.principal IN ({_placeholders(len(ps))}))""", ps).fetchone()[0])

    def document_acl(self, doc_id: str) -> frozenset[str]:
        with self._lock:
            return frozenset(r[0] for r in self.conn.execute("SELECT principal FROM doc_acl WHERE doc_id=?", (doc_id,)))

    def document_ids(self, source: str | None = None) -> list[str]:
        with self._lock:
            if source is None:
                rows = self.conn.execute("SELECT doc_id FROM documents ORDER BY doc_id")
            else:
                rows = self.conn.execute("SELECT doc_id FROM documents WHERE source=? ORDER BY doc_id", (source,))
            return [r[0] for r in rows]


class _Transaction:
    def __init__(self, store: Store):
        self.store = store

    def __enter__(self) -> Store:
        self.store._lock.acquire()
        self.store.conn.execute("BEGIN")
        return self.store

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self.store.conn.execute("COMMIT" if exc_type is None else "ROLLBACK")
        finally:
            self.store._lock.release()


def _iso(dt: datetime) -> str:
    return dt.isoformat()


def _row_to_chunk_row(r: Any) -> ChunkRow:
    chunk = Chunk(
        id=r[1], doc_id=r[2], ordinal=r[3], text=r[4], start=r[5], end=r[6],
        heading_path=tuple(json.loads(r[7] or "[]")), page=r[8], slide=r[9], sheet=r[10], slack_ts=r[11],
    )
    return ChunkRow(id=int(r[0]), chunk=chunk, doc_title=r[12], doc_uri=r[13], source=r[14], source_type=r[15])
