"""A verdict per answer from checks that look at facts, not at how on-topic the words are.

Rules (docs/EVAL.md "Verdicts"), for an answer to a question with a reference answer:

- **abstained**: the answer says the knowledge base does not answer. Right for an
  unanswerable question, a false abstention for an answerable one.
- **vacuous**: every sentence only points at a source ("those listed in [5]") or restates
  the question: nothing to act on. Counted as shown-and-wrong.
- **wrong**: for an unanswerable question, any answer shown. For an answerable one:
  the yes/no polarity of the reference is flipped ("Yes, the plan covers full costs." where
  the reference says it may not), a key fact of the reference is contradicted (the answer
  states a different amount, percentage or date of the same kind, or a different number of
  the same unit, and not the reference's), or too few of the reference's key facts are there.
- **correct**: none of the above, and the answer states the reference's key facts (money,
  percentages, dates, numbers with units, names: :mod:`kb_chatbot.app.answer.facts`): all of them when the
  reference has up to three, half when it has more (long references list many names). A
  reference with no key fact needs half of its content words in the answer.

Similarity and token F1 stay as secondary columns: they reward being on topic, not right.
"""
from __future__ import annotations

import hashlib
import math
import re
from dataclasses import dataclass
from typing import Literal, Sequence

from kb_chatbot.app.answer.citations import strip_markers
from kb_chatbot.app.answer.facts import Fact, SourceFacts, extract_facts, same_fact
from kb_chatbot.app.answer.prompts import is_abstention
from kb_chatbot.app.answer.checks.vacuity import is_vacuous
from kb_chatbot.core.text import content_words, split_sentences

Verdict = Literal["correct", "wrong", "vacuous", "abstained"]
VERDICTS: tuple[Verdict, ...] = ("correct", "wrong", "vacuous", "abstained")
#: Share of a reference's content words an answer needs when the reference has no key fact.
CONTENT_RECALL = 0.5

_NEGATION = re.compile(
    r"\b(?:no|not|never|none|cannot|can't|won't|isn't|aren't|doesn't|don't|didn't|wasn't|weren't|"
    r"shouldn't|mustn't|without|neither|nor|unable|may not)\b", re.IGNORECASE)


@dataclass(frozen=True)
class Judgement:
    verdict: Verdict
    reason: str
    key_facts: int = 0
    facts_found: int = 0


def polarity(text: str) -> bool | None:
    """True for an answer that starts with yes, False for no, None when it starts with neither."""
    m = re.match(r"\W*(yes|no)\b", text.strip(), re.IGNORECASE)
    if not m:
        return None
    return m.group(1).lower() == "yes"


def _negated(text: str) -> bool:
    return bool(_NEGATION.search(text))


def _numeric_kind(f: Fact) -> str | None:
    if f.kind in ("money", "percent", "date"):
        return f.kind
    if f.kind == "number" and f.unit:
        return f"number:{f.unit}"
    return None


def judge(question_answerable: bool, reference: str, answer: str, question: str = "") -> Judgement:
    """The verdict of ``answer`` to ``question`` against ``reference`` (see the module docstring)."""
    text = strip_markers(answer or "").strip()
    if not text or is_abstention(text):
        return Judgement("abstained", "the answer abstains")
    # a yes or a no answers a yes/no question even when the rest restates it
    if polarity(text) is None and all(is_vacuous(s, question) for s in (split_sentences(text) or [text])):
        return Judgement("vacuous", "the answer only points at a source or restates the question")
    if not question_answerable:
        return Judgement("wrong", "the knowledge base does not answer this question, yet an answer was shown")
    ref = strip_markers(reference or "")
    ref_pol, ans_pol = polarity(ref), polarity(text)
    if ref_pol is not None:
        flipped = (ans_pol is not None and ans_pol != ref_pol) or (
            ans_pol is None and _negated(text) != _negated(ref) and len(text.split()) < 60)
        if flipped:
            return Judgement("wrong", f"the reference says {'yes' if ref_pol else 'no'}, the answer the opposite")
    key = _key_facts(ref)
    ans_facts = extract_facts(text, weak_numbers=True)
    found = [f for f in key if any(same_fact(f, a) for a in ans_facts) or SourceFacts(text).has(f)]
    missing = [f for f in key if f not in found]
    for f in missing:
        kind = _numeric_kind(f)
        if kind is None:
            continue
        others = [a for a in ans_facts if _numeric_kind(a) == kind and not any(same_fact(a, k) for k in key)]
        if others:
            return Judgement("wrong", f"the answer says {others[0].text!r} where the reference says {f.text!r}",
                             len(key), len(found))
    if key:
        need = len(key) if len(key) <= 3 else math.ceil(len(key) / 2)
        if len(found) >= need:
            return Judgement("correct", f"{len(found)} of {len(key)} key facts", len(key), len(found))
        return Judgement("wrong", "missing key facts: " + ", ".join(repr(f.text) for f in missing[:4]),
                         len(key), len(found))
    ref_words = content_words(ref)
    if not ref_words:
        return Judgement("correct", "the reference states nothing to check")
    recall = len(ref_words & content_words(text)) / len(ref_words)
    if recall >= CONTENT_RECALL:
        return Judgement("correct", f"{recall:.0%} of the reference's content words")
    return Judgement("wrong", f"only {recall:.0%} of the reference's content words")


def _key_facts(reference: str) -> list[Fact]:
    """The reference's facts, one per value (a year inside a date is not a second fact).
    Facts in parentheses are supporting detail ("$191,900 (GS-15, step 10)"), not required."""
    out: list[Fact] = []
    for f in extract_facts(re.sub(r"\([^()]*\)", " ", reference)):
        if not any(same_fact(f, g) and f.kind == g.kind for g in out):
            out.append(f)
    return out


def answer_key(answer: str) -> str:
    """A short fingerprint of an answer text: a human label applies to that exact answer."""
    return hashlib.sha256(" ".join((answer or "").split()).encode("utf-8")).hexdigest()[:16]


def shown_and_wrong(verdicts: Sequence[str]) -> float | None:
    """Share of all questions whose shown answer is wrong or vacuous."""
    if not verdicts:
        return None
    return sum(1 for v in verdicts if v in ("wrong", "vacuous")) / len(verdicts)
