"""Question loaders on the real ARAGOG file and on JSONL samples; the citation parser."""
from __future__ import annotations

import json

import pytest
from hypothesis import given, strategies as st

from kb_chatbot.eval.questions import (
    QuestionFileError,
    detect_format,
    load_aragog,
    load_jsonl,
    load_questions,
    parse_source_citations,
    spread,
)


@pytest.fixture
def aragog(shared_dir):
    return shared_dir / "eval" / "aragog"


def test_aragog_real_file(aragog):
    qs = load_questions(aragog)  # the folder: the JSON is found inside, format detected
    assert len(qs) == 107
    assert qs[0].id == "aragog-001"
    assert qs[0].question == "What are the two main tasks BERT is pre-trained on?"
    assert qs[0].expected_answer == "Masked LM (MLM) and Next Sentence Prediction (NSP)."
    assert qs[0].expected_sources == (("bert.pdf", None),)
    unanswerable = [q for q in qs if not q.answerable]
    assert len(unanswerable) == 9
    assert {q.metadata["paper"] for q in unanswerable} == {"glm_130b.pdf"}
    assert len({q.id for q in qs}) == 107
    assert len({q.metadata["paper"] for q in qs}) == 13


def test_aragog_answerability_follows_the_corpus_folder(aragog, tmp_path):
    papers = tmp_path / "papers"
    papers.mkdir()
    (papers / "bert.pdf").write_bytes(b"%PDF-1.4")
    qs = load_aragog(aragog / "datasets/ARAGOG/eval_questions_relevant_doc.json", corpus_dir=papers)
    assert sum(q.answerable for q in qs) == 9  # bert.pdf has 9 questions
    assert all(q.metadata["paper"] == "bert.pdf" for q in qs if q.answerable)


def test_aragog_bad_files(tmp_path):
    bad = tmp_path / "a.json"
    bad.write_text(json.dumps({"questions": ["q"], "ground_truths": [], "filepaths": ["x.pdf"]}))
    with pytest.raises(QuestionFileError, match="equal length"):
        load_aragog(bad)
    bad.write_text(json.dumps({"questions": ["q"], "filepaths": ["x.pdf"]}))
    with pytest.raises(QuestionFileError, match="ground_truths"):
        load_aragog(bad)


def test_jsonl_all_field_spellings(tmp_path):
    p = tmp_path / "q.jsonl"
    lines = [
        {"id": "pto", "question": "How many PTO days?", "expected_answer": "25 days.",
         "expected_sources": [{"file": "hr/pto.md", "page": None}], "keywords": ["25"]},
        {"question": "VPN client?", "answer": "WireGuard.", "source_path": "it/vpn.md"},
        {"question": "Laptop refresh?", "expected_answer": "Every 3 years [IT_Handbook.pdf#page=7].",
         "source_path": "IT_Handbook.pdf", "page": 7},
        {"question": "Moon base?", "expected_answer": "", "answerable": False},
        {"question": "Two sources?", "expected_answer": "Yes [a.pdf#page=2; b.md].",
         "expected_sources": ["c.pdf#page=3"]},
    ]
    p.write_text("# comment line\n" + "\n".join(json.dumps(x) for x in lines) + "\n\n")
    qs = load_jsonl(p)
    assert [q.id for q in qs] == ["pto", "q3", "q4", "q5", "q6"]  # default ids are line numbers
    assert qs[0].expected_sources == (("hr/pto.md", None),) and qs[0].keywords == ("25",)
    assert qs[1].expected_answer == "WireGuard." and qs[1].expected_sources == (("it/vpn.md", None),)
    assert qs[2].expected_answer == "Every 3 years."
    assert qs[2].expected_sources == (("IT_Handbook.pdf", 7),)  # the same source once
    assert not qs[3].answerable and qs[3].expected_sources == ()
    assert qs[4].expected_sources == (("c.pdf", 3), ("a.pdf", 2), ("b.md", None))
    assert detect_format(p) == "jsonl"


