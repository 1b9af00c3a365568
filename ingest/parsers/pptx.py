"""PowerPoint .pptx files with python-pptx: one section per slide (1-based ``slide``).

Each slide reads ``Slide N: title``, then its text frames as ``- `` lines (indented by
bullet level), tables as pipe rows, then ``Notes: ...`` from the speaker notes.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterator

from kb_chatbot.core.errors import ParseError
from kb_chatbot.ingest.parsers.builder import Parsed, TextBuilder, check_office_zip, collapse_spaces, table_row
from kb_chatbot.ingest.parsers.docx import office_title

log = logging.getLogger(__name__)


def parse_pptx(path: Path) -> Parsed:
    import pptx

    check_office_zip(path, "pptx")
    try:
        deck = pptx.Presentation(str(path))
        slides = list(deck.slides)
    except Exception as e:  # python-pptx raises several types for broken packages
        raise ParseError(str(path), f"cannot open .pptx ({type(e).__name__}: {e})") from None
    b = TextBuilder()
    try:
        for number, slide in enumerate(slides, start=1):
            _slide(b, number, slide)
    except Exception as e:  # malformed XML inside a valid zip
        raise ParseError(str(path), f"cannot read slide content ({type(e).__name__}: {e})") from None
    meta: dict[str, Any] = {"slides": len(slides), **office_title(deck)}
    return b.parsed(metadata=meta)


def _slide(b: TextBuilder, number: int, slide: Any) -> None:
    title_shape = slide.shapes.title
    title = collapse_spaces(title_shape.text_frame.text) if title_shape is not None and title_shape.has_text_frame else ""
    b.section(heading_path=(title,) if title else (), slide=number)
    lines = [f"Slide {number}: {title}" if title else f"Slide {number}"]
    for shape in _shapes(slide.shapes):
        if title_shape is not None and shape.shape_id == title_shape.shape_id:
            continue
        if getattr(shape, "has_table", False) and shape.has_table:
            lines.extend(_table_rows(shape.table))
        elif getattr(shape, "has_text_frame", False) and shape.has_text_frame:
            for para in shape.text_frame.paragraphs:
                text = collapse_spaces(para.text)
                if text:
                    lines.append("  " * int(para.level or 0) + "- " + text)
        elif getattr(shape, "has_chart", False) and shape.has_chart:
            chart = shape.chart
            if chart.has_title and chart.chart_title.has_text_frame:
                text = collapse_spaces(chart.chart_title.text_frame.text)
                if text:
                    lines.append(f"- Chart: {text}")
    if slide.has_notes_slide:
        notes_frame = slide.notes_slide.notes_text_frame
        notes = notes_frame.text.strip() if notes_frame is not None else ""
        if notes:
            lines.append("Notes: " + "\n".join(collapse_spaces(ln) for ln in notes.splitlines() if ln.strip()))
    b.block("\n".join(lines))


def _shapes(shapes: Any) -> Iterator[Any]:
    """Shapes in reading order, group shapes flattened."""
    from pptx.enum.shapes import MSO_SHAPE_TYPE

    for shape in shapes:
        if shape.shape_type == MSO_SHAPE_TYPE.GROUP:
            yield from _shapes(shape.shapes)
        else:
            yield shape


def _table_rows(table: Any) -> list[str]:
    """Pipe rows; a merged cell's text fills every grid cell it spans (like the reference)."""
    grid = [[collapse_spaces(c.text) if not c.is_spanned else "" for c in row.cells] for row in table.rows]
    for r, row in enumerate(table.rows):
        for c, cell in enumerate(row.cells):
            if cell.is_merge_origin:
                for rr in range(r, min(r + cell.span_height, len(grid))):
                    for cc in range(c, min(c + cell.span_width, len(grid[rr]))):
                        grid[rr][cc] = grid[r][c]
    return [table_row(cells) for cells in grid if any(cells)]
