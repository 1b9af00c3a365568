"""Word .docx files with python-docx: headings by paragraph style, lists, tables in order,
and reviewer comments at the end."""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Any, Iterator

from kb_chatbot.core.errors import ParseError
from kb_chatbot.ingest.parsers.builder import Parsed, TextBuilder, check_office_zip, collapse_spaces, table_row

log = logging.getLogger(__name__)

_HEADING_STYLE = re.compile(r"^heading\s*([1-9])$", re.IGNORECASE)


def parse_docx(path: Path) -> Parsed:
    import docx
    from docx.table import Table
    from docx.text.paragraph import Paragraph

    check_office_zip(path, "docx")
    try:
        document = docx.Document(str(path))
    except Exception as e:  # python-docx raises several types for broken packages
        raise ParseError(str(path), f"cannot open .docx ({type(e).__name__}: {e})") from None

    b = TextBuilder()
    pending_list: list[str] = []
    tables = 0
    formats = _numbering_formats(document)
    counters: dict[tuple[int, int], int] = {}

    def flush_list() -> None:
        if pending_list:
            b.block("\n".join(pending_list))
            pending_list.clear()
        counters.clear()

    try:
        for item in _blocks(document):
            if isinstance(item, Table):
                flush_list()
                rows = _table_rows(item)
                if rows:
                    tables += 1
                    b.block("\n".join(rows))
                continue
            if not isinstance(item, Paragraph):
                continue
            text = item.text.replace("\t", " ").strip()
            if not text:
                continue
            level = _heading_level(item)
            if level:
                flush_list()
                b.heading(level, text)
                continue
            numbering = _list_numbering(item)
            if numbering is not None:
                num_id, depth = numbering
                fmt = formats.get(num_id, {}).get(depth, "bullet")
                for key in [k for k in counters if k[0] == num_id and k[1] > depth]:
                    del counters[key]  # a shallower item restarts the deeper levels
                counters[(num_id, depth)] = counters.get((num_id, depth), 0) + 1
                marker = "- " if fmt in ("bullet", "none") else f"{counters[(num_id, depth)]}. "
                pending_list.append("  " * depth + marker + collapse_spaces(text))
                continue
            flush_list()
            b.block(text)
        flush_list()
        comments = _comments(document)
    except ParseError:
        raise
    except Exception as e:  # malformed XML inside a valid zip
        raise ParseError(str(path), f"cannot read .docx content ({type(e).__name__}: {e})") from None
    if comments:
        b.section(heading_path=("Comments",))
        b.block("Comments:\n" + "\n".join(comments))
    meta: dict[str, Any] = {"tables": tables, "comments": len(comments), **office_title(document)}
    return b.parsed(metadata=meta)


def office_title(document: Any) -> dict[str, str]:
    """``{"doc_title": ...}`` from an Office file's core properties (docx, pptx), or ``{}``."""
    try:
        title = (document.core_properties.title or "").strip()
    except Exception:  # a damaged docProps/core.xml: the file's name serves as its title
        title = ""
    return {"doc_title": title} if title else {}


def _blocks(document: Any) -> Iterator[Any]:
    """Paragraphs and tables of the body in order, including those inside content controls
    (``w:sdt``, e.g. cover pages and tables of contents), which python-docx skips."""
    from docx.oxml.ns import qn
    from docx.table import Table
    from docx.text.paragraph import Paragraph

    body = document._body

    def walk(element: Any) -> Iterator[Any]:
        for child in element.iterchildren():
            if child.tag == qn("w:p"):
                yield Paragraph(child, body)
            elif child.tag == qn("w:tbl"):
                yield Table(child, body)
            elif child.tag == qn("w:sdt"):
                content = child.find(qn("w:sdtContent"))
                if content is not None:
                    yield from walk(content)

    yield from walk(document.element.body)


def _heading_level(p: Any) -> int | None:
    """Title is level 1 and "Heading N" is N+1, so headings nest under the document title."""
    name = (p.style.name if p.style is not None else "") or ""
    if name.lower() == "title":
        return 1
    m = _HEADING_STYLE.match(name.strip())
    return int(m.group(1)) + 1 if m else None


def _list_numbering(p: Any) -> tuple[int, int] | None:
    """``(numId, level)`` of a list paragraph (own numbering, else its style's); else None.

    numId 0 means "numbering removed" (a list-styled paragraph written as plain text).
    """
    for ppr in (p._p.pPr, _style_ppr(p)):
        if ppr is not None and ppr.numPr is not None:
            num_id = ppr.numPr.numId.val if ppr.numPr.numId is not None else None
            ilvl = ppr.numPr.ilvl
            level = int(ilvl.val) if ilvl is not None and ilvl.val is not None else 0
            if num_id is None:
                continue
            return (int(num_id), level) if int(num_id) != 0 else None
    name = (p.style.name if p.style is not None else "") or ""
    if name.lower().startswith("list ") and "paragraph" not in name.lower():
        m = re.search(r"(\d)$", name)
        return (-1, int(m.group(1)) - 1 if m else 0)
    return None


def _style_ppr(p: Any) -> Any:
    style = p.style
    return style.element.pPr if style is not None and style.element is not None else None


def _numbering_formats(document: Any) -> dict[int, dict[int, str]]:
    """numId -> {level: numFmt} ("bullet", "decimal", ...) from the numbering part."""
    from docx.oxml.ns import qn

    try:
        numbering = document.part.numbering_part.element
    except (KeyError, NotImplementedError, AttributeError):
        return {}
    abstract: dict[str | None, dict[int, str]] = {}
    for an in numbering.findall(qn("w:abstractNum")):
        levels = {}
        for lvl in an.findall(qn("w:lvl")):
            fmt = lvl.find(qn("w:numFmt"))
            levels[int(lvl.get(qn("w:ilvl"), "0"))] = fmt.get(qn("w:val"), "bullet") if fmt is not None else "bullet"
        abstract[an.get(qn("w:abstractNumId"))] = levels
    out: dict[int, dict[int, str]] = {}
    for num in numbering.findall(qn("w:num")):
        aid = num.find(qn("w:abstractNumId"))
        if aid is not None:
            out[int(num.get(qn("w:numId"), "0"))] = abstract.get(aid.get(qn("w:val")), {})
    return out


def _cell_text(cell: Any) -> str:
    parts = [p.text for p in cell.paragraphs]
    for nested in cell.tables:  # nested tables read as "a, b ; c, d" inside the cell
        parts.append(" ; ".join(r.strip("| ").replace(" | ", ", ") for r in _table_rows(nested)))
    return collapse_spaces(" ".join(parts))


def _table_rows(table: Any) -> list[str]:
    rows = []
    for row in table.rows:
        # merged cells repeat their text, like the grid; a row starting late is padded
        cells = [""] * int(getattr(row, "grid_cols_before", 0) or 0)
        cells += [_cell_text(c) for c in row.cells]
        if any(cells):
            rows.append(table_row(cells))
    return rows


def _comments(document: Any) -> list[str]:
    try:
        comments = list(document.comments)
    except (AttributeError, KeyError):  # python-docx < 1.2, or no comments part
        return []
    out = []
    for c in comments:
        text = collapse_spaces(c.text or "")
        if text:
            author = (c.author or "").strip() or "anonymous"
            out.append(f"- {author}: {text}")
    return out
