"""Vacuity: a sentence that only points at a source ("the exempt services include those listed
in [5]") says nothing the question did not. Cheapest gate, first."""
from __future__ import annotations

import re
from dataclasses import replace

from kb_chatbot.app.answer.checks.base import CheckContext, SentenceCheck, failed, with_marker
from kb_chatbot.app.answer.citations import AnswerSentence
from kb_chatbot.app.answer.facts import SourceFacts, extract_facts
from kb_chatbot.app.answer.prompts import is_abstention
from kb_chatbot.core.text import content_words

#: Words that only point at a source or describe the act of answering, not the answer.
POINTER_WORDS = frozenset(
    """list listed listing include included includes including mention mentioned mentions
    describe described describes detail detailed details see refer referred refers source sources
    document documents documented information info outline outlined outlines provide provided
    provides specify specified specifies find found section page pages found available accord
    according state stated states explain explained explains cover covered covers contain
    contained contains relevant related regarding follow following read check specific first
    second third fourth fifth last above below previous earlier latter former question answer
    answers answered instruction instructions step steps guide guides guidance procedure procedures
    documentation doc docs need needs""".split()
)


def is_vacuous(claim: str, question: str, names: str = "") -> bool:
    """True when ``claim`` adds no fact and no content word beyond the question, pointers and
    the ``names`` of the sources ("follow the instructions in the VPN and Remote Access
    document" names a page, it says nothing). A yes or a no answers a yes/no question even when
    the rest restates it."""
    if re.match(r"\W*(?:yes|no)\b", claim, re.IGNORECASE):
        return False
    known = SourceFacts(f"{question}\n{names}")  # a name of the question or of a page is no news
    if any(not (f.kind == "name" and known.has(f)) for f in extract_facts(claim)):
        return False
    new = content_words(claim) - content_words(question) - content_words(names)
    new = {w for w in new if w not in POINTER_WORDS and w.rstrip("s") not in POINTER_WORDS}
    return len(new) == 0


class VacuityGate:
    """Fails an abstention inside an answer, and a sentence that states nothing new."""

    name = "vacuity"

    def check(self, c: SentenceCheck, ctx: CheckContext) -> SentenceCheck:
        if is_abstention(c.sentence.claim):
            return failed(c, self.name, "abstention inside an answer")
        titles = " ".join(f"{h.doc_title} {' '.join(h.chunk.heading_path)}" for h in ctx.hits)
        if is_vacuous(c.sentence.claim, ctx.question, titles):
            return failed(c, self.name, "points at a source without stating anything", vacuous=True)
        if announces_nothing(c.sentence.claim):
            kept = _without_announcement(c.sentence.claim, ctx.question, titles)
            if kept is None:
                return failed(c, self.name, "announces a command or list it does not show", vacuous=True)
            return replace(c, sentence=AnswerSentence(with_marker(kept, *c.sentence.cited) if c.sentence.cited
                                                      else kept, kept, c.sentence.cited))
        return c


#: The closing words of a sentence that announce what it does not go on to show: "… for the
#: following:", "… as follows:", "…, use the following command:", "… listed below:".
ANNOUNCEMENT = re.compile(
    r"(?:\s*,)?(?:\s+(?:for|in|on|with|as|to|by|of|from|under|using|include|includes|including|are|is|use|run|"
    r"see|listed|described|shown))?\s+(?:the\s+following(?:\s+[a-z]+){0,2}|as\s+follows|below|these(?:\s+[a-z]+)?)"
    r"\s*:[\s.]*$",
    re.IGNORECASE,
)


def announces_nothing(claim: str) -> bool:
    """'To download the packages, use the following command:' with no command after it (also
    when a full stop follows the colon, as the citation marker leaves it: 'for the following:.')."""
    return claim.rstrip().rstrip(".").rstrip().endswith(":") and "`" not in claim


def _without_announcement(claim: str, question: str, names: str) -> str | None:
    """The sentence without its dangling announcement, when what is left states a fact (a number,
    a name, a date) and more than the question ("You can request up to 12 weeks of unpaid leave
    per 12 month period for the following:" → "… per 12 month period."); None when nothing would
    be left but a fragment or a restatement."""
    m = ANNOUNCEMENT.search(claim)
    if m is None:
        return None
    kept = claim[: m.start()].rstrip(" ,;")
    if not extract_facts(kept) or is_vacuous(kept, question, names):
        return None
    return kept + "."
