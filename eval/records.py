"""Per-question records (retrieval and answers) and their summaries.

See :mod:`kb_chatbot.eval.runner` for the definitions of correct, hallucination and calibration.
"""
from __future__ import annotations

import re
import sys
import time
from dataclasses import asdict
from typing import Any, Iterable, Sequence

from kb_chatbot.core.text import STOPWORDS
from kb_chatbot.core.settings import Settings
from kb_chatbot.core.types import Answer, Hit, Message, Principal
from kb_chatbot.eval import metrics as m
from kb_chatbot.eval.questions import EvalQuestion

#: Semantic similarity (MiniLM cosine) to the reference from which an answer counts as correct.
SIM_CORRECT = 0.7
#: Retrieved chunks scored per question (MRR@10; hit@1 and hit@5 use the first ones).
RETRIEVE_K = 10


# --- retrieval ------------------------------------------------------------------------------


def ref_names(doc_id: str, title: str, source_type: str) -> str | list[str]:
    """What a retrieved document is called when matched against expected sources: its id
    (``source:path``); a Slack conversation also by ``source:<conversation id>`` and
    ``source:<channel name>`` (expected sources name channels, not threads)."""
    if source_type != "slack":
        return doc_id
    source, _, rest = doc_id.partition(":")
    names = [doc_id, f"{source}:{rest.split(':', 1)[0]}"]
    channel = re.match(r"#([\w.-]+)", title or "")
    if channel:
        names.append(f"{source}:{channel.group(1)}")
    return names


def hit_ref(h: Hit) -> tuple[str | list[str], int | None]:
    """(names, page or slide) of a retrieved chunk."""
    loc = h.chunk.page if h.chunk.page is not None else h.chunk.slide
    return ref_names(h.chunk.doc_id, h.doc_title, h.source_type), loc


def retrieval_records(questions: Sequence[EvalQuestion], retriever, user: Principal, *, mode: str,
                      context_filter=None, top_k: int = 5, progress: bool = True, label: str = "") -> list[dict]:
    """Per question: the retrieved (doc, page) list, the first relevant rank by file and page, and
    the context recall of the reference answer in the first ``top_k`` chunks (as the prompt gets
    them: trimmed by the filter when there is one).

    With ``context_filter``, ``3 * top_k`` hybrid candidates are reranked and trimmed to
    ``top_k`` as the answer service does, and the ranks are those of the filtered list.
    """
    out = []
    for q in bar(questions, f"retrieval {label or mode}", progress):
        t0 = time.perf_counter()
        if context_filter is not None:
            hits = retriever.retrieve(q.question, user=user, top_k=3 * top_k, mode=mode)
            hits = list(context_filter.filter(q.question, hits, top_k=top_k).hits)
        else:
            hits = retriever.retrieve(q.question, user=user, top_k=RETRIEVE_K, mode=mode)
        seconds = time.perf_counter() - t0
        refs = [hit_ref(h) for h in hits]
        context = [h.prompt_text for h in hits[:top_k]]
        out.append({
            "id": q.id,
            "answerable": q.answerable,
            "scored": q.answerable and bool(q.expected_sources),
            "retrieved": refs,
            "rank_file": m.first_relevant_rank(refs, q.expected_sources, "file") if q.expected_sources else None,
            "rank_page": m.first_relevant_rank(refs, q.expected_sources, "page") if q.has_pages else None,
            "context_recall": (m.context_recall(q.expected_answer, context, STOPWORDS)
                               if q.answerable and q.expected_answer else None),
            "context_chars": sum(len(c) for c in context),  # the prompt's source text
            "seconds": round(seconds, 4),
        })
    return out


def summarize_retrieval(records: Sequence[dict], questions: Sequence[EvalQuestion]) -> dict[str, Any]:
    by_id = {q.id: q for q in questions}
    scored = [r for r in records if r["scored"]]
    paged = [r for r in scored if by_id[r["id"]].has_pages]
    out: dict[str, Any] = {"n": len(scored), "n_page": len(paged)}
    for level, rows in (("file", scored), ("page", paged)):
        ranks = [r[f"rank_{level}"] for r in rows]
        out[level] = {"hit@1": m.hit_at_k(ranks, 1), "hit@5": m.hit_at_k(ranks, 5), "mrr@10": m.mrr(ranks)}
    out["context_recall"] = m.mean(r["context_recall"] for r in records)
    out["context_chars"] = m.mean(r.get("context_chars") for r in records)
    out["latency"] = m.latency_summary([{"retrieve": r["seconds"]} for r in records]).get("retrieve")
    return out


