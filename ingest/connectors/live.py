"""What the API connectors (slack-api, confluence, gdrive) share: incremental state, the
documents a change removes or re-permissions, call counts, and parsing fetched files.

Sync drives a :class:`LiveConnector` (``incremental = True``) so:

1. ``begin(state, indexed)``: ``state`` is what :meth:`state` returned after the last
   *published* sync (stored in the index generation, so a crash or a failed run never moves a
   cursor past changes that were not indexed); ``None`` the first time or when the chunking
   settings changed: then the connector reads everything (``full_read``) and sync removes what
   it did not yield, as for the export connectors. ``indexed`` maps every indexed document of
   the source to its ACL.
2. ``documents()`` yields the new and changed documents only.
3. ``removed`` (deleted, trashed, archived, no longer readable by the connector) and
   ``acl_changes`` (readers changed, content did not: a group membership, a restriction, a
   share) are applied; ``state()`` is stored with the generation.

A ``SourceError`` anywhere (a rejected token, the service down) fails the source: nothing of
the run is applied, its indexed documents stay as they were.
"""
from __future__ import annotations

import logging
import os
import tempfile
from collections import Counter
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping

from kb_chatbot.core.errors import ParseError
from kb_chatbot.core.types import Document, IngestFailure
from kb_chatbot.ingest.parsers import FORMATS, Parsed, parse_file

log = logging.getLogger(__name__)


class LiveConnector:
    """Base of the API connectors; subclasses implement :meth:`_read`."""

    source_type = "wiki"
    incremental = True

    def __init__(self, src: Any, *, parser: Callable[[Path, str], Parsed] | None = None):
        self.src = src
        self.source = src.name
        self.parser = parser
        self.failures: list[IngestFailure] = []
        self.skipped: list[IngestFailure] = []
        self.removed: set[str] = set()
        self.acl_changes: dict[str, frozenset[str]] = {}
        #: API calls made by the last run, by endpoint ("conversations.history": 3)
        self.calls: Counter[str] = Counter()
        self._state: dict[str, Any] = {}
        self._indexed: dict[str, frozenset[str]] = {}
        self.full_read = True

    # --- the sync protocol --------------------------------------------------------------

    def begin(self, state: Mapping[str, Any] | None, indexed: Mapping[str, frozenset[str]]) -> None:
        self.full_read = state is None
        self._state = dict(state or {})
        self._indexed = dict(indexed)
        self.failures.clear()
        self.skipped.clear()
        self.removed.clear()
        self.acl_changes.clear()
        self.calls.clear()

    def state(self) -> dict[str, Any]:
        return self._state

    def expected_count(self) -> int | None:
        return None

    def documents(self) -> Iterator[Document]:
        """The new and changed documents since :meth:`begin`'s state (all of them, before any)."""
        try:
            yield from self._read()
        finally:
            close = getattr(self.parser, "close", None)
            if close is not None:
                close()

    def _read(self) -> Iterator[Document]:
        raise NotImplementedError

    # --- helpers ------------------------------------------------------------------------

    def count(self, endpoint: str) -> None:
        self.calls[endpoint] += 1

    def set_acl(self, doc_id: str, acl: frozenset[str]) -> None:
        """Record that an indexed document's readers are now ``acl`` (no-op when unchanged)."""
        if doc_id in self._indexed and self._indexed[doc_id] != acl:
            self.acl_changes[doc_id] = acl

    def remove(self, doc_id: str) -> None:
        if doc_id in self._indexed:
            self.removed.add(doc_id)
        self.acl_changes.pop(doc_id, None)

    def remove_prefix(self, prefix: str) -> int:
        ids = [d for d in self._indexed if d.startswith(prefix)]
        for d in ids:
            self.remove(d)
        return len(ids)

    def skip(self, path: str, reason: str) -> None:
        """An item read but not indexed (no text, too large, the bot not in a channel): listed
        in the report, not a failure."""
        self.skipped.append(IngestFailure(path=path, reason=reason, report_only=True))

    def fail(self, path: str, reason: str, doc_id: str | None, *, drop: bool = False) -> None:
        """An item that could not be read: its indexed version stays (``drop``: is removed,
        when its readers could not be confirmed)."""
        log.warning("item skipped source=%s item=%s reason=%s", self.source, path, reason)
        self.failures.append(IngestFailure(path=path, reason=reason, doc_id=doc_id, drop=drop))
        if drop and doc_id:
            self.remove(doc_id)

    def parse_bytes(self, data: bytes, name: str, suffix: str) -> Parsed:
        """Parse a fetched file with the same parsers (and the same child-process limits) as the
        export connectors; ``suffix`` (".docx", ".pdf", ".html") chooses the parser."""
        if suffix.lower() not in FORMATS:
            raise ParseError(name, f"no parser for {suffix} files")
        fd, tmp = tempfile.mkstemp(suffix=suffix.lower(), prefix="kb-live-")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
            path = Path(tmp)
            return self.parser(path, name) if self.parser is not None else parse_file(path)
        finally:
            try:
                os.unlink(tmp)
            except OSError:
                pass


def parse_time(value: Any) -> datetime:
    """An RFC 3339 / ISO 8601 time of an API ("2026-11-30T10:00:00.000Z") as aware UTC; epoch
    for anything unreadable."""
    if isinstance(value, str) and value:
        try:
            dt = datetime.fromisoformat(value.replace("Z", "+00:00"))
            return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)
        except ValueError:
            pass
    return datetime.fromtimestamp(0, tz=timezone.utc)
