"""File-format parsers: real corpus files compared with their reference markdown, plus the
markdown/HTML clean-up rules, the permissions sidecar and the TextBuilder offsets."""
from __future__ import annotations

import difflib
import json
import re
from datetime import datetime, timezone
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kb_chatbot.core.errors import ParseError, SourceError
from kb_chatbot.core.types import PUBLIC
from kb_chatbot.ingest.parsers import format_of, parse_file
from kb_chatbot.ingest.parsers.builder import TextBuilder, labelled_row, tidy_block, to_utc
from kb_chatbot.ingest.parsers.html import parse_html
from kb_chatbot.ingest.parsers.markdown import parse_markdown
from kb_chatbot.ingest.parsers.permissions import PermissionMap, access_principals
from kb_chatbot.ingest.parsers.xlsx import format_cell, tabular_lines


@pytest.fixture(scope="module")
def drive(shared_dir: Path) -> Path:
    return shared_dir / "corpus" / "drive"


def section_text(parsed, **where) -> str:
    """Text of the one section whose location fields equal ``where``."""
    found = [s for s in parsed.sections if all(getattr(s, k) == v for k, v in where.items())]
    assert len(found) == 1, f"expected one section at {where}, got {found}"
    return parsed.text[found[0].start:found[0].end]


def words(text: str) -> list[str]:
    return re.findall(r"\w+", text.lower())


def reference_coverage(ours: str, reference: str) -> float:
    """Share of the reference's words that appear, in order, in our text."""
    ref = words(reference)
    sm = difflib.SequenceMatcher(None, ref, words(ours), autojunk=False)
    return sum(b.size for b in sm.get_matching_blocks()) / len(ref)


def assert_sections_valid(text: str, sections) -> None:
    prev_end = 0
    for s in sections:
        assert 0 <= s.start < s.end <= len(text), s
        assert s.start >= prev_end, f"overlapping or unordered: {s}"
        assert text[s.start:s.end].strip(), f"empty section: {s}"
        prev_end = s.end


# --- corpus files against the reference markdown ------------------------------------------


@pytest.mark.parametrize(
    "name, reference, minimum",
    [
        ("word_sample.docx", "word_sample.docx.md", 0.95),
        ("word_tables.docx", "word_tables.docx.md", 0.95),
        ("docx_comments.docx", "docx_comments.docx.md", 0.95),
        ("multi_page.pdf", "multi_page.md", 0.95),
        ("amt_handbook_sample.pdf", "amt_handbook_sample.md", 0.9),
        ("powerpoint_sample.pptx", "powerpoint_sample.pptx.md", 0.8),
    ],
)
def test_text_covers_reference_markdown(drive, name, reference, minimum):
    parsed = parse_file(drive / name)
    ref = (drive / "reference" / reference).read_text(encoding="utf-8")
    assert reference_coverage(parsed.text, ref) >= minimum
    assert_sections_valid(parsed.text, parsed.sections)


def test_docx_headings_lists_and_tables(drive):
    p = parse_file(drive / "word_sample.docx")
    assert p.metadata["format"] == "docx"
    # Title style is level 1, "Heading 1" nests under it, "Heading 2" under that
    eat = section_text(p, heading_path=("Swimming in the lake", "Let’s swim!", "Let’s eat"))
    assert eat.startswith("### Let’s eat")
    # the reference table, row by row, as pipe rows
    assert "| Leaves | Ash, Elm, Maple | 50 |" in eat
    assert "| Berries | Blueberry, Strawberry, Cranberry | 150 |" in eat
    swim = section_text(p, heading_path=("Swimming in the lake", "Let’s swim!"))
    assert "- Paddle about" in swim
    assert "1. Wear sunglasses\n2. Don’t forget to drink water\n3. Use sun cream" in swim
    # a list-styled paragraph whose numbering was removed is plain text
    assert "\nAlso, don’t forget:\n" in swim


def test_docx_merged_cells_repeat_like_the_grid(drive):
    p = parse_file(drive / "word_tables.docx")
    assert "| Cell 1.0 | Merged Cell 1.1 1.2 | Merged Cell 1.1 1.2 |" in p.text
    assert "| Cell 2.0 | Merged Cell 1.1 2.1 | Cell 2.2 |" in p.text  # vertical span
    assert "|  | Cell 1.1 |" in p.text  # a row that starts late keeps its column


