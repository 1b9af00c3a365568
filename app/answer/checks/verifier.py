"""The verifier: the sentence gates, cheapest first, then the answer gates, over a draft.

Each sentence of a draft goes through the sentence gates in order (vacuity, code, facts, then in
mode "slm" the model's support check, which code copied verbatim skips) and stops at its first failure; then the answer gates look at
what is left together (the kind of fact asked for, then, when ``answers_check`` is on, whether
it answers the question asked at all). Hard gates, not a blend: a sentence that
fails any gate is removed. What is left is the answer; nothing left means the caller abstains
(or regenerates once, for a vacuous draft).

While an answer streams, :meth:`Verifier.check_sentence` checks each sentence as it is
completed; the check is remembered, so :meth:`Verifier.verify` of the whole answer does not ask
the model again.
"""
from __future__ import annotations

import logging
import time
from typing import Literal, Sequence

from kb_chatbot.app.answer.checks.answers_question import ANSWERS_MIN, AnswersQuestionGate
from kb_chatbot.app.answer.checks.asked_kind import AskedKindGate, asked_kind, states_kind
from kb_chatbot.app.answer.checks.base import (AnswerGate, CheckContext, SentenceCheck, SentenceGate, Verification,
                                               joined)
from kb_chatbot.app.answer.checks.code import CodeGate
from kb_chatbot.app.answer.checks.facts import FactsGate
from kb_chatbot.app.answer.checks.support import SUPPORT_MIN, SupportGate
from kb_chatbot.app.answer.checks.vacuity import VacuityGate
from kb_chatbot.app.answer.citations import AnswerSentence, extract_citations, strip_markers
from kb_chatbot.app.answer.prompts import is_abstention
from kb_chatbot.core.protocols import Generator
from kb_chatbot.core.types import Hit, Message

log = logging.getLogger(__name__)

CheckMode = Literal["slm", "facts", "off"]


