"""HTML for the chat page: answers with linked [n] markers, source cards, badges, notes, tables.

Pure functions, no Gradio: every piece of text that comes from a document, a user or a model
goes through :func:`html.escape`, and only ``http(s)`` links become ``href`` (a ``javascript:``
uri in a document never reaches the page). Output has no blank lines, because the Chatbot's
markdown renderer treats a blank line as the end of a raw-HTML block.
"""
from __future__ import annotations

import html
import re
from datetime import datetime
from typing import Any, Iterable, Mapping, Sequence
from urllib.parse import urlsplit

from kb_chatbot.core.types import Answer, Citation

#: The number shown for a marker links to the card with this id prefix + answer key + n.
CARD_ID = "kb-src"
TYPE_LABELS = {"wiki": "Wiki", "slack": "Slack", "drive": "Drive"}
#: Small inline icons (the page must not depend on emoji fonts being installed). The Chatbot's
#: sanitizer drops ``viewBox``, so a <g> scales the 16-unit paths to 12 px.
_ICONS = {
    "wiki": '<svg class="kb-icon" width="12" height="12" viewBox="0 0 16 16" aria-hidden="true"><g transform="scale(0.75)"><path d="M2 2.5h5a1.5 1.5 0 0 1 1.5 '
            '1.5v9.5A1.5 1.5 0 0 0 7 12H2zM14 2.5H9A1.5 1.5 0 0 0 7.5 4v9.5A1.5 1.5 0 0 1 9 12h5z" fill="none" '
            'stroke="currentColor" stroke-width="1.3"/></g></svg>',
    "slack": '<svg class="kb-icon" width="12" height="12" viewBox="0 0 16 16" aria-hidden="true"><g transform="scale(0.75)"><path d="M2.5 3.5h11v7h-6l-3 2.5v-2.5h-2z" '
             'fill="none" stroke="currentColor" stroke-width="1.3" stroke-linejoin="round"/></g></svg>',
    "drive": '<svg class="kb-icon" width="12" height="12" viewBox="0 0 16 16" aria-hidden="true"><g transform="scale(0.75)"><path d="M4 1.5h5l3.5 3.5v9.5h-8.5zM9 1.5V5h3.5" '
             'fill="none" stroke="currentColor" stroke-width="1.3" stroke-linejoin="round"/></g></svg>',
}
ABSTAIN_TITLE = "Not covered by the knowledge base"
MAX_QUOTE_CHARS = 320
#: An abstention lists this many closest sources; the rest fold away.
CLOSEST_SHOWN = 3


def esc(text: Any) -> str:
    return html.escape("" if text is None else str(text), quote=True)


def safe_href(uri: str | None) -> str | None:
    """The uri if it is an absolute http(s) link, else None (no javascript:, data:, file:)."""
    if not uri:
        return None
    uri = uri.strip()
    try:
        parts = urlsplit(uri)
    except ValueError:
        return None
    if parts.scheme.lower() not in ("http", "https") or not parts.netloc:
        return None
    return uri


_MD = None


def _markdown():
    """CommonMark with tables and strikethrough; raw HTML in the text is escaped, never passed
    through (``html=False``). No links and no images: a document or a prompt injection could
    otherwise make the page fetch a remote image (a tracking or exfiltration URL) or dress a
    phishing link as an answer; the source cards carry the checked links."""
    global _MD
    if _MD is None:
        from markdown_it import MarkdownIt

        _MD = MarkdownIt("commonmark", {"html": False, "breaks": True, "xhtmlOut": False}).enable(["table", "strikethrough"]).disable(["link", "image"])
    return _MD


def _no_blank_lines(rendered: str) -> str:
    """The Chatbot's markdown pass ends a raw-HTML block at a blank line: newlines inside
    <pre> become character references (the browser shows them as line breaks), the others go."""
    def pre(m: re.Match) -> str:
        return m.group(0).replace("\n", "&#10;")

    rendered = re.sub(r"<pre>.*?</pre>", pre, rendered, flags=re.S)
    return rendered.replace("\n", "")


def markdown_html(text: str) -> str:
    """Markdown (bold, lists, inline code, code blocks, tables) as safe HTML on one line."""
    return _no_blank_lines(_markdown().render(text.strip()))


def markdown_inline(text: str) -> str:
    """One line of markdown (a quote): bold, italics and inline code; everything else escaped."""
    return _no_blank_lines(_markdown().renderInline(text))


def _paragraphs(text: str) -> str:
    """The text as safe HTML blocks (markdown rendered, HTML escaped)."""
    return markdown_html(text)


