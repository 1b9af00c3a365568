"""Markdown pages (Jekyll/Eleventy wikis included) to structured text.

The text stays markdown-shaped (``# heading`` lines, ``- `` lists, pipe tables) because
that reads well to both people and models, with the noise removed: YAML front matter
(returned separately), Liquid tags and comments, kramdown attribute lists, HTML comments,
raw HTML (reduced to text) and link targets (the label is kept). Block structure comes from
markdown-it-py, so ``#`` inside code fences is not a heading and setext headings work.
"""
from __future__ import annotations

import html
import logging
import re
from typing import Any

import yaml
from markdown_it import MarkdownIt

from kb_chatbot.core.errors import ParseError
from kb_chatbot.ingest.parsers.builder import Parsed, TextBuilder, to_utc
from kb_chatbot.ingest.parsers.html import render_fragment

log = logging.getLogger(__name__)

_FRONT_MATTER = re.compile(r"\A---[ \t]*\n(.*?)^(?:---|\.\.\.)[ \t]*(?:\n|\Z)", re.DOTALL | re.MULTILINE)
_LIQUID_COMMENT = re.compile(r"\{%-?\s*comment\s*-?%\}.*?\{%-?\s*endcomment\s*-?%\}", re.DOTALL)
_KRAMDOWN_COMMENT = re.compile(r"\{::comment\}.*?\{:/comment\}", re.DOTALL)
_HTML_COMMENT = re.compile(r"<!--.*?(?:-->|\Z)", re.DOTALL)
_LIQUID_TAG = re.compile(r"\{%-?\s*(\w+)(.*?)-?%\}", re.DOTALL)
_LIQUID_OUTPUT = re.compile(r"\{\{.*?\}\}", re.DOTALL)
_LIQUID_LEFTOVER = re.compile(r"\{%|%\}|\{\{|\}\}")
_KRAMDOWN_ATTR = re.compile(r"[ \t]*\{:[^}\n]*\}")
_QUOTED = re.compile(r"\"([^\"]*)\"|'([^']*)'")

_IMAGE = re.compile(r"!\[([^\]]*)\]\((?:[^()\s]|\([^()]*\))*(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)")
_LINK = re.compile(r"\[((?:[^\[\]]|\[[^\[\]]*\])*)\]\(\s*((?:[^()\s]|\([^()]*\))*)(?:\s+(?:\"[^\"]*\"|'[^']*'))?\s*\)")
_REF_LINK = re.compile(r"\[((?:[^\[\]]|\[[^\[\]]*\])+)\]\[[^\]]*\]")
_AUTOLINK = re.compile(r"<([a-zA-Z][a-zA-Z0-9+.-]*:[^<>\s]+|[^<>\s@]+@[^<>\s@]+\.[a-zA-Z]+)>")
_BR = re.compile(r"[ \t]*<br\s*/?>[ \t]*", re.IGNORECASE)
_CELL = re.compile(r"</?t[dh](?:\s[^<>]*)?>", re.IGNORECASE)
_TAG = re.compile(r"</?[a-zA-Z][a-zA-Z0-9-]*(?:\s[^<>]*)?/?>")
_HEADING_ID = re.compile(r"\s*\{#[^}]*\}\s*$")
_BULLET = re.compile(r"^([ \t]*)[*+]([ \t]+)", re.MULTILINE)
_EMPHASIS = re.compile(r"(\*\*|__|(?<!\w)[*_](?=\S)|(?<=\S)[*_](?!\w)|`)")

_md = MarkdownIt("commonmark").enable("table")


def parse_markdown(source: str, *, name: str) -> Parsed:
    """A markdown page; ``name`` (the file name) is only used in log lines."""
    source = source.lstrip("\ufeff").replace("\r\n", "\n").replace("\r", "\n")
    front, body = split_front_matter(source, name=name)
    body = strip_template_noise(body)
    b = TextBuilder()
    first_h1: list[str] = []
    _render(body, b, first_h1)
    title = front.get("title")
    title = " ".join(str(title).split()) if title not in (None, "") else (first_h1[0] if first_h1 else None)
    updated = None
    for key in ("last_modified", "last_modified_at", "updated", "date"):
        if key in front:
            updated = to_utc(front[key])
            if updated is not None:
                break
            log.debug("front matter date ignored name=%s key=%s value=%r", name, key, front[key])
    return b.parsed(title=title, front_matter=front, updated_at=updated)


class FrontMatterError(ParseError):
    """The front matter does not parse. It may hold the page's ``access:`` list, so the page is
    not indexed (and a previously indexed version is removed) until it is fixed."""


