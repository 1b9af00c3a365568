"""Wiki connector: the real 18F/TTS handbook (Jekyll/Eleventy markdown) and small wikis
built in tmp_path for front matter, Confluence HTML, ACLs and failures."""
from __future__ import annotations

import json
import os
from datetime import datetime, timezone
from pathlib import Path

import pytest

from kb_chatbot.core.errors import SourceError
from kb_chatbot.core.protocols import Connector
from kb_chatbot.core.settings import SourceConfig
from kb_chatbot.core.types import PUBLIC
from kb_chatbot.ingest.connectors import make_connector
from kb_chatbot.ingest.connectors.wiki import WikiConnector

BASE = "https://handbook.example.gov/"


@pytest.fixture(scope="module")
def handbook(shared_dir: Path):
    root = shared_dir / "corpus" / "wiki-18f-handbook"
    conn = WikiConnector(root, source="handbook", base_url=BASE)
    docs = {d.id: d for d in conn.documents()}
    return conn, docs


def doc(docs, rel):
    return docs[f"handbook:{rel}"]


def section(d, heading_path):
    found = [s for s in d.sections if s.heading_path == heading_path]
    assert len(found) == 1, [s.heading_path for s in d.sections]
    return d.text[found[0].start:found[0].end]


# --- the real handbook ----------------------------------------------------------------------


def test_handbook_is_ingested(handbook):
    conn, docs = handbook
    assert isinstance(conn, Connector)
    assert conn.source_type == "wiki"
    assert conn.failures == []
    assert conn.expected_count() == 250  # every .md file
    # redirect-only pages (front matter, no body) are skipped as empty, not failures
    assert 235 <= len(docs) <= 250
    assert "handbook:pages/tools/vmware-fusion.md" not in docs


def test_no_template_noise_survives(handbook):
    _, docs = handbook
    for d in docs.values():
        for noise in ("{%", "%}", "{{", "}}", "<!--", "{:"):
            assert noise not in d.text, (d.id, noise)
        assert not d.text.startswith("---"), d.id  # front matter is not text


def test_page_title_heading_path_and_fact(handbook):
    _, docs = handbook
    d = doc(docs, "pages/travel-and-leave/paid-parental-leave.md")
    assert d.title == "Paid parental leave (PPL)"
    assert d.source == "handbook" and d.source_type == "wiki"
    assert d.uri == BASE + "pages/travel-and-leave/paid-parental-leave.md"
    assert d.acl == {PUBLIC}
    assert "You are entitled to 12 weeks of paid time off for the birth, adoption or placement of a new child." in d.text
    unpaid = section(d, ("Using PPL", "Combining paid parental leave with other leave", "Unpaid leave"))
    assert unpaid.startswith("#### Unpaid leave\n")
    assert "Leave Without Pay (LWOP) of less than four weeks" in unpaid
    # {% slack_channel "parents" %} renders as the channel name; link targets are dropped
    assert "- #parents" in section(d, ("Resources",))
    assert "Family and Medical Leave Act (FMLA) leave" in d.text
    assert "](" not in d.text
    assert d.metadata["path"] == "pages/travel-and-leave/paid-parental-leave.md"
    assert d.metadata["format"] == "markdown"


def test_html_table_inside_markdown(handbook):
    _, docs = handbook
    d = doc(docs, "pages/general-information-and-resources/chicago.md")
    assert "| Location | 230 S. Dearborn St., 35th floor SW Chicago, IL 60604 |" in d.text
    assert "| Region | Great Lakes Region (Region 5) |" in d.text


def test_sections_are_within_bounds_ordered_and_labelled(handbook):
    _, docs = handbook
    for d in docs.values():
        assert d.sections, d.id
        assert d.updated_at.tzinfo is not None and d.updated_at.utcoffset().total_seconds() == 0
        prev = 0
        for s in d.sections:
            assert 0 <= s.start < s.end <= len(d.text), (d.id, s)
            assert s.start >= prev, (d.id, s)
            prev = s.end
            body = d.text[s.start:s.end]
            if s.heading_path:  # a heading's section starts with its own heading line
                level_line = body.split("\n", 1)[0]
                assert level_line.startswith("#") and level_line.endswith(s.heading_path[-1]), (d.id, s)
        assert d.text[prev:].strip() == ""


# --- small wikis in tmp_path ----------------------------------------------------------------


def write(root: Path, rel: str, content: str | bytes) -> Path:
    p = root / rel
    p.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(content, bytes):
        p.write_bytes(content)
    else:
        p.write_text(content, encoding="utf-8")
    return p


@pytest.fixture
def wiki(tmp_path: Path) -> Path:
    root = tmp_path / "wiki"
    write(root, "hr/pto.md", "---\ntitle: Paid time off\ndate: 2025-01-15\npermalink: /hr/pto/\n"
          "tags: [hr, leave]\n---\n# PTO\n\nEmployees get 25 days of PTO.\n")
    write(root, "hr/salaries.md", "---\ntitle: Salary bands\naccess: [group:HR, user:Carol@acme.example]\n"
          "last_modified: 2025-02-01T09:30:00+01:00\n---\nBand 3 tops out at 90k.\n")
    write(root, "eng/setup.markdown", "Intro line.\n\nSetting up\n==========\n\nRun make.\n")
    write(root, "eng/no-title-here.md", "Just text, no heading.\n")
    write(root, "eng/confluence/Runbook_42.html",
          "<html><head><title>Eng : Runbook</title></head><body><div id='main-header'>"
          "<ol id='breadcrumbs'><li>Eng</li></ol><h1 id='title-heading'><span id='title-text'>Eng : Runbook</span></h1></div>"
          "<div id='main-content'><h2>Restart</h2><p>Restart the worker with systemctl.</p></div>"
          "<div id='footer'>Document generated by Confluence</div></body></html>")
    write(root, "redirect.md", "---\ntitle: Moved\nredirect_to: https://elsewhere.example/\n---\n")
    write(root, "_site/hr/pto.html", "<html><body><p>built copy</p></body></html>")
    write(root, ".git/HEAD.md", "# not a page")
    write(root, "logo.png", b"\x89PNG\r\n\x1a\n")
    return root


