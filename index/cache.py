"""Embedding cache: (embedder model id, sha256 of chunk text) -> vector.

It lives in its own SQLite file under ``data_dir`` (not inside an index generation) because
it must outlive generations: each batch is committed as soon as it is embedded, so the work
of a run that is killed before it publishes is not lost, and unchanged chunks of a changed
document (or a re-chunked one) are never embedded twice. Copying it into every generation
would also cost a full copy per ingest for no benefit to readers, who never need it.
"""
from __future__ import annotations

import logging
import sqlite3
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS vectors (
    model_id TEXT NOT NULL, text_sha TEXT NOT NULL, dim INTEGER NOT NULL, vector BLOB NOT NULL,
    PRIMARY KEY (model_id, text_sha)
) WITHOUT ROWID;
"""


class EmbeddingCache:
    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.conn = sqlite3.connect(str(self.path), isolation_level=None, timeout=30)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.executescript(_SCHEMA)

    def get_many(self, model_id: str, shas: Sequence[str], dim: int) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        uniq = list(dict.fromkeys(shas))
        for i in range(0, len(uniq), 500):
            part = uniq[i:i + 500]
            rows = self.conn.execute(
                f"SELECT text_sha, dim, vector FROM vectors WHERE model_id=? AND text_sha IN ({','.join('?' * len(part))})",
                (model_id, *part),
            ).fetchall()
            for sha, d, blob in rows:
                if d == dim and len(blob) == 4 * dim:
                    out[sha] = np.frombuffer(blob, dtype=np.float32).copy()
        return out

    def put_many(self, model_id: str, items: Iterable[tuple[str, np.ndarray]]) -> None:
        """Store and commit (a killed run keeps what it embedded)."""
        rows = [(model_id, sha, int(v.shape[0]), np.asarray(v, dtype=np.float32).tobytes()) for sha, v in items]
        if not rows:
            return
        self.conn.execute("BEGIN")
        self.conn.executemany("INSERT OR REPLACE INTO vectors(model_id, text_sha, dim, vector) VALUES (?,?,?,?)", rows)
        self.conn.execute("COMMIT")

    def count(self, model_id: str | None = None) -> int:
        if model_id is None:
            return self.conn.execute("SELECT count(*) FROM vectors").fetchone()[0]
        return self.conn.execute("SELECT count(*) FROM vectors WHERE model_id=?", (model_id,)).fetchone()[0]

    def prune(self, model_id: str, keep: set[str]) -> int:
        """Drop vectors of other models and of texts no longer indexed. Returns rows deleted."""
        self.conn.execute("BEGIN")
        self.conn.execute("CREATE TEMP TABLE IF NOT EXISTS keep_sha (sha TEXT PRIMARY KEY) WITHOUT ROWID")
        self.conn.execute("DELETE FROM keep_sha")
        self.conn.executemany("INSERT OR IGNORE INTO keep_sha(sha) VALUES (?)", ((s,) for s in keep))
        cur = self.conn.execute(
            "DELETE FROM vectors WHERE model_id != ? OR text_sha NOT IN (SELECT sha FROM keep_sha)", (model_id,)
        )
        self.conn.execute("COMMIT")
        if cur.rowcount:
            log.info("embedding cache pruned rows=%d", cur.rowcount)
        return cur.rowcount

    def close(self) -> None:
        self.conn.close()
