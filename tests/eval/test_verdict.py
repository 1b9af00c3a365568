"""Verdicts look at facts: on-topic but wrong is wrong, pointing at a source is vacuous."""
from __future__ import annotations

import json

import pytest

from kb_chatbot.eval.labels import apply_labels, label_records, load_labels, LabelFileError
from kb_chatbot.eval.verdict import answer_key, judge, shown_and_wrong


@pytest.mark.parametrize("answerable,reference,answer,question,verdict", [
    # the cases that the similarity rule called correct
    (True, "The deductible is $1,500 per person.", "The deductible is $2,000 [1].", "What is the deductible?", "wrong"),
    (True, "No, the plan may not cover the full cost.", "Yes, the plan covers full costs. [2]",
     "Does the plan cover full costs?", "wrong"),
    (True, "The exempt services are preventive care and annual physicals.",
     "The exempt services include those listed in [5].", "Which services are exempt?", "vacuous"),
    (True, "The copay is $20.", "The copay is $30 [1].", "What is the copay?", "wrong"),
    (False, "", "The guest Wi-Fi is AcmeGuest [1].", "What is the guest Wi-Fi?", "wrong"),
    # right answers, written differently from the reference
    (True, "Employees get 22 days of PTO per year.",
     "Every full-time employee earns 22 working days of PTO per calendar year. [1]", "How much PTO?", "correct"),
    (True, "The launch is on March 9, 2027 at ProMat in Chicago.",
     "The Falcon public launch is on 9 March 2027, on stage at ProMat in Chicago. [1]", "When is the launch?", "correct"),
    (True, "A $35 fee for using AdTrav.", "AdTrav charges a fee of 35 dollars [2].", "What fee?", "correct"),
    (True, "Yes, up to 5 days carry over.", "Yes, up to five days carry over [1].", "Can days carry over?", "correct"),
    # abstentions
    (True, "Ten days.", "The knowledge base does not contain an answer to this question.", "x", "abstained"),
    (False, "", "The knowledge base has nothing about 'Gold plan', so it cannot answer this question.", "x",
     "abstained"),
    # missing key facts: on topic, not the answer
    (True, "The travel team closes at 4:30 PM ET.", "The travel team reviews authorizations daily [1].",
     "When does the travel team close?", "wrong"),
])
def test_verdicts(answerable, reference, answer, question, verdict):
    assert judge(answerable, reference, answer, question).verdict == verdict


def test_shown_and_wrong_counts_wrong_and_vacuous_over_all_questions():
    assert shown_and_wrong(["correct", "wrong", "vacuous", "abstained"]) == 0.5
    assert shown_and_wrong([]) is None


def _result():
    recs = []
    for i, (ans, auto) in enumerate([("A $30 copay [1].", "wrong"), ("The copay is $20 [1].", "correct")]):
        recs.append({"id": f"q{i}", "question": "What is the copay?", "answerable": True, "expected_answer": "$20",
                     "answer": ans, "answer_key": answer_key(ans), "verdict": auto, "verdict_reason": "",
                     "abstained": False, "error": False, "similarity": 0.9, "route": "answered",
                     "confidence": 0.9, "token_f1": 0.5, "keyword_recall": None, "citation_precision_file": 1.0,
                     "citation_recall_file": 1.0, "citation_precision_page": None, "citation_recall_page": None,
                     "unsupported_sentences": 0, "page_match": None, "timings": {"total": 1.0}})
    return {"answers": {"config": {"records": recs, "summary": {}}}}


def test_labels_override_and_agreement_is_reported(tmp_path):
    result = _result()
    labels = tmp_path / "labels.jsonl"
    answers = iter(["c", "c"])  # the human says both are correct: agrees on the second only
    n = label_records(result["answers"]["config"]["records"], labels, ask=lambda _p: next(answers),
                      show=lambda _t: None)
    assert n == 2
    apply_labels(result, load_labels(labels))
    s = result["answers"]["config"]["summary"]
    assert s["human_labelled"] == 2 and s["human_agreement"] == 0.5
    assert s["correct_answerable"] == 1.0 and s["shown_and_wrong"] == 0.0


def test_a_label_applies_to_that_answer_only(tmp_path):
    labels = tmp_path / "labels.jsonl"
    labels.write_text(json.dumps({"id": "q0", "answer_key": answer_key("something else"), "verdict": "correct"}) + "\n")
    result = _result()
    apply_labels(result, load_labels(labels))
    assert result["answers"]["config"]["summary"]["human_labelled"] == 0


def test_a_bad_labels_file_names_the_line(tmp_path):
    p = tmp_path / "labels.jsonl"
    p.write_text('{"id": "q0", "answer_key": "x", "verdict": "great"}\n')
    with pytest.raises(LabelFileError, match=r"labels.jsonl:1: 'verdict' must be one of"):
        load_labels(p)
