"""Helpers for the answer tests: a real (hash-embedded) index built from in-memory Documents.

Imported by the answer test modules (pytest puts this folder on sys.path).
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Sequence

from kb_chatbot.core.settings import Settings, load_settings
from kb_chatbot.core.types import Document, Section
from kb_chatbot.ingest.connectors.memory import MemoryConnector


def doc(doc_id: str, text: str, acl: Sequence[str] = ("public",), *, title: str | None = None,
        source: str = "t", source_type: str = "wiki", uri: str | None = None,
        sections: Sequence[Section] = ()) -> Document:
    return Document(
        id=f"{source}:{doc_id}", source=source, source_type=source_type,  # type: ignore[arg-type]
        title=title or doc_id.replace("-", " ").title(), uri=uri or f"https://wiki.acme.example/{doc_id}",
        updated_at=datetime(2024, 3, 1, tzinfo=timezone.utc), text=text, acl=frozenset(acl),
        sections=tuple(sections),
    )



def make_settings(root: Path, **overrides: Any) -> Settings:
    data: dict[str, Any] = {
        "data_dir": str(root / "runtime"),
        "embedding": {"model": "hash"},
        "generator": {"backend": "fake"},
        "sources": [{"name": "t", "type": "wiki", "path": str(root)}],
    }
    for k, v in overrides.items():
        if isinstance(v, dict) and isinstance(data.get(k), dict):
            data[k] = {**data[k], **v}
        else:
            data[k] = v
    return load_settings(None, **data)


def build_index(settings: Settings, docs: Sequence[Document] | None = None):
    """Sync ``docs`` (None: the configured sources, read by the real connectors) into a new
    generation; returns (index, retriever, embedder)."""
    from kb_chatbot.index.embedder import load_embedder
    from kb_chatbot.index.generation import open_index
    from kb_chatbot.index.retriever import HybridRetriever
    from kb_chatbot.ingest.sync import sync_sources

    embedder = load_embedder(settings.embedding)
    factory = None if docs is None else (lambda src: MemoryConnector(docs))
    sync_sources(settings, settings.sources, embedder=embedder, connector_factory=factory)
    index = open_index(settings)
    return index, HybridRetriever(index, embedder, settings.retrieval), embedder


@dataclass
class Rig:
    settings: Settings
    index: Any
    retriever: Any
    embedder: Any
    generator: Any
    log: Any
    service: Any


def make_rig(root: Path, docs: Sequence[Document], *, generator=None, escalation=None, retriever=None,
             **overrides: Any) -> Rig:
    from kb_chatbot.app.generators.fake import FakeGenerator
    from kb_chatbot.app.answer.log import AnswerLog
    from kb_chatbot.app.answer.service import KnowledgeAnswerService
    from kb_chatbot.app.answer.spelling import SpellChecker
    from kb_chatbot.index.store import porter_stems

    settings = make_settings(root, **overrides)
    index, real_retriever, embedder = build_index(settings, docs)
    generator = generator or FakeGenerator()
    log = AnswerLog(settings.app_db)
    service = KnowledgeAnswerService(
        retriever or real_retriever, generator, embedder, settings, log, escalation=escalation,
        acl_lookup=lambda d: index.store.document_acl(d),
        term_count=lambda w, ps: index.store.term_chunk_count(w, ps),
        chunk_total=lambda ps: index.store.readable_chunk_count(ps),
        speller=SpellChecker(index.store.vocabulary, porter_stems, index.store.surface_forms),
    )
    return Rig(settings, index, retriever or real_retriever, embedder, generator, log, service)


def collect(service, question: str, user, history=()):
    """(events, final answer) of one streamed answer."""
    events = list(service.stream(question, user=user, history=history))
    assert events[-1].kind == "answer" and events[-1].answer is not None
    return events, events[-1].answer
