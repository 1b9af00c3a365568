"""HTML of the chat page: linked [n] markers, source cards, badges, abstention, escaping (XSS)."""
from __future__ import annotations

import re
from html.parser import HTMLParser

import pytest

from kb_chatbot.app.web import render as R
from kb_chatbot.core.types import Answer, Chunk, Citation, Hit


def cite(n=1, **kw) -> Citation:
    base = dict(n=n, chunk_id=f"c{n}", doc_id=f"acme-slack:G1:{n}", title=f"#proj-falcon thread {n}",
                source="acme-slack", source_type="slack", uri=f"https://acme.slack.com/archives/G1/p{n}00",
                location="message of 2026-10-20 09:15 UTC", quote="The codename is Operation Tailwind.")
    base.update(kw)
    return Citation(**base)


def answer(text="The codename is Operation Tailwind [1].", citations=None, route="answered", **kw) -> Answer:
    if kw.get("sources") and "other_sources" not in kw:  # as the answer service fills it
        from kb_chatbot.app.answer.citations import source_citations

        cited = {c.n for c in (citations or [])}
        kw["other_sources"] = tuple(c for c in source_citations(kw["sources"], "q") if c.n not in cited)
    return Answer(question="q", standalone_question="q", text=text,
                  citations=tuple(citations if citations is not None else [cite(1)]),
                  confidence=kw.pop("confidence", 0.82), route=route, answer_id=kw.pop("answer_id", "abc123"), **kw)


class _Collect(HTMLParser):
    """Parses the output like a browser would: tags, attributes and text nodes."""

    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def parse(html: str) -> _Collect:
    p = _Collect()
    p.feed(html)
    p.close()
    return p


def test_markers_link_to_cards_of_the_same_answer():
    html = R.render_answer(answer("Tailwind [1]. Also [1, 2].", [cite(1), cite(2)]))
    p = parse(html)
    ids = {a.get("id") for _, a in p.tags if a.get("id")}
    links = [a for t, a in p.tags if t == "a" and "kb-cite" in a.get("class", "")]
    assert [a["href"] for a in links] == ["#kb-src-abc123-1", "#kb-src-abc123-1", "#kb-src-abc123-2"]
    assert {"kb-src-abc123-1", "kb-src-abc123-2"} <= ids
    assert links[0]["title"] == "#proj-falcon thread 1"


def test_marker_without_a_card_stays_plain_text():
    html = R.render_answer(answer("See [3].", [cite(1)]))
    assert "[3]" in "".join(parse(html).text)
    assert "#kb-src-abc123-3" not in html


def test_source_card_shows_type_title_location_quote_and_link():
    html = R.render_answer(answer(citations=[cite(1)]))
    p = parse(html)
    text = " ".join(p.text)
    assert "Slack" in text and "#proj-falcon thread 1" in text
    assert "message of 2026-10-20 09:15 UTC" in text and "acme-slack" in text
    assert "The codename is Operation Tailwind." in text
    opens = [a for t, a in p.tags if t == "a" and a.get("href") == "https://acme.slack.com/archives/G1/p100"]
    assert opens and all(a["target"] == "_blank" and "noopener" in a["rel"] for a in opens)


@pytest.mark.parametrize("stype, label", [("wiki", "Wiki"), ("slack", "Slack"), ("drive", "Drive")])
def test_type_labels(stype, label):
    html = R.source_card(cite(1, source_type=stype), "k")
    assert f'kb-type-{stype}' in html and f"{label}</span>" in html


def test_pdf_page_location_and_deep_link():
    c = cite(1, source_type="drive", title="handbook.pdf", uri="https://drive.acme.example/handbook.pdf#page=4",
             location="page 4", page=4)
    html = R.source_card(c, "k")
    assert "page 4" in html and 'href="https://drive.acme.example/handbook.pdf#page=4"' in html


def test_confidence_badge_levels():
    assert R.confidence_level(0.3, 0.5) == "low"
    assert R.confidence_level(0.6, 0.5) == "medium"
    assert R.confidence_level(0.9, 0.5) == "high"
    html = R.render_answer(answer(confidence=0.9))
    assert "kb-conf-high" in html and "High confidence · 0.90" in html


def test_corrected_and_escalated_notes():
    assert "Double-checked" in R.render_answer(answer(corrected=True, route="corrected"))
    html = R.render_answer(answer(corrected=True, escalated=True, route="escalated"))
    assert "larger model" in html
    assert "Double-checked" not in R.render_answer(answer())


def test_abstention_is_a_distinct_card_with_closest_sources():
    a = answer("The knowledge base does not contain an answer to this question. The closest sources are listed below.",
               [cite(1), cite(2)], route="abstained", confidence=0.2)
    html = R.render_answer(a)
    assert R.ABSTAIN_TITLE in html and "kb-abstained" in html
    assert "Closest sources" in html and html.count('class="kb-card"') == 2
    assert "kb-badge" not in html  # no confidence badge on a non-answer


