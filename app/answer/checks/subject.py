"""Subject: an answer whose cited sources never mention a word of the question that is rare in
the knowledge base answers another question ("juice" answered from a memo about water).

Rarity is counted over the chunks the asker may read, never all chunks: whether a hidden
document uses a word must not change what the asker sees.
"""
from __future__ import annotations

import logging
import re
from typing import Callable, Sequence

from kb_chatbot.core.text import FILLER_WORDS
from kb_chatbot.core.types import Hit, Principal

log = logging.getLogger(__name__)

#: A question word is specific to what is asked when at most this share of the knowledge base's
#: chunks contains it (and at most :data:`SPECIFIC_MIN` chunks whatever the size).
SPECIFIC_SHARE = 0.005
SPECIFIC_MIN = 2
#: Below this many chunks rarity says nothing (in a 50-page wiki "regarding" is in no chunk):
#: the subject check is off.
SUBJECT_CHECK_MIN_CHUNKS = 300
_WORD = re.compile(r"[a-z][a-z0-9'-]+")


def _words(text: str) -> list[str]:
    """Lower-case words, a possessive's "'s" dropped ("memo's" is "memo")."""
    return [re.sub(r"'s?$", "", w) for w in _WORD.findall(text.lower().replace("\u2019", "'"))]


def _stem(word: str) -> str:
    for suffix in ("ing", "ed", "es", "s", "ly"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 4:
            return word[: -len(suffix)]
    return word


def off_subject_terms(question: str, cited: Sequence[Hit], chunk_count, total_chunks: int) -> list[str]:
    """Specific words of ``question`` that none of the ``cited`` sources contains.

    An answer whose sources never mention a word that is rare in the whole knowledge base
    ("juice" in "How many bottles of juice were delivered?" answered from a memo about bottles of
    water; "headquarters" answered from the San Francisco office page) answers another question.
    Ordinary words ("long", "often", "needed") are in many chunks and never count; names and
    numbers are the premise check's and the fact check's. ``chunk_count(word)`` is the number
    of chunks containing the word (:meth:`kb_chatbot.index.store.Store.term_chunk_count`).
    """
    if not cited or total_chunks < SUBJECT_CHECK_MIN_CHUNKS:
        return []
    limit = max(SPECIFIC_MIN, int(SPECIFIC_SHARE * max(total_chunks, 0)))
    text = " ".join(f"{h.doc_title} {h.prompt_text}" for h in cited)
    have = {_stem(w) for w in _words(text)}
    out: list[str] = []
    for word in dict.fromkeys(_words(question)):
        if word in FILLER_WORDS or len(word) < 4:
            continue
        st = _stem(word)
        if st in have or (len(st) >= 6 and any(t.startswith(st[:6]) for t in have)) or _near(st, have):
            continue
        if chunk_count(word) <= limit:
            out.append(word)
    return out


def _near(stem: str, have: set[str]) -> bool:
    """A word form or a typo of a word the sources hold: one edit away for words of 5+
    letters, two for 9+ ('prerequisite' / 'prerequisites', 'servise' / 'service')."""
    if len(stem) < 5:
        return False
    from rapidfuzz import distance, process

    limit = 2 if len(stem) >= 9 else 1
    return process.extractOne(stem, have, scorer=distance.Levenshtein.distance, score_cutoff=limit) is not None


def not_in_cited(terms: Sequence[str]) -> str:
    """The reply when the draft's sources never mention what the question is about."""
    names = [f"'{t}'" for t in terms]
    listed = names[0] if len(names) == 1 else ", ".join(names[:-1]) + " or " + names[-1]
    return (f"The sources found do not mention {listed}, so the knowledge base does not answer this "
            "question as asked.")


class SubjectCheck:
    """The subject check bound to the knowledge base's counts: ``term_count(word, principals)``
    chunks the asker may read hold ``word``, of ``chunk_total(principals)``. Without the counts
    (or switched off) it finds nothing."""

    name = "subject"

    def __init__(self, term_count: Callable[[str, frozenset[str]], int] | None,
                 chunk_total: Callable[[frozenset[str]], int] | None, *, enabled: bool = True):
        self.term_count = term_count
        self.chunk_total = chunk_total
        self.enabled = enabled and term_count is not None and chunk_total is not None

    def off_subject(self, question: str, hits: Sequence[Hit], cited_numbers, user: Principal) -> list[str]:
        """Rare words of ``question`` that none of the cited ``hits`` (numbered from 1) contains."""
        if not self.enabled:
            return []
        cited = [hits[n - 1] for n in sorted(cited_numbers) if 0 < n <= len(hits)]
        mine = user.principals()
        try:
            return off_subject_terms(question, cited, lambda w: self.term_count(w, mine), self.chunk_total(mine))
        except Exception as e:  # the check is a gate, never a crash: an error keeps the answer
            log.warning("subject check failed: %r", e)
            return []
