"""Parsing in a worker process: a parser that hangs or eats memory is stopped, the file is
reported by name with the limit and what to change, and the next file is parsed as usual."""
from __future__ import annotations

import time

import pytest

from kb_chatbot.core.errors import ParseError
from kb_chatbot.ingest.parsers.isolated import IsolatedParser

HOSTILE = "tests.ingest.hostile_parsers"


@pytest.fixture
def parser():
    p = IsolatedParser(timeout_s=3, memory_mb=512)
    yield p
    p.close()


def test_a_parser_that_hangs_is_stopped_at_the_time_limit(parser, tmp_path):
    f = tmp_path / "loop.pdf"
    f.write_bytes(b"%PDF-1.4 looping page tree")
    t = time.monotonic()
    with pytest.raises(ParseError) as e:
        parser.run((HOSTILE, "spin", "pdf"), f, "reports/loop.pdf")
    assert time.monotonic() - t < 15
    assert e.value.path == "reports/loop.pdf" and "longer than 3 s" in e.value.reason
    assert "parse_timeout_s" in e.value.reason
    ok = tmp_path / "ok.txt"
    ok.write_text("still working", encoding="utf-8")
    assert parser.run((HOSTILE, "fine", "text"), ok).text == "still working"  # a fresh worker


def test_a_parser_that_balloons_is_stopped_at_the_memory_limit(parser, tmp_path):
    f = tmp_path / "bomb.docx"
    f.write_bytes(b"PK fake")
    with pytest.raises(ParseError) as e:
        parser.run((HOSTILE, "balloon", "docx"), f, "hr/bomb.docx")
    assert e.value.path == "hr/bomb.docx" and "512 MB" in e.value.reason and "parse_memory_mb" in e.value.reason
    ok = tmp_path / "ok.txt"
    ok.write_text("next file", encoding="utf-8")
    assert parser.run((HOSTILE, "fine", "text"), ok).text == "next file"


def test_real_files_parse_the_same_in_the_worker(shared_dir, parser):
    from kb_chatbot.ingest.parsers import parse_file

    drive = shared_dir / "corpus" / "drive"
    files = [p for p in sorted(drive.rglob("*")) if p.suffix in (".docx", ".pdf", ".pptx", ".xlsx")
             and "reference" not in p.parts][:4]
    assert files
    for f in files:
        a, b = parser.parse(f), parse_file(f)
        assert a.text == b.text and a.metadata == b.metadata


def test_markdown_and_text_never_start_a_worker(tmp_path):
    p = IsolatedParser()
    (tmp_path / "a.md").write_text("# A\nbody", encoding="utf-8")
    assert "body" in p.parse(tmp_path / "a.md").text
    assert p._proc is None
