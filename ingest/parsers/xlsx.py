"""Excel .xlsx files with openpyxl (read-only, cached values): one section per sheet.

A sheet reads ``Sheet: name``, its title lines, ``Columns: ...``, then one line per row
labelled by the header row (``Region: EMEA | Q1: 120``), so a row is understandable alone.
The header row is the first row that fills at least half as many cells as the widest row
(and at least two): one-cell rows above a table are its title lines, kept as text. Empty
rows and hidden sheets are skipped.
"""
from __future__ import annotations

import logging
from datetime import date, datetime, time
from pathlib import Path
from typing import Any, Iterable, Sequence

from kb_chatbot.core.errors import ParseError
from kb_chatbot.ingest.parsers.builder import Parsed, TextBuilder, check_office_zip, collapse_spaces, labelled_row

log = logging.getLogger(__name__)

#: Rows read per sheet; a bigger sheet is cut (and says so in metadata) to bound memory.
MAX_ROWS = 50_000


def parse_xlsx(path: Path) -> Parsed:
    import openpyxl

    check_office_zip(path, "xlsx")
    try:
        wb = openpyxl.load_workbook(str(path), read_only=True, data_only=True)
    except Exception as e:  # openpyxl raises several types for broken workbooks
        raise ParseError(str(path), f"cannot open workbook ({type(e).__name__}: {e})") from None
    b = TextBuilder()
    sheets: list[str] = []
    hidden: list[str] = []
    truncated: list[str] = []
    try:
        for ws in wb.worksheets:
            if ws.sheet_state != "visible":
                hidden.append(ws.title)
                continue
            ws.reset_dimensions()  # stored dimensions are often wrong; read what is there
            rows: list[list[str]] = []
            for i, values in enumerate(ws.iter_rows(values_only=True)):
                if i >= MAX_ROWS:
                    truncated.append(ws.title)
                    log.warning("sheet truncated path=%s sheet=%s max_rows=%d", path, ws.title, MAX_ROWS)
                    break
                rows.append([format_cell(v) for v in values])
            lines = tabular_lines(rows)
            if not lines:
                continue
            sheets.append(ws.title)
            b.section(sheet=ws.title)
            b.block("\n".join([f"Sheet: {ws.title}", *lines]))
    except Exception as e:  # corrupt sheet XML inside a valid zip
        raise ParseError(str(path), f"cannot read workbook content ({type(e).__name__}: {e})") from None
    finally:
        wb.close()
    meta: dict[str, Any] = {"sheets": sheets}
    if hidden:
        meta["hidden_sheets"] = hidden
    if truncated:
        meta["truncated_sheets"] = truncated
    return b.parsed(metadata=meta)


def format_cell(value: Any) -> str:
    """A cell as people read it: 13.0 -> "13", dates as ISO, whitespace collapsed."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, float):
        if value.is_integer() and abs(value) < 1e15:
            return str(int(value))
        return f"{value:.15g}"
    if isinstance(value, datetime):
        if value.time() == time():
            return value.date().isoformat()
        return value.isoformat(sep=" ", timespec="seconds")
    if isinstance(value, (date, time)):
        return value.isoformat()
    return collapse_spaces(str(value))


def tabular_lines(rows: Iterable[Sequence[str]]) -> list[str]:
    """Title lines, ``Columns: ...`` and header-labelled rows for a grid of cell strings."""
    grid = [list(r) for r in rows if any(c.strip() for c in r)]
    if not grid:
        return []
    widest = max(sum(1 for c in r if c) for r in grid)
    need = max(min(2, widest), (widest + 1) // 2)  # a header spans at least half the table
    header_at = next(i for i, r in enumerate(grid) if sum(1 for c in r if c) >= need)
    header = grid[header_at]
    lines = [" ".join(c for c in r if c) for r in grid[:header_at]]
    if len(grid) == header_at + 1 or need == 1 and widest == 1:
        # a single row, or a one-column list: nothing to label, keep the values
        return lines + [" | ".join(c for c in r if c) for r in grid[header_at:]]
    lines.append("Columns: " + " | ".join(c for c in header if c))
    lines.extend(labelled_row(header, r) for r in grid[header_at + 1:])
    return [ln for ln in lines if ln]
