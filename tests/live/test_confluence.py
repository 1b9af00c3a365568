"""confluence against a local Confluence REST API (Data Center flavour): space permissions,
inherited read restrictions, group members, CQL increments, attachments, trash, 429, tokens."""
from __future__ import annotations

import time

import pytest

from kb_chatbot.core.settings import SourceConfig
from kb_chatbot.core.types import Principal
from tests.live.conftest import CountingEmbedder, doc_acls, doc_texts, readable, resync_unchanged, settings, sync
from tests.live.fakeapi import FakeConfluence, Reply, docx_bytes

TOKEN = "confluence-pat-987654"
ALICE, BOB, CAROL = Principal("alice"), Principal("bob"), Principal("carol")


def _docx(text: str) -> bytes:
    return docx_bytes("Fleet policy", text)


@pytest.fixture
def conf(monkeypatch):
    fake = FakeConfluence(TOKEN)
    fake.groups = {"staff": ["alice", "bob", "carol"], "hr": ["alice", "carol"]}
    fake.add_space("ENG", groups=["staff"])
    fake.add_space("PUB", anonymous=True)
    fake.add_page("1", "ENG", "Onboarding", "<h2>Laptops</h2><p>New hires get a narwhal laptop on day one.</p>")
    fake.add_page("2", "ENG", "Salaries", "<h2>Bands</h2><p>The platypus salary bands are reviewed in May.</p>",
                  groups=["hr"])
    fake.add_page("3", "ENG", "Salary exceptions", "<p>Axolotl exceptions need two approvals.</p>", parent="2")
    fake.add_page("4", "ENG", "Bob's notes", "<p>Capybara notes for the review.</p>", parent="2", users=["bob"])
    fake.add_page("5", "PUB", "Lunch menu", "<p>Tuesday is pelican pasta day.</p>")
    fake.add_attachment("1", "att9", "fleet.docx", _docx("Company cars are booked through the ocelot desk."))
    monkeypatch.setenv("KB_SECRET_ACME_WIKI", TOKEN)
    yield fake
    fake.close()


def _src(fake: FakeConfluence) -> SourceConfig:
    return SourceConfig(name="acme-wiki", type="confluence", url=fake.url, cloud=False)


def test_first_sync_mirrors_space_permissions_and_inherited_restrictions(tmp_path, conf):
    s = settings(tmp_path)
    rep = sync(s, _src(conf))
    assert rep.sources[0].status == "ok", rep.sources[0].error
    acls = doc_acls(s, "acme-wiki")
    assert acls["acme-wiki:page:1"] == {"user:alice", "user:bob", "user:carol"}  # the space's group
    assert acls["acme-wiki:page:2"] == {"user:alice", "user:carol"}  # restricted to hr
    assert acls["acme-wiki:page:3"] == {"user:alice", "user:carol"}  # inherits its parent's restriction
    assert acls["acme-wiki:page:4"] == set()  # bob only, under an hr-only parent: nobody
    assert acls["acme-wiki:page:5"] == {"public"}  # anonymous access
    assert acls["acme-wiki:page:1:att:att9"] == acls["acme-wiki:page:1"]
    texts = doc_texts(s, "acme-wiki")
    assert "ocelot desk" in texts["acme-wiki:page:1:att:att9"]
    assert "narwhal laptop" in texts["acme-wiki:page:1"]
    assert not readable(s, BOB, "platypus salary bands") & {"acme-wiki:page:2", "acme-wiki:page:3"}
    assert "acme-wiki:page:2" in readable(s, CAROL, "platypus salary bands")


def test_headings_are_kept(tmp_path, conf):
    s = settings(tmp_path)
    sync(s, _src(conf))
    from tests.live.conftest import db

    rows = db(s).execute("SELECT heading_path FROM chunks WHERE doc_id='acme-wiki:page:1'").fetchall()
    assert any("Laptops" in r[0] for r in rows)


def test_unchanged_site_resyncs_with_list_calls_only(tmp_path, conf):
    resync_unchanged(settings(tmp_path), _src(conf), conf)
    assert set(conf.calls) <= {"spaces", "space", "pages", "group.members"}, conf.calls


def test_restriction_and_membership_changes_reach_the_index_without_content_change(tmp_path, conf):
    s = settings(tmp_path)
    sync(s, _src(conf))
    conf.pages["1"]["groups"] = ["hr"]  # Onboarding becomes hr-only
    conf.groups["hr"] = ["carol"]  # Alice leaves hr
    emb = CountingEmbedder()
    rep = sync(s, _src(conf), emb)
    assert emb.seen == [] and rep.sources[0].acl_updated >= 3
    acls = doc_acls(s, "acme-wiki")
    assert acls["acme-wiki:page:1"] == {"user:carol"} == acls["acme-wiki:page:1:att:att9"]
    assert acls["acme-wiki:page:2"] == {"user:carol"} == acls["acme-wiki:page:3"]
    assert not readable(s, ALICE, "platypus salary bands axolotl narwhal laptop ocelot") - {"acme-wiki:page:5"}