def test_abstention_folds_sources_beyond_the_first_few():
    a = answer("The knowledge base does not contain an answer.", [cite(i) for i in range(1, 6)], route="abstained")
    html = R.render_answer(a)
    shown, folded = html.split('<details class="kb-more">')
    assert shown.count('class="kb-card"') == R.CLOSEST_SHOWN
    assert folded.count('class="kb-card"') == 5 - R.CLOSEST_SHOWN and "2 more sources" in folded


def _hit(i: int, text: str, title: str) -> Hit:
    chunk = Chunk(id=f"c{i}", doc_id=f"acme-wiki:d{i}", ordinal=0, text=text, start=0, end=len(text),
                  heading_path=("Policies",))
    return Hit(chunk=chunk, doc_title=title, doc_uri=f"https://wiki.acme.example/d{i}/", source="acme-wiki",
               source_type="wiki", score=1.0)


def test_uncited_sources_fold_under_the_cited_ones_with_prompt_numbers():
    hits = (_hit(1, "PTO is 25 days a year.", "PTO"),
            _hit(2, f"Parking is free. Evil {XSS} here.", f"Parking {XSS}"),
            _hit(3, "Expenses need receipts.", "Expenses"))
    cited = cite(1, source_type="wiki", title="PTO", uri="https://wiki.acme.example/d1/")
    html = R.render_answer(answer("You get 25 days [1].", [cited], sources=hits))
    main, folded = html.split('<details class="kb-more kb-others">')
    assert main.count('class="kb-card"') == 1 and "2 other sources searched" in folded
    assert 'id="kb-src-abc123-2"' in folded and 'id="kb-src-abc123-3"' in folded
    assert "Policies" in folded and "https://wiki.acme.example/d3/" in folded
    _no_active_content(html)
    # everything cited: nothing folded
    assert "kb-others" not in R.render_answer(answer("A [1].", [cited], sources=hits[:1]))


def test_error_route_renders_an_error_box():
    html = R.render_answer(answer("The answer model failed; please try again later.", [], route="error"))
    assert 'class="kb-error"' in html and "kb-card" not in html


def test_error_box_turns_backticks_into_code():
    html = R.render_error("The index is empty: run `kb reindex`.")
    assert "<code>kb reindex</code>" in html


XSS = '<img src=x onerror="alert(1)"><script>alert(2)</script>'


def _no_active_content(html: str) -> None:
    p = parse(html)
    for tag, attrs in p.tags:
        assert tag not in ("script", "img", "iframe", "object", "style"), html
        assert not any(k.startswith("on") for k in attrs), html
        for k in ("href", "src"):
            if k in attrs:
                assert not attrs[k].strip().lower().startswith(("javascript:", "data:", "vbscript:")), html


def test_document_text_title_and_uri_are_escaped():
    evil = cite(1, title=f"Title {XSS}", quote=f"Quote {XSS}", location=f"loc {XSS}",
                uri="javascript:alert(3)", source=f"src{XSS}")
    html = R.render_answer(answer(f"Answer {XSS} [1]", [evil]))
    _no_active_content(html)
    assert "&lt;script&gt;" in html  # shown as text, not run
    assert "javascript:" not in html  # an unsafe uri gets no link at all


def test_question_and_streamed_draft_are_escaped():
    _no_active_content(R.render_user_message(XSS))
    _no_active_content(R.render_streaming(XSS, XSS))
    _no_active_content(R.render_error(XSS, XSS))
    assert "&lt;img" in R.render_user_message(XSS)


def test_attribute_injection_in_title_is_escaped():
    c = cite(1, title='x" onmouseover="alert(1)')
    html = R.render_answer(answer("A [1]", [c]))
    _no_active_content(html)


@pytest.mark.parametrize("uri, ok", [
    ("https://wiki.acme.example/hr/pto/", True), ("http://x.example/a?b=1", True),
    ("javascript:alert(1)", False), ("JaVaScRiPt:alert(1)", False), (" data:text/html,x", False),
    ("file:///etc/passwd", False), ("//evil.example/x", False), ("", False), (None, False),
])
def test_safe_href(uri, ok):
    assert (R.safe_href(uri) is not None) == ok


def test_no_blank_lines_in_message_html():
    """A blank line would end the Chatbot's raw-HTML block and let markdown mangle the rest."""
    a = answer("First paragraph [1].\n\nSecond paragraph\nwith a line break.", [cite(1)])
    html = R.render_answer(a)
    assert not re.search(r"\n\s*\n", html)
    assert html.count("<p>") == 2 and "<br>" in html


def test_long_quotes_are_shortened():
    html = R.source_card(cite(1, quote="word " * 200), "k")
    quote = re.search(r'<blockquote class="kb-quote">(.*?)</blockquote>', html).group(1)
    assert len(quote) <= R.MAX_QUOTE_CHARS and quote.endswith("…")


def test_card_ids_are_safe_and_unique_per_answer():
    a1 = answer(answer_id="id-1")
    a2 = answer(answer_id='"><script>')
    assert R.answer_key(a1) == "id-1"
    assert R.answer_key(a2) == "script"
    assert R.answer_key(answer(answer_id=None), fallback="m3") == "m3"


