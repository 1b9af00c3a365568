"""Real junk that used to abort a whole source: a Slack ts of 1e400, a file name that is not
UTF-8, a document whose re-chunking removes more chunks than SQLite takes variables."""
from __future__ import annotations

import os
import sys
from datetime import datetime, timezone

import pytest

from kb_chatbot.core.settings import Settings, SourceConfig
from kb_chatbot.core.types import Document
from kb_chatbot.index.embedder import HashEmbedder
from kb_chatbot.ingest.connectors.drive import DriveConnector
from kb_chatbot.ingest.connectors.memory import MemoryConnector
from kb_chatbot.ingest.connectors.slack import _ts_float, _utc
from kb_chatbot.ingest.sync import sync_sources


@pytest.mark.parametrize("ts", ["1e400", "-1e400", "nan", "inf", "9e18", "garbage", None])
def test_an_impossible_slack_ts_is_time_zero_not_a_crash(ts):
    assert _ts_float(ts) == 0.0
    assert _utc(ts).year == 1970


@pytest.mark.skipif(sys.platform != "linux", reason="needs a file system that takes any bytes")
def test_a_non_utf8_file_name_is_indexed_under_an_escaped_name(tmp_path):
    root = tmp_path / "drive"
    root.mkdir()
    (root / "a-good.txt").write_text("Good text.")
    with open(os.path.join(os.fsencode(root), b"caf\xe9-latin1.txt"), "wb") as f:
        f.write(b"Latin-1 named file.")
    (root / "z-good.txt").write_text("Also good.")
    conn = DriveConnector(root, source="d", default_acl="public")
    docs = {d.id: d for d in conn.documents()}
    assert sorted(docs) == ["d:a-good.txt", "d:caf\\xe9-latin1.txt", "d:z-good.txt"]
    assert docs["d:caf\\xe9-latin1.txt"].text == "Latin-1 named file." and not conn.failures


def _doc(n_sentences: int) -> Document:
    text = " ".join(f"Sentence number {i} says token{i}." for i in range(n_sentences))
    return Document(id="m:big", source="m", source_type="wiki", title="Big", uri="https://x/big",
                    updated_at=datetime(2024, 1, 1, tzinfo=timezone.utc), text=text, acl=frozenset({"public"}))


def test_removing_more_chunks_than_one_statement_takes(tmp_path, monkeypatch):
    import kb_chatbot.index.store as store

    monkeypatch.setattr(store, "_MAX_VARS", 3)  # the same code path as 32,767+ chunks
    s = Settings(data_dir=tmp_path / "data", embedding={"model": "hash"},
                 chunking={"chunk_tokens": 32, "overlap_tokens": 0})
    src = SourceConfig(name="m", type="wiki", path=tmp_path)
    sync_sources(s, [src], embedder=HashEmbedder(), connector_factory=lambda _s: MemoryConnector([_doc(80)]))
    rep = sync_sources(s, [src], embedder=HashEmbedder(), connector_factory=lambda _s: MemoryConnector([_doc(2)]))
    assert rep.ok and rep.chunks_total < 5


@pytest.mark.parametrize("text,encoding", [
    ("会議は月曜日の午前十時に始まります。議事録は共有フォルダにあります。", "shift_jis"),
    ("Совещание начинается в понедельник в десять часов утра.", "koi8_r"),
    ("The meeting starts on Monday at ten.", "utf-16-le"),  # UTF-16 without a BOM
    ("Die Besprechung beginnt am Montag um zehn Uhr, für alle Mitarbeiter.", "cp1252"),
])
def test_legacy_encodings_decode_to_the_real_text(tmp_path, text, encoding):
    from kb_chatbot.ingest.parsers.text import read_text

    p = tmp_path / "note.txt"
    p.write_bytes(text.encode(encoding))
    assert read_text(p) == text


def test_binary_junk_is_refused_not_indexed_as_mojibake(tmp_path):
    from kb_chatbot.core.errors import ParseError
    from kb_chatbot.ingest.parsers.text import read_text

    p = tmp_path / "junk.txt"
    p.write_bytes(bytes(range(1, 32)) * 200 + os.urandom(4000).replace(b"\x00", b"\x01"))
    with pytest.raises(ParseError, match="binary data"):
        read_text(p)