def test_docx_comments_are_kept(drive):
    p = parse_file(drive / "docx_comments.docx")
    comments = section_text(p, heading_path=("Comments",))
    assert "John Reviewer: This is a sample reviewer comment on the first paragraph." in comments
    assert "anonymous: Anonymous feedback on this paragraph." in comments
    assert p.metadata["comments"] == 3


def test_docx_content_controls_are_read(tmp_path):
    import docx
    from docx.oxml import OxmlElement

    d = docx.Document()
    d.add_heading("Cover", level=1)
    inside = d.add_paragraph("Inside a content control.")
    d.add_paragraph("After it.")
    sdt, content = OxmlElement("w:sdt"), OxmlElement("w:sdtContent")
    sdt.append(content)
    inside._p.addprevious(sdt)
    content.append(inside._p)  # moves the paragraph into the control
    d.save(tmp_path / "cc.docx")
    p = parse_file(tmp_path / "cc.docx")
    assert p.text == "## Cover\n\nInside a content control.\n\nAfter it."


def test_pdf_pages_are_sections(drive):
    p = parse_file(drive / "multi_page.pdf")
    assert p.metadata["pages"] == 5
    assert [s.page for s in p.sections] == [1, 2, 3, 4, 5]
    # "The Modern Era" and the Office Suite bullet sit on page 2 of the PDF
    page2 = " ".join(section_text(p, page=2).split())
    assert "The Modern Era (1990s - Present)" in page2
    assert "- Microsoft Office Suite: Microsoft continued to dominate" in page2
    assert "Patented in 1868 by Christopher Latham Sholes" in " ".join(section_text(p, page=1).split())
    assert "Patented in 1868" not in page2


def test_pdf_blank_pages_have_no_section_but_keep_numbering(drive):
    p = parse_file(drive / "redp5110_sampled.pdf")
    assert p.metadata["pages"] == 18
    pages = [s.page for s in p.sections]
    assert pages == sorted(pages) and set(pages) <= set(range(1, 19))
    assert "Row and Column Access Control" in section_text(p, page=1)


def test_pptx_slides_tables_and_notes(drive):
    p = parse_file(drive / "powerpoint_sample.pptx")
    assert [s.slide for s in p.sections] == [1, 2, 3]
    s1 = section_text(p, slide=1)
    assert s1.startswith("Slide 1: Test Table Slide")
    assert "|  | Class1 | Class1 | Class1 | Class2 | Class2 | Class2 |" in s1  # merged header
    assert "| R1 | True | False |  | False | True | True |" in s1
    s2 = section_text(p, slide=2)
    assert "- A rectangle shape with this text inside." in s2
    assert "Notes: Some notes on the second slide." in s2
    s3 = section_text(p, slide=3)
    assert s3.startswith("Slide 3\n")  # no title placeholder
    assert "Final notes on the third slide.\nSecond line of notes." in s3
    assert p.sections[1].heading_path == ("Second slide title",)


def test_pptx_bullet_levels_indent(drive):
    p = parse_file(drive / "sample-presentation.pptx")
    s2 = section_text(p, slide=2)
    assert "- And a list of bulleted information\n  - With a sub-bullet" in s2
    assert "    - This one is a sub-sub-bullet" in s2
    assert "| 2 | A2 | B2 | C2 |" in section_text(p, slide=4)


def test_xlsx_sheets_and_labelled_rows(drive):
    p = parse_file(drive / "xlsx_01.xlsx")
    assert [s.sheet for s in p.sections] == ["Sheet1", "Sheet2", "Sheet3"]
    assert p.metadata["hidden_sheets"] == ["Sheet4"]
    s1 = section_text(p, sheet="Sheet1")
    assert s1.startswith("Sheet: Sheet1\nColumns: first | second | third")
    # every data row of the reference's Sheet1 table, understandable alone
    for a, b, c in [(1, 5, 9), (2, 4, 6), (5, 1, -3), (6, 0, -6)]:
        assert f"first: {a} | second: {b} | third: {c}" in s1
    assert "col-1: 8 | col-2: 16 | col-3: 24 | col-4: 32" in section_text(p, sheet="Sheet2")


