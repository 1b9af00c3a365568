"""Incremental sync on real wiki/drive folders: unchanged, changed, vanished, broken, failed
sources, Slack-style failures, embedder/chunker/index-kind changes, the lock, the report."""
from __future__ import annotations

import json
import sqlite3
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from kb_chatbot.core.settings import Settings, SourceConfig
from kb_chatbot.core.types import Document, IngestFailure, Principal, Section
from kb_chatbot.index.embedder import HashEmbedder
from kb_chatbot.index.generation import DB_NAME, Generations, IngestBusyError, ingest_lock, open_index
from kb_chatbot.index.retriever import HybridRetriever
from kb_chatbot.ingest.chunking import make_chunker
from kb_chatbot.ingest.connectors.wiki import WikiConnector
from kb_chatbot.ingest.connectors.memory import MemoryConnector
from kb_chatbot.ingest.sync import sync_sources

ALICE = Principal("alice", email="alice@acme.example", groups=("engineering",))


class CountingEmbedder(HashEmbedder):
    """The hash embedder, remembering every text it was asked to embed."""

    def __init__(self, dim: int = 384, model_id: str = "hash-embedder"):
        super().__init__(dim)
        self.model_id = model_id
        self.seen: list[str] = []

    def embed_documents(self, texts):
        self.seen.extend(texts)
        return super().embed_documents(texts)


def _page(title: str, sections: list[tuple[str, str]], access: str | None = None) -> str:
    front = f"---\ntitle: {title}\n" + (f"access: {access}\n" if access else "") + "---\n"
    return front + "\n".join(f"\n## {h}\n\n{body}\n" for h, body in sections)


SENT = "This paragraph talks about {w} in some detail so that it needs a chunk of its own here."


def _body(word: str, n: int = 3) -> str:
    return " ".join(SENT.format(w=f"{word}{i}") for i in range(n))


def _write_wiki(root: Path) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "pto.md").write_text(_page("Vacation", [("Days", "Employees get 25 vacation days. " + _body("days")),
                                                    ("Requests", _body("requests")),
                                                    ("Carry over", _body("carry"))]))
    (root / "falcon.md").write_text(_page("Falcon", [("Plan", "Falcon launches in March. " + _body("falcon"))],
                                          access="[user:alice@acme.example]"))
    (root / "robots.md").write_text(_page("Robots", [("Charging", "Robots charge in bay 4. " + _body("bay"))]))
    (root / "lunch.html").write_text("<html><head><title>Lunch</title></head><body><h1>Lunch</h1>"
                                     "<p>Lunch is served at noon on the zebracafe terrace.</p></body></html>")


def _settings(tmp_path: Path, **kw) -> Settings:
    base = dict(data_dir=tmp_path / "data", embedding={"model": "hash"},
                chunking={"chunk_tokens": 48, "overlap_tokens": 0})
    base.update(kw)
    return Settings(**base)


def _src(tmp_path: Path, name: str = "wiki", type_: str = "wiki", path: Path | None = None) -> SourceConfig:
    return SourceConfig(name=name, type=type_, path=path or tmp_path / "wiki")


def _current_db(s: Settings) -> sqlite3.Connection:
    gens = Generations(s.index_dir)
    return sqlite3.connect(gens.path(gens.current()) / DB_NAME)


def _q(conn: sqlite3.Connection, sql: str, *args) -> int:
    return conn.execute(sql, args).fetchone()[0]


@pytest.fixture
def wiki(tmp_path):
    _write_wiki(tmp_path / "wiki")
    return tmp_path / "wiki"


def test_first_run_then_nothing_changed(tmp_path, wiki):
    s, emb = _settings(tmp_path), CountingEmbedder()
    r1 = sync_sources(s, [_src(tmp_path)], embedder=emb)
    [src] = r1.sources
    assert (src.added, src.updated, src.deleted, src.unchanged, src.failed, src.status) == (4, 0, 0, 0, 0, "ok")
    assert r1.ok and r1.exit_code == 0 and r1.generation and r1.chunks_embedded == r1.chunks_total > 4
    assert len(emb.seen) == r1.chunks_embedded

    emb.seen.clear()
    r2 = sync_sources(s, [_src(tmp_path)], embedder=emb)
    [src] = r2.sources
    assert (src.added, src.updated, src.deleted, src.unchanged) == (0, 0, 0, 4)
    assert r2.chunks_embedded == 0 and emb.seen == []
    assert r2.generation is None and r2.current_generation == r1.generation  # nothing published
    assert Generations(s.index_dir).listing() == [r1.generation]