def test_files_without_text_are_listed_not_silently_dropped(tmp_path):
    root = tmp_path / "drive"
    root.mkdir()
    (root / "empty.txt").write_bytes(b"")
    (root / "blank.md").write_text("   \n\n")
    (root / "ok.txt").write_text("Some text.")
    s = Settings(data_dir=tmp_path / "data", embedding={"model": "hash"})
    rep = sync_sources(s, [SourceConfig(name="d", type="drive", path=root, default_acl="public")],
                       embedder=HashEmbedder())
    [sr] = rep.sources
    assert sorted(f.path for f in sr.skipped) == ["blank.md", "empty.txt"]
    assert all("no text to index" in f.reason for f in sr.skipped)
    assert rep.ok and sr.added == 1  # listed, not failures


def test_an_office_zip_bomb_is_refused_before_parsing(tmp_path, monkeypatch):
    import zipfile

    import kb_chatbot.ingest.parsers.builder as builder
    from kb_chatbot.core.errors import ParseError
    from kb_chatbot.ingest.parsers.docx import parse_docx

    p = tmp_path / "bomb.docx"
    with zipfile.ZipFile(p, "w", compression=zipfile.ZIP_DEFLATED) as z:
        z.writestr("word/document.xml", "<w:document>" + " " * 5_000_000 + "</w:document>")
    monkeypatch.setattr(builder, "MAX_UNZIPPED_BYTES", 1_000_000)
    with pytest.raises(ParseError, match="expands to 4 MB of XML"):
        parse_docx(p)


def test_a_huge_text_file_is_refused_with_its_size(tmp_path, monkeypatch):
    import kb_chatbot.ingest.connectors.drive as drive

    monkeypatch.setattr(drive, "MAX_TEXT_CHARS", 1_000_000)
    root = tmp_path / "drive"
    root.mkdir()
    (root / "server.log").with_suffix(".txt").write_text("GET /health 200\n" * 200_000)
    conn = DriveConnector(root, source="d", default_acl="public")
    assert list(conn.documents()) == []
    [f] = conn.failures
    assert "million characters" in f.reason and f.doc_id == "d:server.txt"


def test_an_owner_password_encrypted_pdf_is_read(tmp_path):
    from fpdf import FPDF
    from pypdf import PdfReader, PdfWriter

    from kb_chatbot.ingest.parsers.pdf import parse_pdf

    pdf = FPDF()
    pdf.add_page()
    pdf.set_font("Helvetica", size=12)
    pdf.cell(0, 10, "Quarterly numbers are final.")
    plain = tmp_path / "plain.pdf"
    pdf.output(str(plain))
    w = PdfWriter(clone_from=PdfReader(plain))
    w.encrypt(user_password="", owner_password="owner-secret", algorithm="AES-256")
    enc = tmp_path / "encrypted.pdf"
    with open(enc, "wb") as f:
        w.write(f)
    assert "Quarterly numbers are final." in parse_pdf(enc).text


def test_deeply_nested_html_is_read_as_text(tmp_path):
    from kb_chatbot.ingest.parsers.html import parse_html

    page = "<html><body>" + "<div>" * 5000 + "Deep policy text." + "</div>" * 5000 + "</body></html>"
    assert "Deep policy text." in parse_html(page, name="deep.html").text


def test_a_text_file_too_big_to_hold_the_limit_is_refused_unread(tmp_path, monkeypatch):
    import kb_chatbot.ingest.connectors.drive as drive
    import kb_chatbot.ingest.parsers.text as text_parser

    monkeypatch.setattr(drive, "MAX_TEXT_CHARS", 100_000)
    root = tmp_path / "drive"
    root.mkdir()
    (root / "server.txt").write_bytes(b"GET /health 200\n" * 40_000)  # 640 kB > 4 x 100k characters
    (root / "ok.txt").write_text("fine")
    real = text_parser.read_text
    read = []
    monkeypatch.setattr(text_parser, "read_text", lambda p: read.append(p.name) or real(p))
    conn = DriveConnector(root, source="d", default_acl="public")
    assert [d.id for d in conn.documents()] == ["d:ok.txt"]
    assert read == ["ok.txt"]  # the big one was never read
    [f] = conn.failures
    assert f.path == "server.txt" and "MB of text" in f.reason and "split it" in f.reason