class _NoAliasLoader(yaml.SafeLoader):
    """safe_load without anchors and aliases: a 400-byte "billion laughs" page would otherwise
    expand to gigabytes (front matter never needs them)."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise yaml.composer.ComposerError(None, None, "YAML aliases are not allowed in front matter",
                                              event.start_mark)
        return super().compose_node(parent, index)


def split_front_matter(source: str, *, name: str) -> tuple[dict[str, Any], str]:
    """``(front matter dict, body)``. Front matter that does not parse as a YAML mapping raises
    :class:`FrontMatterError` naming the file and the YAML error: fail closed, since it may
    carry the page's access list (``title: HR: salary bands`` is a YAML error)."""
    m = _FRONT_MATTER.match(source)
    if not m:
        return {}, source
    body = source[m.end():]
    try:
        data = yaml.load(m.group(1), Loader=_NoAliasLoader) if m.group(1).strip() else {}
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        line = f" (line {where.line + 2})" if where is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise FrontMatterError(name, f"front matter is not valid YAML{line}: {problem}; fix it (quote values "
                                     "that contain ': ') to index the page") from None
    if not isinstance(data, dict):
        raise FrontMatterError(name, "front matter is not a YAML mapping of key: value lines; fix it to index the page")
    return data, body


def strip_template_noise(body: str) -> str:
    """Remove Liquid/kramdown/HTML-comment noise; render link-like shortcodes to their text."""
    body = _LIQUID_COMMENT.sub("", body)
    body = _KRAMDOWN_COMMENT.sub("", body)
    body = _HTML_COMMENT.sub("", body)
    body = _LIQUID_TAG.sub(_liquid_tag, body)
    body = _LIQUID_OUTPUT.sub("", body)
    body = _LIQUID_LEFTOVER.sub("", body)  # unbalanced delimiters never reach the index
    return _KRAMDOWN_ATTR.sub("", body)


def _liquid_tag(m: re.Match[str]) -> str:
    """Shortcodes that stand for a value keep it; control-flow and includes vanish."""
    tag, args = m.group(1).lower(), m.group(2)
    values = [a or b for a, b in _QUOTED.findall(args)]
    if tag == "slack_channel" and values:
        return f"#{values[0].lstrip('#')}" + (f" ({values[1]})" if len(values) > 1 else "")
    if tag in ("page", "link", "download", "post_url") and values:
        return values[0]
    if tag == "image" and len(values) > 1:
        return values[1]
    if tag == "image_with_class" and len(values) > 2:
        return values[2]
    return ""


def _render(body: str, b: TextBuilder, first_h1: list[str]) -> None:
    lines = body.split("\n")
    tokens = _md.parse(body)
    for i, tok in enumerate(tokens):
        if tok.level != 0 or tok.map is None or tok.nesting == -1:
            continue
        start, end = tok.map
        raw = "\n".join(lines[start:end])
        if tok.type == "heading_open":
            text = clean_heading(tokens[i + 1].content if i + 1 < len(tokens) else raw)
            level = int(tok.tag[1])
            if level == 1 and not first_h1 and text:
                first_h1.append(text)
            b.heading(level, text)
        elif tok.type == "html_block":
            render_fragment(raw, b)
        elif tok.type == "fence":
            b.block(raw)
        elif tok.type == "code_block":  # indented: in wikis mostly the tail of an HTML block
            b.block(html.unescape(_TAG.sub("", raw)))
        elif tok.type in ("bullet_list_open", "ordered_list_open"):
            b.block(_BULLET.sub(r"\1-\2", clean_inline(raw)))
        else:
            b.block(clean_inline(raw))


def clean_inline(text: str) -> str:
    """Links and images to their labels, raw HTML tags to text, entities decoded."""
    text = _IMAGE.sub(lambda m: m.group(1), text)
    text = _LINK.sub(_link_label, text)
    text = _REF_LINK.sub(lambda m: m.group(1), text)
    text = _AUTOLINK.sub(lambda m: m.group(1), text)
    text = _BR.sub(" ", text)
    text = _CELL.sub(" | ", text)
    text = _TAG.sub("", text)
    return html.unescape(text)


def _link_label(m: re.Match[str]) -> str:
    label = m.group(1).strip()
    return label if label else m.group(2)


def clean_heading(text: str) -> str:
    text = _HEADING_ID.sub("", clean_inline(text))
    return " ".join(_EMPHASIS.sub("", text).split())
