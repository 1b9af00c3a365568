"""SQLite store: round trip of documents/chunks/ACL/FTS, in-place updates, deletes, read-only copies."""
from __future__ import annotations

import json
import sqlite3
from datetime import datetime, timezone

import pytest

from kb_chatbot.core.types import Chunk, Document, Section
from kb_chatbot.index.store import Store, text_sha


def _doc(doc_id: str, text: str, acl=("public",), title="Title", source="wiki-a", **kw) -> Document:
    return Document(
        id=doc_id, source=source, source_type="wiki", title=title, uri=f"https://wiki/{doc_id}",
        updated_at=datetime(2024, 5, 1, 12, 0, tzinfo=timezone.utc), text=text, acl=frozenset(acl),
        sections=(Section(0, len(text), heading_path=("Top", "Sub")),), metadata={"path": doc_id, "tags": ["x"]}, **kw,
    )


def _chunks(doc: Document, parts: list[str], **loc) -> list[Chunk]:
    out, pos = [], 0
    for i, p in enumerate(parts):
        start = doc.text.index(p, pos)
        out.append(Chunk(id=f"{doc.id}#{start}:{text_sha(p)[:8]}", doc_id=doc.id, ordinal=i, text=p, start=start,
                         end=start + len(p), heading_path=("Top", "Sub"), **loc))
        pos = start + len(p)
    return out


def _count(store: Store, sql: str, *args) -> int:
    return store.conn.execute(sql, args).fetchone()[0]


@pytest.fixture
def store(tmp_path):
    s = Store.create(tmp_path / "kb.sqlite3")
    yield s
    try:
        s.close()
    except sqlite3.ProgrammingError:
        pass


def test_round_trip(store):
    doc = _doc("wiki-a:pto.md", "Vacation policy. Employees get 25 days of paid leave.", acl=["group:hr", "user:carol"])
    chunks = _chunks(doc, ["Vacation policy.", "Employees get 25 days of paid leave."], page=3)
    removed, added = store.upsert_document(doc, chunks)
    assert removed == [] and [sha for _, sha in added] == [text_sha(c.text) for c in chunks]
    assert store.doc_hashes("wiki-a") == {doc.id: doc.content_hash()}
    assert store.document_acl(doc.id) == frozenset({"group:hr", "user:carol"})
    row = store.conn.execute("SELECT title, uri, updated_at, metadata, acl, source_type FROM documents").fetchone()
    assert row[0] == "Title" and row[1] == "https://wiki/wiki-a:pto.md"
    assert datetime.fromisoformat(row[2]) == doc.updated_at
    assert json.loads(row[3]) == {"path": "wiki-a:pto.md", "tags": ["x"]}
    assert json.loads(row[4]) == ["group:hr", "user:carol"] and row[5] == "wiki"

    ids = [i for i, _ in added]
    rows = store.chunk_rows(ids, {"user:carol"})
    assert set(rows) == set(ids)
    r = rows[ids[1]]
    assert r.chunk == chunks[1]  # every field survives, heading path and page included
    assert (r.doc_title, r.doc_uri, r.source, r.source_type) == ("Title", doc.uri, "wiki-a", "wiki")
    assert r.chunk.location() == "page 3, Top > Sub"


def test_acl_filters_reads(store):
    a = _doc("wiki-a:a", "alpha falcon secret", acl=["user:alice"])
    b = _doc("wiki-a:b", "beta falcon public notes", acl=["public"])
    _, added_a = store.upsert_document(a, _chunks(a, ["alpha falcon secret"]))
    _, added_b = store.upsert_document(b, _chunks(b, ["beta falcon public notes"]))
    id_a, id_b = added_a[0][0], added_b[0][0]
    assert list(store.readable_chunk_ids({"public"})) == [id_b]
    assert list(store.readable_chunk_ids({"public", "user:alice"})) == sorted([id_a, id_b])
    assert list(store.readable_chunk_ids(set())) == []
    # BM25 joins the ACL table: bob never sees alice's chunk, even though it matches better
    assert [i for i, _ in store.bm25_search('"falcon"', {"public", "user:bob"}, 10)] == [id_b]
    got = store.bm25_search('"falcon" OR "secret"', {"public", "user:alice"}, 10)
    assert [i for i, _ in got] == [id_a, id_b] and got[0][1] > got[1][1]  # negated bm25: higher is better
    assert set(store.chunk_rows([id_a, id_b], {"public"})) == {id_b}
    assert store.bm25_scores('"falcon"', [id_a]) .keys() == {id_a}


