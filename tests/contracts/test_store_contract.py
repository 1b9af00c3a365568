"""The store seam: the same tests on SQLite + FAISS files and on a real PostgreSQL 16 with
pgvector (``pgserver`` from PyPI, started by the test on a Unix socket; no mocks): search, the
ACL filter inside each search (a user who reads 1 % of the chunks), hybrid fusion, keeping a
chunk's vector across runs, publish, prune, the ingest lock and ``kill -9`` of an ingest."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import uuid
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pytest

from kb_chatbot.core.settings import Settings, SourceConfig
from kb_chatbot.core.types import Document, Principal
from kb_chatbot.index.embedder import HashEmbedder
from kb_chatbot.core.errors import IngestBusy
from kb_chatbot.index.generation import generations_for, ingest_lock, open_index
from kb_chatbot.index.retriever import HybridRetriever
from kb_chatbot.ingest.connectors.memory import MemoryConnector
from kb_chatbot.ingest.sync import sync_sources

REPO = Path(__file__).resolve().parents[2]
BOB = Principal("bob", "bob@acme.example", ("sales",))
NARROW = Principal("nina", "nina@acme.example", ("narrow",))


@pytest.fixture(scope="session")
def pg_server(tmp_path_factory):
    pgserver = pytest.importorskip("pgserver")
    srv = pgserver.get_server(str(tmp_path_factory.mktemp("pg")), cleanup_mode="stop")
    yield srv
    srv.cleanup()


def _pg_url(srv) -> str:
    """A fresh database on the shared server (each test its own)."""
    name = "t_" + uuid.uuid4().hex[:12]
    srv.psql(f"CREATE DATABASE {name};")
    return srv.get_uri().replace("/postgres?", f"/{name}?")


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request):
    return request.param


@pytest.fixture
def make(backend, tmp_path, request):
    """settings(**over) -> Settings on this backend (one database per test)."""
    url = _pg_url(request.getfixturevalue("pg_server")) if backend == "postgres" else None

    def settings(**over) -> Settings:
        data = {"data_dir": tmp_path / "data", "embedding": {"model": "hash"},
                "index": {"kind": "hnsw" if backend == "postgres" else "flat"},
                "store": {"backend": backend, "url": url}, **over}
        return Settings(**data)

    return settings


def _doc(i: int | str, text: str, acl=("public",), title: str | None = None) -> Document:
    return Document(id=f"m:{i}", source="m", source_type="wiki", title=title or f"Doc {i}", uri=f"https://x/{i}",
                    updated_at=datetime(2024, 1, 1, tzinfo=timezone.utc), text=text, acl=frozenset(acl))


def _sync(s: Settings, docs, **kw):
    src = SourceConfig(name="m", type="wiki", path=s.data_dir)
    return sync_sources(s, [src], embedder=HashEmbedder(), connector_factory=lambda _s: MemoryConnector(docs), **kw)


BASE = [
    _doc("pto", "Vacation days are 25 per year for every employee.", title="Vacation policy"),
    _doc("exec", "Vacation days for executives are 40 per year.", acl=("group:exec",), title="Executive perks"),
    _doc("vpn", "The VPN client is GlobalProtect; connect from home with your badge PIN.", title="VPN"),
    _doc("zeta", "Zebrafish colonies are fed twice a day in lab 7.", title="Lab care"),
]


def test_every_search_mode_finds_the_right_chunk_and_only_readable_ones(make):
    s = make()
    _sync(s, BASE)
    r = HybridRetriever(open_index(s), HashEmbedder(), s.retrieval)
    for mode in ("dense", "bm25", "hybrid"):
        hits = r.retrieve("how many vacation days per year", user=BOB, top_k=3, mode=mode)
        assert hits and hits[0].chunk.doc_id == "m:pto", mode
        assert all(h.chunk.doc_id != "m:exec" for h in hits), mode  # bob is not in group:exec
        boss = Principal("eve", "eve@acme.example", ("exec",))
        assert "m:exec" in {h.chunk.doc_id for h in r.retrieve("executives vacation days", user=boss, top_k=3,
                                                                  mode=mode)}, mode


def test_hybrid_fuses_what_only_one_search_finds(make):
    s = make()
    _sync(s, BASE)
    r = HybridRetriever(open_index(s), HashEmbedder(), s.retrieval)
    # "GlobalProtect" is a keyword only BM25 matches exactly; the vacation page is the dense match
    hits = r.retrieve("GlobalProtect vacation days", user=BOB, top_k=4, mode="hybrid")
    ids = [h.chunk.doc_id for h in hits]
    assert {"m:vpn", "m:pto"} <= set(ids)
    assert all(h.dense_score is not None for h in hits)  # the other search's score is filled in
    assert any(h.bm25_score for h in hits if h.chunk.doc_id == "m:vpn")


def test_a_user_who_reads_one_percent_gets_k_readable_hits(make):
    """pgvector < 0.8 filters after the HNSW scan: a narrow ACL could return fewer than k."""
    s = make()
    docs = [_doc(i, f"Maintenance note {i}: robot arm {i % 7} calibrated on shift {i % 3}.",
                 acl=("group:narrow",) if i % 100 == 0 else ("group:everyone",)) for i in range(500)]
    _sync(s, docs)
    r = HybridRetriever(open_index(s), HashEmbedder(), s.retrieval)
    for mode in ("dense", "bm25", "hybrid"):
        hits = r.retrieve("robot arm calibrated on shift", user=NARROW, top_k=5, mode=mode)
        assert len(hits) == 5, (mode, len(hits))  # 5 readable chunks exist: all of them come back
        assert {h.chunk.doc_id for h in hits} == {f"m:{i}" for i in range(0, 500, 100)}, mode
    nobody = Principal("zed", "zed@acme.example", ())
    assert r.retrieve("robot arm", user=nobody, top_k=5) == []


def test_unchanged_chunks_keep_their_rows_and_deleted_ones_go(make):
    s = make()
    _sync(s, BASE)
    idx = open_index(s)
    before = {row: idx.store.chunk_rows([row], ["public", "group:exec"])[row].chunk.doc_id
              for row in idx.store.chunk_ids()}
    changed = [d for d in BASE if d.id not in ("m:zeta",)]
    changed[0] = _doc("pto", "Vacation days are 27 per year for every employee.", title="Vacation policy")
    report = _sync(s, changed)
    assert report.chunks_embedded == 1  # only the changed page is embedded again
    idx = open_index(s)
    after = {row: idx.store.chunk_rows([row], ["public", "group:exec"])[row].chunk.doc_id
             for row in idx.store.chunk_ids()}
    kept = {row for row in before if before[row] in ("m:exec", "m:vpn")}
    assert kept <= set(after)  # same row ids: same vectors
    assert "m:zeta" not in after.values() and idx.store.document_acl("m:zeta") == frozenset()
    assert idx.vectors.ntotal == idx.manifest["chunks"] == len(after)
    r = HybridRetriever(idx, HashEmbedder(), s.retrieval)
    assert "27" in r.retrieve("vacation days per year", user=BOB, top_k=1)[0].chunk.text


def test_the_checks_counts_see_only_what_the_asker_may_read(make):
    s = make()
    _sync(s, BASE + [_doc("benefits", "See the Benefits Details.pdf for dental coverage.", title="Benefits Details.pdf",
                           acl=("group:hr",))])
    store = open_index(s).store
    assert store.term_chunk_count("executives", ["public", "group:sales"]) == 0
    assert store.term_chunk_count("executives", ["group:exec"]) == 1
    # words next to each other, in order, stemmed; only readable chunks count (the speller's context)
    assert store.phrase_chunk_count("vacation days", ["public"]) == 1
    assert store.phrase_chunk_count("vacation days", ["public", "group:exec"]) == 2
    assert store.phrase_chunk_count("days vacation", ["public", "group:exec"]) == 0
    assert store.phrase_chunk_count("for executives", ["public"]) == 0
    assert store.phrase_chunk_count("", ["public"]) == 0
    assert store.readable_chunk_count(["public"]) == 3
    assert "vacat" in store.vocabulary() or "vacation" in store.vocabulary()
    # as written (case kept: a name is corrected only into a word written capitalised)
    assert store.surface_forms("vacat", ["public"]) == {"Vacation": 1}
    assert store.surface_forms("vacat", ["group:exec"]) == {"Vacation": 1}  # the executives page only
    # asked by a word: its term ('employe') is no stem of itself (it stems again to 'employ')
    assert store.surface_forms("employees", ["public"]) == {"employee": 1}
    assert store.named_documents("what does Benefits Details.pdf say?", ["public"]) == []
    assert store.named_documents("what does Benefits Details.pdf say?", ["group:hr"]) == ["m:benefits"]


def test_publish_is_atomic_for_readers_and_prune_keeps_current_and_parent(make):
    s = make()
    _sync(s, BASE[:2])
    reader = open_index(s)
    first = reader.snapshot()
    gen1 = first.generation
    _sync(s, BASE[:3])
    # a reader that holds the old snapshot still reads it; its next snapshot is the new one
    assert first.store.counts()["documents"] == 2
    second = reader.snapshot()
    assert second.generation != gen1 and second.store.counts()["documents"] == 3
    _sync(s, BASE)
    gens = generations_for(s)
    current = gens.current()
    assert set(gens.listing()) == {current, second.generation}  # gen1 pruned; the parent kept
    assert gens.manifest(current)["parent"] == second.generation


def test_a_second_ingest_waits_for_the_lock_then_gives_up(make):
    s = make()
    with ingest_lock(s, timeout=1):
        with pytest.raises(IngestBusy, match="another ingest is running"):
            with ingest_lock(s, timeout=0.5):
                pass
    with ingest_lock(s, timeout=1):  # released
        pass


def _driver(cfg: Path, wiki: Path, **env: str) -> subprocess.Popen:
    e = {k: v for k, v in os.environ.items() if not k.startswith("KB_")}
    e.update(PYTHONPATH=str(REPO), OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **env)
    return subprocess.Popen([sys.executable, str(REPO / "tests" / "ingest" / "crash_driver.py"), "-c", str(cfg),
                             "ingest", "wiki", str(wiki), "--source-name", "wiki", "--no-progress"],
                            env=e, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("stage", ["embedding", "faiss_written", "manifest_written"])
def test_kill_9_of_an_ingest_leaves_the_published_index(make, backend, tmp_path, stage):
    s = make()
    wiki = tmp_path / "wiki"
    wiki.mkdir()
    for i in range(30):
        (wiki / f"p{i}.md").write_text(f"# Page {i}\n\nPage {i} version one says token{i}.\n")
    cfg = tmp_path / "kb.yaml"
    store = f"store: {{backend: postgres, url: '{s.store.url}'}}\nindex: {{kind: hnsw}}\n" if backend == "postgres" else ""
    cfg.write_text(f"data_dir: {s.data_dir}\nembedding: {{model: hash}}\n{store}", encoding="utf-8")
    first = _driver(cfg, wiki)
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    gen1 = generations_for(s).current()
    for i in range(30):
        (wiki / f"p{i}.md").write_text(f"# Page {i}\n\nPage {i} version two says token{i}.\n")
    (wiki / "zeppelin.md").write_text("# Zeppelin\n\nThe zeppelin hangar opens in version two.\n")
    p = _driver(cfg, wiki, CRASH_PAUSE_AT=stage)
    for line in p.stderr:
        if f"CRASH_STAGE {stage}" in line:
            break
    else:
        pytest.fail(f"the ingest never reached {stage}")
    os.kill(p.pid, signal.SIGKILL)
    p.wait(timeout=30)
    assert generations_for(s).current() == gen1
    r = HybridRetriever(open_index(s), HashEmbedder(), s.retrieval)
    assert "version one" in r.retrieve("token7", user=BOB, top_k=1)[0].chunk.text
    assert r.retrieve("zeppelin hangar", user=BOB, top_k=1, mode="bm25") == []
    clean = _driver(cfg, wiki)  # the lock was freed with the killed process; debris is dropped
    out, err = clean.communicate(timeout=300)
    assert clean.returncode == 0, err
    gens = generations_for(s)
    assert gens.current() != gen1 and set(gens.listing()) == {gens.current(), gen1}
    r = HybridRetriever(open_index(s), HashEmbedder(), s.retrieval)
    assert "version two" in r.retrieve("token7", user=BOB, top_k=1)[0].chunk.text
    assert r.retrieve("zeppelin hangar", user=BOB, top_k=1)[0].chunk.doc_id == "wiki:zeppelin.md"


def test_postgres_falls_back_to_an_exact_scan_when_the_filtered_ann_scan_comes_back_short(make, backend,
                                                                                          monkeypatch, caplog):
    if backend != "postgres":
        pytest.skip("the pgvector trap: FAISS filters inside the search")
    import logging

    import kb_chatbot.index.pg as pg

    s = make()
    docs = [_doc(i, f"Maintenance note {i}: robot arm {i % 7} calibrated on shift {i % 3}.",
                 acl=("group:narrow",) if i % 100 == 0 else ("group:everyone",)) for i in range(500)]
    _sync(s, docs)
    # on 500 rows the planner reads the few readable rows and sorts them (exact); make it take
    # the HNSW index scan and filter after it, as it does on a big table with a broad-looking filter
    conn = pg.connect(s.store.url)
    conn.execute(f"ALTER DATABASE {conn.info.dbname} SET enable_sort = off")
    conn.close()
    r = HybridRetriever(open_index(s), HashEmbedder(), s.retrieval)
    monkeypatch.setattr(pg, "EXACT_SHARE", 0.0)  # take the HNSW scan even for a 1 % reader
    monkeypatch.setattr(pg, "EF_SEARCH_MIN", 1)  # ... with a short candidate list
    with caplog.at_level(logging.DEBUG, logger="kb_chatbot.index.pg"):
        hits = r.retrieve("robot arm calibrated on shift", user=NARROW, top_k=5, mode="dense")
    assert "exact scan" in caplog.text
    assert len(hits) == 5 and {h.chunk.doc_id for h in hits} == {f"m:{i}" for i in range(0, 500, 100)}


def test_the_answer_log_and_feedback_on_each_store(make):
    from kb_chatbot.app.answer.log import open_answer_log
    from kb_chatbot.core.errors import KBError
    from kb_chatbot.core.types import Answer

    s = make()
    log_ = open_answer_log(s)
    ids = [log_.record_answer(Answer(f"q{i}", f"q{i}", f"a{i} [1]", [], 0.5 + i / 10, "answered"), "alice")
           for i in range(3)]
    log_.record_answer(Answer("other", "other", "x", [], 0.1, "abstained"), "bob")
    assert [r["question"] for r in log_.recent_answers(3, username="alice")] == ["q2", "q1", "q0"]
    assert log_.get_answer(ids[0])["answer"] == "a0 [1]" and log_.get_answer("nope") is None
    fid = log_.record_feedback(ids[1], "alice", -1, "wrong", "a1 is 27 days")
    assert isinstance(fid, int) and log_.record_feedback(ids[2], "alice", 1) != fid
    with pytest.raises(KBError, match="belongs to another user"):
        log_.record_feedback(ids[1], "bob", 1)
    with pytest.raises(KBError, match="no answer with id"):
        log_.record_feedback("missing", "alice", 1)
    assert [f["correction"] for f in log_.feedback(-1)] == ["a1 is 27 days"]
    summary = log_.feedback_summary()
    assert summary["answers"] == 4 and summary["routes"] == {"answered": 3, "abstained": 1}
    assert (summary["up"], summary["down"], summary["corrections"], summary["feedback"]) == (1, 1, 1, 2)
    # a second node (its own connection) sees the same log
    assert open_answer_log(s).feedback_summary() == summary


def test_embedding_workers_share_the_new_chunks_and_the_result_is_the_same(make, backend, tmp_path, caplog):
    """embedding.workers: 2 local worker processes and the ingest pull batches (SKIP LOCKED);
    a `kb embed-worker` started meanwhile may join. Every chunk gets the vector the ingest alone
    would have given it, and the next run embeds nothing (the vectors were cached)."""
    if backend != "postgres":
        pytest.skip("the embedding queue is a Postgres store feature")
    import logging
    import time as _time

    class SlowHash(HashEmbedder):  # the ingest's own embedder: slow enough for the workers to join
        def embed_documents(self, texts):
            _time.sleep(0.4)
            return super().embed_documents(texts)

    docs = [_doc(i, f"Procedure {i}: torque the bolt to {i % 40} Nm, then log it in form F-{i}.") for i in range(700)]
    s = make(embedding={"model": "hash", "workers": 2})
    src = SourceConfig(name="m", type="wiki", path=s.data_dir)
    with caplog.at_level(logging.INFO, logger="kb_chatbot.index.pg"):
        report = sync_sources(s, [src], embedder=SlowHash(), connector_factory=lambda _s: MemoryConnector(docs))
    assert report.ok and report.chunks_embedded == 700
    here = int(re.search(r"embedded rows=700 here=(\d+) workers=2", caplog.text).group(1))
    assert here < 700, "the worker processes embedded nothing"
    idx = open_index(s)
    ids, vecs = idx.vectors.vectors()
    assert len(ids) == idx.manifest["chunks"] == 700
    rows = idx.store.chunk_rows(ids.tolist(), ["public"])
    expected = HashEmbedder().embed_documents([rows[int(i)].chunk.text for i in ids])
    assert np.allclose(vecs, expected, atol=1e-6)
    r = HybridRetriever(idx, HashEmbedder(), s.retrieval)
    assert r.retrieve("form F-123 torque", user=BOB, top_k=1, mode="dense")[0].chunk.doc_id == "m:123"
    again = _sync(s, docs + [_doc("new", "A new page about the loading dock.")])
    assert again.chunks_embedded == 1  # the 700 came from the cache the workers' run filled


def test_a_worker_on_another_machine_helps_with_the_ingest_in_progress(make, backend):
    if backend != "postgres":
        pytest.skip("the embedding queue is a Postgres store feature")
    from kb_chatbot.index.pg import PgGenerationWriter, building_schemas, embed_pending, connect, pending_count

    s = make()
    w = PgGenerationWriter(s, model_id=HashEmbedder().model_id, dim=HashEmbedder().dim)
    with w.store.transaction():
        for i in range(150):
            w.store.upsert_document(_doc(i, f"Checklist item {i} for the night shift."), [
                __import__("kb_chatbot.core.types", fromlist=["Chunk"]).Chunk(
                    id=f"c{i}", doc_id=f"m:{i}", ordinal=0, text=f"Checklist item {i} for the night shift.",
                    start=0, end=10)])
    assert building_schemas(s.store.url) == [w.store.schema]
    other = connect(s.store.url)  # "kb embed-worker" elsewhere: its own session, same queue
    assert embed_pending(other, w.store.schema, HashEmbedder(), batch=32) == 150
    assert pending_count(w.conn, w.store.schema) == 0
    assert w.embed_pending(HashEmbedder()) == 0  # nothing left for the ingest itself
    w.publish()
    assert building_schemas(s.store.url) == []
    other.close()


def test_kb_embed_worker_command(make, backend, tmp_path):
    from click.testing import CliRunner

    from kb_chatbot.app.kb.cli import main

    s = make()
    cfg = tmp_path / "kb.yaml"
    store = f"store: {{backend: postgres, url: '{s.store.url}'}}\n" if backend == "postgres" else ""
    cfg.write_text(f"data_dir: {s.data_dir}\nembedding: {{model: hash}}\n{store}", encoding="utf-8")
    r = CliRunner().invoke(main, ["-c", str(cfg), "embed-worker"])
    if backend == "sqlite":
        assert r.exit_code == 2 and "needs store.backend: postgres" in r.output
        with pytest.raises(ValueError, match="embedding.workers needs store.backend: postgres"):
            make(embedding={"model": "hash", "workers": 2})
    else:
        assert r.exit_code == 0 and "done: 0 chunks embedded" in r.output  # no ingest in progress


def test_a_reader_survives_the_database_dropping_its_connections(make, backend):
    """A Postgres restart or failover closes every session: the next question reconnects."""
    if backend != "postgres":
        pytest.skip("SQLite files have no server connection to lose")
    import kb_chatbot.index.pg as pg

    s = make()
    _sync(s, BASE)
    idx = open_index(s)
    r = HybridRetriever(idx, HashEmbedder(), s.retrieval)
    assert r.retrieve("vacation days per year", user=BOB, top_k=1)[0].chunk.doc_id == "m:pto"
    admin = pg.connect(s.store.url)
    killed = admin.execute("SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                           "WHERE datname = current_database() AND pid <> pg_backend_pid()").fetchone()[0]
    admin.close()
    assert killed >= 2  # the reader's pointer session and its store's
    for mode in ("dense", "bm25", "hybrid"):
        assert r.retrieve("vacation days per year", user=BOB, top_k=1, mode=mode)[0].chunk.doc_id == "m:pto"


def test_shared_login_sessions_expire_on_every_node(make, backend):
    if backend != "postgres":
        pytest.skip("with SQLite the sessions live in the node (one node)")
    from kb_chatbot.app.web.session import SessionGuard
    from kb_chatbot.app.web.shared_sessions import PgSessions, shared_cookie_id

    s = make()
    now = [1000.0]
    a, b = PgSessions(s.store.url, clock=lambda: now[0]), PgSessions(s.store.url, clock=lambda: now[0])
    a["tok-1"] = "alice"
    assert b["tok-1"] == "alice" and "tok-1" in b and b.get("nope") is None and b.get(None) is None
    assert list(b) and all(k.startswith("sha256:") for k in b)  # only hashes are stored
    assert "tok-1" not in str(b._q("SELECT * FROM kb.sessions"))
    guard = SessionGuard(lambda *a: None, b, session_hours=1, idle_minutes=10, clock=lambda: now[0], shared=b)
    assert not guard._expired("tok-1", now[0] + 60)
    assert guard._expired("tok-1", now[0] + 3601)  # older than session_hours on any node
    guard._end("tok-1")
    assert "tok-1" not in a
    assert shared_cookie_id(s.store.url) == shared_cookie_id(s.store.url)