def answer_key(answer: Answer, fallback: str = "a") -> str:
    """A token unique per answer on the page, used in card ids (anchors)."""
    raw = answer.answer_id or fallback
    return re.sub(r"[^A-Za-z0-9_-]", "", raw)[:32] or "a"


def card_id(key: str, n: int) -> str:
    return f"{CARD_ID}-{key}-{n}"


_MARKER = re.compile(r"\[(\s*\d{1,3}(?:\s*(?:,|-|–|—)\s*\d{1,3})*\s*)\]")


def link_markers(escaped_text: str, known: Mapping[int, Citation], key: str) -> str:
    """Turn ``[1]``, ``[1, 3]`` in already-escaped text into links to the source cards.

    Numbers without a card stay plain text (the service already removed invalid ones).
    """

    def one(n: int) -> str:
        c = known.get(n)
        if c is None:
            return str(n)
        return (f'<a class="kb-cite" href="#{card_id(key, n)}" title="{esc(c.title)}">{n}</a>')

    def repl(m: re.Match) -> str:
        parts = re.split(r"(\s*(?:,|-|–|—)\s*)", m.group(1).strip())
        out = []
        for p in parts:
            out.append(one(int(p)) if p.strip().isdigit() else p)  # separators: , - – —
        return '<span class="kb-marker">[' + "".join(out) + "]</span>"

    return _MARKER.sub(repl, escaped_text)


def confidence_level(confidence: float, threshold: float = 0.5) -> str:
    """'high', 'medium' or 'low': low is below the self-correction threshold."""
    if confidence < threshold:
        return "low"
    if confidence >= max(0.75, threshold + 0.2):
        return "high"
    return "medium"


def confidence_badge(confidence: float, threshold: float = 0.5) -> str:
    level = confidence_level(confidence, threshold)
    return (f'<span class="kb-badge kb-conf-{level}" title="Confidence that the answer is supported by its '
            f'sources">{level.capitalize()} confidence · {confidence:.2f}</span>')


def _type_label(source_type: str) -> str:
    icon = _ICONS.get(source_type, _ICONS["drive"])
    return f'<span class="kb-type kb-type-{esc(source_type)}">{icon}{esc(TYPE_LABELS.get(source_type, source_type))}</span>'


def source_card(c: Citation, key: str) -> str:
    """One source: number, type, title, location, quoted snippet, link to the original."""
    quote = " ".join((c.quote or "").split())
    if len(quote) > MAX_QUOTE_CHARS:
        quote = quote[: MAX_QUOTE_CHARS - 1].rstrip() + "…"
    href = safe_href(c.uri)
    title = esc(c.title)
    title_html = (f'<a class="kb-card-title" href="{esc(href)}" target="_blank" rel="noopener noreferrer">{title}</a>'
                  if href else f'<span class="kb-card-title">{title}</span>')
    open_link = (f'<a class="kb-open" href="{esc(href)}" target="_blank" rel="noopener noreferrer">'
                 "Open original ↗</a>" if href else "")
    parts = [
        f'<div class="kb-card" id="{card_id(key, c.n)}">',
        '<div class="kb-card-head">',
        f'<span class="kb-num">{c.n}</span>{_type_label(c.source_type)}{title_html}{open_link}',
        "</div>",
    ]
    meta = [m for m in (c.location, c.source) if m]
    if meta:
        parts.append('<div class="kb-card-meta">' + " · ".join(esc(m) for m in meta) + "</div>")
    if quote:
        parts.append(f'<blockquote class="kb-quote">{markdown_inline(quote)}</blockquote>')
    parts.append("</div>")
    return "".join(parts)


def source_cards(citations: Sequence[Citation], key: str, heading: str = "Sources",
                 show: int | None = None) -> str:
    """The cards; beyond ``show`` of them, the rest fold into a "more sources" toggle."""
    if not citations:
        return ""
    shown = citations if show is None else citations[:show]
    cards = "".join(source_card(c, key) for c in shown)
    rest = citations[len(shown):]
    if rest:
        more = "".join(source_card(c, key) for c in rest)
        cards += (f'<details class="kb-more"><summary>{len(rest)} more source{"s" if len(rest) > 1 else ""}'
                  f"</summary>{more}</details>")
    return f'<div class="kb-sources"><div class="kb-sources-head">{esc(heading)}</div>{cards}</div>'


def _notes(answer: Answer) -> str:
    """What the reader should know about how the answer was made; nothing on an abstention
    (the box says what the knowledge base lacks, not how the pipeline got there)."""
    notes = []
    if answer.route == "abstained":
        return ""
    if answer.escalated:
        notes.append("A larger model was asked because the first answer was not well supported.")
    elif answer.corrected:
        notes.append("Double-checked: the first draft was not well supported and was rewritten "
                     "against the sources.")
    return "".join(f'<div class="kb-note">{esc(n)}</div>' for n in notes)


