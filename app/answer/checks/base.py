"""The one small interface every answer check implements, and the records they fill in.

A *sentence gate* looks at one sentence of a draft answer and either lets it pass unchanged or
returns it failed, with the reason (and, for the fact gate, the source that really holds it):

    class SentenceGate(Protocol):
        name: str
        def check(self, c: SentenceCheck, ctx: CheckContext) -> SentenceCheck: ...

An *answer gate* looks at the sentences still standing together (an answer can fail as a whole:
no sentence states the fee that was asked for):

    class AnswerGate(Protocol):
        name: str
        def check(self, checks: list[SentenceCheck], ctx: CheckContext) -> list[SentenceCheck]: ...

Gates are hard, not blended: a sentence that fails one is removed. The verifier
(:mod:`.verifier`) runs the gates cheapest first and stops at a sentence's first failure.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Literal, Protocol, Sequence

from kb_chatbot.app.answer.citations import AnswerSentence
from kb_chatbot.app.answer.facts import SourceFacts
from kb_chatbot.core.types import Hit, Message


@dataclass(frozen=True)
class SentenceCheck:
    sentence: AnswerSentence
    #: Source numbers the sentence is checked against (its own citations, or the one found
    #: to hold its facts when it cited none).
    sources: tuple[int, ...]
    missing: tuple = ()
    vacuous: bool = False
    #: P(yes) of the entailment check; None when it was not asked (an earlier check failed,
    #: or the mode is not "slm").
    support: float | None = None
    reason: str = ""
    #: True when the sentence's own marker named a source without its facts and ``sources``
    #: is the one found to hold them (the shown answer carries the corrected marker).
    recited: bool = False
    #: The gate that failed it ("" while it passes).
    gate: str = ""
    #: Its code (commands, blocks, keys) is verbatim in its source: no yes/no check needed.
    verbatim: bool = False

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
    #: P(yes) of the answers-the-question check on what passed (None when it did not run).
    answers_p: float | None = None

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


@dataclass
class CheckContext:
    """What a gate may look at: the question, the numbered sources, and the prompt that produced
    the answer (the support gate continues that conversation to reuse the model's KV cache)."""

    question: str
    hits: Sequence[Hit]
    messages: Sequence[Message] = ()
    _sources: list[SourceFacts] | None = None
    _asked: SourceFacts | None = None

    @property
    def sources(self) -> list[SourceFacts]:
        """The facts of each source (text and title), numbered from 0, built once."""
        if self._sources is None:
            self._sources = [SourceFacts(h.prompt_text + "\n" + h.doc_title) for h in self.hits]
        return self._sources

    @property
    def asked(self) -> SourceFacts:
        """The facts of the question itself."""
        if self._asked is None:
            self._asked = SourceFacts(self.question)
        return self._asked


class SentenceGate(Protocol):
    name: str

    def check(self, c: SentenceCheck, ctx: CheckContext) -> SentenceCheck: ...


class AnswerGate(Protocol):
    name: str

    def check(self, checks: list[SentenceCheck], ctx: CheckContext) -> list[SentenceCheck]: ...


def failed(c: SentenceCheck, gate: str, reason: str, **changes) -> SentenceCheck:
    """``c`` failed by ``gate`` for ``reason``."""
    return replace(c, reason=reason, gate=gate, **changes)


def with_marker(text: str, *numbers: int) -> str:
    """``text`` with ``[n]`` (``[1][2]`` for several) before its final punctuation."""
    marks = "".join(f"[{n}]" for n in numbers)
    m = re.search(r"([.!?]+[\"')\]]*)\s*$", text)
    if m:
        return f"{text[:m.start()].rstrip()} {marks}{m.group(1)}"
    return f"{text.rstrip()} {marks}"


def joined(passed: Sequence[SentenceCheck]) -> str:
    """The answer made of the sentences that passed, each with the marker of its source."""
    return " ".join(c.sentence.text if c.sentence.cited and not c.recited
                    else with_marker(c.sentence.claim, *c.sources) for c in passed)
