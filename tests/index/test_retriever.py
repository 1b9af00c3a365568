"""Hybrid retriever: modes, scores, the ACL filter (property test), safe FTS queries, and
readers following generations."""
from __future__ import annotations

import tempfile
from datetime import datetime, timezone
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings as hsettings, strategies as st

from kb_chatbot.core.settings import Settings, SourceConfig
from kb_chatbot.core.types import Document, Principal, Section
from kb_chatbot.index.embedder import HashEmbedder
from kb_chatbot.index.generation import open_index
from kb_chatbot.index.retriever import HybridRetriever, fts_query
from kb_chatbot.ingest.connectors.memory import MemoryConnector
from kb_chatbot.ingest.sync import sync_sources

EMB = HashEmbedder()



def _doc(n: int, text: str, acl, title: str | None = None, source: str = "kb") -> Document:
    return Document(
        id=f"{source}:{n}", source=source, source_type="wiki", title=title or f"Page {n}", uri=f"https://wiki/{n}",
        updated_at=datetime(2024, 1, 1, tzinfo=timezone.utc), text=text, acl=frozenset(acl),
        sections=(Section(0, len(text), heading_path=(title or f"Page {n}",)),),
    )


def _settings(data_dir: Path, **kw) -> Settings:
    return Settings(data_dir=data_dir, embedding={"model": "hash"}, chunking={"chunk_tokens": 64, "overlap_tokens": 8}, **kw)


def _ingest(settings: Settings, docs, source: str = "kb"):
    src = SourceConfig(name=source, type="wiki", path=settings.data_dir)
    return sync_sources(settings, [src], embedder=EMB,
                        connector_factory=lambda _s: MemoryConnector(docs))


ALICE = Principal("alice", email="alice@acme.example", groups=("engineering",))
BOB = Principal("bob", email="bob@acme.example", groups=("sales",))

CORPUS = [
    _doc(1, "Employees get 25 vacation days per year. Vacation requests go to your manager.", ["public"], "Vacation policy"),
    _doc(2, "Project Falcon launches the new gripper arm in March. Falcon budget is confidential.",
         ["user:alice@acme.example", "group:security"], "Falcon plan"),
    _doc(3, "The sales team uses the CRM for every customer deal and quarterly forecast.", ["group:sales"], "Sales handbook"),
    _doc(4, "Robots charge overnight in bay 4; battery maintenance happens on Fridays.", ["public"], "Battery care"),
]


@pytest.fixture
def kb(tmp_path):
    s = _settings(tmp_path / "data")
    _ingest(s, CORPUS)
    return s, HybridRetriever(open_index(s), EMB, s.retrieval)


@pytest.mark.parametrize("mode", ["dense", "bm25", "hybrid"])
def test_modes_find_the_right_document_with_scores(kb, mode):
    _, r = kb
    hits = r.retrieve("how many vacation days do employees get", user=BOB, top_k=3, mode=mode)
    assert hits and hits[0].chunk.doc_id == "kb:1"
    h = hits[0]
    assert (h.doc_title, h.doc_uri, h.source, h.source_type) == ("Vacation policy", "https://wiki/1", "kb", "wiki")
    assert h.chunk.heading_path == ("Vacation policy",)
    assert [x.score for x in hits] == sorted((x.score for x in hits), reverse=True)
    if mode in ("dense", "hybrid"):
        assert h.dense_score is not None and 0 < h.dense_score <= 1.0001
    if mode in ("bm25", "hybrid"):
        assert h.bm25_score is not None and h.bm25_score > 0
    if mode == "hybrid":
        assert h.score == pytest.approx(2 / (r.cfg.rrf_k + 1))  # first in both lists


def test_acl_hides_restricted_documents(kb):
    _, r = kb
    for mode in ("dense", "bm25", "hybrid"):
        bob_hits = r.retrieve("Falcon gripper launch budget", user=BOB, top_k=10, mode=mode)
        assert "kb:2" not in {h.chunk.doc_id for h in bob_hits}
        alice_hits = r.retrieve("Falcon gripper launch budget", user=ALICE, top_k=10, mode=mode)
        assert alice_hits[0].chunk.doc_id == "kb:2"
    anon = r.retrieve("sales CRM forecast", user=Principal.anonymous(), top_k=10)
    assert {h.chunk.doc_id for h in anon} <= {"kb:1", "kb:4"}
    assert r.bm25_search("Falcon", user=Principal("mallory"), k=5) == []
    assert [h.chunk.doc_id for h in r.dense_search("Falcon", user=Principal("dave", groups=("security",)), k=1)] == ["kb:2"]