def test_modified_file_updates_only_that_document_and_embeds_only_changed_chunks(tmp_path, wiki):
    s, emb = _settings(tmp_path), CountingEmbedder()
    sync_sources(s, [_src(tmp_path)], embedder=emb)
    chunker = make_chunker(s)
    old_docs = {d.id: d for d in WikiConnector(wiki, source="wiki").documents()}
    old_texts = {c.text for d in old_docs.values() for c in chunker.chunk(d)}

    text = (wiki / "pto.md").read_text()
    (wiki / "pto.md").write_text(text.replace("requests1", "requestsONE"))  # one section changes
    new_doc = next(d for d in WikiConnector(wiki, source="wiki").documents() if d.id == "wiki:pto.md")
    new_chunks = chunker.chunk(new_doc)
    expected = [c.text for c in new_chunks if c.text not in old_texts]
    assert 1 <= len(expected) < len(new_chunks)  # the test only means something if some chunks stay

    emb.seen.clear()
    r = sync_sources(s, [_src(tmp_path)], embedder=emb)
    [src] = r.sources
    assert (src.added, src.updated, src.deleted, src.unchanged) == (0, 1, 0, 3)
    assert sorted(emb.seen) == sorted(expected) and r.chunks_embedded == len(expected)
    conn = _current_db(s)
    stored = [row[0] for row in conn.execute("SELECT text FROM chunks WHERE doc_id='wiki:pto.md' ORDER BY ordinal")]
    assert stored == [c.text for c in new_chunks]
    assert _q(conn, "SELECT count(*) FROM chunks_fts WHERE chunks_fts MATCH '\"requestsone\"'") == 1
    assert _q(conn, "SELECT count(*) FROM chunks_fts WHERE chunks_fts MATCH '\"requests1\"'") == 0
    reader = open_index(s)
    np.testing.assert_array_equal(np.sort(reader.vectors.ids()), reader.store.chunk_ids())


def test_deleted_file_leaves_no_trace(tmp_path, wiki):
    s = _settings(tmp_path)
    sync_sources(s, [_src(tmp_path)], embedder=HashEmbedder())
    conn = _current_db(s)
    gone_ids = [r[0] for r in conn.execute("SELECT id FROM chunks WHERE doc_id='wiki:falcon.md'")]
    assert gone_ids and _q(conn, "SELECT count(*) FROM doc_acl WHERE doc_id='wiki:falcon.md'") == 1
    r = HybridRetriever(open_index(s), HashEmbedder(), s.retrieval)
    assert r.retrieve("Falcon launches", user=ALICE, top_k=1)[0].chunk.doc_id == "wiki:falcon.md"

    (wiki / "falcon.md").unlink()
    rep = sync_sources(s, [_src(tmp_path)], embedder=HashEmbedder())
    assert rep.sources[0].deleted == 1 and rep.sources[0].unchanged == 3 and rep.chunks_embedded == 0
    conn = _current_db(s)
    assert _q(conn, "SELECT count(*) FROM documents WHERE doc_id='wiki:falcon.md'") == 0
    assert _q(conn, "SELECT count(*) FROM chunks WHERE doc_id='wiki:falcon.md'") == 0
    assert _q(conn, "SELECT count(*) FROM doc_acl WHERE doc_id='wiki:falcon.md'") == 0
    assert _q(conn, "SELECT count(*) FROM chunks_fts WHERE chunks_fts MATCH '\"falcon\"'") == 0
    conn.execute("INSERT INTO chunks_fts(chunks_fts) VALUES('integrity-check')")
    reader = open_index(s)
    assert not set(gone_ids) & set(reader.vectors.ids().tolist())
    assert reader.vectors.ntotal == _q(conn, "SELECT count(*) FROM chunks")
    for mode in ("dense", "bm25", "hybrid"):
        hits = HybridRetriever(reader, HashEmbedder(), s.retrieval).retrieve("Falcon launches", user=ALICE,
                                                                               top_k=10, mode=mode)
        assert "wiki:falcon.md" not in {h.chunk.doc_id for h in hits}