def render_answer(answer: Answer, *, threshold: float = 0.5, key: str | None = None) -> str:
    """The final message for one answer: text with linked markers, badge, notes, source cards.

    An abstention is a distinct card with the closest sources, never a made-up answer; an
    error route is an error box.
    """
    key = key or answer_key(answer)
    if answer.route == "error":
        return render_error(answer.text)
    showing = (f'<div class="kb-showing">Showing results for <em>{esc(answer.showing_for)}</em></div>'
               if answer.showing_for else "")
    if answer.route == "abstained":
        return (
            '<div class="kb-answer kb-abstained">'
            f"{showing}"
            f'<div class="kb-abstain"><div class="kb-abstain-title">{esc(ABSTAIN_TITLE)}</div>'
            f"{_paragraphs(answer.text)}</div>"
            f"{_notes(answer)}"
            f"{source_cards(answer.citations, key, heading='Closest sources', show=CLOSEST_SHOWN)}"
            "</div>"
        )
    known = {c.n: c for c in answer.citations}
    body = link_markers(_paragraphs(answer.text), known, key)
    others = other_sources(answer)
    folded = ""
    if others:
        n = len(others)
        folded = (f'<details class="kb-more kb-others"><summary>{n} other source{"s" if n > 1 else ""} '
                  f'searched</summary>{"".join(source_card(c, key) for c in others)}</details>')
    return (
        '<div class="kb-answer">'
        f"{showing}"
        f'<div class="kb-answer-text">{body}</div>'
        f'<div class="kb-answer-meta">{confidence_badge(answer.confidence, threshold)}</div>'
        f"{_notes(answer)}"
        f"{source_cards(answer.citations, key)}"
        f"{folded}"
        "</div>"
    )


def other_sources(answer: Answer) -> list[Citation]:
    """The sources the model was given but did not cite (the Answer carries them as cards,
    already ACL-filtered for the asking user, like everything in the Answer)."""
    return list(answer.other_sources)


def render_streaming(status: str | None, draft: str, sources: Sequence[Citation] = (), key: str = "s") -> str:
    """The message while an answer streams: the status line, the checked text so far, and the
    sources found (folded under a heading that says they are sources, not the answer)."""
    parts = ['<div class="kb-answer kb-streaming">']
    if status:
        parts.append(f'<div class="kb-status"><span class="kb-spinner"></span>{esc(status)}</div>')
    if draft.strip():
        parts.append(f'<div class="kb-answer-text">{_paragraphs(draft)}</div>')
    if sources:
        parts.append(source_cards(sources, key, heading="Sources found · the answer is being written", show=3))
    parts.append("</div>")
    return "".join(parts)


def render_error(message: str, hint: str | None = None) -> str:
    """A clear error box (never a stack trace: those go to the server log)."""
    extra = f'<div class="kb-error-hint">{_inline_code(hint)}</div>' if hint else ""
    return f'<div class="kb-error" role="alert"><strong>Cannot answer.</strong> {_inline_code(message)}{extra}</div>'


def _inline_code(text: str) -> str:
    """Escaped text where `backticked` parts become <code> (for commands such as `kb reindex`)."""
    pieces = re.split(r"`([^`]+)`", text)
    return "".join(f"<code>{esc(p)}</code>" if i % 2 else esc(p) for i, p in enumerate(pieces))


def render_user_message(question: str) -> str:
    """The user's own text, escaped (markdown still applies to the escaped text)."""
    return esc(question)


# --- admin ---------------------------------------------------------------------------------


def _fmt_time(value: Any) -> str:
    if not value:
        return "never"
    if isinstance(value, datetime):
        return value.strftime("%Y-%m-%d %H:%M UTC")
    s = str(value)
    try:
        return datetime.fromisoformat(s.replace("Z", "+00:00")).strftime("%Y-%m-%d %H:%M UTC")
    except ValueError:
        return s


def html_table(headers: Sequence[str], rows: Iterable[Sequence[Any]], *, empty: str = "Nothing yet.",
               classes: str = "") -> str:
    rows = list(rows)
    if not rows:
        return f'<div class="kb-empty">{esc(empty)}</div>'
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(f"<td>{esc(v)}</td>" for v in r) + "</tr>" for r in rows)
    return f'<table class="kb-table {esc(classes)}"><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>'