def test_hybrid_fills_in_the_other_score(kb):
    _, r = kb
    hits = r.retrieve("battery overnight", user=BOB, top_k=4, mode="hybrid")
    assert all(h.dense_score is not None for h in hits)  # reconstructed for bm25-only hits
    assert hits[0].chunk.doc_id == "kb:4" and hits[0].bm25_score > 0


@pytest.mark.parametrize("query", ['"', "NEAR(a b)", "title:secret", "a* OR", "-(", "AND", "'; DROP TABLE chunks; --",
                                   "^x", "{text}:foo", "", "   ", "the of and", "ümlaut café"])
def test_user_input_never_reaches_fts_as_syntax(kb, query):
    _, r = kb
    for mode in ("bm25", "hybrid"):
        r.retrieve(query, user=ALICE, top_k=3, mode=mode)  # no sqlite3.OperationalError
    q = fts_query(query)
    assert all(t.startswith('"') and t.endswith('"') for t in q.split(" OR ")) if q else True


@given(st.text(max_size=60))
@hsettings(max_examples=200, deadline=None)
def test_fts_query_is_always_valid(text):
    import sqlite3

    conn = sqlite3.connect(":memory:")
    conn.execute("CREATE VIRTUAL TABLE t USING fts5(x, tokenize='porter unicode61')")
    conn.execute("INSERT INTO t VALUES ('some text here')")
    q = fts_query(text)
    if q:
        conn.execute("SELECT * FROM t WHERE t MATCH ?", (q,)).fetchall()


def test_unknown_mode_is_an_error(kb):
    _, r = kb
    with pytest.raises(ValueError, match="unknown retrieval mode"):
        r.retrieve("x", user=BOB, top_k=1, mode="magic")


# --- ACL property test ------------------------------------------------------------------

WORDS = ["falcon", "budget", "vacation", "robot", "battery", "launch", "payroll", "secret", "gripper", "crm"]
PRINCIPALS = ["public", "user:alice", "user:bob", "user:carol@acme.example", "group:eng", "group:hr"]

docs_st = st.lists(
    st.tuples(st.lists(st.sampled_from(WORDS), min_size=1, max_size=30),
              st.frozensets(st.sampled_from(PRINCIPALS), max_size=3)),
    min_size=1, max_size=8,
)
users_st = st.builds(
    Principal,
    username=st.sampled_from(["alice", "bob", "carol", "anonymous", "zed"]),
    email=st.sampled_from([None, "carol@acme.example", "x@acme.example"]),
    groups=st.lists(st.sampled_from(["eng", "hr", "ops"]), max_size=2).map(tuple),
)


@given(docs=docs_st, users=st.lists(users_st, min_size=1, max_size=3),
       query=st.lists(st.sampled_from(WORDS), min_size=1, max_size=4).map(" ".join))
@hsettings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_every_hit_is_readable_by_the_user(docs, users, query):
    with tempfile.TemporaryDirectory() as d:
        s = _settings(Path(d))
        corpus = [_doc(i, " ".join(words), acl) for i, (words, acl) in enumerate(docs)]
        _ingest(s, corpus)
        r = HybridRetriever(open_index(s), EMB, s.retrieval)
        acl_of = {doc.id: doc.acl for doc in corpus}
        for user in users:
            readable = {doc.id for doc in corpus if user.can_read(doc.acl)}
            for mode in ("dense", "bm25", "hybrid"):
                hits = r.retrieve(query, user=user, top_k=20, mode=mode)
                for h in hits:
                    assert user.can_read(acl_of[h.chunk.doc_id]), (mode, user, h.chunk.doc_id)
            # and the filter does not hide what the user may read: dense ranks every readable chunk
            dense = r.dense_search(query, user=user, k=1000)
            assert {h.chunk.doc_id for h in dense} == readable