# --- answers --------------------------------------------------------------------------------


def unsupported_count(answer: Answer, settings: Settings, embedder, generator) -> int:
    """Sentences of the shown answer whose facts are not in the sources they cite (an
    independent re-check with plain code: the service already removed what it caught)."""
    from kb_chatbot.app.answer.checks import Verifier

    if not answer.sources:
        return 0
    v = Verifier(None, mode="facts").verify(answer.text, answer.sources, question=answer.standalone_question)
    return len(v.failed)


def answer_record(q: EvalQuestion, a: Answer, unsupported: int) -> dict[str, Any]:
    from kb_chatbot.eval.verdict import answer_key, judge

    abstained = a.route == "abstained"
    j = judge(q.answerable, q.expected_answer, "" if abstained else a.text, q.question)
    if a.route == "error":
        j = type(j)("wrong", "the answer model failed")
    cited = [(ref_names(c.doc_id, c.title, c.source_type), c.page if c.page is not None else c.slide)
             for c in a.citations] if not abstained else []
    file_pr = m.citation_precision_recall(cited, q.expected_sources, "file") if not abstained else None
    page_pr = m.citation_precision_recall(cited, q.expected_sources, "page") if not abstained and q.has_pages else None
    return {
        "id": q.id,
        "question": q.question,
        "answerable": q.answerable,
        "expected_answer": q.expected_answer,
        "answer": a.text,
        "showing_for": a.showing_for,
        "route": a.route,
        "abstained": abstained,
        "error": a.route == "error",
        "confidence": a.confidence,
        "features": {k: v for k, v in a.scores.items() if k != "confidence_draft"},
        "citations": cited,
        "sources": [hit_ref(h) for h in a.sources],
        "token_f1": m.token_f1(a.text, q.expected_answer) if q.answerable and not abstained else None,
        "keyword_recall": m.keyword_recall(a.text, q.keywords) if not abstained else None,
        "citation_precision_file": file_pr.precision if file_pr else None,
        "citation_recall_file": file_pr.recall if file_pr and q.answerable else None,
        "citation_precision_page": page_pr.precision if page_pr else None,
        "citation_recall_page": page_pr.recall if page_pr and q.answerable else None,
        "unsupported_sentences": unsupported,
        "verdict": j.verdict,
        "verdict_reason": j.reason,
        "answer_key": answer_key(a.text),
        # answerable questions with expected pages: does a citation name one of them?
        "page_match": (bool(page_pr and page_pr.precision) if not abstained else False)
        if q.answerable and q.has_pages else None,
        "timings": dict(a.timings),
    }


def question_history(q: EvalQuestion) -> list[Message]:
    """The chat before a follow-up question: the ``history`` field of a JSONL row, a list of
    ``{"role": "user" | "assistant", "content": ...}`` (empty for a standalone question)."""
    return [Message(h["role"], h["content"]) for h in q.metadata.get("history") or []]


def answer_records(questions: Sequence[EvalQuestion], service, user: Principal, *, settings: Settings,
                   embedder, generator, progress: bool = True, label: str = "") -> list[dict]:
    out = []
    for q in bar(questions, f"answers {label}", progress):
        a = service.answer(q.question, user=user, history=question_history(q))
        # an abstention makes no claim: nothing in it can be unsupported
        n = 0 if a.route in ("abstained", "error") else unsupported_count(a, settings, embedder, generator)
        out.append(answer_record(q, a, n))
    # semantic similarity in one batch: answers vs references (answerable, not abstained)
    todo = [r for r in out if r["token_f1"] is not None]
    sims = m.embedding_similarity(embedder, [r["answer"] for r in todo], [r["expected_answer"] for r in todo])
    for r, s in zip(todo, sims):
        r["similarity"] = s
    for r in out:
        r.setdefault("similarity", None)
        finalize(r)
    return out


