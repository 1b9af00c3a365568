"""Verification of an answer, sentence by sentence, before anything is shown.

Each sentence of a draft answer goes through three checks, cheapest first:

1. **Pointer-only**: a sentence that only points at a source ("the exempt services include
   those listed in [5]") says nothing the question did not: it is *vacuous*.
2. **Facts**: every specific fact of the sentence (money, percentages, dates, numbers, names,
   identifiers, quoted strings: :mod:`kb_chatbot.app.answer.facts`) must occur, after normalisation, in a
   source the sentence cites (a fact restated from the question only in some source). An
   uncited sentence may use any source; the one that holds its facts becomes its citation, and
   so does it for a sentence whose marker names a source without them (a wrong marker is not a
   wrong fact).
3. **Entailment**: what remains is put to the answer model as a yes/no question, as a
   continuation of the answer conversation itself (sources, question, the model's answer,
   then "does source [n] state this claim?"). llama.cpp reuses the KV cache of the common
   prefix, so a check costs the answer's and the claim's tokens, not a re-read of the sources.

Then the answer as a whole: a question that asks for a fee, a number or a time ("What fee is
charged…", "How many days…", "When…") is not answered by sentences that state none (the 1.5B
model answered a fee question with "30-60 minutes after booking", every word of it in a
source); they fail as vacuous.

Hard gates, not a blend: a sentence that fails any check is removed. What is left is the
answer; nothing left means the caller abstains (or regenerates once, for a vacuous draft).
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass, field, replace
from typing import Literal, Sequence

from kb_chatbot.app.answer.citations import AnswerSentence, extract_citations, strip_markers
from kb_chatbot.app.answer.facts import Fact, SourceFacts, asked_kind, extract_facts, states_kind
from kb_chatbot.app.answer.prompts import build_check_messages, build_support_messages, is_abstention
from kb_chatbot.core.protocols import Generator
from kb_chatbot.core.text import content_words, overlap
from kb_chatbot.core.types import Hit, Message

log = logging.getLogger(__name__)

CheckMode = Literal["slm", "facts", "off"]

#: P(yes) below this fails the entailment check. The 1.5B model gives ~0.9 to claims its
#: source states and ~0.1 to those it does not (STACK.md); 0.5 is the natural cut.
SUPPORT_MIN = 0.5
#: Words that only point at a source or describe the act of answering, not the answer.
POINTER_WORDS = frozenset(
    """list listed listing include included includes including mention mentioned mentions
    describe described describes detail detailed details see refer referred refers source sources
    document documents documented information info outline outlined outlines provide provided
    provides specify specified specifies find found section page pages found available accord
    according state stated states explain explained explains cover covered covers contain
    contained contains relevant related regarding follow following read check specific first
    second third fourth fifth last above below previous earlier latter former question answer
    answers answered""".split()
)


@dataclass(frozen=True)
class SentenceCheck:
    sentence: AnswerSentence
    #: Source numbers the sentence is checked against (its own citations, or the one found
    #: to hold its facts when it cited none).
    sources: tuple[int, ...]
    missing: tuple[Fact, ...] = ()
    vacuous: bool = False
    #: P(yes) of the entailment check; None when it was not asked (an earlier check failed,
    #: or the mode is not "slm").
    support: float | None = None
    reason: str = ""
    #: True when the sentence's own marker named a source without its facts and ``sources``
    #: is the one found to hold them (the shown answer carries the corrected marker).
    recited: bool = False

    @property
    def passed(self) -> bool:
        return not self.reason


@dataclass(frozen=True)
class Verification:
    checks: tuple[SentenceCheck, ...]
    #: The answer made of the sentences that passed, with their citation markers.
    text: str
    status: Literal["ok", "partial", "none", "vacuous", "abstained", "empty"]
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def passed(self) -> list[SentenceCheck]:
        return [c for c in self.checks if c.passed]

    @property
    def failed(self) -> list[SentenceCheck]:
        return [c for c in self.checks if not c.passed]

    @property
    def support(self) -> list[float]:
        """Support of each passed sentence (1.0 where no entailment check ran)."""
        return [1.0 if c.support is None else c.support for c in self.passed]


def is_vacuous(claim: str, question: str) -> bool:
    """True when ``claim`` adds no fact and no content word beyond the question and pointers.
    A yes or a no answers a yes/no question even when the rest restates it."""
    if extract_facts(claim) or re.match(r"\W*(?:yes|no)\b", claim, re.IGNORECASE):
        return False
    new = content_words(claim) - content_words(question)
    new = {w for w in new if w not in POINTER_WORDS and w.rstrip("s") not in POINTER_WORDS}
    return len(new) == 0


def _with_marker(text: str, n: int) -> str:
    """``text`` with ``[n]`` before its final punctuation."""
    m = re.search(r"([.!?]+[\"')\]]*)\s*$", text)
    if m:
        return f"{text[:m.start()].rstrip()} [{n}]{m.group(1)}"
    return f"{text.rstrip()} [{n}]"


class Verifier:
    """Checks answers against their sources (see the module docstring)."""

    def __init__(self, generator: Generator | None, *, mode: CheckMode = "slm", support_min: float = SUPPORT_MIN):
        if mode == "slm" and generator is None:
            raise ValueError("the slm check needs a generator")
        self.generator = generator
        self.mode = mode
        self.support_min = support_min
        #: Sentences already checked (by their text with markers), so a sentence checked while
        #: the answer streamed is not checked again when the whole answer is verified.
        self._done: dict[str, SentenceCheck] = {}
        self._prepared: tuple[tuple[str, ...], list[SourceFacts]] | None = None

    def _sources(self, hits: Sequence[Hit]) -> list[SourceFacts]:
        key = tuple(h.chunk.id for h in hits)
        if self._prepared is None or self._prepared[0] != key:
            self._prepared = (key, [SourceFacts(h.prompt_text + "\n" + h.doc_title) for h in hits])
        return self._prepared[1]

    def check_sentence(self, s: AnswerSentence, hits: Sequence[Hit], *, question: str,
                       messages: Sequence[Message] = ()) -> SentenceCheck:
        """Facts, then (mode "slm") entailment, for one sentence of an answer that is still being
        written; remembered, so :meth:`verify` of the whole answer does not repeat it."""
        if s.text not in self._done:
            c = self._facts(s, self._sources(hits), hits, question, SourceFacts(question))
            if self.mode == "slm" and c.passed:
                c = self._entailment(c, hits, messages)
            self._done[s.text] = c
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
        return _joined(passed)

    def verify(self, answer_text: str, hits: Sequence[Hit], *, question: str,
               messages: Sequence[Message] = ()) -> Verification:
        """Check every sentence of ``answer_text`` against ``hits`` (numbered from 1).

        ``messages`` is the prompt that produced the answer; the entailment check continues
        that conversation so the model's KV cache of it is reused.
        """
        import time

        t0 = time.perf_counter()
        if is_abstention(answer_text):
            return Verification((), answer_text, "abstained")
        result = extract_citations(answer_text, hits)
        if not result.sentences:
            return Verification((), "", "empty")
        if self.mode == "off":
            checks = tuple(SentenceCheck(s, s.cited) for s in result.sentences)
            return Verification(checks, result.text, "ok")
        prepared = self._sources(hits)
        asked = SourceFacts(question)
        checks: list[SentenceCheck] = []
        for s in result.sentences:
            checks.append(self._done.get(s.text) or self._facts(s, prepared, hits, question, asked))
        checks = _answers_the_kind_asked(checks, question)
        t_facts = time.perf_counter() - t0
        if self.mode == "slm":
            checks = [self._entailment(c, hits, messages) if c.passed and c.sentence.text not in self._done else c
                      for c in checks]
            checks = _answers_the_kind_asked(checks, question)  # the sentence with the number may have failed
        passed = [c for c in checks if c.passed]
        text = _joined(passed)
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
                log.info("verify removed sentence reason=%s support=%s sources=%s", c.reason,
                         "-" if c.support is None else f"{c.support:.2f}", ",".join(map(str, c.sources)))
        seconds = {"facts": round(t_facts, 4), "entailment": round(time.perf_counter() - t0 - t_facts, 4)}
        return Verification(tuple(checks), text, status, seconds)

    # --- the checks --------------------------------------------------------------------
    def _facts(self, s: AnswerSentence, prepared: list[SourceFacts], hits: Sequence[Hit],
               question: str, asked: SourceFacts) -> SentenceCheck:
        if is_abstention(s.claim):
            return SentenceCheck(s, s.cited, reason="abstention inside an answer")
        if is_vacuous(s.claim, question):
            return SentenceCheck(s, s.cited, vacuous=True, reason="points at a source without stating anything")
        # a fact restated from the question ("for a 5-day week, ... 32 hours") is the asker's,
        # not a claim of the answer, when some source states it too (the premise holds); an
        # asked-about fact that no source has ("the Gold plan") is still a missing fact, and the
        # entailment check still reads the whole sentence
        facts = [f for f in extract_facts(s.claim)
                 if not (asked.has(f) and any(p.has(f) for p in prepared))]
        if s.cited:
            cited = [prepared[n - 1] for n in s.cited]
            missing = tuple(f for f in facts if not any(p.has(f) for p in cited))
            if not missing:
                return SentenceCheck(s, s.cited)
            # a wrong marker is not a wrong fact: the small model often cites [2] for what [1]
            # says. Another source that holds every fact (and shares words with the sentence)
            # becomes its citation, and the entailment check reads that source.
            other = self._holder(s, facts, prepared, hits, exclude=s.cited)
            if other is not None:
                return SentenceCheck(s, (other,), recited=True)
            return SentenceCheck(s, s.cited, missing=missing,
                                 reason="not in the cited source: " + ", ".join(f.text for f in missing))
        # uncited: the source that holds all its facts and shares the most words becomes its citation
        holders = [i for i, p in enumerate(prepared) if all(p.has(f) for f in facts)]
        if not holders:
            missing = tuple(f for f in facts if not any(p.has(f) for p in prepared))
            return SentenceCheck(s, (), missing=missing,
                                 reason="uncited, and no source states: " + ", ".join(f.text for f in missing))
        best = max(holders, key=lambda i: overlap(s.claim, hits[i].prompt_text))
        if overlap(s.claim, hits[best].prompt_text) <= 0:
            return SentenceCheck(s, (), reason="uncited, and no source is about it")
        return SentenceCheck(s, (best + 1,))

    @staticmethod
    def _holder(s: AnswerSentence, facts: Sequence[Fact], prepared: list[SourceFacts], hits: Sequence[Hit],
                exclude: Sequence[int] = ()) -> int | None:
        """The source number (from 1) outside ``exclude`` that holds every fact of ``s`` and
        shares the most words with it; None when there is none, or the sentence has no fact to
        place it by."""
        if not facts:
            return None
        words = {w for w in content_words(s.claim) if w.isalpha()}  # about the same thing, not just the number
        holders = [i for i, p in enumerate(prepared)
                   if i + 1 not in exclude and all(p.has(f) for f in facts)
                   and words & content_words(hits[i].prompt_text)]
        if not holders:
            return None
        return max(holders, key=lambda i: overlap(s.claim, hits[i].prompt_text)) + 1

    def _entailment(self, c: SentenceCheck, hits: Sequence[Hit], messages: Sequence[Message]) -> SentenceCheck:
        assert self.generator is not None
        claim = c.sentence.claim
        if messages:
            check = build_check_messages(messages, claim, c.sources)
        else:
            evidence = "\n".join(hits[n - 1].prompt_text for n in c.sources)
            check = build_support_messages(claim, evidence)
        p = float(self.generator.yes_probability(check))
        if p < self.support_min:
            return replace(c, support=p, reason=f"the model does not find it in source {', '.join(map(str, c.sources))}")
        return replace(c, support=p)


def _joined(passed: Sequence[SentenceCheck]) -> str:
    """The answer made of the sentences that passed, each with the marker of its source."""
    return " ".join(c.sentence.text if c.sentence.cited and not c.recited
                    else _with_marker(c.sentence.claim, c.sources[0]) for c in passed)


def _answers_the_kind_asked(checks: list[SentenceCheck], question: str) -> list[SentenceCheck]:
    """A question that asks for a fee, a number or a time ("What fee is charged…", "How many
    days…", "When…") is not answered by sentences that state none ("The fee … is 30-60 minutes after booking"
    states a time): when no sentence still standing states that kind of fact, they all fail as
    vacuous (the answer is regenerated once, then abstains)."""
    kind = asked_kind(question)
    standing = [c for c in checks if c.passed]
    if kind is None or not standing or any(states_kind(c.sentence.claim, kind) for c in standing):
        return checks
    what = {"money": "an amount of money", "quantity": "a number", "time": "a time or a date"}[kind]
    return [replace(c, vacuous=True, reason=f"the question asks for {what}; the answer states none") if c.passed else c
            for c in checks]


def unsupported_claims(v: Verification) -> list[str]:
    """The removed sentences, without markers (named in the correction prompt)."""
    return [strip_markers(c.sentence.text) for c in v.failed if not c.vacuous]
