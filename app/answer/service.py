"""The answer service: one question in, a cited answer (or an honest abstention) out.

Flow (DESIGN.md "Flow of one question"): condense the follow-up with the chat history ->
retrieve (ACL-filtered inside the retriever, re-checked here against the document ACL) ->
premise check (a name, number or identifier of the question that no readable source contains:
say so, generate nothing) -> rerank and trim (context filter) -> numbered sources in the prompt
-> stream the draft, pausing after each sentence to verify it against its source
(:mod:`kb_chatbot.app.answer.writer` and :mod:`kb_chatbot.app.answer.checks`: facts, then the
model's own yes/no check on its KV cache) and stream
what passed -> the whole answer verified -> hard gates: failed sentences removed ->
confidence of what is left -> below ``answer.confidence_threshold`` (nothing left is 0): one
targeted correction (the removed sentences named, a vacuous draft asked for the facts, or a
rewritten query) -> still low: the escalation model if configured, else the abstention
sentence with the closest sources. Every answer is written to the answer log with its route,
scores and timings.

How a UI consumes :meth:`KnowledgeAnswerService.stream`:

- ``AnswerEvent("status", text)``: show as a transient note ("Searching the knowledge base…").
- ``AnswerEvent("sources", sources=…)``: the sources found, each with its passage closest to
  the question, as soon as they are known (about a second): show them as sources, not an answer.
- ``AnswerEvent("discard")``: the tokens streamed so far were a draft that is being replaced
  (a correction or an escalation follows): clear it and its verified text; the tokens that
  follow are the new draft.
- ``AnswerEvent("token", text)``: the draft as written, unchecked (a terminal may show it
  dimmed, as being checked; the chat page does not show it).
- ``AnswerEvent("verified", text)``: the sentences checked so far that passed (the whole text
  each time): show it as the answer being written.
- ``AnswerEvent("answer", answer=Answer)``: always last. ``answer.text`` is authoritative:
  replace whatever was streamed with it (an abstention or an answer with invalid citation
  markers removed differs from the raw tokens), then show citations, confidence and route.
"""
from __future__ import annotations

import hashlib
import logging
import sqlite3
import threading
import time
from collections import OrderedDict
from dataclasses import replace
from typing import Callable, Iterator, Sequence

from kb_chatbot.app.answer.checks import SubjectCheck, missing_terms, not_in_cited, nothing_about, unsupported_claims
from kb_chatbot.app.answer.citations import renumber, source_citations
from kb_chatbot.app.answer.condense import condense_question, rewrite_query
from kb_chatbot.app.answer.confidence import ConfidenceModel
from kb_chatbot.app.answer.context_filter import ContextFilter
from kb_chatbot.app.answer.prompts import ABSTAIN_TEXT, build_correction_messages, build_messages, is_abstention
from kb_chatbot.app.answer.spelling import SpellChecker
from kb_chatbot.app.answer.writer import Attempt, CheckedWriter, Run
from kb_chatbot.core.errors import GeneratorError
from kb_chatbot.core.types import Answer, AnswerEvent, Hit, Message, Principal, Route

log = logging.getLogger(__name__)

STATUS_SEARCHING = "Searching the knowledge base…"
STATUS_WRITING = "Writing the answer…"
STATUS_DOUBLE_CHECKING = "Double-checking the answer…"
STATUS_ESCALATING = "Asking a larger model…"

NO_SOURCES_NOTE = "No document you can read matches the question."
CLOSEST_NOTE = "The closest sources are listed below."
ERROR_TEXT = "The answer model failed; please try again later."

#: Retrieval candidates per prompt source when the context filter is on (it reranks them).
CANDIDATE_FACTOR = 3

AclLookup = Callable[[str], frozenset[str]]


