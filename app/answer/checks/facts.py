"""Facts: every specific fact of a sentence (money, percentages, dates, numbers, names,
identifiers, quoted strings: :mod:`kb_chatbot.app.answer.facts`) must occur, after
normalisation, in a source the sentence cites.

A fact restated from the question only needs some source. An uncited sentence may use any
source: the one that holds its facts becomes its citation, and so does it for a sentence whose
marker names a source without them (a wrong marker is not a wrong fact: the small model often
cites [2] for what [1] says). A sentence whose cited source holds some of its facts and one
other source the rest cites both (it joins two passages, as answers from several pages do)."""
from __future__ import annotations

from dataclasses import replace
from typing import Sequence

from kb_chatbot.app.answer.checks.base import CheckContext, SentenceCheck, failed
from kb_chatbot.app.answer.facts import Fact, SourceFacts, extract_facts
from kb_chatbot.core.text import content_words, overlap
from kb_chatbot.core.types import Hit


class FactsGate:
    name = "facts"

    def check(self, c: SentenceCheck, ctx: CheckContext) -> SentenceCheck:
        s, prepared, hits = c.sentence, ctx.sources, ctx.hits
        # a fact restated from the question ("for a 5-day week, ... 32 hours") is the asker's,
        # not a claim of the answer, when some source states it too (the premise holds); an
        # asked-about fact that no source has ("the Gold plan") is still a missing fact, and the
        # entailment check still reads the whole sentence
        facts = [f for f in extract_facts(s.claim)
                 if not (ctx.asked.has(f) and any(p.has(f) for p in prepared))]
        numbers = c.sources if c.recited else s.cited  # an earlier gate may have re-cited it
        if numbers:
            cited = [prepared[n - 1] for n in numbers]
            missing = tuple(f for f in facts if not any(p.has(f) for p in cited))
            if not missing:
                return c
            other = holder(s.claim, facts, prepared, hits, exclude=numbers)
            if other is not None:
                return replace(c, sources=(other,), recited=True)
            # the rest of its facts in one more source: the sentence joins two sources and cites
            # both ("install the AcmeTunnel app, as the New Joiner Onboarding page says [1]":
            # the app's name is on the VPN page, [2])
            rest = holder(s.claim, missing, prepared, hits, exclude=numbers)
            if rest is not None:
                return replace(c, sources=(*numbers, rest), recited=True)
            return failed(c, self.name, "not in the cited source: " + ", ".join(f.text for f in missing),
                          missing=missing)
        # uncited: the source that holds all its facts and shares the most words becomes its citation
        holders = [i for i, p in enumerate(prepared) if all(p.has(f) for f in facts)]
        if not holders:
            missing = tuple(f for f in facts if not any(p.has(f) for p in prepared))
            return failed(c, self.name, "uncited, and no source states: " + ", ".join(f.text for f in missing),
                          missing=missing, sources=())
        best = max(holders, key=lambda i: overlap(s.claim, hits[i].prompt_text))
        if overlap(s.claim, hits[best].prompt_text) <= 0:
            return failed(c, self.name, "uncited, and no source is about it", sources=())
        return replace(c, sources=(best + 1,))


def holder(claim: str, facts: Sequence[Fact], prepared: list[SourceFacts], hits: Sequence[Hit],
           exclude: Sequence[int] = ()) -> int | None:
    """The source number (from 1) outside ``exclude`` that holds every fact of ``claim`` and
    shares the most words with it; None when there is none, or the sentence has no fact to
    place it by."""
    if not facts:
        return None
    words = {w for w in content_words(claim) if w.isalpha()}  # about the same thing, not just the number
    holders = [i for i, p in enumerate(prepared)
               if i + 1 not in exclude and all(p.has(f) for f in facts)
               and words & content_words(hits[i].prompt_text)]
    if not holders:
        return None
    return max(holders, key=lambda i: overlap(claim, hits[i].prompt_text)) + 1