# --- generations ----------------------------------------------------------------------


def test_reader_follows_new_generation_and_old_snapshot_keeps_working(tmp_path):
    s = _settings(tmp_path / "data")
    _ingest(s, CORPUS)
    reader = open_index(s)
    r = HybridRetriever(reader, EMB, s.retrieval)
    old = reader.snapshot()
    gen1 = old.generation
    assert r.retrieve("Falcon", user=ALICE, top_k=1)[0].chunk.doc_id == "kb:2"

    new_corpus = [d for d in CORPUS if d.id != "kb:2"] + [_doc(9, "Project Osprey replaces Falcon in May.", ["public"])]
    report = _ingest(s, new_corpus)  # written while the reader is open
    assert report.generation and report.generation != gen1
    # the old snapshot (a query in flight) still answers from generation 1
    old_r = HybridRetriever(old, EMB, s.retrieval)
    assert old_r.retrieve("Falcon gripper", user=ALICE, top_k=1)[0].chunk.doc_id == "kb:2"
    # the reader notices CURRENT changed on its next query
    hits = r.retrieve("Falcon", user=ALICE, top_k=5)
    assert reader.generation == report.generation
    assert "kb:2" not in {h.chunk.doc_id for h in hits} and hits[0].chunk.doc_id == "kb:9"

    # a third generation prunes generation 1 from disk; the open snapshot still reads it
    _ingest(s, new_corpus + [_doc(10, "Another page about lunch.", ["public"])])
    assert not (s.index_dir / "generations" / gen1).exists()
    assert old_r.retrieve("Falcon gripper", user=ALICE, top_k=1)[0].chunk.doc_id == "kb:2"
    kept = sorted(p.name for p in (s.index_dir / "generations").iterdir())
    assert kept == sorted([report.generation, reader.snapshot().generation])  # current + its parent


def test_open_index_without_an_index(tmp_path):
    from kb_chatbot.core.errors import IndexError_

    s = _settings(tmp_path / "data")
    with pytest.raises(IndexError_, match="kb reindex"):
        open_index(s)
    reader = open_index(s, missing_ok=True)
    r = HybridRetriever(reader, EMB, s.retrieval)
    assert r.retrieve("anything", user=ALICE, top_k=3) == []
    _ingest(s, CORPUS)
    assert r.retrieve("vacation days", user=ALICE, top_k=1)[0].chunk.doc_id == "kb:1"


def test_a_document_named_in_the_question_leads_the_hits(tmp_path):
    """'according to Benefits Details.pdf' selects that file even when the searches rank other
    pages first; a one-word title is an ordinary word; an unreadable named file is ignored."""
    s = _settings(tmp_path / "data", retrieval={"top_k": 3})
    filler = [_doc(10 + i, f"Dental coverage note {i}: dental cleanings twice a year are covered.", ["public"],
                   f"Dental {i}") for i in range(6)]
    docs = [*filler,
            _doc(1, "Plan summary. Orthodontics for adults is covered at 50 percent.", ["public"], "Benefits Details.pdf"),
            _doc(2, "Dental coverage for contractors ends after 90 days.", ["group:hr"], "Contractor Terms.pdf"),
            _doc(3, "Dental is great.", ["public"], "Dental")]
    _ingest(s, docs)
    r = HybridRetriever(open_index(s), EMB, s.retrieval)
    plain = r.retrieve("What dental coverage is there?", user=BOB, top_k=3)
    assert all(h.doc_title != "Benefits Details.pdf" for h in plain)
    named = r.retrieve("According to the benefits details.pdf, what dental coverage is there?", user=BOB, top_k=3)
    assert named[0].doc_title == "Benefits Details.pdf" and len(named) == 3
    assert r.retrieve("In Benefits Details, what dental coverage is there?", user=BOB, top_k=3)[0].doc_title == \
        "Benefits Details.pdf"
    hidden = r.retrieve("Per Contractor Terms.pdf, what dental coverage is there?", user=BOB, top_k=3)
    assert all(h.doc_title != "Contractor Terms.pdf" for h in hidden)
