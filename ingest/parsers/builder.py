"""The text every parser produces: readable blocks plus Section spans with exact offsets.

Parsers call :class:`TextBuilder` instead of concatenating strings themselves, so the
offsets of every :class:`~core.types.Section` are right by construction: blocks are joined
with one blank line, a section starts at its first block (its heading line, when it has
one) and ends at the end of its last block.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, datetime, time, timezone
from pathlib import Path
from typing import Any

from kb_chatbot.core.errors import ParseError
from kb_chatbot.core.types import Section

_MANY_NEWLINES = re.compile(r"\n[ \t]*\n(?:[ \t]*\n)+")
_TRAILING_SPACE = re.compile(r"[ \t]+\n")
_SPACES = re.compile(r"[ \t\r\f\v\u00a0\u200b]+")


@dataclass
class Parsed:
    """What a parser returns; the connector adds id, source, uri, ACL and dates."""

    text: str
    sections: tuple[Section, ...]
    title: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    #: YAML front matter of markdown files (empty for other formats).
    front_matter: dict[str, Any] = field(default_factory=dict)
    #: A date the document states about itself (front matter, Confluence metadata).
    updated_at: datetime | None = None


@dataclass
class _OpenSection:
    blocks: list[str] = field(default_factory=list)
    heading_path: tuple[str, ...] = ()
    page: int | None = None
    slide: int | None = None
    sheet: str | None = None


class TextBuilder:
    """Accumulates blocks into sections; :meth:`build` returns ``(text, sections)``.

    ``heading(level, text)`` starts a section under a heading (the heading path follows the
    levels: a level-2 heading nests under the last level-1 one); ``section(page=...)`` starts
    a section at a location (page, slide, sheet) and resets the heading path.
    """

    def __init__(self) -> None:
        self._sections: list[_OpenSection] = [_OpenSection()]
        self._stack: list[tuple[int, str]] = []

    @property
    def heading_path(self) -> tuple[str, ...]:
        return tuple(t for _, t in self._stack)

    def heading(self, level: int, text: str) -> None:
        text = collapse_spaces(text)
        if not text:
            return
        while self._stack and self._stack[-1][0] >= level:
            self._stack.pop()
        self._stack.append((level, text))
        cur = self._sections[-1]
        self._sections.append(
            _OpenSection(heading_path=self.heading_path, page=cur.page, slide=cur.slide, sheet=cur.sheet)
        )
        self.block("#" * max(1, min(level, 6)) + " " + text)

    def section(self, *, heading_path: tuple[str, ...] = (), page: int | None = None,
                slide: int | None = None, sheet: str | None = None) -> None:
        self._stack = [(i + 1, t) for i, t in enumerate(heading_path)]
        self._sections.append(_OpenSection(heading_path=tuple(heading_path), page=page, slide=slide, sheet=sheet))

    def block(self, text: str) -> None:
        text = tidy_block(text)
        if text:
            self._sections[-1].blocks.append(text)

    def build(self) -> tuple[str, tuple[Section, ...]]:
        parts: list[str] = []
        sections: list[Section] = []
        pos = 0
        for sec in self._sections:
            if not sec.blocks:
                continue
            start = None
            for b in sec.blocks:
                if parts:
                    parts.append("\n\n")
                    pos += 2
                if start is None:
                    start = pos
                parts.append(b)
                pos += len(b)
            sections.append(Section(start=start, end=pos, heading_path=sec.heading_path,
                                    page=sec.page, slide=sec.slide, sheet=sec.sheet))
        return "".join(parts), tuple(sections)

    def parsed(self, **kwargs: Any) -> Parsed:
        text, sections = self.build()
        return Parsed(text=text, sections=sections, **kwargs)


def collapse_spaces(text: str) -> str:
    """One line: every run of whitespace becomes one space."""
    return " ".join(text.split())


def tidy_block(text: str) -> str:
    """Strip trailing spaces on lines and runs of blank lines; keep indentation."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\u00a0", " ")
    text = _TRAILING_SPACE.sub("\n", text)
    text = _MANY_NEWLINES.sub("\n\n", text)
    return text.strip("\n").rstrip()


def table_row(cells: list[str]) -> str:
    """``| a | b |``: one table row on one line, so a chunk of it still reads well."""
    return "| " + " | ".join(collapse_spaces(c).replace("|", "/") for c in cells) + " |"


def labelled_row(header: list[str], values: list[str]) -> str:
    """``Region: EMEA | Q1: 120``: a spreadsheet/CSV row that is understandable alone."""
    out = []
    for i, v in enumerate(values):
        v = collapse_spaces(v)
        if not v:
            continue
        h = collapse_spaces(header[i]) if i < len(header) else ""
        out.append(f"{h}: {v}" if h and h != v else v)
    return " | ".join(out)


def to_utc(value: Any) -> datetime | None:
    """A YAML/ISO date or datetime as an aware UTC datetime (naive means UTC); else None."""
    if isinstance(value, datetime):
        dt = value
    elif isinstance(value, date):
        dt = datetime.combine(value, time())
    elif isinstance(value, str) and value.strip():
        s = value.strip().replace("Z", "+00:00")
        try:
            dt = datetime.fromisoformat(s)
        except ValueError:
            return None
    else:
        return None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=timezone.utc)
    return dt.astimezone(timezone.utc)


#: An Office file (a zip of XML) may expand to at most this many bytes: a 2 MB docx whose XML
#: expands to 600 MB kept a parser busy for minutes at 4 GB.
MAX_UNZIPPED_BYTES = 200 * 1024 * 1024


def check_office_zip(path: Path, kind: str) -> None:
    """ParseError unless ``path`` is a zip whose members expand to a sane size."""
    import zipfile

    if not zipfile.is_zipfile(path):
        raise ParseError(str(path), f"not a valid .{kind} (zip) file")
    try:
        with zipfile.ZipFile(path) as z:
            total = sum(i.file_size for i in z.infolist())
    except (zipfile.BadZipFile, OSError) as e:
        raise ParseError(str(path), f"not a valid .{kind} (zip) file ({e})") from None
    if total > MAX_UNZIPPED_BYTES:
        raise ParseError(str(path), f"expands to {total // 2**20} MB of XML (limit {MAX_UNZIPPED_BYTES // 2**20} MB): "
                                    "not indexed (a zip bomb, or split the file)")
