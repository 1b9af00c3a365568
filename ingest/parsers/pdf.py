"""PDF files with pypdf: one section per page (1-based ``page``), for "file, page 7" citations."""
from __future__ import annotations

import logging
import re
from pathlib import Path

from kb_chatbot.core.errors import ParseError
from kb_chatbot.ingest.parsers.builder import Parsed, TextBuilder

log = logging.getLogger(__name__)

_BLANK_LINES = re.compile(r"\n{3,}")
_BULLET = re.compile(r"^([ \t]*)[\u2022\u25aa\u25e6\u25cf\u2023\uf0b7][ \t]*", re.MULTILINE)


def parse_pdf(path: Path) -> Parsed:
    import pypdf
    from pypdf.errors import PdfReadError, PyPdfError

    try:
        reader = pypdf.PdfReader(str(path))
        if reader.is_encrypted:
            try:
                ok = reader.decrypt("")  # many PDFs only carry an owner password
            except Exception as e:  # unsupported algorithm (e.g. AES without cryptography)
                raise ParseError(str(path), f"encrypted PDF that cannot be opened ({e})") from None
            if not ok:
                raise ParseError(str(path), "encrypted PDF (a password is required)")
        pages = reader.pages
        n_pages = len(pages)
    except ParseError:
        raise
    except (PdfReadError, PyPdfError, OSError, ValueError, KeyError, TypeError) as e:
        raise ParseError(str(path), f"not a readable PDF ({type(e).__name__}: {e})") from None
    b = TextBuilder()
    failed: list[int] = []
    for number in range(1, n_pages + 1):
        try:
            raw = pages[number - 1].extract_text() or ""
        except Exception as e:  # one bad page content stream: keep the other pages
            log.warning("pdf page unreadable path=%s page=%d error=%s", path, number, e)
            failed.append(number)
            continue
        b.section(page=number)
        b.block(_tidy_page(raw))
    if failed and len(failed) == n_pages:
        raise ParseError(str(path), "no page of the PDF could be read")
    meta: dict = {"pages": n_pages}
    if failed:
        meta["unreadable_pages"] = failed
    title = None
    try:
        info = reader.metadata
        title = str(info.title).strip() if info and info.title else None
    except Exception:  # broken info dictionary: the title is optional
        title = None
    if title:
        meta["doc_title"] = title
    return b.parsed(metadata=meta)


def _tidy_page(text: str) -> str:
    """Right-strip lines, drop whitespace-only runs (layout padding), keep paragraph breaks."""
    lines = [ln.rstrip() for ln in text.replace("\r\n", "\n").replace("\r", "\n").split("\n")]
    text = _BULLET.sub(r"\1- ", "\n".join(lines))  # "•" bullets read as "- " list lines
    return _BLANK_LINES.sub("\n\n", text).strip()
