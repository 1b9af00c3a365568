"""Shared by the API connector tests: settings on the hash embedder, sync, and reading back."""
from __future__ import annotations

import sqlite3
from pathlib import Path

from kb_chatbot.core.settings import Settings, SourceConfig
from kb_chatbot.core.types import Principal
from kb_chatbot.index.embedder import HashEmbedder
from kb_chatbot.index.generation import DB_NAME, Generations, open_index
from kb_chatbot.index.retriever import HybridRetriever
from kb_chatbot.ingest.sync import sync_sources


class CountingEmbedder(HashEmbedder):
    def __init__(self) -> None:
        super().__init__(384)
        self.seen: list[str] = []

    def embed_documents(self, texts):
        self.seen.extend(texts)
        return super().embed_documents(texts)


def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path / "data", embedding={"model": "hash"},
                    chunking={"chunk_tokens": 64, "overlap_tokens": 0})


def sync(s: Settings, src: SourceConfig, emb: CountingEmbedder | None = None):
    return sync_sources(s, [src], embedder=emb or CountingEmbedder())


def db(s: Settings) -> sqlite3.Connection:
    gens = Generations(s.index_dir)
    return sqlite3.connect(str(gens.path(gens.current()) / DB_NAME))


def doc_acls(s: Settings, source: str) -> dict[str, set[str]]:
    conn = db(s)
    out: dict[str, set[str]] = {}
    for doc_id, principal in conn.execute(
            "SELECT d.doc_id, a.principal FROM documents d LEFT JOIN doc_acl a ON a.doc_id=d.doc_id WHERE d.source=?",
            (source,)):
        out.setdefault(doc_id, set())
        if principal:
            out[doc_id].add(principal)
    conn.close()
    return out


def doc_texts(s: Settings, source: str) -> dict[str, str]:
    conn = db(s)
    rows = conn.execute("SELECT c.doc_id, group_concat(c.text, ' ') FROM chunks c JOIN documents d ON d.doc_id=c.doc_id "
                        "WHERE d.source=? GROUP BY c.doc_id", (source,)).fetchall()
    conn.close()
    return dict(rows)


def readable(s: Settings, user: Principal, query: str, k: int = 20) -> set[str]:
    """Doc ids of what ``user`` gets back for ``query`` (through the real retriever and its ACL filter)."""
    r = HybridRetriever(open_index(s), HashEmbedder(), s.retrieval)
    return {h.chunk.doc_id for h in r.retrieve(query, user=user, top_k=k)}


def resync_unchanged(s: Settings, src: SourceConfig, fake):
    """Sync twice with nothing changed at the source in between; the second sync must embed
    nothing and publish nothing. Returns its report (``fake.calls`` holds its calls)."""
    sync(s, src)
    fake.reset_calls()
    emb = CountingEmbedder()
    rep = sync(s, src, emb)
    assert emb.seen == [] and rep.generation is None
    return rep


def sync_many(s: Settings, sources: list[SourceConfig]):
    return sync_sources(s, sources, embedder=CountingEmbedder())
