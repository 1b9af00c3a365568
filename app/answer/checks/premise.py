"""The premise check: does any readable source mention what the question is about?

Before any generation, the salient terms of the question (names, identifiers, quoted strings,
money, percentages, dates and other numbers: :func:`kb_chatbot.app.answer.facts.extract_facts`) are looked up
in the retrieved sources the asker may read. A term that none of them contains means the
knowledge base cannot answer as asked ("What is the deductible of the Gold plan?" when no
document mentions a Gold plan): the service says so plainly and spends no time generating.

Ordinary words are not salient: "vacation" may be written "time off". An acronym also counts
as present when the source spells it out ("PTO" and "paid time off").
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Sequence

from kb_chatbot.app.answer.facts import Fact, SourceFacts, extract_facts, phrase_tokens
from kb_chatbot.core.text import FILLER_WORDS
from kb_chatbot.core.types import Hit

#: Question words that are capitalised but never the subject of the question.
_IGNORED = frozenset({"i", "ok", "faq", "q", "a"})


@dataclass(frozen=True)
class MissingTerm:
    fact: Fact
    #: How the reply names it: the term plus the noun after it ("Gold plan").
    label: str


def salient_terms(question: str) -> list[tuple[Fact, str]]:
    """(fact, label) for every salient term of ``question``."""
    out = []
    for f in extract_facts(question):
        if f.kind == "name" and str(f.value) in _IGNORED:
            continue
        out.append((f, _label(question, f)))
    return out


def _label(question: str, f: Fact) -> str:
    i = question.find(f.text)
    if i < 0 or f.kind not in ("name",):
        return f.text
    after = re.match(r"\s+([a-z][a-z-]{2,})\b", question[i + len(f.text):])
    if after and after.group(1) not in FILLER_WORDS:
        return f"{f.text} {after.group(1)}"
    return f.text


def spelled_out(acronym: str, source: SourceFacts) -> bool:
    """'PTO' is in a source that says 'paid time off' (initials of consecutive words)."""
    letters = acronym.lower()
    if not (2 <= len(letters) <= 6) or not letters.isalpha():
        return False
    toks = phrase_tokens(source.text)
    initials = "".join(t[0] for t in toks)
    return letters in initials


def missing_terms(question: str, hits: Sequence[Hit]) -> list[MissingTerm]:
    """Salient terms of ``question`` that no hit (text or title) contains."""
    terms = salient_terms(question)
    if not terms or not hits:
        return []
    sources = [SourceFacts(f"{h.doc_title}\n{h.chunk.text}") for h in hits]
    out = []
    for fact, label in terms:
        if any(s.has(fact) for s in sources):
            continue
        if fact.kind == "name" and fact.text.isupper() and any(spelled_out(fact.text, s) for s in sources):
            continue
        out.append(MissingTerm(fact, label))
    return out


def nothing_about(missing: Sequence[MissingTerm]) -> str:
    """The plain reply naming the missing terms."""
    names = [f"'{m.label}'" for m in missing]
    listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]
    return f"The knowledge base has nothing about {listed}, so it cannot answer this question."