def test_fts_uses_porter_and_title(store):
    d = _doc("wiki-a:p", "Our robots are charging overnight.", title="Battery maintenance")
    _, added = store.upsert_document(d, _chunks(d, ["Our robots are charging overnight."]))
    assert store.bm25_search('"charged"', {"public"}, 5)[0][0] == added[0][0]  # porter stemming
    assert store.bm25_search('"battery"', {"public"}, 5)[0][0] == added[0][0]  # title is indexed too


def test_update_keeps_identical_chunks_and_replaces_the_rest(store):
    d1 = _doc("wiki-a:x", "First part stays. Second part changes.")
    _, added1 = store.upsert_document(d1, _chunks(d1, ["First part stays.", "Second part changes."]))
    d2 = _doc("wiki-a:x", "First part stays. Second part is new now.", acl=["group:eng"])
    removed, added2 = store.upsert_document(d2, _chunks(d2, ["First part stays.", "Second part is new now."]))
    assert removed == [added1[1][0]]  # only the changed chunk goes
    assert len(added2) == 1 and added2[0][1] == text_sha("Second part is new now.")
    assert added2[0][0] > added1[1][0]  # row ids are never reused (AUTOINCREMENT)
    assert store.document_acl("wiki-a:x") == {"group:eng"}
    assert _count(store, "SELECT count(*) FROM chunks") == 2
    assert store.bm25_search('"changes"', {"public", "group:eng"}, 5) == []  # FTS row replaced
    assert len(store.bm25_search('"new"', {"group:eng"}, 5)) == 1
    assert store.bm25_search('"new"', {"public"}, 5) == []  # the old ACL is gone
    # a title change changes every chunk (the title is in the FTS row)
    d3 = _doc("wiki-a:x", d2.text, acl=["group:eng"], title="Renamed")
    removed, added3 = store.upsert_document(d3, _chunks(d3, ["First part stays.", "Second part is new now."]))
    assert len(removed) == 2 and len(added3) == 2


def test_delete_removes_every_trace(store):
    d = _doc("wiki-a:gone", "Delete me entirely please.", acl=["user:x", "group:y"])
    keep = _doc("wiki-a:keep", "Keep me around please.")
    _, added = store.upsert_document(d, _chunks(d, ["Delete me entirely please."]))
    store.upsert_document(keep, _chunks(keep, ["Keep me around please."]))
    assert store.delete_document(d.id) == [added[0][0]]
    assert _count(store, "SELECT count(*) FROM documents WHERE doc_id=?", d.id) == 0
    assert _count(store, "SELECT count(*) FROM chunks WHERE doc_id=?", d.id) == 0
    assert _count(store, "SELECT count(*) FROM doc_acl WHERE doc_id=?", d.id) == 0
    assert _count(store, "SELECT count(*) FROM chunks_fts WHERE chunks_fts MATCH '\"entirely\"'") == 0
    assert _count(store, "SELECT count(*) FROM chunks_fts WHERE chunks_fts MATCH '\"around\"'") == 1
    # the FTS index is consistent with its content table
    store.conn.execute("INSERT INTO chunks_fts(chunks_fts) VALUES('integrity-check')")
    assert store.document_ids() == ["wiki-a:keep"]


def test_failed_upsert_leaves_nothing_behind(store):
    d = _doc("wiki-a:dup", "same same")
    c = Chunk(id="dup-id", doc_id=d.id, ordinal=0, text="same", start=0, end=4)
    with pytest.raises(sqlite3.IntegrityError):
        store.upsert_document(d, [c, Chunk(id="dup-id", doc_id=d.id, ordinal=1, text="same", start=5, end=9)])
    assert store.document_ids() == [] and _count(store, "SELECT count(*) FROM doc_acl") == 0


def test_copy_and_read_only(tmp_path, store):
    d = _doc("wiki-a:c", "Copied content survives.")
    store.upsert_document(d, _chunks(d, ["Copied content survives."]))
    store.set_source("wiki-a", "wiki", "/data/wiki", last_run_at="2024-05-01T00:00:00+00:00", last_status="ok",
                     chunker="v1")
    copy = store.copy_to(tmp_path / "copy.sqlite3")
    copy.finalize()
    ro = Store.open_readonly(tmp_path / "copy.sqlite3")
    assert ro.document_ids() == ["wiki-a:c"]
    assert ro.source_chunker("wiki-a") == "v1"
    [stats] = ro.source_stats()
    assert (stats.name, stats.type, stats.documents, stats.chunks, stats.last_status) == ("wiki-a", "wiki", 1, 1, "ok")
    with pytest.raises(sqlite3.OperationalError):
        ro.conn.execute("DELETE FROM documents")
    assert not (tmp_path / "copy.sqlite3-wal").exists()  # published files are one file
    from kb_chatbot.core.errors import IndexError_

    with pytest.raises(IndexError_, match="kb reindex"):
        Store.open_readonly(tmp_path / "missing.sqlite3")