class Verifier:
    """Checks answers against their sources (see the module docstring)."""

    def __init__(self, generator: Generator | None, *, mode: CheckMode = "slm", support_min: float = SUPPORT_MIN,
                 answers_check: bool = False, answers_min: float = ANSWERS_MIN):
        if mode == "slm" and generator is None:
            raise ValueError("the slm check needs a generator")
        self.generator = generator
        self.mode = mode
        #: the gates whose verdict needs no model, then the one that asks it
        self.text_gates: list[SentenceGate] = [VacuityGate(), CodeGate(), FactsGate()]
        self.model_gates: list[SentenceGate] = [SupportGate(generator, support_min)] if mode == "slm" else []
        self.answer_gates: list[AnswerGate] = [AskedKindGate()]
        #: the answer gate that asks the model, last: whether what is left answers the question
        self.answers_gate = AnswersQuestionGate(generator, answers_min) if mode == "slm" and answers_check else None
        #: Sentences already checked (by their text with markers), so a sentence checked while
        #: the answer streamed is not checked again when the whole answer is verified.
        self._done: dict[str, SentenceCheck] = {}
        self._ctx: CheckContext | None = None

    def _context(self, question: str, hits: Sequence[Hit], messages: Sequence[Message]) -> CheckContext:
        key = (question, tuple(h.chunk.id for h in hits), tuple(messages))
        if self._ctx is None or (self._ctx.question, tuple(h.chunk.id for h in self._ctx.hits),
                                 tuple(self._ctx.messages)) != key:
            self._ctx = CheckContext(question, hits, messages)
        return self._ctx

    @staticmethod
    def _run(gates: Sequence[SentenceGate], c: SentenceCheck, ctx: CheckContext) -> SentenceCheck:
        for gate in gates:
            if not c.passed:
                break
            c = gate.check(c, ctx)
        return c

    def check_sentence(self, s: AnswerSentence, hits: Sequence[Hit], *, question: str,
                       messages: Sequence[Message] = ()) -> SentenceCheck:
        """Every sentence gate, for one sentence of an answer that is still being written;
        remembered, so :meth:`verify` of the whole answer does not repeat it."""
        if s.text not in self._done:
            ctx = self._context(question, hits, messages)
            done = self._done[s.text] = self._run(self.text_gates + self.model_gates, SentenceCheck(s, s.cited), ctx)
            self._done.setdefault(done.sentence.text, done)  # a gate may trim it (vacuity): checked all the same
        return self._done[s.text]

    def passed_so_far(self, sentences: Sequence[AnswerSentence]) -> list[SentenceCheck]:
        """The checks of ``sentences`` already checked that passed, in order."""
        return [self._done[s.text] for s in sentences if s.text in self._done and self._done[s.text].passed]

    def shown_so_far(self, sentences: Sequence[AnswerSentence], question: str) -> str:
        """The checked ``sentences`` that passed, as they may be shown while the answer is still
        being written: nothing until one of them states the kind of fact the question asks for
        (a fee, a number, a time), since the whole answer fails without one."""
        passed = self.passed_so_far(sentences)
        kind = asked_kind(question)
        if kind is not None and not any(states_kind(c.sentence.claim, kind) for c in passed):
            return ""
        text = joined(passed)
        # nor until what passed answers the question asked (a supported sentence about a
        # neighbouring subject would be shown, then withdrawn by the whole-answer check)
        if text and self.answers_gate is not None and self._ctx is not None and \
                self.answers_gate.probability(text, self._ctx) < self.answers_gate.answers_min:
            return ""
        return text

    def verify(self, answer_text: str, hits: Sequence[Hit], *, question: str,
               messages: Sequence[Message] = ()) -> Verification:
        """Check every sentence of ``answer_text`` against ``hits`` (numbered from 1).

        ``messages`` is the prompt that produced the answer; the support check continues that
        conversation so the model's KV cache of it is reused.
        """
        t0 = time.perf_counter()
        if is_abstention(answer_text):
            return Verification((), answer_text, "abstained")
        result = extract_citations(answer_text, hits)
        if not result.sentences:
            return Verification((), "", "empty")
        if self.mode == "off":
            checks = tuple(SentenceCheck(s, s.cited) for s in result.sentences)
            return Verification(checks, result.text, "ok")
        ctx = self._context(question, hits, messages)
        checks = [self._done.get(s.text) or self._run(self.text_gates, SentenceCheck(s, s.cited), ctx)
                  for s in result.sentences]
        checks = self._answer_gates(checks, ctx)
        t_facts = time.perf_counter() - t0
        if self.model_gates:
            checks = [self._run(self.model_gates, c, ctx) if c.passed and c.sentence.text not in self._done else c
                      for c in checks]
            checks = self._answer_gates(checks, ctx)  # the sentence with the number may have failed
        if self.answers_gate is not None:
            self.answers_gate.last = None
            checks = self.answers_gate.check(checks, ctx)
        passed = [c for c in checks if c.passed]
        if passed:
            status = "ok" if len(passed) == len(checks) else "partial"
        elif all(c.vacuous for c in checks):
            status = "vacuous"
        else:
            status = "none"
        for c in checks:
            if c.recited and c.passed:
                log.info("verify moved citation from=%s to=%s", ",".join(map(str, c.sentence.cited)), c.sources[0])
            if not c.passed:
                log.info("verify removed sentence gate=%s reason=%s support=%s sources=%s", c.gate, c.reason,
                         "-" if c.support is None else f"{c.support:.2f}", ",".join(map(str, c.sources)))
        seconds = {"facts": round(t_facts, 4), "entailment": round(time.perf_counter() - t0 - t_facts, 4)}
        answers_p = self.answers_gate.last if self.answers_gate is not None else None
        return Verification(tuple(checks), joined(passed), status, seconds, answers_p)

    def _answer_gates(self, checks: list[SentenceCheck], ctx: CheckContext) -> list[SentenceCheck]:
        for gate in self.answer_gates:
            checks = gate.check(checks, ctx)
        return checks


def unsupported_claims(v: Verification) -> list[str]:
    """The removed sentences, without markers (named in the correction prompt)."""
    return [strip_markers(c.sentence.text) for c in v.failed if not c.vacuous]