class KnowledgeAnswerService:
    """Implements :class:`kb_chatbot.core.protocols.AnswerService`."""

    def __init__(
        self,
        retriever,
        generator,
        embedder,
        settings,
        logstore=None,
        escalation=None,
        *,
        confidence: ConfidenceModel | None = None,
        context_filter: ContextFilter | None = None,
        acl_lookup: AclLookup | None = None,
        term_count: Callable[[str, frozenset[str]], int] | None = None,
        chunk_total: Callable[[frozenset[str]], int] | None = None,
        speller: SpellChecker | None = None,
    ):
        self.retriever = retriever
        self.generator = generator
        self.embedder = embedder
        self.settings = settings
        self.logstore = logstore
        self.escalation = escalation
        self.confidence = confidence or ConfidenceModel()
        rcfg = settings.retrieval
        self.context_filter = context_filter
        if self.context_filter is None and rcfg.context_filter:
            self.context_filter = ContextFilter.from_settings(embedder, rcfg)
        self.acl_lookup = acl_lookup
        #: how many chunks the asker may read hold a word, and how many they may read (the
        #: subject check; unreadable chunks never count); without them the check is off
        #: corrects typos against the knowledge base's words (None: off)
        self.speller = speller
        #: answers by (question, principals, sources' text): a repeated question costs a search
        self._cache: OrderedDict[tuple, Answer] = OrderedDict()
        self._cache_ids: dict[str, tuple] = {}  # answer id -> cache key (for forget)
        self._cache_lock = threading.Lock()
        self.subject = SubjectCheck(term_count, chunk_total, enabled=settings.answer.subject_check,
                                    stem=speller.stems if speller is not None else None,
                                    names=settings.answer.subject_names)
        #: the generate-pause-check loop; the local model checks every draft
        self.writer = CheckedWriter(settings, generator, embedder, self.confidence, self.subject)
        if acl_lookup is None:
            log.warning("answer_service acl_check=off reason=no_acl_lookup (relying on the retriever's filter)")

    # --- the protocol ------------------------------------------------------------------
    def answer(self, question: str, *, user: Principal, history: Sequence[Message] = ()) -> Answer:
        final = None
        for ev in self.stream(question, user=user, history=history):
            if ev.kind == "answer":
                final = ev.answer
        assert final is not None  # stream always ends with an answer event
        return final

    def stream(self, question: str, *, user: Principal, history: Sequence[Message] = ()) -> Iterator[AnswerEvent]:
        question = " ".join(question.split())
        if not question:
            raise ValueError("the question is empty")
        run = Run(question, user)
        try:
            answer = yield from self._flow(run, history)
        except GeneratorError as e:
            log.error("answer route=error user=%s error=%r", user.username, str(e))
            answer = Answer(question, question, ERROR_TEXT, (), 0.0, "error", model_id=getattr(self.generator, "model_id", ""))
        run.timings["total"] = time.perf_counter() - run.t0
        answer = replace(answer, timings={k: round(v, 4) for k, v in run.timings.items()}, showing_for=run.showing_for)
        answer = self._record(answer, user)
        if run.cache_key is not None and answer.answer_id:
            with self._cache_lock:
                self._cache_ids[answer.answer_id] = run.cache_key
        yield AnswerEvent("answer", answer=answer)

    def forget(self, answer_id: str) -> None:
        """Drop the cached answer behind ``answer_id`` (feedback said it is wrong)."""
        with self._cache_lock:
            key = self._cache_ids.pop(answer_id, None)
            dropped = key is not None and self._cache.pop(key, None) is not None
        if dropped:
            log.info("answer_cache forgot answer_id=%s", answer_id)

    # --- steps -------------------------------------------------------------------------
    def _flow(self, run: Run, history: Sequence[Message]):
        cfg = self.settings
        yield AnswerEvent("status", STATUS_SEARCHING)
        standalone = run.question
        if history:
            run.asked = run.question
            t = time.perf_counter()
            standalone = condense_question(self.generator, run.question, history, turns=cfg.answer.history_turns)
            run.add("condense", time.perf_counter() - t)
        if self.speller is not None and cfg.answer.spelling:
            t = time.perf_counter()
            spelled = self.speller.correct(standalone, run.user.principals())
            run.add("spelling", time.perf_counter() - t)
            if spelled.fixes:
                standalone = run.showing_for = spelled.text
                log.info("answer spelling fixes=%d", len(spelled.fixes))
        hits = self._retrieve(standalone, run)
        model_id = getattr(self.generator, "model_id", "")
        if not hits:
            log.info("answer route=abstained reason=no_readable_hits user=%s", run.user.username)
            return Answer(run.question, standalone, f"{ABSTAIN_TEXT} {NO_SOURCES_NOTE}", (), 0.0, "abstained",
                          model_id=model_id)
        if cfg.answer.premise_check:
            t = time.perf_counter()
            missing = missing_terms(standalone, hits)
            if missing:  # one targeted retry: search for the missing terms themselves
                more = self._retrieve(" ".join(m.label for m in missing), run)
                seen = {h.chunk.id for h in hits}
                merged = list(hits) + [h for h in more if h.chunk.id not in seen]
                missing = missing_terms(standalone, merged)
                if not missing:
                    hits = merged
            if history:  # a term the chat brought in was asked about before: only the new question's count
                now = run.question.lower()
                missing = [m for m in missing if m.fact.text.lower() in now]
            run.add("premise", time.perf_counter() - t)
            if missing:  # nothing to generate from: say so, with the closest sources
                log.info("answer route=abstained reason=premise_missing terms=%d", len(missing))
                context = tuple(hits[: cfg.retrieval.top_k])
                cites = source_citations(context, standalone)
                text = nothing_about(missing) + (f" {CLOSEST_NOTE}" if cites else "")
                return Answer(run.question, standalone, text, cites, 0.0, "abstained", sources=context,
                              scores={"premise_missing": float(len(missing))}, model_id=model_id)
        context = self._filter(standalone, hits, run)
        # the sources at once, before a word of the answer (the model needs seconds to read them)
        yield AnswerEvent("sources", sources=source_citations(context, standalone))
        run.timings.setdefault("sources", time.perf_counter() - run.t0)
        key = run.cache_key = self._cache_key(standalone, run.user, context, run.asked)
        with self._cache_lock:  # the page answers several users from threads
            cached = self._cache.get(key) if key is not None else None
            if cached is not None:
                self._cache.move_to_end(key)
        if cached is not None:  # the same question over the same readable sources: at once
            log.info("answer route=%s cached=1", cached.route)
            return replace(cached, question=run.question, scores={**cached.scores, "cached": 1.0})
        answer = yield from self._write(run, standalone, hits, context)
        if key is not None and answer.route in ("answered", "corrected", "escalated", "abstained"):
            with self._cache_lock:
                self._cache[key] = answer
                while len(self._cache) > cfg.answer.cache_size:
                    self._cache.popitem(last=False)
                if len(self._cache_ids) > 8 * cfg.answer.cache_size:  # ids of evicted answers
                    live = set(self._cache)
                    self._cache_ids = {i: k for i, k in self._cache_ids.items() if k in live}
        return answer

    def _cache_key(self, standalone: str, user: Principal, context: Sequence[Hit],
                   asked: str | None = None) -> tuple | None:
        """The question as searched, who asks (their principals: nothing is shared between
        readers of different documents) and the exact text of every source in the prompt: a
        changed document or a re-ranked context is a new key. A follow-up also by its words as
        typed (the subject check asks the cited sources for its names only)."""
        if self.settings.answer.cache_size <= 0:
            return None
        texts = hashlib.sha256("\x00".join(f"{h.chunk.id}\x01{h.prompt_text}" for h in context).encode()).hexdigest()
        return (" ".join(standalone.lower().split()), user.principals(), texts, getattr(self.generator, "model_id", ""),
                asked)

    def _write(self, run: Run, standalone: str, hits: Sequence[Hit], context: tuple[Hit, ...]):
        """Write, check and correct the answer from ``context`` (the prompt's sources)."""
        cfg = self.settings
        yield AnswerEvent("status", STATUS_WRITING)
        messages = build_messages(standalone, context)
        draft = yield from self.writer.write(self.generator, standalone, messages, context, run, first=True)
        best, corrected = draft, False
        threshold = cfg.answer.confidence_threshold
        log.info("answer_draft confidence=%.3f threshold=%.3f verification=%s kept=%d/%d",
                 draft.confidence, threshold, draft.verification.status, len(draft.verification.passed),
                 len(draft.verification.checks))
        if draft.confidence < threshold and cfg.answer.self_correction:
            yield AnswerEvent("discard")
            yield AnswerEvent("status", STATUS_DOUBLE_CHECKING)
            t = time.perf_counter()
            second = yield from self._correct(standalone, hits, draft, run)
            run.add("correction", time.perf_counter() - t)
            corrected = True
            log.info("answer_correction confidence_before=%.3f confidence_after=%.3f",
                     draft.confidence, second.confidence)
            best = second if second.confidence >= draft.confidence else draft
        scores = dict(best.features)
        scores["confidence_draft"] = round(draft.confidence, 4)
        if best.confidence >= threshold:
            off = self._off_subject(standalone, best, run)
            if off:
                log.info("answer route=abstained reason=off_subject terms=%d", len(off))
                scores["off_subject"] = float(len(off))
                cites = source_citations(best.hits, standalone)
                text = not_in_cited(off) + (f" {CLOSEST_NOTE}" if cites else "")
                return Answer(run.question, standalone, text, cites, 0.0, "abstained", corrected=corrected,
                              sources=best.hits, scores=scores, model_id=best.model_id)
            route: Route = "corrected" if corrected and best is not draft else "answered"
            return self._answer(run, standalone, best, route, corrected=corrected, scores=scores)
        if self.escalation is not None:
            yield AnswerEvent("discard")
            yield AnswerEvent("status", STATUS_ESCALATING)
            t = time.perf_counter()
            esc = yield from self.writer.write(self.escalation, standalone, build_messages(standalone, best.hits), best.hits, run)
            run.add("escalation", time.perf_counter() - t)
            scores = dict(esc.features, confidence_draft=round(draft.confidence, 4))
            log.info("answer_escalation model=%s confidence=%.3f", esc.model_id, esc.confidence)
            if esc.confidence >= threshold and esc.result.citations:
                return self._answer(run, standalone, esc, "escalated", corrected=corrected, escalated=True, scores=scores)
            return self._abstain(run, standalone, esc, corrected=corrected, escalated=True, scores=scores)
        return self._abstain(run, standalone, best, corrected=corrected, scores=scores)

    def _off_subject(self, question: str, att: Attempt, run: Run) -> list[str]:
        """Rare words, names and numbers of the question that no source the answer cites
        contains; rarity is over what the asker may read, so the outcome says nothing about
        documents they cannot."""
        return self.subject.off_subject(question, att.hits, {c.n for c in att.result.citations}, run.user,
                                        run.asked)

    def _retrieve(self, query: str, run: Run) -> list[Hit]:
        rcfg = self.settings.retrieval
        k = rcfg.top_k * (CANDIDATE_FACTOR if self.context_filter is not None else 1)
        t = time.perf_counter()
        hits = self.retriever.retrieve(query, user=run.user, top_k=k)
        hits = self._readable(hits, run.user)
        run.add("retrieve", time.perf_counter() - t)
        return hits

    def _readable(self, hits: Sequence[Hit], user: Principal) -> list[Hit]:
        """Defence in depth: drop any hit whose document ACL does not admit ``user``."""
        if self.acl_lookup is None:
            return list(hits)
        acls: dict[str, frozenset[str]] = {}
        out = []
        for h in hits:
            doc = h.chunk.doc_id
            if doc not in acls:
                try:
                    acls[doc] = frozenset(self.acl_lookup(doc))
                except Exception as e:  # unknown document: treat as unreadable
                    log.error("acl_lookup failed chunk_id=%s error=%r", h.chunk.id, type(e).__name__)
                    acls[doc] = frozenset()
            if user.can_read(acls[doc]):
                out.append(h)
            else:
                log.error("acl_violation dropped chunk_id=%s user=%s (the retriever returned an unreadable chunk)",
                          h.chunk.id, user.username)
        return out

    def _filter(self, query: str, hits: Sequence[Hit], run: Run) -> tuple[Hit, ...]:
        top_k = self.settings.retrieval.top_k
        if self.context_filter is None:
            return tuple(hits[:top_k])
        res = self.context_filter.filter(query, hits, top_k=top_k)
        run.add("filter", res.seconds)
        return res.hits

    def _correct(self, standalone: str, hits: Sequence[Hit], draft: Attempt, run: Run):
        """One targeted second try: a vacuous draft is asked for the facts; a draft with
        unsupported sentences gets them named; an abstention or an empty check retrieves again
        with a rewritten query."""
        v = draft.verification
        unsupported = unsupported_claims(v)
        if v.status in ("abstained", "empty") or (not v.passed and not unsupported and v.status != "vacuous"):
            query = rewrite_query(self.generator, standalone)
            more = self._retrieve(query, run) if query != standalone else []
        else:
            query, more = standalone, []
        seen = {h.chunk.id for h in hits}
        merged = list(hits) + [h for h in more if h.chunk.id not in seen]
        context = self._filter(standalone, merged, run) if more else draft.hits
        log.info("answer_correction kind=%s query_changed=%s new_hits=%d unsupported=%d", v.status,
                 query != standalone, len(merged) - len(hits), len(unsupported))
        messages = build_correction_messages(standalone, context, unsupported, vacuous=v.status == "vacuous")
        return (yield from self.writer.write(self.generator, standalone, messages, context, run))

    # --- outcomes ----------------------------------------------------------------------
    def _answer(self, run: Run, standalone: str, att: Attempt, route: Route, *, corrected: bool,
                escalated: bool = False, scores: dict[str, float]) -> Answer:
        if is_abstention(att.text) or not att.result.sentences:  # nothing stated: list the sources
            return self._abstain(run, standalone, att, corrected=corrected, escalated=escalated, scores=scores)
        cited = {c.n for c in att.result.citations}
        others = tuple(c for c in source_citations(att.hits, standalone) if c.n not in cited)
        text, citations, others = renumber(att.text, att.result.citations, others)
        return Answer(run.question, standalone, text, citations, att.confidence, route,
                      corrected=corrected, escalated=escalated, sources=att.hits, scores=scores, model_id=att.model_id,
                      other_sources=others)

    def _abstain(self, run: Run, standalone: str, att: Attempt, *, corrected: bool, escalated: bool = False,
                 scores: dict[str, float]) -> Answer:
        cites = source_citations(att.hits, standalone)
        text = f"{ABSTAIN_TEXT} {CLOSEST_NOTE}" if cites else ABSTAIN_TEXT
        return Answer(run.question, standalone, text, cites, att.confidence, "abstained", corrected=corrected,
                      escalated=escalated, sources=att.hits, scores=scores, model_id=att.model_id)

    def _record(self, answer: Answer, user: Principal) -> Answer:
        log.info(
            "answer route=%s confidence=%.3f corrected=%s escalated=%s sources=%s citations=%s model=%s timings=%s user=%s",
            answer.route, answer.confidence, answer.corrected, answer.escalated,
            ",".join(h.chunk.id for h in answer.sources), ",".join(str(c.n) for c in answer.citations),
            answer.model_id, ",".join(f"{k}:{v:.3f}" for k, v in answer.timings.items()), user.username,
        )
        if self.logstore is None:
            return answer
        try:
            return replace(answer, answer_id=self.logstore.record_answer(answer, user))
        except (sqlite3.Error, OSError) as e:  # the user still gets the answer
            log.error("answer_log write failed error=%r", e)
            return answer