def render_index_status(status: Mapping[str, Any]) -> str:
    """Overview line + per-source table from the ``kb status`` dict."""
    gen = status.get("generation")
    summary = (
        f'<div class="kb-kv"><span>Generation <b>{esc(gen or "none")}</b></span>'
        f'<span>Documents <b>{esc(status.get("documents", 0))}</b></span>'
        f'<span>Chunks <b>{esc(status.get("chunks", 0))}</b></span>'
        f'<span>Embedder <b>{esc(status.get("embedder") or "-")}</b></span>'
        f'<span>Built <b>{esc(_fmt_time(status.get("generation_created_at")))}</b></span></div>'
    )
    rows = [
        (s.get("name"), s.get("type"), s.get("documents", 0), s.get("chunks", 0), _fmt_time(s.get("last_run_at")),
         s.get("last_status") or "-", s.get("last_failed", 0))
        for s in status.get("sources", [])
    ]
    table = html_table(["Source", "Type", "Documents", "Chunks", "Last run", "Status", "Failed files"], rows,
                       empty="No sources configured.")
    return summary + table


def render_failures(status: Mapping[str, Any]) -> str:
    last = status.get("last_run") or {}
    rows = [(e.get("source"), "(whole source)", e.get("error")) for e in last.get("source_errors", [])]
    rows += [(f.get("source"), f.get("path"), f.get("reason")) for f in last.get("failures", [])]
    rows += [(src, f"{n} file(s) you may not read, or whose access is unknown", "details: `kb status` on the server")
             for src, n in sorted((last.get("failures_hidden") or {}).items())]
    when = _fmt_time(last.get("finished_at")) if last else "never"
    return (f'<div class="kb-muted">Last ingest run: {esc(when)}</div>'
            + html_table(["Source", "File", "Reason"], rows, empty="No failed files in the last run."))


def render_recent(rows: Sequence[Mapping[str, Any]]) -> str:
    """Recent questions (never the answers: an admin may not be allowed to read their sources)."""
    out = [
        (_fmt_time(r.get("ts")), r.get("username"), r.get("question"), r.get("route"),
         f"{float(r.get('confidence') or 0):.2f}")
        for r in rows
    ]
    return html_table(["Time", "User", "Question", "Route", "Confidence"], out, empty="No questions yet.")


def render_feedback_summary(s: Mapping[str, Any]) -> str:
    routes = s.get("routes") or {}
    mean = s.get("mean_confidence")
    route_txt = ", ".join(f"{k} {v}" for k, v in sorted(routes.items())) or "-"
    return (
        '<div class="kb-kv">'
        f'<span>Answers <b>{esc(s.get("answers", 0))}</b></span>'
        f'<span>Mean confidence <b>{esc("-" if mean is None else f"{mean:.2f}")}</b></span>'
        f'<span>Thumbs up <b>{esc(s.get("up", 0))}</b></span><span>Thumbs down <b>{esc(s.get("down", 0))}</b></span>'
        f'<span>Corrections <b>{esc(s.get("corrections", 0))}</b></span>'
        f'<span>Routes <b>{esc(route_txt)}</b></span></div>'
    )


def render_progress(p: Mapping[str, Any]) -> str:
    """The re-index job's state for the admin tab (see ``kb_chatbot.app.kb.jobs.IndexAdmin.snapshot``)."""
    state = p.get("state", "idle")
    if state == "idle":
        return '<div class="kb-muted">No re-index has run since the server started.</div>'
    if state == "running":
        total = p.get("expected")
        done = p.get("documents", 0)
        pct = f"{min(100, int(100 * done / total))}%" if total else ""
        bar = (f'<div class="kb-bar"><div style="width:{esc(pct or "5%")}"></div></div>' if total else "")
        return (f'<div class="kb-progress"><span class="kb-spinner"></span>Re-indexing source '
                f'<b>{esc(p.get("source") or "…")}</b> ({esc(p.get("source_index", 0))}/{esc(p.get("sources", 0))}): '
                f'{esc(done)}{esc(f" of {total}" if total else "")} documents read · {esc(int(p.get("elapsed", 0)))} s'
                f"{bar}</div>")
    if state in ("failed", "partial"):
        head = "Re-index failed" if state == "failed" else "Re-index finished with failures"
        items = [f"<li><b>{esc(name)}</b>: {esc(why)}</li>" for name, why in (p.get("source_errors") or {}).items()]
        items += [f"<li><code>{esc(f.get('path'))}</code> ({esc(f.get('source'))}): {esc(f.get('reason'))}</li>"
                  for f in p.get("failures") or []]
        detail = f"<ul>{''.join(items)}</ul>" if items else ""
        summary = f"<br>{esc(p['summary'])}" if p.get("summary") else ""
        return f'<div class="kb-error">{head}: {esc(p.get("error"))}{summary}{detail}</div>'
    return f'<div class="kb-ok">Re-index finished: {esc(p.get("summary", ""))}</div>'
