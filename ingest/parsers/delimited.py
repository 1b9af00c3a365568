"""CSV/TSV files with the stdlib csv module: header-labelled rows, one section."""
from __future__ import annotations

import csv
import io
import logging
from pathlib import Path

from kb_chatbot.core.errors import ParseError
from kb_chatbot.ingest.parsers.builder import Parsed, TextBuilder
from kb_chatbot.ingest.parsers.text import read_text
from kb_chatbot.ingest.parsers.xlsx import tabular_lines

log = logging.getLogger(__name__)


def parse_csv(path: Path) -> Parsed:
    text = read_text(path)
    sample = text[:16384]
    try:
        dialect: type[csv.Dialect] | csv.Dialect = csv.Sniffer().sniff(sample, delimiters=",;\t|")
    except csv.Error:
        dialect = csv.excel_tab if path.suffix.lower() == ".tsv" else csv.excel
    try:
        rows = [[" ".join(c.split()) for c in row] for row in csv.reader(io.StringIO(text), dialect)]
    except csv.Error as e:
        raise ParseError(str(path), f"not a readable CSV file ({e})") from None
    b = TextBuilder()
    b.block("\n".join(tabular_lines(rows)))
    return b.parsed(metadata={"rows": max(0, sum(1 for r in rows if any(r)) - 1)})