def test_small_wiki_documents(wiki):
    conn = WikiConnector(wiki, source="acme-wiki", base_url="https://wiki.acme.example/")
    docs = {d.id: d for d in conn.documents()}
    assert sorted(docs) == [
        "acme-wiki:eng/confluence/Runbook_42.html",
        "acme-wiki:eng/no-title-here.md",
        "acme-wiki:eng/setup.markdown",
        "acme-wiki:hr/pto.md",
        "acme-wiki:hr/salaries.md",
    ]
    assert conn.failures == []  # the empty redirect page and the .png are skipped quietly
    assert conn.expected_count() == 6  # the redirect page counts until it turns out empty

    pto = docs["acme-wiki:hr/pto.md"]
    assert pto.title == "Paid time off"
    assert pto.uri == "https://wiki.acme.example/hr/pto/"  # permalink wins over the file path
    assert pto.updated_at == datetime(2025, 1, 15, tzinfo=timezone.utc)
    assert pto.metadata["tags"] == ["hr", "leave"]
    assert pto.acl == {PUBLIC}

    sal = docs["acme-wiki:hr/salaries.md"]
    assert sal.acl == {"group:hr", "user:carol@acme.example"}
    assert sal.updated_at == datetime(2025, 2, 1, 8, 30, tzinfo=timezone.utc)

    setup = docs["acme-wiki:eng/setup.markdown"]
    assert setup.title == "Setting up"  # first H1 (setext) when there is no front matter
    assert setup.text == "Intro line.\n\n# Setting up\n\nRun make."
    assert [s.heading_path for s in setup.sections] == [(), ("Setting up",)]

    plain = docs["acme-wiki:eng/no-title-here.md"]
    assert plain.title == "no title here"  # file name as the last resort
    mtime = datetime.fromtimestamp(os.stat(wiki / "eng/no-title-here.md").st_mtime, tz=timezone.utc)
    assert plain.updated_at == mtime
    assert plain.uri == "https://wiki.acme.example/eng/no-title-here.md"

    page = docs["acme-wiki:eng/confluence/Runbook_42.html"]
    assert page.title == "Runbook"
    assert page.text == "## Restart\n\nRestart the worker with systemctl."
    assert page.sections[0].heading_path == ("Restart",)
    assert page.metadata["format"] == "html"


def test_file_uri_without_base_url(wiki):
    d = next(d for d in WikiConnector(wiki, source="w").documents() if d.id == "w:hr/pto.md")
    assert d.uri == (wiki / "hr/pto.md").resolve().as_uri()


def test_sidecar_restricts_wiki_pages_and_front_matter_overrides(wiki):
    (wiki / "permissions.json").write_text(json.dumps({"hr/": {"groups": ["people-ops"]}}))
    conn = WikiConnector(wiki, source="w", default_acl="deny")
    docs = {d.id: d for d in conn.documents()}
    assert docs["w:hr/pto.md"].acl == {"group:people-ops"}
    assert docs["w:hr/salaries.md"].acl == {"group:hr", "user:carol@acme.example"}  # page's own access
    assert docs["w:eng/setup.markdown"].acl == frozenset()  # default deny: nobody


def test_bad_access_entry_fails_the_page_not_the_run(wiki):
    write(wiki, "hr/typo.md", "---\naccess: [hr]\n---\nSecret plans.\n")
    conn = WikiConnector(wiki, source="w")
    ids = [d.id for d in conn.documents()]
    assert "w:hr/typo.md" not in ids and "w:hr/pto.md" in ids
    assert len(conn.failures) == 1
    f = conn.failures[0]
    assert f.path == "hr/typo.md"
    assert "access" in f.reason and "'hr'" in f.reason
    # fail closed: sync must remove an older, possibly public, version of the page
    assert f.doc_id == "w:hr/typo.md" and f.drop


def test_missing_root_is_a_source_error(tmp_path):
    with pytest.raises(SourceError, match=r"not found: .*nowhere; check sources\[\]\.path in kb\.yaml"):
        WikiConnector(tmp_path / "nowhere", source="w")
    (tmp_path / "file.md").write_text("x")
    with pytest.raises(SourceError, match="not a folder"):
        WikiConnector(tmp_path / "file.md", source="w")


def test_make_connector_builds_the_wiki_connector(wiki):
    src = SourceConfig(name="acme-wiki", type="wiki", path=wiki, base_url="https://wiki.acme.example/")
    conn = make_connector(src)
    assert isinstance(conn, WikiConnector)
    assert any(d.id == "acme-wiki:hr/pto.md" for d in conn.documents())