@pytest.mark.parametrize(
    "line, message",
    [
        ('{"answer": "x"}', r"q\.jsonl:1: field 'question'"),
        ("not json", r"q\.jsonl:1: not valid JSON"),
        ('{"question": "q", "expected_sources": [{"page": 2}]}', "needs a 'file'"),
        ('{"question": "q", "source_path": "a.pdf", "page": "seven"}', "'page' must be a whole number"),
        ('{"question": "q", "answerable": "no"}', "'answerable' must be true or false"),
        ("[1, 2]", "must be a JSON object"),
    ],
)
def test_jsonl_errors_name_file_line_and_field(tmp_path, line, message):
    p = tmp_path / "q.jsonl"
    p.write_text(line + "\n")
    with pytest.raises(QuestionFileError, match=message):
        load_jsonl(p)


def test_duplicate_ids_and_missing_file(tmp_path):
    p = tmp_path / "q.jsonl"
    p.write_text('{"id": "a", "question": "x"}\n{"id": "a", "question": "y"}\n')
    with pytest.raises(QuestionFileError, match="duplicate id 'a'"):
        load_jsonl(p)
    with pytest.raises(QuestionFileError, match="not found"):
        load_questions(tmp_path / "nope.jsonl")


def test_limit_and_spread(aragog):
    qs = load_questions(aragog, limit=5)
    assert [q.id for q in qs] == [f"aragog-00{i}" for i in range(1, 6)]
    every = load_questions(aragog)
    sub = spread(every, 20)
    assert len(sub) == 20 and len({q.metadata["paper"] for q in sub}) == 13
    assert any(not q.answerable for q in sub)
    assert spread(every[:3], 10) == every[:3]


@pytest.mark.parametrize(
    "text, refs, rest",
    [
        ("Ten days [PTO_Policy.pdf#page=7].", [("PTO_Policy.pdf", 7)], "Ten days."),
        ("See [Some File.pdf#page=12; other.docx]", [("Some File.pdf", 12), ("other.docx", None)], "See"),
        ("A [a.pdf, b.md] b", [("a.pdf", None), ("b.md", None)], "A b"),
        ("Per [Report.pdf, p. 3].", [("Report.pdf", 3)], "Per."),
        ("[guide/setup.md#p=2] first", [("guide/setup.md", 2)], "first"),
        ("Model [1] says [citation needed] and [Node.js] [2024]", [], "Model [1] says [citation needed] and [Node.js] [2024]"),
        ("Mixed [a.pdf, not a file] stays", [], "Mixed [a.pdf, not a file] stays"),
    ],
)
def test_parse_source_citations(text, refs, rest):
    assert parse_source_citations(text) == (refs, rest)


@given(st.text(alphabet=st.characters(blacklist_characters="[]#"), max_size=40),
       st.integers(min_value=1, max_value=9999))
def test_citation_roundtrip_property(prefix, page):
    refs, _ = parse_source_citations(f"{prefix} [Doc_{page}.pdf#page={page}]")
    assert refs == [(f"Doc_{page}.pdf", page)]


def test_sample_facts_jsonl(sample_dir):
    qs = load_questions(sample_dir / "facts.jsonl")
    assert len(qs) == 40
    by_id = {q.id: q for q in qs}
    assert by_id["pto-carryover"].expected_sources == (("hr/pto.md", None),)
    assert by_id["pto-carryover"].keywords == ("6 days",)
    assert by_id["pto-carryover"].expected_answer == "Up to 6 days, which must be used by March 31."
    # no source and no answer: the knowledge base cannot answer these
    assert {q.id for q in qs if not q.answerable} == {
        "unanswerable-osaka-wifi", "unanswerable-hackathon", "unanswerable-ceo-name"}
    pdf = [q for q in qs if q.expected_sources and q.expected_sources[0][0].endswith(".pdf")]
    assert pdf and pdf[0].expected_sources[0][1] == 4  # security-handbook.pdf, page 4
    deck = [q for q in qs if q.expected_sources and q.expected_sources[0][0].endswith(".pptx")]
    assert deck and deck[0].expected_sources[0][1] == 4  # a slide number stands in for the page
    assert by_id["pto-carryover"].metadata["readers"] == "public"
