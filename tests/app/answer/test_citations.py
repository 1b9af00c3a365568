"""Citation markers: parsing (property tests), dropping invalid ones, mapping to Citations."""
from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from kb_chatbot.app.answer.citations import (
    answer_sentences,
    best_quote,
    clean_markers,
    cited_numbers,
    extract_citations,
    parse_markers,
    source_citations,
    strip_markers,
)
from kb_chatbot.core.types import Chunk, Hit


def hit(n: int, text: str, *, source_type: str = "wiki", uri: str | None = None, doc_id: str | None = None, **kw) -> Hit:
    chunk = Chunk(id=f"c{n}", doc_id=doc_id or f"t:d{n}", ordinal=0, text=text, start=0, end=len(text), **kw)
    return Hit(chunk, f"Doc {n}", uri or f"https://wiki.acme.example/d{n}", "t", source_type, score=1.0)  # type: ignore[arg-type]


HITS = [
    hit(1, "# PTO\nFull-time employees get 25 days of vacation per year. Requests go through Workday."),
    hit(2, "Meals are reimbursed up to 60 dollars per day.", uri="https://drive.acme.example/handbook.pdf", page=4),
    hit(3, "Dana (2024-03-01 14:05): the launch moved to May.", source_type="slack",
        uri="https://acme.slack.com/archives/C024/p1709301000000100", doc_id="acme-slack:C024:1709301000.000100",
        slack_ts="1709301900.000200"),
]

# --- parsing ----------------------------------------------------------------------------

group = st.lists(st.integers(min_value=0, max_value=60), min_size=1, max_size=4, unique=True)


def render(nums: list[int], style: int) -> str:
    if style == 0:
        return "[" + ", ".join(map(str, nums)) + "]"
    if style == 1:
        return "".join(f"[{n}]" for n in nums)
    if style == 2:
        return "[" + ",".join(map(str, nums)) + "]"
    return "[" + " , ".join(map(str, nums)) + "]"


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(group, st.integers(0, 3), st.sampled_from(["Claim", "Another claim.", "x", ""])), max_size=6))
def test_parse_recovers_every_number_in_every_style(groups):
    text = ""
    expected: list[int] = []
    for nums, style, words in groups:
        text += f"{words} {render(nums, style)} "
        expected += [n for n in nums if n not in expected]
    assert cited_numbers(text) == expected


@settings(max_examples=200, deadline=None)
@given(st.integers(0, 50), st.integers(0, 25))
def test_ranges_expand(lo, width):
    hi = lo + width
    # up to MAX_RANGE (20) wide a range is expanded; wider, only its end points count
    expected = tuple(range(lo, hi + 1)) if width <= 20 else (lo, hi)
    assert parse_markers(f"see [{lo}-{hi}]")[0].numbers == expected
    assert parse_markers(f"see [{lo} – {hi}]")[0].numbers == expected


def test_not_citations():
    assert parse_markers("In [2024] we grew; see [a], [ ], [1.5] and [-3].") == []
    assert parse_markers("[1, 3-4][2]")[0].numbers == (1, 3, 4)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(group, st.integers(0, 3)), max_size=6), st.integers(0, 8))
def test_clean_keeps_only_valid_numbers_and_the_words(groups, n_sources):
    text = " ".join(f"Word{i} {render(nums, style)}." for i, (nums, style) in enumerate(groups))
    cleaned, total, invalid = clean_markers(text, n_sources)
    assert all(1 <= n <= n_sources for n in cited_numbers(cleaned))
    assert total == sum(len(nums) for nums, _ in groups)
    assert len(invalid) == sum(1 for nums, _ in groups for n in nums if not 1 <= n <= n_sources)
    # only markers changed: the words are untouched
    assert strip_markers(cleaned).split() == strip_markers(text).split()


# --- sentences and mapping --------------------------------------------------------------

def test_marker_after_full_stop_belongs_to_the_sentence_before():
    sents = answer_sentences("Alpha is true. [1] Beta holds [2]. Gamma [1][3].", 3)
    assert [(s.claim, s.cited) for s in sents] == [("Alpha is true.", (1,)), ("Beta holds.", (2,)), ("Gamma.", (1, 3))]


def test_invalid_markers_are_dropped_and_valid_ones_mapped():
    res = extract_citations("Employees get 25 days of vacation [1][7]. Meals up to 60 dollars [2, 9]. Nope [8].", HITS)
    assert "[7]" not in res.text and "[8]" not in res.text and "9" not in res.text
    assert res.text == "Employees get 25 days of vacation [1]. Meals up to 60 dollars [2]. Nope."
    assert [c.n for c in res.citations] == [1, 2]
    assert res.markers_total == 5 and res.markers_invalid == 3
    assert [s.cited for s in res.sentences] == [(1,), (2,), ()]