def test_broken_file_keeps_previous_version_and_is_reported(tmp_path):
    import docx

    drive = tmp_path / "drive"
    drive.mkdir()
    d = docx.Document()
    d.add_heading("Expense policy", 1)
    d.add_paragraph("Meals are reimbursed up to 40 euros per day with a receipt.")
    d.save(drive / "expenses.docx")
    (drive / "notes.txt").write_text("Parking spots are on level minus two.")
    s = _settings(tmp_path)
    src = _src(tmp_path, name="drive", type_="drive", path=drive).model_copy(update={"default_acl": "public"})
    sync_sources(s, [src], embedder=HashEmbedder())

    (drive / "expenses.docx").write_bytes(b"PK\x03\x04 this is not really a docx")
    rep = sync_sources(s, [src], embedder=HashEmbedder())
    [sr] = rep.sources
    assert sr.status == "partial" and sr.failed == 1 and sr.deleted == 0 and sr.unchanged == 1
    assert sr.failures[0].path == "expenses.docx" and sr.failures[0].reason
    assert not rep.ok and rep.exit_code == 1
    assert any("keep their previous version" in n for n in sr.notes)
    hits = HybridRetriever(open_index(s), HashEmbedder(), s.retrieval).retrieve(
        "meals reimbursed receipt", user=Principal("bob"), top_k=1)
    assert hits[0].chunk.doc_id == "drive:expenses.docx" and "40 euros" in hits[0].chunk.text
    saved = json.loads(Path(rep.report_path).read_text())
    assert saved["sources"][0]["failures"][0]["path"] == "expenses.docx" and saved["ok"] is False


def test_failed_source_keeps_its_documents_and_others_still_run(tmp_path, wiki):
    s = _settings(tmp_path)
    other = tmp_path / "wiki2"
    other.mkdir()
    (other / "a.md").write_text("# A\n\nAardvarks are the first animal in the list.\n")
    sync_sources(s, [_src(tmp_path), _src(tmp_path, "wiki2", path=other)], embedder=HashEmbedder())

    (other / "b.md").write_text("# B\n\nBadgers come second.\n")
    moved = tmp_path / "wiki-moved"
    wiki.rename(moved)  # the first source's folder is gone
    rep = sync_sources(s, [_src(tmp_path), _src(tmp_path, "wiki2", path=other)],
                       embedder=HashEmbedder())
    bad, good = rep.sources
    assert bad.status == "failed" and "not found" in bad.error and bad.deleted == 0 and not bad.pruned
    assert good.status == "ok" and good.added == 1 and good.unchanged == 1
    assert rep.exit_code == 1
    conn = _current_db(s)
    assert _q(conn, "SELECT count(*) FROM documents WHERE source='wiki'") == 4


class ExplodingConnector(MemoryConnector):
    """Yields the documents, but raises (a connector bug) before the ``explode_after``-th."""

    def __init__(self, docs, failures=(), explode_after: int | None = None):
        super().__init__(docs, failures, source_type="slack")
        self.explode_after = explode_after

    def documents(self):
        for i, d in enumerate(self.docs):
            if self.explode_after is not None and i == self.explode_after:
                raise RuntimeError("connector bug")
            yield d


def _sdoc(doc_id: str, text: str) -> Document:
    return Document(id=doc_id, source="chat", source_type="slack", title=doc_id, uri=f"https://slack/{doc_id}",
                    updated_at=datetime(2024, 1, 1, tzinfo=timezone.utc), text=text, acl=frozenset({"public"}),
                    sections=(Section(0, len(text), slack_ts="1.0"),))


def _sync_mem(s, connector):
    src = SourceConfig(name="chat", type="slack", path=Path("."))
    return sync_sources(s, [src], embedder=HashEmbedder(), connector_factory=lambda _c: connector)


