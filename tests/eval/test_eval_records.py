"""How retrieved chunks are named for matching, and answer records on hand-made answers."""
from __future__ import annotations

from kb_chatbot.core.types import Answer, Chunk, Citation, Hit
from kb_chatbot.eval.questions import EvalQuestion
from kb_chatbot.eval.records import answer_record, hit_ref, ref_names


def _hit(doc_id, title, source_type, page=None, slide=None):
    chunk = Chunk(id="c1", doc_id=doc_id, ordinal=0, text="t", start=0, end=1, page=page, slide=slide)
    return Hit(chunk=chunk, doc_title=title, doc_uri="u", source=doc_id.split(":")[0], source_type=source_type, score=1.0)


def test_ref_names():
    assert ref_names("acme-wiki:hr/pto.md", "PTO", "wiki") == "acme-wiki:hr/pto.md"
    assert ref_names("acme-slack:C1:1700.1", "#proj-falcon thread: launch", "slack") == [
        "acme-slack:C1:1700.1", "acme-slack:C1", "acme-slack:proj-falcon"]
    assert ref_names("acme-slack:D01ALIBOB:2026-01-02", "DM alice, bob 2026-01-02", "slack") == [
        "acme-slack:D01ALIBOB:2026-01-02", "acme-slack:D01ALIBOB"]
    assert hit_ref(_hit("d:deck.pptx", "Deck", "drive", slide=4)) == ("d:deck.pptx", 4)
    assert hit_ref(_hit("d:a.pdf", "A", "drive", page=2)) == ("d:a.pdf", 2)


def _answer(text, route, citations=(), confidence=0.9):
    return Answer(question="q", standalone_question="q", text=text, citations=tuple(citations),
                  confidence=confidence, route=route, timings={"total": 1.5})


def test_answer_record_scores_and_abstentions():
    q = EvalQuestion("x", "How many PTO days?", "25 days per year.", (("hr/pto.md", None),))
    cite = Citation(n=1, chunk_id="c", doc_id="acme-wiki:hr/pto.md", title="PTO", source="acme-wiki",
                    source_type="wiki", uri="u")
    r = answer_record(q, _answer("You get 25 days per year [1].", "answered", [cite]), unsupported=0)
    assert r["token_f1"] > 0.7 and r["citation_precision_file"] == 1.0 and r["citation_recall_file"] == 1.0
    assert not r["abstained"] and r["timings"] == {"total": 1.5}
    # an abstention lists the closest sources as citations: they are not scored as citations
    a = answer_record(q, _answer("The knowledge base does not contain an answer.", "abstained", [cite]), 0)
    assert a["abstained"] and a["citations"] == [] and a["citation_precision_file"] is None
    assert a["token_f1"] is None
    unanswerable = EvalQuestion("u", "CEO?", "", (), answerable=False)
    u = answer_record(unanswerable, _answer("It is Bob [1].", "answered", [cite]), unsupported=1)
    assert u["citation_precision_file"] == 0.0 and u["citation_recall_file"] is None
    assert u["unsupported_sentences"] == 1
