"""An in-memory connector: yields Documents it was given.

Shipped beside the real connectors (as haystack ships its fakes) for tests, benchmarks and
embedding the pipeline in other programs: pass it to ``sync_sources(...,
connector_factory=lambda src: MemoryConnector(docs))``.
"""
from __future__ import annotations

from typing import Iterator, Sequence

from kb_chatbot.core.types import Document, IngestFailure


class MemoryConnector:
    def __init__(self, docs: Sequence[Document], failures: Sequence[IngestFailure] = (), source_type: str | None = None):
        self.docs = list(docs)
        self.failures: list[IngestFailure] = list(failures)
        self.source_type = source_type or (self.docs[0].source_type if self.docs else "wiki")

    def documents(self) -> Iterator[Document]:
        yield from self.docs

    def expected_count(self) -> int:
        return len(self.docs)
