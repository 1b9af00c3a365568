"""HTML pages (plain sites and Confluence HTML space exports) to structured text.

Chrome (nav, header, footer, scripts, breadcrumbs, attachment lists) is dropped; headings
become ``#`` lines that start sections, lists become ``- `` lines, tables pipe rows.
:func:`render_html` is also used by the markdown parser for raw HTML blocks.
"""
from __future__ import annotations

import html
import logging
import re
from datetime import datetime, timezone
from typing import Any

from bs4 import BeautifulSoup, Comment, NavigableString, Tag
from bs4.element import Declaration, Doctype, ProcessingInstruction

from kb_chatbot.ingest.parsers.builder import Parsed, TextBuilder, collapse_spaces, table_row

log = logging.getLogger(__name__)

_DROP = {
    "script", "style", "nav", "header", "footer", "noscript", "template", "svg", "iframe",
    "button", "select", "option", "head", "title", "meta", "link", "object", "embed", "canvas",
}
_HEADINGS = {"h1": 1, "h2": 2, "h3": 3, "h4": 4, "h5": 5, "h6": 6}
_BLOCKS = {
    "p", "div", "section", "article", "main", "blockquote", "dl", "dt", "dd", "figure",
    "figcaption", "hr", "details", "summary", "form", "fieldset", "address", "body", "html",
    "center", "aside", "caption", "legend",
}
#: Confluence export chrome, by id or class.
_CHROME_IDS = {"breadcrumb-section", "breadcrumbs", "footer", "main-header", "navigation", "sidebar"}
_CHROME_CLASSES = {"pageSection", "page-metadata", "breadcrumbs", "footer-body", "navigation"}
_CONFLUENCE_DATE = re.compile(r"last (?:modified|updated)(?: by .+?)? on ([A-Z][a-z]{2} \d{1,2}, \d{4})")


def _soup(data: bytes | str) -> BeautifulSoup:
    try:
        return BeautifulSoup(data, "lxml")
    except Exception:  # lxml missing or refuses the input: the stdlib parser is slower, not worse
        return BeautifulSoup(data, "html.parser")


def parse_html(data: bytes | str, *, name: str) -> Parsed:
    """A whole HTML page. ``name`` is only used in log lines. A page nested too deeply for the
    tree walk (generated markup, thousands of levels) is read as plain text instead."""
    try:
        return _parse_html(data, name=name)
    except RecursionError:
        log.warning("html nested too deeply, read as plain text name=%s", name)
        return _flat_text(data)


def _flat_text(data: bytes | str) -> Parsed:
    raw = data.decode("utf-8", "replace") if isinstance(data, bytes) else data
    raw = re.sub(r"(?is)<(script|style)\b.*?</\1\s*>", " ", raw)
    text = html.unescape(re.sub(r"<[^>]*>", " ", raw))
    b = TextBuilder()
    b.block("\n".join(collapse_spaces(line) for line in text.splitlines() if line.strip()))
    return b.parsed()


def _parse_html(data: bytes | str, *, name: str) -> Parsed:
    soup = _soup(data)
    meta: dict[str, Any] = {}
    main = soup.find(id="main-content")  # Confluence export: the page body lives here
    title = _confluence_title(soup) if main is not None else None
    updated = None
    if main is not None:
        meta["export"] = "confluence"
        crumbs = soup.find(id="breadcrumbs")
        if crumbs is not None:
            meta["breadcrumbs"] = [collapse_spaces(li.get_text(" ")) for li in crumbs.find_all("li")]
        attachments = _confluence_attachments(soup)
        if attachments:
            meta["attachments"] = attachments
        pm = soup.find(class_="page-metadata")
        if pm is not None:
            m = _CONFLUENCE_DATE.search(collapse_spaces(pm.get_text(" ")))
            if m:
                try:
                    updated = datetime.strptime(m.group(1), "%b %d, %Y").replace(tzinfo=timezone.utc)
                except ValueError:  # a localised month name: fall back to the file time
                    log.debug("confluence date not parsed name=%s value=%s", name, m.group(1))
        root = main
    else:
        root = soup.find("main") or soup.find(attrs={"role": "main"}) or soup.find("article") or soup.body or soup
    if not title:
        t = soup.find("title")
        title = collapse_spaces(t.get_text(" ")) if t is not None else None
    if not title:
        h1 = root.find("h1") if isinstance(root, Tag) else None
        title = collapse_spaces(h1.get_text(" ")) if h1 is not None else None
    b = TextBuilder()
    render_html(root, b)
    log.debug("html parsed name=%s confluence=%s", name, main is not None)
    return b.parsed(title=title or None, metadata=meta, updated_at=updated)


def _confluence_title(soup: BeautifulSoup) -> str | None:
    el = soup.find(id="title-text") or soup.find(id="title-heading")
    if el is None:
        return None
    text = collapse_spaces(el.get_text(" "))
    # "Space Name : Page Title" in exports; the page title is what readers know
    return text.split(" : ", 1)[1] if " : " in text else text