def test_failure_naming_a_channel_keeps_that_channel_only(tmp_path):
    s = _settings(tmp_path)
    docs = [_sdoc("chat:C1:100.1", "general thread one"), _sdoc("chat:C1:200.2", "general thread two"),
            _sdoc("chat:C2:300.3", "random thread"), _sdoc("chat:C3:400.4", "dm thread")]
    _sync_mem(s, ExplodingConnector(docs))
    fail = IngestFailure(path="general/2024-01-02.json",
                         reason="unreadable day file (bad json); channel_id=C1: its threads may span other days")
    rep = _sync_mem(s, ExplodingConnector([docs[3]], failures=[fail]))
    [sr] = rep.sources
    assert sr.deleted == 1 and sr.pruned and sr.status == "partial"  # C2 went, C1 kept
    conn = _current_db(s)
    assert sorted(r[0] for r in conn.execute("SELECT doc_id FROM documents")) == [
        "chat:C1:100.1", "chat:C1:200.2", "chat:C3:400.4"]

    # a failure that names nothing we can tie to documents: no pruning at all this run
    vague = IngestFailure(path="mystery-folder", reason="day files of an unlisted conversation")
    rep = _sync_mem(s, ExplodingConnector([], failures=[vague]))
    [sr] = rep.sources
    assert sr.deleted == 0 and not sr.pruned and any("mystery-folder" in n for n in sr.notes)
    assert _q(_current_db(s), "SELECT count(*) FROM documents") == 3


def test_connector_crash_mid_run_keeps_documents(tmp_path):
    s = _settings(tmp_path)
    docs = [_sdoc(f"chat:C1:{i}.0", f"message number {i} about topic{i}") for i in range(4)]
    _sync_mem(s, ExplodingConnector(docs))
    changed = [_sdoc("chat:C1:0.0", "message zero was edited")] + docs[1:]
    rep = _sync_mem(s, ExplodingConnector(changed, explode_after=1))
    [sr] = rep.sources
    assert sr.status == "failed" and "RuntimeError: connector bug" in sr.error
    assert sr.updated == 1 and sr.deleted == 0  # what was read is indexed; nothing pruned
    conn = _current_db(s)
    assert _q(conn, "SELECT count(*) FROM documents") == 4
    assert _q(conn, "SELECT count(*) FROM chunks_fts WHERE chunks_fts MATCH '\"edited\"'") == 1


def test_embedder_change_reembeds_everything(tmp_path, wiki):
    s = _settings(tmp_path)
    r1 = sync_sources(s, [_src(tmp_path)], embedder=HashEmbedder())
    emb2 = CountingEmbedder(dim=64, model_id="hash-embedder-64")
    r2 = sync_sources(s, [_src(tmp_path)], embedder=emb2)
    assert r2.sources[0].unchanged == 4 and r2.chunks_embedded == r1.chunks_total
    assert any("embedder changed" in n for n in r2.notes)
    reader = open_index(s)
    assert reader.vectors.dim == 64 and reader.manifest["embedder"] == "hash-embedder-64"
    hits = HybridRetriever(reader, emb2, s.retrieval).retrieve("Robots charge bay", user=ALICE, top_k=1, mode="dense")
    assert hits[0].chunk.doc_id == "wiki:robots.md"


def test_chunking_change_rechunks_and_kind_change_rebuilds(tmp_path, wiki):
    s = _settings(tmp_path)
    r1 = sync_sources(s, [_src(tmp_path)], embedder=HashEmbedder())
    s2 = _settings(tmp_path, chunking={"chunk_tokens": 200, "overlap_tokens": 0}, index={"kind": "hnsw"})
    r2 = sync_sources(s2, [_src(tmp_path)], embedder=HashEmbedder())
    [sr] = r2.sources
    assert sr.updated == 4 and sr.unchanged == 0 and any("re-chunked" in n for n in sr.notes)
    assert r2.chunks_total < r1.chunks_total
    reader = open_index(s2)
    assert reader.manifest["index_structure"] == "hnsw" and reader.vectors.ntotal == r2.chunks_total
    r3 = sync_sources(s2, [_src(tmp_path)], embedder=HashEmbedder())
    assert r3.sources[0].unchanged == 4 and r3.generation is None


def test_second_ingest_waits_then_gives_up_naming_the_pid(tmp_path, wiki):
    import os

    s = _settings(tmp_path)
    with ingest_lock(s):
        with pytest.raises(IngestBusyError, match=rf"another ingest is running \(pid {os.getpid()}\)"):
            sync_sources(s, [_src(tmp_path)], embedder=HashEmbedder(), lock_timeout=0.2)
    assert sync_sources(s, [_src(tmp_path)], embedder=HashEmbedder()).ok  # free again


