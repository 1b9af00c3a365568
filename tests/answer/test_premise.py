"""The premise check: names, numbers and identifiers of the question that no readable source holds."""
from __future__ import annotations

from answer.premise import missing_terms, nothing_about
from core.types import Chunk, Hit


def hit(text: str, title: str = "Benefits overview") -> Hit:
    c = Chunk(id="c", doc_id="t:c", ordinal=0, text=text, start=0, end=len(text))
    return Hit(c, title, "u", "t", "wiki", score=1.0)


HITS = [hit("The Silver and Bronze plans have deductibles. Paid time off (PTO) is 22 days. "
            "The VPN client is GlobalProtect.")]


def test_an_unknown_plan_is_named():
    missing = missing_terms("What is the deductible of the Gold plan?", HITS)
    assert [m.label for m in missing] == ["Gold plan"]
    assert nothing_about(missing) == "The knowledge base has nothing about 'Gold plan', so it cannot answer this question."


def test_known_terms_and_plain_words_pass():
    assert missing_terms("What is the deductible of the Silver plan?", HITS) == []
    assert missing_terms("How many vacation days do I get?", HITS) == []  # ordinary words are not salient
    assert missing_terms("How do I set up GlobalProtect?", HITS) == []


def test_acronyms_spelled_out_count_as_present():
    hits = [hit("Employees earn paid time off every pay period.")]
    assert missing_terms("How much PTO do I earn?", hits) == []
    assert [m.label for m in missing_terms("What is the HSA limit?", hits)] == ["HSA limit"]


def test_numbers_and_tickers():
    assert [m.fact.text for m in missing_terms("Is the 2019 policy still valid?", HITS)] == ["2019"]
    assert [m.fact.text for m in missing_terms("Is CSCO our stock ticker?", HITS)] == ["CSCO"]


def test_a_title_counts_as_text():
    assert missing_terms("What does the Benefits overview say?", HITS) == []
