"""gdrive against local Google endpoints: the service-account grant with delegation, exports of
Google Docs, PDFs with pages, permissions (user, group via the Directory API, domain, anyone),
the changes feed (edits, sharing, trash), group membership refresh, 429, a revoked key."""
from __future__ import annotations

import base64
import io
import json

import pytest

from kb_chatbot.core.settings import SourceConfig
from kb_chatbot.core.types import Principal
from tests.live.conftest import CountingEmbedder, db, doc_acls, doc_texts, readable, resync_unchanged, settings, sync
from tests.live.fakeapi import FakeGoogle, Reply, docx_bytes, write_service_account_key

DOCX = "application/vnd.openxmlformats-officedocument.wordprocessingml.document"
ALICE = Principal("alice", email="alice@acme.example")
BOB = Principal("bob", email="bob@acme.example")
OUTSIDER = Principal("eve", email="eve@other.example")


def _docx(text: str) -> bytes:
    return docx_bytes("Travel", text)


def _pdf(pages: list[str]) -> bytes:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_font("helvetica", size=12)
    for text in pages:
        pdf.add_page()
        pdf.multi_cell(0, 10, text)
    return bytes(pdf.output())


def _xlsx(rows: list[list[str]]) -> bytes:
    import openpyxl

    wb = openpyxl.Workbook()
    for r in rows:
        wb.active.append(r)
    buf = io.BytesIO()
    wb.save(buf)
    return buf.getvalue()


@pytest.fixture
def google(monkeypatch, tmp_path):
    fake = FakeGoogle()
    key = write_service_account_key(tmp_path / "sa.json", fake.url + "/token")
    monkeypatch.setenv("KB_SECRET_ACME_DRIVE", str(key))
    fake.groups = {"eng@acme.example": ["bob@acme.example"]}
    fake.add_file("doc1", "Travel policy", "application/vnd.google-apps.document",
                  _docx("Per diem for Reykjavik trips is 95 dollars."), [{"type": "user", "role": "writer",
                                                                         "emailAddress": "alice@acme.example"}])
    fake.add_file("pdf1", "Robots.pdf", "application/pdf",
                  _pdf(["Robot charging happens in bay seven.", "Robot firmware updates ship on Thursdays."]),
                  [{"type": "group", "role": "reader", "emailAddress": "eng@acme.example"}])
    fake.add_file("xls1", "Holidays.xlsx", "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet",
                  _xlsx([["Holiday", "Date"], ["Solstice picnic", "June 21"]]),
                  [{"type": "domain", "role": "reader", "domain": "acme.example"}])
    fake.add_file("link1", "Secret roadmap", DOCX, _docx("The gryphon project ships next year."),
                  [{"type": "anyone", "role": "reader", "allowFileDiscovery": False}])
    fake.add_file("pub1", "Press kit", DOCX, _docx("Our logo is a teal heron."),
                  [{"type": "anyone", "role": "reader", "allowFileDiscovery": True}])
    yield fake
    fake.close()


def _src(fake: FakeGoogle, **kw) -> SourceConfig:
    return SourceConfig(name="acme-drive", type="gdrive", url=fake.url, delegated_user="admin@acme.example", **kw)


def test_first_sync_reads_files_and_mirrors_sharing(tmp_path, google):
    s = settings(tmp_path)
    rep = sync(s, _src(google))
    assert rep.sources[0].status == "ok", rep.sources[0].error
    acls = doc_acls(s, "acme-drive")
    assert acls["acme-drive:doc1"] == {"user:alice@acme.example"}
    assert acls["acme-drive:pdf1"] == {"user:bob@acme.example"}  # the group, expanded by the Directory API
    assert acls["acme-drive:xls1"] == {"domain:acme.example"}
    assert acls["acme-drive:link1"] == set()  # anyone with the link: ignored by default
    assert acls["acme-drive:pub1"] == {"public"}
    texts = doc_texts(s, "acme-drive")
    assert "Reykjavik" in texts["acme-drive:doc1"] and "Solstice picnic" in texts["acme-drive:xls1"]
    pages = {r[0] for r in db(s).execute("SELECT page FROM chunks WHERE doc_id='acme-drive:pdf1'")}
    assert pages == {1, 2}
    # the service account asked for a token as the delegated user
    claims = json.loads(base64.urlsafe_b64decode(google.assertions[0].split(".")[1] + "=="))
    assert claims["sub"] == "admin@acme.example" and "drive.readonly" in claims["scope"]
    assert "acme-drive:xls1" in readable(s, ALICE, "Solstice picnic holiday")
    assert "acme-drive:xls1" not in readable(s, OUTSIDER, "Solstice picnic holiday")
    assert "acme-drive:link1" not in readable(s, ALICE, "gryphon project ships")