def finalize(r: dict[str, Any], human: str | None = None) -> None:
    """``correct`` from the verdict (a human label, when given, overrides the automatic one);
    the old similarity rule is kept as ``similarity_correct`` for comparison."""
    if human is not None:
        r["human_verdict"] = human
    final = r.get("human_verdict") or r["verdict"]
    r["final_verdict"] = final
    r["correct"] = final == "correct" if r["answerable"] else final == "abstained"
    if r["answerable"]:
        r["similarity_correct"] = (not r["abstained"] and not r["error"] and r["similarity"] is not None
                                   and r["similarity"] >= SIM_CORRECT)
    else:
        r["similarity_correct"] = r["abstained"]


def summarize_answers(records: Sequence[dict]) -> dict[str, Any]:
    answered = [r for r in records if not r["abstained"] and not r["error"]]
    conf = [r["confidence"] for r in answered]
    correct = [r["correct"] for r in answered]
    bins = m.reliability_bins(conf, correct)
    routes: dict[str, int] = {}
    for r in records:
        routes[r["route"]] = routes.get(r["route"], 0) + 1
    from kb_chatbot.eval.verdict import VERDICTS, shown_and_wrong

    finals = [r.get("final_verdict", r.get("verdict")) for r in records]
    answerable = [r for r in records if r["answerable"]]
    labelled = [r for r in records if r.get("human_verdict")]
    return {
        "n": len(records),
        "shown_and_wrong": shown_and_wrong(finals),
        "false_abstention": m.rate(r["abstained"] for r in answerable),
        "correct_answerable": m.rate(r.get("final_verdict") == "correct" for r in answerable),
        "page_citation_match": m.rate(r["page_match"] for r in records if r.get("page_match") is not None),
        "verdicts": {v: sum(1 for f in finals if f == v) for v in VERDICTS},
        "similarity_accuracy": m.rate(r.get("similarity_correct", False) for r in records),
        "human_labelled": len(labelled),
        "human_agreement": m.rate(r["verdict"] == r["human_verdict"] for r in labelled),
        "n_answerable": sum(1 for r in records if r["answerable"]),
        "n_unanswerable": sum(1 for r in records if not r["answerable"]),
        "accuracy": m.rate(r["correct"] for r in records),
        "token_f1": m.mean(r["token_f1"] for r in records),
        "similarity": m.mean(r["similarity"] for r in records),
        "keyword_recall": m.mean(r["keyword_recall"] for r in records),
        "citation_precision_file": m.mean(r["citation_precision_file"] for r in records),
        "citation_recall_file": m.mean(r["citation_recall_file"] for r in records),
        "citation_precision_page": m.mean(r["citation_precision_page"] for r in records),
        "citation_recall_page": m.mean(r["citation_recall_page"] for r in records),
        "abstention_unanswerable": m.abstention_rates([r["abstained"] for r in records],
                                                      [r["answerable"] for r in records])["unanswerable"],
        "abstention_answerable": m.abstention_rates([r["abstained"] for r in records],
                                                    [r["answerable"] for r in records])["answerable"],
        "hallucination_rate": m.hallucination_rate([r["unsupported_sentences"] for r in records],
                                                   [r["abstained"] or r["error"] for r in records]),
        "auroc": m.auroc(conf, correct),
        "ece": m.expected_calibration_error(bins),
        "reliability": [asdict(b) for b in bins],
        "routes": routes,
        "latency": m.latency_summary([r["timings"] for r in records]),
        **(judge_summary(records) if any("judge_verdict" in r for r in records) else {}),
    }


def bar(items: Sequence[Any], desc: str, progress: bool):
    """A tqdm bar on stderr (disabled when ``progress`` is False)."""
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit="q", disable=not progress, file=sys.stderr, leave=True, dynamic_ncols=True)


def judge_summary(records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """How often the judge agrees with the final verdict, and with the hand labels."""
    judged = [r for r in records if r.get("judge_verdict")]
    labelled = [r for r in judged if r.get("human_verdict")]

    def share(rows: list[dict], key: str) -> float | None:
        return round(sum(r["judge_verdict"] == r[key] for r in rows) / len(rows), 4) if rows else None

    return {"judged": len(judged), "judge_model": next((r.get("judge_model") for r in judged), None),
            "judge_agreement": share(judged, "final_verdict"),
            "judge_human_labelled": len(labelled), "judge_human_agreement": share(labelled, "human_verdict")}