def test_edits_trash_and_new_pages(tmp_path, conf):
    s = settings(tmp_path)
    sync(s, _src(conf))
    now = time.strftime("%Y-%m-%dT%H:%M:%S.000Z", time.gmtime())
    conf.edit_page("5", "<p>Tuesday is now flamingo risotto day.</p>", now)
    conf.pages["1"]["status"] = "trashed"
    conf.add_page("6", "ENG", "Parking", "<p>Badger parking permits renew in June.</p>", when=now)
    conf.reset_calls()
    rep = sync(s, _src(conf))
    texts = doc_texts(s, "acme-wiki")
    assert "flamingo risotto" in texts["acme-wiki:page:5"]
    assert "acme-wiki:page:1" not in texts and "acme-wiki:page:1:att:att9" not in texts  # trashed, with attachments
    assert "Badger parking" in texts["acme-wiki:page:6"]
    assert rep.sources[0].deleted == 2
    assert conf.calls["search"] >= 1 and conf.calls.get("page", 0) == 0  # bodies came from the CQL search


def test_expired_token_keeps_the_documents(tmp_path, conf):
    s = settings(tmp_path)
    sync(s, _src(conf))
    before = doc_acls(s, "acme-wiki")
    conf.token = "rotated"
    conf.pages["5"]["status"] = "trashed"
    rep = sync(s, _src(conf))
    assert rep.sources[0].status == "failed" and "KB_SECRET_ACME_WIKI" in rep.sources[0].error
    assert doc_acls(s, "acme-wiki") == before


def test_rate_limit_honours_retry_after(tmp_path, conf):
    s = settings(tmp_path)
    conf.faults["pages"] = [Reply(429, {"message": "Too many requests"}, {"Retry-After": "1"})]
    t0 = time.monotonic()
    rep = sync(s, _src(conf))
    assert rep.sources[0].status == "ok" and time.monotonic() - t0 >= 1.0
    assert "acme-wiki:page:1" in doc_acls(s, "acme-wiki")


def test_a_page_moved_to_another_space_takes_that_space_s_readers(tmp_path, conf):
    s = settings(tmp_path)
    sync(s, _src(conf))
    conf.pages["1"]["space"] = "PUB"  # moved from ENG (staff only) to PUB (anonymous), not edited
    sync(s, _src(conf))
    acls = doc_acls(s, "acme-wiki")
    assert acls["acme-wiki:page:1"] == {"public"} == acls["acme-wiki:page:1:att:att9"]
    sync(s, _src(conf))  # and it stays
    assert doc_acls(s, "acme-wiki")["acme-wiki:page:1"] == {"public"}


def test_cloud_flavour_basic_auth_emails_and_group_members_by_name(tmp_path, monkeypatch):
    fake = FakeConfluence(TOKEN, cloud_user="kb-bot@acme.example")
    try:
        fake.groups = {"staff": ["alice", "bob"], "hr": ["alice"]}
        fake.add_space("ENG", groups=["staff"])
        fake.add_page("1", "ENG", "Salaries", "<p>The platypus salary bands are reviewed in May.</p>", groups=["hr"])
        fake.add_page("2", "ENG", "Onboarding", "<p>New hires get a narwhal laptop.</p>")
        monkeypatch.setenv("KB_SECRET_ACME_WIKI", TOKEN)
        s = settings(tmp_path)
        src = SourceConfig(name="acme-wiki", type="confluence", url=fake.url + "/wiki", cloud=True,
                           username="kb-bot@acme.example")
        rep = sync(s, src)
        assert rep.sources[0].status == "ok", rep.sources[0].error
        acls = doc_acls(s, "acme-wiki")
        assert acls["acme-wiki:page:1"] == {"user:alice@acme.example"}
        assert acls["acme-wiki:page:2"] == {"user:alice@acme.example", "user:bob@acme.example"}
        assert "acme-wiki:page:1" in readable(s, Principal("alice", email="alice@acme.example"), "platypus salary")
        rep = sync(s, SourceConfig(name="acme-wiki", type="confluence", url=fake.url + "/wiki", cloud=True))
        assert rep.sources[0].status == "failed" and "username" in rep.sources[0].error
    finally:
        fake.close()
