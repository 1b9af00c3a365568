"""Plain text files, and the byte-decoding every text-like format shares."""
from __future__ import annotations

import logging
from pathlib import Path

from core.errors import ParseError
from ingest.parsers.builder import Parsed, TextBuilder

log = logging.getLogger(__name__)


def read_text(path: Path) -> str:
    """UTF-8 (with or without BOM), else cp1252, else Latin-1 (which always decodes)."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ParseError(str(path), f"cannot read file: {e.strerror or e}") from None
    if b"\x00" in data[:8192] and not data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise ParseError(str(path), "binary data in a text file")
    for enc in ("utf-8-sig", "utf-16", "cp1252"):
        if enc == "utf-16" and not data.startswith((b"\xff\xfe", b"\xfe\xff")):
            continue
        try:
            text = data.decode(enc)
            if enc != "utf-8-sig":
                log.debug("decoded as %s path=%s", enc, path)
            return text
        except UnicodeDecodeError:
            continue
    log.debug("decoded as latin-1 path=%s", path)
    return data.decode("latin-1")


def parse_text(path: Path) -> Parsed:
    """One section; paragraphs kept, runs of blank lines and trailing spaces removed."""
    b = TextBuilder()
    b.block(read_text(path))
    return b.parsed()