def test_report_is_saved_and_recorded(tmp_path, wiki):
    from kb_chatbot.ingest.report import recent_runs

    s = _settings(tmp_path)
    rep = sync_sources(s, [_src(tmp_path)], embedder=HashEmbedder())
    path = Path(rep.report_path)
    assert path.parent == s.reports_dir and path.name.startswith("ingest-") and path.suffix == ".json"
    data = json.loads(path.read_text())
    assert data["totals"] == {"added": 4, "updated": 0, "deleted": 0, "unchanged": 0, "failed": 0}
    assert data["sources"][0]["name"] == "wiki" and data["generation"] == rep.generation
    [run] = recent_runs(s)
    assert run == data


def test_incomplete_generation_is_cleaned_up(tmp_path, wiki):
    s = _settings(tmp_path)
    r1 = sync_sources(s, [_src(tmp_path)], embedder=HashEmbedder())
    junk = s.index_dir / "generations" / "99990101T000000000000Z"
    junk.mkdir()
    (junk / DB_NAME).write_bytes(b"half written")
    (wiki / "new.md").write_text("# New\n\nA brand new page.\n")
    r2 = sync_sources(s, [_src(tmp_path)], embedder=HashEmbedder())
    assert not junk.exists()
    assert sorted(Generations(s.index_dir).listing()) == sorted([r1.generation, r2.generation])


@pytest.mark.slow
def test_end_to_end_with_real_minilm(tmp_path):
    """The real thing on a handful of pages: MiniLM vectors, its tokenizer for chunking."""
    from kb_chatbot.index.embedder import load_embedder

    wiki = tmp_path / "wiki"
    wiki.mkdir()
    (wiki / "pto.md").write_text("# Vacation policy\n\nEvery employee receives 25 days of paid vacation per "
                                 "calendar year. Unused vacation days expire at the end of March.\n")
    (wiki / "robots.md").write_text("# Charging\n\nThe warehouse robots dock at charging bay 4 every night.\n")
    (wiki / "lunch.md").write_text("# Canteen\n\nThe canteen serves soup and sandwiches between noon and two.\n")
    (wiki / "vpn.md").write_text("# Remote access\n\nConnect to the office network with the WireGuard VPN client.\n")
    s = Settings(data_dir=tmp_path / "data")  # embedding.model: packaged (all-MiniLM-L6-v2)
    rep = sync_sources(s, [_src(tmp_path)])
    assert rep.ok and rep.sources[0].added == 4 and rep.embedder == "all-MiniLM-L6-v2"
    reader = open_index(s)
    assert reader.vectors.dim == 384 and reader.manifest["embedder"] == "all-MiniLM-L6-v2"
    r = HybridRetriever(reader, load_embedder(s.embedding), s.retrieval)
    # no word in common with the page: only the meaning matches
    hits = r.retrieve("How much time off do staff get annually?", user=ALICE, top_k=2, mode="dense")
    assert hits[0].chunk.doc_id == "wiki:pto.md" and hits[0].dense_score > 0.3
    assert r.retrieve("where do the robots recharge", user=ALICE, top_k=1)[0].chunk.doc_id == "wiki:robots.md"
    again = sync_sources(s, [_src(tmp_path)])
    assert again.chunks_embedded == 0 and again.sources[0].unchanged == 4


@pytest.mark.parametrize("damage", ["vectors.faiss", "kb.sqlite3"])
def test_unreadable_published_generation_is_rebuilt(tmp_path, wiki, damage):
    s = _settings(tmp_path)
    r1 = sync_sources(s, [_src(tmp_path)], embedder=HashEmbedder())
    (Generations(s.index_dir).path(r1.generation) / damage).write_bytes(b"garbage, not an index")
    from kb_chatbot.core.errors import IndexError_

    with pytest.raises((IndexError_, sqlite3.DatabaseError)):
        open_index(s).store.counts()
    r2 = sync_sources(s, [_src(tmp_path)], embedder=HashEmbedder())
    assert r2.generation and any("unreadable" in n for n in r2.notes)
    assert r2.sources[0].added == 4 and r2.documents_total == 4
    assert open_index(s).store.counts()["documents"] == 4
