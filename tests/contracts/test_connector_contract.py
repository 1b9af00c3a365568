"""The Connector seam: memory, wiki, Slack and Drive pass the same suite over real inputs."""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest

from core.protocols import Connector
from core.types import Document

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "sample"


def _memory():
    from ingest.connectors.memory import MemoryConnector

    return MemoryConnector([Document(id="m:a", source="m", source_type="wiki", title="A", uri="https://x/a",
                                     updated_at=datetime(2024, 1, 1, tzinfo=timezone.utc), text="Alpha text.",
                                     acl=frozenset({"public"}))])


def _wiki():
    from ingest.connectors.wiki import WikiConnector

    return WikiConnector(SAMPLE / "wiki", source="acme-wiki", base_url="https://wiki.acme.example/")


def _slack():
    from ingest.connectors.slack import SlackConnector

    return SlackConnector(SAMPLE / "slack", source="acme-slack", base_url="https://acme.slack.com/")


def _drive():
    from ingest.connectors.drive import DriveConnector

    return DriveConnector(SAMPLE / "drive", source="acme-drive", default_acl="deny")


@pytest.fixture(params=["memory", "wiki", "slack", "drive"])
def connector(request) -> Connector:
    return {"memory": _memory, "wiki": _wiki, "slack": _slack, "drive": _drive}[request.param]()


def test_implements_the_protocol(connector):
    assert isinstance(connector, Connector) and connector.source_type in ("wiki", "slack", "drive")


def test_documents_are_well_formed_and_unique(connector):
    docs = list(connector.documents())
    assert docs
    ids = [d.id for d in docs]
    assert len(ids) == len(set(ids))
    for d in docs:
        assert d.id.split(":", 1)[0] == d.source and d.text.strip() and d.title and d.uri
        assert d.updated_at.tzinfo is not None
        assert isinstance(d.acl, frozenset)  # the ACL is always explicit (possibly empty: nobody)
        for s in d.sections:
            assert 0 <= s.start <= s.end <= len(d.text)
        assert d.content_hash() == d.content_hash()


def test_a_second_read_yields_the_same_documents(connector):
    first = {d.id: d.content_hash() for d in connector.documents()}
    assert first == {d.id: d.content_hash() for d in connector.documents()}


def test_expected_count_is_none_or_a_count(connector):
    n = connector.expected_count()
    assert n is None or n >= 1


def test_failures_are_a_list(connector):
    list(connector.documents())
    assert isinstance(connector.failures, list)
