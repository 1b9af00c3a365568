"""Drive connector: the real docx/pptx/xlsx/pdf corpus, corrupt files, the permissions
sidecar and the document contract (ids, uris, sections)."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from kb_chatbot.core.errors import SourceError
from kb_chatbot.core.protocols import Connector
from kb_chatbot.core.settings import SourceConfig
from kb_chatbot.core.types import PUBLIC
from kb_chatbot.ingest.connectors import make_connector
from kb_chatbot.ingest.connectors.drive import DriveConnector

OFFICE = (".docx", ".pptx", ".xlsx", ".pdf")


@pytest.fixture(scope="module")
def corpus(shared_dir: Path) -> Path:
    return shared_dir / "corpus" / "drive"


@pytest.fixture(scope="module")
def drive_docs(corpus):
    conn = DriveConnector(corpus, source="drive", base_url="https://drive.acme.example/")
    docs = {d.id: d for d in conn.documents()}
    return conn, docs


def only_section(d, **where):
    found = [s for s in d.sections if all(getattr(s, k) == v for k, v in where.items())]
    assert len(found) == 1, (where, d.sections)
    return d.text[found[0].start:found[0].end]


def test_every_corpus_file_becomes_a_document(corpus, drive_docs):
    conn, docs = drive_docs
    assert isinstance(conn, Connector) and conn.source_type == "drive"
    assert conn.failures == []
    office = sorted(p.name for p in corpus.iterdir() if p.suffix in OFFICE)
    assert len(office) == 19
    for name in office:
        assert f"drive:{name}" in docs, name
    # the reference markdown folder is read too (recursive, .md through the markdown parser)
    assert "drive:reference/multi_page.md" in docs
    assert conn.expected_count() == len(docs)


def test_document_fields(drive_docs):
    _, docs = drive_docs
    d = docs["drive:multi_page.pdf"]
    assert d.title == "multi_page.pdf"
    assert d.uri == "https://drive.acme.example/multi_page.pdf"
    assert d.source == "drive" and d.source_type == "drive"
    assert d.acl == {PUBLIC}  # no sidecar, default public
    assert d.metadata == {"path": "multi_page.pdf", "pages": 5, "format": "pdf"}
    assert d.updated_at.tzinfo is not None and d.updated_at.utcoffset().total_seconds() == 0


def test_pdf_page_two_phrase_lands_in_page_two(drive_docs):
    _, docs = drive_docs
    d = docs["drive:multi_page.pdf"]
    assert [s.page for s in d.sections] == [1, 2, 3, 4, 5]
    page2 = " ".join(only_section(d, page=2).split())
    assert "Google Docs (2006): The introduction of cloud-based word processing revolutionized collaboration." in page2
    page4 = " ".join(only_section(d, page=4).split())
    assert "Programs like Scrivener allowed authors to manage large projects" in page4


def test_short_pdf_fact(drive_docs):
    _, docs = drive_docs
    text = " ".join(docs["drive:fake-memo.pdf"].text.split())
    assert "There were 20,000 bottles of water, 10,000 blankets, and 200 laptops delivered on January 23, 2023." in text


def test_docx_matches_reference(corpus, drive_docs):
    _, docs = drive_docs
    d = docs["drive:word_sample.docx"]
    ref = (corpus / "reference" / "word_sample.docx.md").read_text(encoding="utf-8")
    # every table row of the reference, cell by cell, in one line of our text
    rows = [ln for ln in ref.splitlines() if ln.startswith("| ") and "| - |" not in ln]
    assert len(rows) == 4
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert any(all(c in line for c in cells if c) for line in d.text.splitlines()), row
    for phrase in ("I like to eat leaves", "Figure 1: This is a cute duckling", "- Enjoy summer warmth"):
        assert phrase in d.text
    assert ("Swimming in the lake", "Let’s swim!") in [s.heading_path for s in d.sections]


def test_docx_tables_reference(corpus, drive_docs):
    _, docs = drive_docs
    text = docs["drive:word_tables.docx"].text
    ref = (corpus / "reference" / "word_tables.docx.md").read_text(encoding="utf-8")
    cells = {c.strip() for ln in ref.splitlines() if ln.startswith("|") for c in ln.strip("|").split("|")}
    cells -= {"", "-"}
    assert len(cells) > 20
    missing = [c for c in cells if c not in text]
    assert missing == []


def test_pptx_slides_numbered(drive_docs):
    _, docs = drive_docs
    d = docs["drive:powerpoint_sample.pptx"]
    assert d.metadata["slides"] == 3
    assert [s.slide for s in d.sections] == [1, 2, 3]
    for n in (1, 2, 3):
        assert only_section(d, slide=n).startswith(f"Slide {n}")
    assert "Notes: Some notes on the second slide." in only_section(d, slide=2)
    table = docs["drive:fake-power-point-table.pptx"]
    assert "| Purple | Orange | Yellow |" in only_section(table, slide=1)


def test_xlsx_sheet_names(drive_docs):
    _, docs = drive_docs
    d = docs["drive:stanley-cups.xlsx"]
    assert [s.sheet for s in d.sections] == ["Stanley Cups", "Stanley Cups Since 67"]
    assert "Team: Blues | Location: STL | Stanley Cups: 1" in only_section(d, sheet="Stanley Cups")
    x = docs["drive:xlsx_01.xlsx"]
    assert x.metadata["sheets"] == ["Sheet1", "Sheet2", "Sheet3"]


def test_sections_within_bounds_ordered_non_overlapping(drive_docs):
    _, docs = drive_docs
    for d in docs.values():
        assert d.text.strip() and d.sections, d.id
        prev = 0
        for s in d.sections:
            assert 0 <= s.start < s.end <= len(d.text), (d.id, s)
            assert s.start >= prev, (d.id, s)
            assert d.text[s.start:s.end].strip(), (d.id, s)
            prev = s.end
        if d.id.endswith(".pdf"):
            assert all(s.page for s in d.sections), d.id
        if d.id.endswith(".pptx"):
            assert all(s.slide for s in d.sections), d.id
        if d.id.endswith(".xlsx"):
            assert all(s.sheet for s in d.sections), d.id


# --- corrupt files, skipped files -----------------------------------------------------------


def test_corrupt_files_are_failures_and_the_rest_is_ingested(corpus, tmp_path):
    root = tmp_path / "export"
    (root / "ops").mkdir(parents=True)
    for name in ("fake-memo.pdf", "word_sample.docx", "stanley-cups.xlsx", "powerpoint_sample.pptx"):
        shutil.copy(corpus / name, root / "ops" / name)
    pdf = (corpus / "multi_page.pdf").read_bytes()
    (root / "ops" / "truncated.pdf").write_bytes(pdf[: len(pdf) // 3])
    (root / "fake.docx").write_text("I am not a Word document")
    (root / "garbage.xlsx").write_bytes(b"PK\x03\x04" + b"\x00garbage" * 50)
    # quietly skipped: Office lock file, hidden file, unsupported type, empty text file
    (root / "ops" / "~$word_sample.docx").write_bytes(b"lock")
    (root / ".DS_Store").write_bytes(b"\x00\x00")
    (root / "photo.png").write_bytes(b"\x89PNG")
    (root / "empty.txt").write_text("  \n\n")

    conn = DriveConnector(root, source="d")
    docs = {d.id: d for d in conn.documents()}
    assert sorted(docs) == ["d:ops/fake-memo.pdf", "d:ops/powerpoint_sample.pptx",
                            "d:ops/stanley-cups.xlsx", "d:ops/word_sample.docx"]
    failures = {f.path: f for f in conn.failures}
    assert sorted(failures) == ["fake.docx", "garbage.xlsx", "ops/truncated.pdf"]
    assert failures["fake.docx"].reason == "not a valid .docx (zip) file"
    assert failures["fake.docx"].doc_id == "d:fake.docx"
    assert "PDF" in failures["ops/truncated.pdf"].reason
    assert failures["ops/truncated.pdf"].doc_id == "d:ops/truncated.pdf"
    assert "xlsx" in failures["garbage.xlsx"].reason
    assert str(root) not in failures["fake.docx"].reason  # reasons are short, paths relative

    # a second run starts with a clean failure list
    list(conn.documents())
    assert len(conn.failures) == 3


def test_other_formats_in_a_drive(tmp_path):
    root = tmp_path / "d"
    root.mkdir()
    (root / "budget.csv").write_text("Region,Q1\nEMEA,120\n")
    (root / "notes.txt").write_text("Standup moved to 9:30.\n")
    (root / "guide.md").write_text("---\ntitle: Guide\naccess: [public]\n---\n# Intro\nHello.\n")
    (root / "page.html").write_text("<html><body><h2>Ops</h2><p>Pager rota.</p></body></html>")
    (root / "Q3 plan.md").write_text("# Plan\nShip it.\n")
    conn = DriveConnector(root, source="d", base_url="https://drive.acme.example", default_acl="deny")
    docs = {d.id: d for d in conn.documents()}
    assert docs["d:budget.csv"].text == "Columns: Region | Q1\nRegion: EMEA | Q1: 120"
    assert docs["d:notes.txt"].text == "Standup moved to 9:30."
    assert docs["d:guide.md"].title == "guide.md"  # Drive files are known by file name
    assert docs["d:guide.md"].acl == frozenset()  # Drive sharing comes from the sidecar only
    assert docs["d:page.html"].sections[0].heading_path == ("Ops",)
    assert docs["d:Q3 plan.md"].uri == "https://drive.acme.example/Q3%20plan.md"


# --- permissions sidecar --------------------------------------------------------------------


@pytest.fixture
def shared_drive(tmp_path: Path, corpus: Path) -> Path:
    root = tmp_path / "drive"
    for rel, src in [
        ("hr/compensation-2026.xlsx", "stanley-cups.xlsx"),
        ("hr/handbook.docx", "word_sample.docx"),
        ("finance/q3/report.pdf", "fake-memo.pdf"),
        ("policies/travel.pdf", "multi_page.pdf"),
        ("misc/deck.pptx", "fake-power-point-table.pptx"),
    ]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(corpus / src, root / rel)
    return root


def test_sidecar_most_specific_entry_wins(shared_drive):
    (shared_drive / "permissions.json").write_text(json.dumps({
        "hr/compensation-2026.xlsx": {"users": ["Carol@Acme.example"], "groups": ["People-Ops"]},
        "hr/": {"groups": ["hr"]},
        "finance/": {"groups": ["finance"]},
        "policies/": {"public": True},
    }))
    conn = DriveConnector(shared_drive, source="d", default_acl="deny")
    acl = {d.id: d.acl for d in conn.documents()}
    assert "d:permissions.json" not in acl  # the sidecar is not a document
    assert acl["d:hr/compensation-2026.xlsx"] == {"user:carol@acme.example", "group:people-ops"}
    assert acl["d:hr/handbook.docx"] == {"group:hr"}
    assert acl["d:finance/q3/report.pdf"] == {"group:finance"}  # deeper file, folder entry
    assert acl["d:policies/travel.pdf"] == {PUBLIC}
    assert acl["d:misc/deck.pptx"] == frozenset()  # no entry + default deny = nobody


def test_default_public_without_sidecar(shared_drive):
    docs = list(DriveConnector(shared_drive, source="d", default_acl="public").documents())
    assert len(docs) == 5 and all(d.acl == {PUBLIC} for d in docs)


def test_custom_sidecar_name(shared_drive):
    (shared_drive / "sharing.json").write_text(json.dumps({"misc/": {"users": ["eve@acme.example"]}}))
    conn = DriveConnector(shared_drive, source="d", permissions_file="sharing.json", default_acl="deny")
    acl = {d.id: d.acl for d in conn.documents()}
    assert acl["d:misc/deck.pptx"] == {"user:eve@acme.example"}


def test_malformed_sidecar_names_file_and_problem(shared_drive):
    (shared_drive / "permissions.json").write_text('{"hr/": {"groups": "hr", "public": "no"}}')
    with pytest.raises(SourceError) as e:
        DriveConnector(shared_drive, source="d")
    msg = str(e.value)
    assert "permissions.json" in msg and "'hr/'" in msg and "'public' must be true or false" in msg
    (shared_drive / "permissions.json").write_text('{"hr/": {"groups": ["hr"]},}')
    with pytest.raises(SourceError, match=r"permissions.json: not valid JSON \(line 1"):
        DriveConnector(shared_drive, source="d")


def test_missing_drive_root(tmp_path):
    with pytest.raises(SourceError, match=r"drive folder not found: .*; check sources\[\]\.path in kb\.yaml"):
        DriveConnector(tmp_path / "missing", source="d")


def test_make_connector_passes_settings(shared_drive):
    (shared_drive / "permissions.json").write_text(json.dumps({"hr/": {"groups": ["hr"]}}))
    src = SourceConfig(name="acme-drive", type="drive", path=shared_drive, default_acl="deny",
                       base_url="https://drive.acme.example/")
    conn = make_connector(src)
    assert isinstance(conn, DriveConnector)
    docs = {d.id: d for d in conn.documents()}
    assert docs["acme-drive:hr/handbook.docx"].acl == {"group:hr"}
    assert docs["acme-drive:misc/deck.pptx"].acl == frozenset()
    assert docs["acme-drive:hr/handbook.docx"].uri == "https://drive.acme.example/hr/handbook.docx"


def test_every_file_ends_indexed_or_failed_under_a_name_found_on_disk(tmp_path):
    """Random and NUL-laden bytes named .html fail (they were indexed as mojibake); a good file
    whose name is not valid UTF-8 is indexed, under its name with the odd byte as \\xe9."""
    import os

    from kb_chatbot.core.settings import load_settings
    from kb_chatbot.ingest.sync import sync_sources

    root = tmp_path / "d"
    root.mkdir()
    rnd = __import__("random").Random(7)
    (root / "random.html").write_bytes(bytes(rnd.randrange(256) for _ in range(4000)))
    (root / "nul.html").write_bytes(b"<html><body>" + b"\x00" * 300 + b"hello\x00world" * 40 + b"</body></html>")
    (root / "good.html").write_text("<html><body><p>The parking garage is on level B2.</p></body></html>")
    (root / "tiny.html").write_text("<p>Lunch is at noon.</p>")
    latin1 = os.path.join(os.fsencode(root), b"caf\xe9-notes.txt")
    with open(latin1, "wb") as f:
        f.write(b"The cafeteria opens at 8 am and closes at 3 pm on weekdays.\n")
    cfg = tmp_path / "kb.yaml"
    cfg.write_text(f"data_dir: {tmp_path / 'data'}\nsources:\n  - {{name: d, type: drive, path: {root}, "
                   "default_acl: public}\nembedding: {model: hash}\n")
    report = sync_sources(load_settings(cfg), load_settings(cfg).sources)
    src = report.sources[0]
    failed = {f.path: f.reason for f in src.failures}
    assert sorted(failed) == ["nul.html", "random.html"]
    assert all(r.startswith("not an HTML page: binary data") for r in failed.values())
    assert src.added == 3 and not src.skipped
    conn = DriveConnector(root, source="d", default_acl="public")
    docs = {d.id: d for d in conn.documents()}
    assert sorted(docs) == ["d:caf\\xe9-notes.txt", "d:good.html", "d:tiny.html"]
    assert docs["d:caf\\xe9-notes.txt"].title == "caf\\xe9-notes.txt" and "cafeteria" in docs["d:caf\\xe9-notes.txt"].text
