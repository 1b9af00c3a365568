"""The Retriever seam: every mode of the hybrid retriever returns only readable chunks, best
first, at most top_k, over a real index (hash embedder)."""
from __future__ import annotations

from datetime import datetime, timezone

import pytest

from kb_chatbot.core.protocols import Retriever
from kb_chatbot.core.settings import Settings, SourceConfig
from kb_chatbot.core.types import Document, Principal
from kb_chatbot.index.embedder import HashEmbedder
from kb_chatbot.index.generation import open_index
from kb_chatbot.index.retriever import MODES, HybridRetriever
from kb_chatbot.ingest.connectors.memory import MemoryConnector
from kb_chatbot.ingest.sync import sync_sources


def _doc(i: int, text: str, acl: set[str]) -> Document:
    return Document(id=f"m:{i}", source="m", source_type="wiki", title=f"D{i}", uri=f"https://x/{i}",
                    updated_at=datetime(2024, 1, 1, tzinfo=timezone.utc), text=text, acl=frozenset(acl))


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    root = tmp_path_factory.mktemp("retr")
    s = Settings(data_dir=root / "data", embedding={"model": "hash"})
    docs = [_doc(0, "Vacation days are 25 per year.", {"public"}),
            _doc(1, "Vacation days for executives are 40 per year.", {"group:exec"}),
            _doc(2, "The VPN client is GlobalProtect.", {"public"})]
    src = SourceConfig(name="m", type="wiki", path=root)
    sync_sources(s, [src], embedder=HashEmbedder(), connector_factory=lambda _s: MemoryConnector(docs))
    return s, open_index(s)


@pytest.fixture(params=MODES)
def retriever(request, index) -> tuple[Retriever, str]:
    s, idx = index
    return HybridRetriever(idx, HashEmbedder(), s.retrieval), request.param


def test_implements_the_protocol(retriever):
    assert isinstance(retriever[0], Retriever)


def test_only_readable_chunks_best_first_at_most_top_k(retriever):
    r, mode = retriever
    bob = Principal("bob")
    hits = r.retrieve("vacation days per year", user=bob, top_k=2, mode=mode)
    assert 1 <= len(hits) <= 2
    assert all(h.chunk.doc_id != "m:1" for h in hits)  # group:exec only
    assert hits[0].chunk.doc_id == "m:0"
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    boss = Principal("eve", groups=("exec",))
    assert "m:1" in {h.chunk.doc_id for h in r.retrieve("executives vacation", user=boss, top_k=3, mode=mode)}