def test_xlsx_title_row_above_header(drive):
    p = parse_file(drive / "stanley-cups.xlsx")
    first = section_text(p, sheet="Stanley Cups")
    assert first.splitlines()[:3] == ["Sheet: Stanley Cups", "Stanley Cups", "Columns: Team | Location | Stanley Cups"]
    assert "Team: Maple Leafs | Location: TOR | Stanley Cups: 13" in first  # 13.0 reads as 13
    assert "Team: Maple Leafs | Location: TOR | Stanley Cups: 0" in section_text(p, sheet="Stanley Cups Since 67")


def test_xlsx_multi_row_title_finds_the_wide_header(drive):
    p = parse_file(drive / "2023-half-year-analyses-by-segment.xlsx")
    s = section_text(p, sheet="OS-Rev.and results 30 06 2023")
    assert "Zone NA | Sales (a): 12553 | Underlying Trading operating profit (b): 2713" in s


# --- corrupt input --------------------------------------------------------------------------


@pytest.mark.parametrize("suffix, reason", [
    (".docx", "not a valid .docx (zip) file"),
    (".pptx", "not a valid .pptx (zip) file"),
    (".xlsx", "not a valid .xlsx (zip) file"),
])
def test_office_file_that_is_not_a_zip(tmp_path, suffix, reason):
    f = tmp_path / f"broken{suffix}"
    f.write_text("this is plain text, not an Office file")
    with pytest.raises(ParseError) as e:
        parse_file(f)
    assert e.value.reason == reason


def test_zip_without_office_parts(tmp_path):
    import zipfile

    f = tmp_path / "empty.docx"
    with zipfile.ZipFile(f, "w") as z:
        z.writestr("hello.txt", "not a document")
    with pytest.raises(ParseError, match="cannot open .docx"):
        parse_file(f)


