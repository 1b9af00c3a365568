"""The Connector seam: memory, wiki, Slack and Drive exports, and the Slack, Confluence and Google
Drive APIs (through their SDKs, against local servers) pass the same suite."""
from __future__ import annotations

from datetime import datetime, timezone
from pathlib import Path

import pytest

from kb_chatbot.core.protocols import Connector
from kb_chatbot.core.settings import SourceConfig
from kb_chatbot.core.types import Document

SAMPLE = Path(__file__).resolve().parents[2] / "data" / "sample"


def _memory():
    from kb_chatbot.ingest.connectors.memory import MemoryConnector

    return MemoryConnector([Document(id="m:a", source="m", source_type="wiki", title="A", uri="https://x/a",
                                     updated_at=datetime(2024, 1, 1, tzinfo=timezone.utc), text="Alpha text.",
                                     acl=frozenset({"public"}))])


def _wiki():
    from kb_chatbot.ingest.connectors.wiki import WikiConnector

    return WikiConnector(SAMPLE / "wiki", source="acme-wiki", base_url="https://wiki.acme.example/")


def _slack():
    from kb_chatbot.ingest.connectors.slack import SlackConnector

    return SlackConnector(SAMPLE / "slack", source="acme-slack", base_url="https://acme.slack.com/")


def _drive():
    from kb_chatbot.ingest.connectors.drive import DriveConnector

    return DriveConnector(SAMPLE / "drive", source="acme-drive", default_acl="deny")


def _slack_api(monkeypatch, tmp_path):
    from kb_chatbot.ingest.connectors.slack_api import SlackApiConnector
    from tests.live.fakeapi import FakeSlack

    fake = FakeSlack("xoxb-contract-000000")
    fake.add_user("UA", "Alice", "alice@acme.example")
    fake.add_channel("C1", "general")
    fake.add_channel("C2", "payroll", private=True, members=["UA"])
    fake.post("C1", "1700000000.000100", "UA", "The espresso machine is descaled on Mondays.")
    fake.post("C1", "1700000100.000100", "UA", "Badges are printed in room 214.", thread_ts="1700000000.000100")
    fake.post("C2", "1700000200.000100", "UA", "Payroll closes on the 25th.")
    monkeypatch.setenv("KB_SECRET_CONTRACT", fake.token)
    return fake, SlackApiConnector(SourceConfig(name="contract", type="slack-api", url=fake.url + "/api/"))


def _confluence(monkeypatch, tmp_path):
    from kb_chatbot.ingest.connectors.confluence import ConfluenceConnector
    from tests.live.fakeapi import FakeConfluence

    fake = FakeConfluence("contract-pat-000000")
    fake.groups = {"staff": ["alice"]}
    fake.add_space("ENG", groups=["staff"])
    fake.add_page("1", "ENG", "Onboarding", "<h2>Laptops</h2><p>New hires get a laptop on day one.</p>")
    fake.add_page("2", "ENG", "Salaries", "<p>Salary bands are reviewed in May.</p>", parent="1", groups=["staff"])
    monkeypatch.setenv("KB_SECRET_CONTRACT", fake.token)
    return fake, ConfluenceConnector(SourceConfig(name="contract", type="confluence", url=fake.url, cloud=False))


def _gdrive(monkeypatch, tmp_path):
    from kb_chatbot.ingest.connectors.gdrive import GoogleDriveConnector
    from tests.live.fakeapi import FakeGoogle, write_service_account_key

    fake = FakeGoogle()
    key = write_service_account_key(tmp_path / "sa.json", fake.url + "/token")
    fake.add_file("f1", "notes.txt", "text/plain", b"Robots charge in bay seven.",
                  [{"type": "user", "role": "reader", "emailAddress": "alice@acme.example"}])
    fake.add_file("f2", "menu.md", "text/markdown", b"# Menu\n\nTuesday is pasta day.",
                  [{"type": "domain", "role": "reader", "domain": "acme.example"}])
    monkeypatch.setenv("KB_SECRET_CONTRACT", str(key))
    return fake, GoogleDriveConnector(SourceConfig(name="contract", type="gdrive", url=fake.url,
                                                   delegated_user="admin@acme.example"))


@pytest.fixture(params=["memory", "wiki", "slack", "drive", "slack-api", "confluence", "gdrive"])
def connector(request, monkeypatch, tmp_path) -> Connector:
    live = {"slack-api": _slack_api, "confluence": _confluence, "gdrive": _gdrive}
    if request.param in live:
        fake, conn = live[request.param](monkeypatch, tmp_path)
        request.addfinalizer(fake.close)
        return conn
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


def test_an_incremental_connector_resumes_from_its_state(connector):
    """API connectors: after a full read, a read from the stored state of an unchanged source
    yields nothing new (at most the same documents again), removes nothing, re-permissions
    nothing, and the state is plain JSON (it is stored in the index)."""
    import json

    if not getattr(connector, "incremental", False):
        pytest.skip("an export connector: sync diffs every document")
    connector.begin(None, {})
    first = {d.id: d for d in connector.documents()}
    assert connector.full_read and first
    state = json.loads(json.dumps(connector.state()))
    connector.begin(state, {d.id: d.acl for d in first.values()})
    again = list(connector.documents())
    assert not connector.full_read
    assert all(d.id in first and d.content_hash() == first[d.id].content_hash() for d in again)
    assert connector.removed == set() and connector.acl_changes == {}
    assert sum(connector.calls.values()) >= 1