def test_link_sharing_can_be_public(tmp_path, google):
    s = settings(tmp_path)
    sync(s, _src(google, link_sharing="public"))
    assert doc_acls(s, "acme-drive")["acme-drive:link1"] == {"public"}


def test_unchanged_drive_resyncs_with_changes_and_group_calls_only(tmp_path, google):
    resync_unchanged(settings(tmp_path), _src(google), google)
    assert set(google.calls) <= {"token", "changes.list", "members.list"}, google.calls


def test_sharing_and_group_changes_reach_the_index_without_downloads(tmp_path, google):
    s = settings(tmp_path)
    sync(s, _src(google))
    google.set_perms("doc1", [{"type": "user", "role": "reader", "emailAddress": "bob@acme.example"}])
    google.groups["eng@acme.example"] = ["alice@acme.example"]  # Bob leaves eng, Alice joins
    google.reset_calls()
    emb = CountingEmbedder()
    rep = sync(s, _src(google), emb)
    assert emb.seen == [] and rep.sources[0].acl_updated == 2
    assert "files.export" not in google.calls and "files.get" not in google.calls
    acls = doc_acls(s, "acme-drive")
    assert acls["acme-drive:doc1"] == {"user:bob@acme.example"}
    assert acls["acme-drive:pdf1"] == {"user:alice@acme.example"}
    assert "acme-drive:pdf1" not in readable(s, BOB, "robot charging bay seven")


def test_edits_and_trash_follow_the_changes_feed(tmp_path, google):
    s = settings(tmp_path)
    sync(s, _src(google))
    google.modify("doc1", _docx("Per diem for Reykjavik trips is now 120 dollars."), "2026-11-30T09:00:00.000Z")
    google.trash("pub1")
    rep = sync(s, _src(google))
    texts = doc_texts(s, "acme-drive")
    assert "120 dollars" in texts["acme-drive:doc1"] and "acme-drive:pub1" not in texts
    assert rep.sources[0].updated == 1 and rep.sources[0].deleted == 1


def test_revoked_key_fails_the_source_and_keeps_documents(tmp_path, google):
    s = settings(tmp_path)
    sync(s, _src(google))
    before = doc_acls(s, "acme-drive")
    google.revoked = True
    google.trash("doc1")
    rep = sync(s, _src(google))
    assert rep.sources[0].status == "failed" and "delegation" in rep.sources[0].error
    assert doc_acls(s, "acme-drive") == before


def test_rate_limit_is_retried(tmp_path, google):
    s = settings(tmp_path)
    google.faults["files.list"] = [Reply(429, {"error": {"code": 429, "message": "Rate Limit Exceeded"}},
                                         {"Retry-After": "1"})]
    rep = sync(s, _src(google))
    assert rep.sources[0].status == "ok" and google.calls["files.list"] >= 4  # the 429, then 3 pages of 2
    assert len(doc_acls(s, "acme-drive")) == 5


def test_a_file_that_failed_to_download_is_retried_at_the_next_sync(tmp_path, google):
    s = settings(tmp_path)
    google.faults["files.export"] = [Reply(403, {"error": {"code": 403, "message": "This file cannot be exported"}})]
    rep = sync(s, _src(google))
    assert rep.sources[0].status == "partial" and "acme-drive:doc1" not in doc_acls(s, "acme-drive")
    rep = sync(s, _src(google))  # the changes feed is empty now; the failed file is fetched again
    assert rep.sources[0].status == "ok" and rep.sources[0].added == 1
    assert "Reykjavik" in doc_texts(s, "acme-drive")["acme-drive:doc1"]
