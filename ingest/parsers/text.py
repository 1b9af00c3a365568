"""Plain text files, and the byte-decoding every text-like format shares."""
from __future__ import annotations

import logging
from pathlib import Path

from kb_chatbot.core.errors import ParseError
from kb_chatbot.ingest.parsers.builder import Parsed, TextBuilder

log = logging.getLogger(__name__)


#: Share of control characters (other than tab, newlines, form feed) above which decoded
#: "text" is binary junk that would be indexed as mojibake.
BINARY_CONTROL_SHARE = 0.02


def _utf16_without_bom(data: bytes) -> str | None:
    """'utf-16-le'/'-be' when every other byte of the start is NUL (ASCII-range UTF-16)."""
    head = data[:4096]
    if len(head) < 4:
        return None
    even, odd = head[0::2], head[1::2]
    if odd.count(0) > 0.9 * len(odd) and even.count(0) < 0.1 * len(even):
        return "utf-16-le"
    if even.count(0) > 0.9 * len(even) and odd.count(0) < 0.1 * len(odd):
        return "utf-16-be"
    return None


def decode_bytes(data: bytes, name: str) -> str:
    """Text from bytes: UTF-8 (BOM or not), UTF-16/32 (BOM or not), else the encoding that
    charset-normalizer finds (Shift_JIS, KOI8-R, cp1252...); binary junk is a ParseError."""
    if data.startswith((b"\xff\xfe\x00\x00", b"\x00\x00\xfe\xff")):
        candidates = ["utf-32"]
    elif data.startswith((b"\xff\xfe", b"\xfe\xff")):
        candidates = ["utf-16"]
    else:  # ASCII-range UTF-16 is also valid UTF-8 (full of NULs): try it first
        candidates = ([enc] if (enc := _utf16_without_bom(data)) else []) + ["utf-8-sig"]
    for enc in candidates:
        try:
            return _checked(data.decode(enc), name)
        except UnicodeDecodeError:
            continue
    if b"\x00" in data[:8192]:
        raise ParseError(name, "binary data in a text file")
    head = data[:1_000_000]
    high = sum(1 for b in head if b >= 0x80) / max(1, len(head))
    if high < 0.05:  # mostly ASCII with a few accents: Western European (detectors guess badly here)
        enc = "cp1252"
    else:  # Shift_JIS, KOI8-R, GB18030...: a statistical detector
        from charset_normalizer import from_bytes

        best = from_bytes(head).best()
        enc = best.encoding if best is not None else "cp1252"
    try:
        text = data.decode(enc)
    except (UnicodeDecodeError, LookupError):
        enc, text = "latin-1", data.decode("latin-1")
    log.debug("decoded as %s name=%s", enc, name)
    return _checked(text, name)


def _checked(text: str, name: str) -> str:
    sample = text[:100_000]
    if sample:
        controls = sum(1 for c in sample if ord(c) < 32 and c not in "\t\n\r\f" or 0x7f <= ord(c) < 0xa0)
        if controls / len(sample) > BINARY_CONTROL_SHARE:
            raise ParseError(name, "binary data in a text file (control characters): not indexed")
    return text


def read_text(path: Path) -> str:
    """The text of a file in whatever encoding it is (see :func:`decode_bytes`)."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise ParseError(str(path), f"cannot read file: {e.strerror or e}") from None
    return decode_bytes(data, str(path))


def parse_text(path: Path) -> Parsed:
    """One section; paragraphs kept, runs of blank lines and trailing spaces removed."""
    b = TextBuilder()
    b.block(read_text(path))
    return b.parsed()