def test_admin_tables_escape_and_summarise():
    status = {"generation": "g1", "documents": 49, "chunks": 72, "embedder": "hash",
              "sources": [{"name": "acme-wiki", "type": "wiki", "documents": 21, "chunks": 30,
                           "last_run_at": "2026-11-21T10:00:00+00:00", "last_status": "partial", "last_failed": 1}],
              "last_run": {"finished_at": "2026-11-21T10:00:00+00:00",
                           "failures": [{"source": "acme-drive", "path": "bad<script>.pdf", "reason": "not a PDF"}],
                           "source_errors": []}}
    html = R.render_index_status(status)
    assert "acme-wiki" in html and "2026-11-21 10:00 UTC" in html and "<b>49</b>" in html
    fails = R.render_failures(status)
    assert "bad&lt;script&gt;.pdf" in fails and "not a PDF" in fails
    recent = R.render_recent([{"ts": "2026-11-21T10:00:00+00:00", "username": "bob", "question": "<b>hi</b>",
                               "route": "abstained", "confidence": 0.2}])
    assert "&lt;b&gt;hi&lt;/b&gt;" in recent and "abstained" in recent and "0.20" in recent
    fb = R.render_feedback_summary({"answers": 3, "mean_confidence": 0.5, "routes": {"answered": 2}, "up": 1,
                                    "down": 1, "corrections": 0})
    assert "answered 2" in fb and "Thumbs up <b>1</b>" in fb


def test_progress_states():
    assert "No re-index" in R.render_progress({"state": "idle"})
    running = R.render_progress({"state": "running", "source": "acme-wiki", "source_index": 1, "sources": 3,
                                 "documents": 5, "expected": 10, "elapsed": 2.2})
    assert "acme-wiki" in running and "5 of 10" in running and "width:50%" in running
    assert "finished" in R.render_progress({"state": "done", "summary": "49 documents"})
    assert "kb-error" in R.render_progress({"state": "failed", "error": "boom"})
    partial = R.render_progress({"state": "partial", "error": "1 file(s) could not be read", "summary": "49 documents",
                                 "failures": [{"source": "acme-drive", "path": "hr/<b>x</b>.pdf",
                                               "reason": "encrypted: ask for the password"}]})
    assert 'class="kb-error"' in partial and "kb-ok" not in partial
    assert "hr/&lt;b&gt;x&lt;/b&gt;.pdf" in partial and "encrypted: ask for the password" in partial


def test_answers_and_quotes_render_markdown_safely():
    from kb_chatbot.core.types import Answer, Citation

    text = ("Connect to **gw-7.vpn.acme.example** [1]:\n\n- open `vpn-client`\n- sign in <img src=x onerror=alert(1)>\n\n"
            "```\nsudo vpn up\n\nvpn status\n```\n![t](https://evil.example/p.png) [go](https://evil.example)")
    c = Citation(n=1, chunk_id="c1", doc_id="d1", title="VPN", source="wiki", source_type="wiki",
                 uri="https://wiki.acme.example/vpn", quote="Use **gw-7** with `vpn-client` <b>now</b>")
    html_out = R.render_answer(Answer("q", "q", text, (c,), 0.9, "answered", answer_id="a1"))
    assert "<strong>gw-7.vpn.acme.example</strong>" in html_out and "<code>vpn-client</code>" in html_out
    assert "<li>" in html_out and "<pre><code>sudo vpn up&#10;&#10;vpn status&#10;</code></pre>" in html_out
    assert "<img" not in html_out and "&lt;img src=x" in html_out and "evil.example\"" not in html_out
    assert "\n" not in html_out  # the Chatbot's markdown pass would end the HTML block at a blank line
    assert '<blockquote class="kb-quote">Use <strong>gw-7</strong> with <code>vpn-client</code> &lt;b&gt;now' in html_out
    assert 'href="#kb-src-a1-1"' in html_out  # markers still link to their card


def test_the_abstention_box_speaks_to_the_user_not_about_the_pipeline():
    from kb_chatbot.core.types import Answer

    a = Answer("q", "q", "The knowledge base does not contain an answer to this question.", (), 0.1, "abstained",
               corrected=True)
    out = R.render_answer(a)
    assert "Not covered" in out and "Double-checked" not in out and "draft" not in out


def test_sources_found_show_while_the_answer_is_written():
    from kb_chatbot.core.types import Citation

    c = Citation(n=1, chunk_id="c1", doc_id="d1", title="VPN", source="wiki", source_type="wiki",
                 uri="https://wiki.acme.example/vpn", quote="Open **AcmeTunnel** and sign in.")
    html_out = R.render_streaming("Writing the answer…", "", [c], key="s3")
    assert "Sources found · the answer is being written" in html_out and "kb-streaming" in html_out
    assert "<strong>AcmeTunnel</strong>" in html_out and 'id="kb-src-s3-1"' in html_out
