"""File-format parsers: one small module per format, each returning a :class:`Parsed`.

:func:`parse_file` picks the parser by extension and imports only that module (the
third-party libraries load when a file of their format is met). A file that cannot be
parsed raises :class:`kb_chatbot.core.errors.ParseError` with a short human reason.
"""
from __future__ import annotations

import importlib
from pathlib import Path

from kb_chatbot.ingest.parsers.builder import Parsed

#: extension -> (module, function, format name). Functions take the file path.
FORMATS: dict[str, tuple[str, str, str]] = {
    ".md": ("kb_chatbot.ingest.parsers.files", "parse_markdown_file", "markdown"),
    ".markdown": ("kb_chatbot.ingest.parsers.files", "parse_markdown_file", "markdown"),
    ".html": ("kb_chatbot.ingest.parsers.files", "parse_html_file", "html"),
    ".htm": ("kb_chatbot.ingest.parsers.files", "parse_html_file", "html"),
    ".txt": ("kb_chatbot.ingest.parsers.text", "parse_text", "text"),
    ".docx": ("kb_chatbot.ingest.parsers.docx", "parse_docx", "docx"),
    ".pptx": ("kb_chatbot.ingest.parsers.pptx", "parse_pptx", "pptx"),
    ".xlsx": ("kb_chatbot.ingest.parsers.xlsx", "parse_xlsx", "xlsx"),
    ".xlsm": ("kb_chatbot.ingest.parsers.xlsx", "parse_xlsx", "xlsx"),
    ".pdf": ("kb_chatbot.ingest.parsers.pdf", "parse_pdf", "pdf"),
    ".csv": ("kb_chatbot.ingest.parsers.delimited", "parse_csv", "csv"),
    ".tsv": ("kb_chatbot.ingest.parsers.delimited", "parse_csv", "csv"),
}


def format_of(path: Path) -> str | None:
    entry = FORMATS.get(path.suffix.lower())
    return entry[2] if entry else None


def parse_file(path: Path) -> Parsed:
    """Parse one file by its extension; ``metadata["format"]`` names the format."""
    try:
        module, func, fmt = FORMATS[path.suffix.lower()]
    except KeyError:
        raise ValueError(f"unsupported file type: {path.suffix or path.name}") from None
    parsed: Parsed = getattr(importlib.import_module(module), func)(path)
    parsed.metadata.setdefault("format", fmt)
    return parsed


__all__ = ["FORMATS", "Parsed", "format_of", "parse_file"]