def _confluence_attachments(soup: BeautifulSoup) -> list[str]:
    head = soup.find(id="attachments")
    if head is None:
        return []
    section = head.find_parent(class_="pageSection") or head.parent
    return [collapse_spaces(a.get_text(" ")) for a in section.find_all("a") if a.get_text(strip=True)]


def render_html(root: Tag | BeautifulSoup, builder: TextBuilder) -> None:
    """Write the readable content of ``root`` into ``builder`` (headings start sections)."""
    _Renderer(builder).render(root)


def render_fragment(html: str, builder: TextBuilder) -> None:
    soup = BeautifulSoup(html, "html.parser")  # a fragment: no <html>/<body> wrapping
    render_html(soup, builder)


class _Renderer:
    def __init__(self, builder: TextBuilder) -> None:
        self.b = builder
        self.inline: list[str] = []

    def render(self, root: Tag) -> None:
        self._children(root)
        self._flush()

    def _flush(self) -> None:
        text = "".join(self.inline)
        self.inline = []
        text = re.sub(r" *\n *", "\n", re.sub(r"[ \t]+", " ", text))
        self.b.block(text.strip())

    def _children(self, node: Tag) -> None:
        for child in list(node.children):
            self._node(child)

    def _node(self, node: Any) -> None:
        if isinstance(node, (Comment, Doctype, Declaration, ProcessingInstruction)):
            return
        if isinstance(node, NavigableString):
            self.inline.append(re.sub(r"\s+", " ", str(node)))
            return
        if not isinstance(node, Tag) or _is_chrome(node):
            return
        name = node.name
        if name in _HEADINGS:
            self._flush()
            self.b.heading(_HEADINGS[name], _text(node))
        elif name == "br":
            self.inline.append("\n")
        elif name in ("ul", "ol"):
            self._flush()
            lines: list[str] = []
            self._list(node, 0, lines)
            self.b.block("\n".join(lines))
        elif name == "table":
            self._flush()
            self.b.block("\n".join(_table_rows(node)))
        elif name == "pre":
            self._flush()
            self.b.block(node.get_text())
        elif name == "img":
            return  # alt texts in exports are mostly file names
        elif name in _BLOCKS or name == "li":
            self._flush()
            self._children(node)
            self._flush()
        else:
            self._children(node)

    def _list(self, lst: Tag, depth: int, lines: list[str]) -> None:
        for li in lst.find_all("li", recursive=False):
            nested = [c for c in li.children if isinstance(c, Tag) and c.name in ("ul", "ol")]
            text_parts = []
            for c in li.children:
                if isinstance(c, Tag) and (c.name in ("ul", "ol") or _is_chrome(c)):
                    continue
                if isinstance(c, Tag) and c.name == "table":
                    text_parts.append(" ; ".join(_table_rows(c)))
                elif isinstance(c, (Comment, Doctype, Declaration, ProcessingInstruction)):
                    continue
                elif isinstance(c, NavigableString):
                    text_parts.append(str(c))
                else:
                    text_parts.append(_text(c) if c.name not in _BLOCKS else f" {_text(c)} ")
            text = collapse_spaces("".join(text_parts))
            if text:
                lines.append("  " * depth + "- " + text)
            for n in nested:
                self._list(n, depth + 1, lines)


def _text(tag: Tag) -> str:
    """Text of an element on one line: inline markup joins without spaces ("<b>JCK</b>." is
    "JCK."), block boundaries and <br> become a space."""
    parts: list[str] = []
    for el in tag.descendants:
        if isinstance(el, (Comment, Doctype, Declaration, ProcessingInstruction)):
            continue
        if isinstance(el, NavigableString):
            if not any(isinstance(p, Tag) and _is_chrome(p) for p in el.parents):
                parts.append(str(el))
        elif isinstance(el, Tag) and (el.name in _BLOCKS or el.name in ("br", "li", "td", "th", "tr") or el.name in _HEADINGS):
            parts.append(" ")
    return collapse_spaces("".join(parts))


def _is_chrome(tag: Tag) -> bool:
    if tag.name in ("header", "footer") and tag.find_parent(["article", "main"]) is not None:
        return False  # an article's own header holds its title, not site chrome
    if tag.name in _DROP:
        return True
    if tag.get("role") in ("navigation", "banner", "contentinfo"):
        return True
    if tag.get("id") in _CHROME_IDS:
        return True
    classes = tag.get("class") or ()
    return any(c in _CHROME_CLASSES for c in classes)


def _table_rows(table: Tag) -> list[str]:
    rows = []
    for tr in table.find_all("tr"):
        if tr.find_parent("table") is not table:
            continue  # a nested table's row: rendered inside its cell's text
        cells = []
        for cell in tr.find_all(["td", "th"], recursive=False):
            text = _text(cell)
            try:
                span = max(1, min(int(cell.get("colspan", 1)), 50))
            except ValueError:
                span = 1
            cells.extend([text] * span)
        if any(cells):
            rows.append(table_row(cells))
    return rows