def test_citation_fields_quote_and_deep_links():
    res = extract_citations("You get 25 days of vacation [1]. Meals: 60 dollars [2]. Launch moved to May [3]. Again [1].", HITS)
    by_n = {c.n: c for c in res.citations}
    assert len(res.citations) == 3  # deduplicated
    c1 = by_n[1]
    assert (c1.title, c1.chunk_id, c1.doc_id, c1.location) == ("Doc 1", "c1", "t:d1", "")
    assert c1.quote == "Full-time employees get 25 days of vacation per year."
    assert by_n[2].uri == "https://drive.acme.example/handbook.pdf#page=4" and by_n[2].page == 4
    assert by_n[2].location == "page 4"
    # a reply in a thread links to the reply itself, with the thread parameters Slack uses
    assert by_n[3].uri == "https://acme.slack.com/archives/C024/p1709301900000200?thread_ts=1709301000.000100&cid=C024"
    assert by_n[3].location == "message of 2024-03-01 14:05 UTC"


def test_no_renumbering_numbers_stay_as_written():
    res = extract_citations("Launch moved to May [3].", HITS)
    assert [c.n for c in res.citations] == [3] and res.citations[0].chunk_id == "c3"


def test_quote_prefers_supporting_sentence_over_heading():
    assert best_quote("requests workday", HITS[0].chunk.text) == "Requests go through Workday."
    assert best_quote("zzz", HITS[0].chunk.text) != "# PTO"


def test_source_citations_list_every_source():
    cites = source_citations(HITS, "meal reimbursement")
    assert [c.n for c in cites] == [1, 2, 3]
    assert cites[1].quote == "Meals are reimbursed up to 60 dollars per day."


def test_sentences_join_soft_wraps_and_split_blocks():
    from kb_chatbot.core.text import sentence_spans

    text = ("## Canary\nA canary runs for **72 hours**\nbefore the rollout continues. Then waves.\n"
            "| Tier | Days |\n- item one\nalice (2026-10-14 07:55): Done.\ndave (2026-10-14 08:00): ok")
    spans = sentence_spans(text)
    assert [s.text for s in spans] == [
        "## Canary", "A canary runs for **72 hours**\nbefore the rollout continues.", "Then waves.",
        "| Tier | Days |", "- item one", "alice (2026-10-14 07:55): Done.", "dave (2026-10-14 08:00): ok",
    ]
    assert all(text[s.start:s.end] == s.text for s in spans)
    # a line that starts or ends in bold is no list item: the sample's VPN page was cut into
    # "The client connects to the gateway" / "**gw-7…** and picks …" / "If you are" / "asked for …"
    vpn = ("The client connects to the gateway\n**gw-7.vpn.acme.example** and picks the nearest point. If you are\n"
           "asked for a server name, that is the one to use.\n* a star item\n---\n-5 degrees is cold")
    assert [s.text for s in sentence_spans(vpn)] == [
        "The client connects to the gateway\n**gw-7.vpn.acme.example** and picks the nearest point.",
        "If you are\nasked for a server name, that is the one to use.", "* a star item", "---", "-5 degrees is cold"]


def test_an_abbreviation_or_a_lower_case_word_does_not_end_a_sentence():
    """dr-02 of the dev set: "… delivered to the D.C. office on the first floor of the GSA
    building. [5]" was split after "D.C."; the first half failed its check, and the fragment
    "office on the first floor of the GSA building." was shown as the answer."""
    text = "The supplies were delivered to the D.C. office on the first floor of the GSA building. [5]"
    assert [s.text for s in answer_sentences(text, 5)] == [text]
    assert [s.text for s in answer_sentences("Ask the U.S. Embassy [2]. Then wait [1].", 5)] == [
        "Ask the U.S. Embassy [2].", "Then wait [1]."]
    assert [s.claim for s in answer_sentences("It takes 3.5 days. See e.g. Section 4 [1].", 5)] == [
        "It takes 3.5 days.", "See e.g. Section 4."]


def test_a_quote_is_a_passage_not_a_table_header_or_slide_title():
    from kb_chatbot.app.answer.citations import best_quote

    table = "| Day | Hours |\n|---|---|\n| Monday | 9am to 5pm at the front desk, badge required |"
    q = best_quote("The front desk is open 9am to 5pm on Monday.", table)
    assert "9am to 5pm" in q and q != "| Day | Hours |"
    slide = "Slide 3: What Falcon does\nFalcon routes warehouse robots around blocked aisles in real time."
    assert "routes warehouse robots" in best_quote("What does Falcon do?", slide)
    # the sentence holding the claim's number wins over one sharing more words
    text = ("Vacation days are granted to all staff every year by policy. Staff get 22 vacation days. "
            "After five years it is 25.")
    assert best_quote("You get 22 vacation days.", text).startswith("Staff get 22 vacation days.")


def test_sources_are_renumbered_in_the_order_the_answer_cites_them():
    from kb_chatbot.app.answer.citations import renumber
    from kb_chatbot.core.types import Citation

    def cite(n):
        return Citation(n=n, chunk_id=f"c{n}", doc_id=f"d{n}", title=f"T{n}", source="s", source_type="wiki", uri="")

    text, cites, others = renumber("Use the VPN [4]. Ask IT [2, 4].", [cite(2), cite(4)], [cite(1), cite(3)])
    assert text == "Use the VPN [1]. Ask IT [2, 1]."
    assert [(c.n, c.chunk_id) for c in cites] == [(1, "c4"), (2, "c2")]
    assert [(c.n, c.chunk_id) for c in others] == [(3, "c1"), (4, "c3")]