def test_truncated_pdf(tmp_path, drive):
    data = (drive / "multi_page.pdf").read_bytes()
    f = tmp_path / "cut.pdf"
    f.write_bytes(data[: len(data) // 2])
    with pytest.raises(ParseError, match="not a readable PDF"):
        parse_file(f)


def test_encrypted_pdf_needs_password(tmp_path, drive):
    pypdf = pytest.importorskip("pypdf")
    writer = pypdf.PdfWriter(clone_from=str(drive / "fake-memo.pdf"))
    try:
        writer.encrypt(user_password="secret", owner_password="owner", algorithm="RC4-128")
    except Exception as e:  # pragma: no cover - depends on optional crypto support
        pytest.skip(f"pypdf cannot encrypt here: {e}")
    f = tmp_path / "locked.pdf"
    with f.open("wb") as fh:
        writer.write(fh)
    with pytest.raises(ParseError, match="encrypted PDF"):
        parse_file(f)


# --- markdown -------------------------------------------------------------------------------

PAGE = """---
title: Travel policy
date: 2025-03-04
permalink: /travel/
tags: [travel, money]
---
Intro with a [link to the guide]({% page "/travel-guide/" %}) and ![a map](map.png).
{% comment %}
Hidden editorial note {{ site.secret }}
{% endcomment %}
<!-- an HTML comment -->

# Booking
Ask in {% slack_channel "travel-help" %} first.{: .usa-note}

{% alert %}
Book **14 days** ahead.
{% endalert %}

Setext heading
--------------

```
# not a heading, code
{{ code_var }}
```

<table><tr><th>Trip</th><th>Limit</th></tr><tr><td>Domestic</td><td>$150 &amp; tax</td></tr></table>

* one
* two <br> lines
"""


def test_markdown_front_matter_and_noise():
    p = parse_markdown(PAGE, name="travel.md")
    assert p.title == "Travel policy"
    assert p.front_matter["permalink"] == "/travel/"
    assert p.updated_at == datetime(2025, 3, 4, tzinfo=timezone.utc)
    for noise in ("{%", "%}", "{{", "}}", "comment", "Hidden editorial", "<!--", "{:", "<table", "<br", "title:"):
        assert noise not in p.text
    assert "Intro with a link to the guide and a map." in p.text
    assert "Ask in #travel-help first." in p.text
    assert "Book **14 days** ahead." in p.text


def test_markdown_heading_paths_and_sections():
    p = parse_markdown(PAGE, name="travel.md")
    assert [s.heading_path for s in p.sections] == [(), ("Booking",), ("Booking", "Setext heading")]
    setext = section_text(p, heading_path=("Booking", "Setext heading"))
    assert setext.startswith("## Setext heading\n")
    assert "# not a heading, code" in setext  # code fences stay verbatim, not headings
    assert "| Trip | Limit |\n| Domestic | $150 & tax |" in setext  # HTML table -> pipe rows
    assert "- one\n- two lines" in setext  # bullets normalised to "- "
    assert_sections_valid(p.text, p.sections)


def test_markdown_title_falls_back_to_first_h1():
    assert parse_markdown("intro\n\n# Real Title\n\n## Sub\ntext", name="x.md").title == "Real Title"
    assert parse_markdown("no headings at all", name="x.md").title is None


def test_markdown_bad_front_matter_fails_closed_naming_the_file_and_line():
    from kb_chatbot.ingest.parsers.markdown import FrontMatterError

    with pytest.raises(FrontMatterError, match=r"x\.md.*not valid YAML \(line 3\)"):
        parse_markdown("---\ntitle: [unclosed\n---\nBody text stays.", name="x.md")
    with pytest.raises(FrontMatterError, match="not valid YAML"):  # the classic: an unquoted colon
        parse_markdown("---\ntitle: HR: salary bands\naccess: [group:hr]\n---\nBands.", name="bands.md")
    with pytest.raises(FrontMatterError, match="not a YAML mapping"):
        parse_markdown("---\n- a list\n---\nBody.", name="x.md")


def test_front_matter_aliases_are_refused_billion_laughs():
    from kb_chatbot.ingest.parsers.markdown import FrontMatterError

    bomb = "---\na: &a [x,x,x,x,x,x,x,x,x]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a,*a]\nc: [*b,*b,*b,*b,*b,*b,*b,*b,*b]\n---\nx"
    with pytest.raises(FrontMatterError, match="aliases are not allowed"):
        parse_markdown(bomb, name="bomb.md")


# --- HTML -----------------------------------------------------------------------------------

CONFLUENCE = """<!DOCTYPE html><html><head><title>Engineering : On-call handbook</title>
<style>.x{color:red}</style><script>var tracking = 1;</script></head>
<body><div id="page"><div id="main"><div id="main-header">
<div id="breadcrumb-section"><ol id="breadcrumbs"><li><a href="index.html">Engineering</a></li>
<li><a href="Runbooks.html">Runbooks</a></li></ol></div>
<h1 id="title-heading" class="pagetitle"><span id="title-text">Engineering : On-call handbook</span></h1></div>
<div id="content" class="view"><div class="page-metadata">Created by <span class="author">Ana</span>,
last modified by <span class="editor">Bo</span> on Mar 05, 2025</div>
<div id="main-content" class="wiki-content group">
<p>The on-call rotation <strong>changes</strong> every Monday at 10:00.</p>
<h2 id="paging">Paging</h2><p>Pages go to <a href="x">PagerDuty</a>.</p>
<ul><li>Acknowledge within 5 minutes<ul><li>Escalate after 15</li></ul></li><li>Write a note</li></ul>
<h3>Contacts</h3>
<table class="confluenceTable"><tbody><tr><th>Team</th><th>Phone</th></tr>
<tr><td><p>Platform</p></td><td>555-0100</td></tr><tr><td colspan="2">Weekend: see rota</td></tr></tbody></table>
<h2>Escalation</h2><p>Call the duty manager.</p>
</div>
<div class="pageSection group"><div class="pageSectionHeader"><h2 id="attachments" class="pageSectionTitle">Attachments:</h2></div>
<div class="greybox"><a href="attachments/1/rota.xlsx">rota.xlsx</a> (application/vnd.ms-excel)</div></div>
</div></div><div id="footer" role="contentinfo"><section class="footer-body"><p>Document generated by Confluence on Mar 06, 2025</p></section></div></div></body></html>"""


def test_confluence_export_page():
    p = parse_html(CONFLUENCE, name="On-call-handbook_123.html")
    assert p.title == "On-call handbook"
    assert p.metadata["breadcrumbs"] == ["Engineering", "Runbooks"]
    assert p.metadata["attachments"] == ["rota.xlsx"]
    assert p.updated_at == datetime(2025, 3, 5, tzinfo=timezone.utc)
    for chrome in ("tracking", "color:red", "Document generated", "Attachments:", "Created by", "Runbooks"):
        assert chrome not in p.text
    assert p.text.startswith("The on-call rotation changes every Monday at 10:00.")
    paging = section_text(p, heading_path=("Paging",))
    assert paging.startswith("## Paging\n\nPages go to PagerDuty.")
    assert "- Acknowledge within 5 minutes\n  - Escalate after 15\n- Write a note" in paging
    contacts = section_text(p, heading_path=("Paging", "Contacts"))
    assert "| Team | Phone |\n| Platform | 555-0100 |\n| Weekend: see rota | Weekend: see rota |" in contacts
    assert section_text(p, heading_path=("Escalation",)) == "## Escalation\n\nCall the duty manager."
    assert_sections_valid(p.text, p.sections)


def test_plain_html_page_drops_chrome():
    page = (
        "<html><head><title>Expenses</title></head><body><nav>Home | About</nav><header>Acme</header>"
        "<main><h1>Expenses</h1><p>Submit receipts within&nbsp;30 days.</p></main><footer>(c) Acme</footer></body></html>"
    )
    p = parse_html(page, name="expenses.html")
    assert p.title == "Expenses"
    assert p.text == "# Expenses\n\nSubmit receipts within 30 days."
    article = "<body><header>Site</header><article><header><h1>News</h1></header><p>Body.</p></article></body>"
    assert parse_html(article, name="news.html").text == "# News\n\nBody."


# --- CSV, text, formats ---------------------------------------------------------------------


def test_csv_rows_are_header_labelled(tmp_path):
    f = tmp_path / "budget.csv"
    f.write_text("Region;Q1;Q2\nEMEA;120;130\n\nAPAC;90;\n", encoding="utf-8")
    p = parse_file(f)
    assert p.text == "Columns: Region | Q1 | Q2\nRegion: EMEA | Q1: 120 | Q2: 130\nRegion: APAC | Q1: 90"
    assert p.metadata == {"rows": 2, "format": "csv"}


def test_text_file_in_cp1252(tmp_path):
    f = tmp_path / "notes.txt"
    f.write_bytes("Caf\xe9 opens at 8.\r\n\r\n\r\nBring   a mug.  \r\n".encode("cp1252"))
    p = parse_file(f)
    assert p.text == "Café opens at 8.\n\nBring   a mug."
    assert len(p.sections) == 1


def test_format_table():
    assert format_of(Path("a/B.DOCX")) == "docx"
    assert format_of(Path("a/b.doc")) is None  # legacy binary Office: unsupported, skipped
    with pytest.raises(ValueError, match="unsupported"):
        parse_file(Path("x.png"))


def test_cell_formatting_and_labelling():
    assert format_cell(13.0) == "13"
    assert format_cell(0.1 + 0.2) == "0.3"
    assert format_cell(datetime(2025, 1, 2)) == "2025-01-02"
    assert format_cell(True) == "TRUE"
    assert format_cell(" two\nlines ") == "two lines"
    assert labelled_row(["Region", "", "Q1"], ["EMEA", "x", ""]) == "Region: EMEA | x"
    assert tabular_lines([["only"], ["one"], ["column"]]) == ["only", "one", "column"]


def test_to_utc():
    assert to_utc("2025-03-04T10:00:00+02:00") == datetime(2025, 3, 4, 8, tzinfo=timezone.utc)
    assert to_utc("not a date") is None and to_utc(None) is None


# --- permissions ----------------------------------------------------------------------------


def _perms(tmp_path: Path, data, default="public") -> PermissionMap:
    f = tmp_path / "permissions.json"
    f.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    return PermissionMap.load(f, default)


def test_permissions_most_specific_wins(tmp_path):
    perms = _perms(tmp_path, {
        "hr/": {"groups": ["People-Ops"]},
        "hr/comp/": {"users": ["Carol@Acme.example"]},
        "hr/comp/bands-2026.xlsx": {"users": ["dave@acme.example"], "groups": ["execs"]},
        "hr/public/": {"public": True},
    }, default="deny")
    assert perms.acl_for("hr/comp/bands-2026.xlsx") == {"user:dave@acme.example", "group:execs"}
    assert perms.acl_for("hr/comp/other.xlsx") == {"user:carol@acme.example"}  # lower-cased
    assert perms.acl_for("hr/comp/deeper/x.pdf") == {"user:carol@acme.example"}
    assert perms.acl_for("hr/handbook.pdf") == {"group:people-ops"}
    assert perms.acl_for("hr/public/holidays.pdf") == {PUBLIC}
    assert perms.acl_for("hrx/file.pdf") == frozenset()  # a prefix must end at a folder
    assert perms.acl_for("readme.md") == frozenset()  # default deny: nobody
    assert perms.unmatched_keys(["hr/comp/other.xlsx"]) == ["hr/comp/bands-2026.xlsx", "hr/public/"]


def test_permissions_default_public_and_root_key(tmp_path):
    assert PermissionMap.load(tmp_path / "absent.json", "public").acl_for("a/b.pdf") == {PUBLIC}
    perms = _perms(tmp_path, {"/": {"groups": ["staff"]}}, default="public")
    assert perms.acl_for("a/b.pdf") == {"group:staff"}


@pytest.mark.parametrize("content, problem", [
    ("{not json", "not valid JSON"),
    ("[]", "top level must be an object"),
    ('{"a.pdf": ["alice"]}', "must be an object"),
    ('{"a.pdf": {"users": "alice", "readers": []}}', "unknown field(s) readers"),
    ('{"a.pdf": {"public": "yes"}}', "'public' must be true or false"),
    ('{"a.pdf": {"groups": [1]}}', "'groups' must be a list"),
])
def test_malformed_sidecar_is_a_source_error(tmp_path, content, problem):
    with pytest.raises(SourceError) as e:
        _perms(tmp_path, content)
    assert "permissions.json" in str(e.value) and problem in str(e.value)


def test_front_matter_access_entries():
    assert access_principals(["group:HR", "user:Carol@acme.example", "dave@acme.example"], path="p.md") == {
        "group:hr", "user:carol@acme.example", "user:dave@acme.example"}
    assert access_principals("public", path="p.md") == {PUBLIC}
    assert access_principals([], path="p.md") == frozenset()
    with pytest.raises(ParseError, match="'hr' is not"):
        access_principals(["hr"], path="p.md")


# --- builder offsets (property) -------------------------------------------------------------

_word = st.text(alphabet="abcdef \n", min_size=0, max_size=12)
_op = st.one_of(
    st.tuples(st.just("block"), _word),
    st.tuples(st.just("heading"), st.integers(1, 4), st.text(alphabet="xyz ", max_size=6)),
    st.tuples(st.just("page"), st.integers(1, 9)),
)


@settings(max_examples=200, deadline=None)
@given(st.lists(_op, max_size=25))
def test_builder_sections_tile_the_text(ops):
    b = TextBuilder()
    expected_blocks = []
    for op in ops:
        if op[0] == "block":
            b.block(op[1])
            if tidy_block(op[1]):
                expected_blocks.append(tidy_block(op[1]))
        elif op[0] == "heading":
            b.heading(op[1], op[2])
        else:
            b.section(page=op[1])
    text, sections = b.build()
    assert_sections_valid(text, sections)
    pos = 0
    for s in sections:  # between sections only the blank-line separator
        assert text[pos:s.start] in ("", "\n\n")
        pos = s.end
        if s.heading_path:
            assert text[s.start:s.end].startswith("#")
    assert pos == len(text)
    for blk in expected_blocks:
        assert any(blk in text[s.start:s.end] for s in sections)
