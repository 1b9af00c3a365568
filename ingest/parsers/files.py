"""Path-taking wrappers for the text-based parsers (markdown and HTML take strings)."""
from __future__ import annotations

from pathlib import Path

from kb_chatbot.core.errors import ParseError
from kb_chatbot.ingest.parsers.builder import Parsed
from kb_chatbot.ingest.parsers.html import parse_html
from kb_chatbot.ingest.parsers.markdown import parse_markdown
from kb_chatbot.ingest.parsers.text import decode_bytes, read_text


def parse_markdown_file(path: Path) -> Parsed:
    return parse_markdown(read_text(path), name=path.name)


def parse_html_file(path: Path) -> Parsed:
    try:
        data = path.read_bytes()  # bytes: BeautifulSoup honours the page's declared charset
    except OSError as e:
        raise ParseError(str(path), f"cannot read file: {e.strerror or e}") from None
    # random or NUL-laden bytes named .html: BeautifulSoup would guess a charset and index the
    # mojibake; the text decoder's binary check refuses them (the page's own charset is still
    # what BeautifulSoup decodes with)
    try:
        decode_bytes(data[:200_000], path.name)
    except ParseError as e:
        raise ParseError(path.name, f"not an HTML page: {e.reason}") from None
    return parse_html(data, name=path.name)
