"""The composition root of the answer side: settings in, ready-to-use services out.

``build_services(settings)`` returns a :class:`Services` whose parts are built lazily, once,
on first access (thread-safe): the chat page and ``kb ask`` only pay for what they use, and
``kb --help`` pays nothing. Any part can be supplied up front (tests pass a fake generator
or a hash embedder): ``build_services(settings, generator=FakeGenerator())``.
"""
from __future__ import annotations

import logging
import threading
from typing import Any, Callable

from kb_chatbot.core.settings import Settings

log = logging.getLogger(__name__)

_PARTS = ("embedder", "index", "retriever", "generator", "escalation", "answer_log", "confidence", "answer_service",
          "index_admin")


class Services:
    """settings, embedder, index, retriever, generator, escalation, answer_log, answer_service."""

    def __init__(self, settings: Settings, **parts: Any):
        unknown = sorted(set(parts) - set(_PARTS))
        if unknown:
            raise TypeError(f"unknown service parts: {', '.join(unknown)} (known: {', '.join(_PARTS)})")
        self.settings = settings
        self._parts: dict[str, Any] = dict(parts)
        self._lock = threading.RLock()

    def _once(self, name: str, build: Callable[[], Any]) -> Any:
        if name in self._parts:
            return self._parts[name]
        with self._lock:
            if name not in self._parts:
                self._parts[name] = build()
                log.debug("services built part=%s", name)
            return self._parts[name]

    @property
    def embedder(self):
        from kb_chatbot.index.embedder import load_embedder

        return self._once("embedder", lambda: load_embedder(self.settings.embedding))

    @property
    def index(self):
        """The published index (an empty one before the first ingest; see ``has_index``)."""
        from kb_chatbot.index.generation import open_index

        return self._once("index", lambda: open_index(self.settings, missing_ok=True))

    @property
    def has_index(self) -> bool:
        return self.index.generation is not None

    @property
    def retriever(self):
        from kb_chatbot.index.retriever import HybridRetriever

        return self._once("retriever", lambda: HybridRetriever(self.index, self.embedder, self.settings.retrieval))

    @property
    def generator(self):
        from kb_chatbot.app.generators import make_generator

        s = self.settings
        return self._once("generator", lambda: make_generator(s.generator, s.models_dir, base_dir=s.config_dir))

    @property
    def escalation(self):
        def build():
            endpoint = self.settings.answer.escalation
            if endpoint is None:
                return None
            from kb_chatbot.app.generators import make_escalation_generator

            return make_escalation_generator(endpoint)

        return self._once("escalation", build)

    @property
    def answer_log(self):
        from kb_chatbot.app.answer.log import open_answer_log

        return self._once("answer_log", lambda: open_answer_log(self.settings))

    @property
    def confidence(self):
        from kb_chatbot.app.answer.confidence import WEIGHTS_FILE, ConfidenceModel

        return self._once("confidence", lambda: ConfidenceModel.load(self.settings.data_dir / WEIGHTS_FILE))

    @property
    def speller(self):
        """Spelling correction against the index's own words (what the answer service uses)."""
        from kb_chatbot.app.answer.spelling import SpellChecker
        from kb_chatbot.index.store import porter_stems

        def build():
            index = self.index
            return SpellChecker(lambda: index.store.vocabulary(), porter_stems,
                                lambda word, principals: index.store.surface_forms(word, principals),
                                dictionary=self._dictionary(),
                                phrases=lambda phrase, principals: index.store.phrase_chunk_count(phrase, principals))

        return self._once("speller", build)

    @property
    def answer_service(self):
        from kb_chatbot.app.answer.service import KnowledgeAnswerService

        def build():
            index = self.index

            def acl_lookup(doc_id: str) -> frozenset[str]:
                return index.store.document_acl(doc_id)

            return KnowledgeAnswerService(
                self.retriever, self.generator, self.embedder, self.settings, self.answer_log,
                escalation=self.escalation, confidence=self.confidence, acl_lookup=acl_lookup,
                term_count=lambda word, principals: index.store.term_chunk_count(word, principals),
                chunk_total=lambda principals: index.store.readable_chunk_count(principals),
                speller=self.speller,
            )

        return self._once("answer_service", build)

    def _dictionary(self):
        """'is this a word of the language?' from the embedder's own tokenizer (whole-word
        entries of its vocabulary); None for an embedder without one."""
        tok = getattr(self.embedder, "tokenizer", None)
        if tok is None or not hasattr(tok, "get_vocab"):
            return None
        words = frozenset(w for w in tok.get_vocab() if w.isalpha() and len(w) >= 3)
        return words.__contains__

    @property
    def index_admin(self):
        """Index status and the background re-index for the admin tab."""
        from kb_chatbot.app.kb.jobs import IndexAdmin

        return self._once("index_admin", lambda: IndexAdmin(self.settings, embedder_provider=lambda: self.embedder))

    def warm_up(self) -> None:
        """Load the embedder, the index and the model now (servers call this at start)."""
        self.embedder.embed_query("warm up")
        _ = self.retriever
        warm = getattr(self.generator, "warm_up", None)
        if callable(warm):
            warm()


def build_services(settings: Settings, **parts: Any) -> Services:
    return Services(settings, **parts)
