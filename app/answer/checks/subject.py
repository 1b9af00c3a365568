"""Subject: an answer whose cited sources never mention a word of the question that is rare in
the knowledge base, or rare in English, answers another question ("juice" answered from a memo
about water; "care-management" answered from a page about another programme).

Rarity in the knowledge base is counted over the chunks the asker may read, never all chunks:
whether a hidden document uses a word must not change what the asker sees. It says nothing in a
small knowledge base (every word is in few chunks), so there only rarity in English counts
(``wordfreq``'s Zipf frequency, shipped with the package: no download); in a large one a word
rare in English counts while it is in at most 2 % of the chunks too (a paper collection's
"inference" is an everyday word there).
"""
from __future__ import annotations

import logging
import re
import unicodedata
from functools import lru_cache
from typing import Callable, Sequence

from kb_chatbot.core.text import FILLER_WORDS
from kb_chatbot.core.types import Hit, Principal

log = logging.getLogger(__name__)

#: A question word is specific to what is asked when at most this share of the knowledge base's
#: chunks contains it (and at most :data:`SPECIFIC_MIN` chunks whatever the size).
SPECIFIC_SHARE = 0.005
SPECIFIC_MIN = 2
#: Below this many chunks rarity in the knowledge base says nothing (in a 50-page wiki
#: "regarding" is in no chunk): only rarity in English counts.
SUBJECT_CHECK_MIN_CHUNKS = 300
#: A question word rarer in English than this Zipf frequency (about 3 per million words:
#: "principality" 2.8, "prerequisites" 3.1; "invade" 3.6, "eligible" 4.1 are not) is specific
#: to what is asked. Chosen on the third-party suite's shown answers (handbook, ARAGOG, SQuAD:
#: 3.5 flags no right answer there, 4.0 flagged "invade").
RARE_IN_ENGLISH_ZIPF = 3.5
#: ... but in a knowledge base large enough to count, not when this share of its chunks holds
#: it: a paper collection's "inference", "state-of-the-art", "pre-training" are rare in English
#: and everyday words there (ARAGOG: three right answers declined without this cap; the absent
#: paper's "GLM-130B", in 4 of 656 chunks, and "monolingual", in 6, stay specific).
RARE_IN_ENGLISH_MAX_SHARE = 0.02
_WORD = re.compile(r"[a-z][a-z0-9'-]+")


def _fold(text: str) -> str:
    """Accents dropped ("Jumièges" is "Jumieges": people type names without them)."""
    return "".join(c for c in unicodedata.normalize("NFKD", text) if not unicodedata.combining(c))


def _words(text: str) -> list[str]:
    """Lower-case words, accents and a possessive's "'s" dropped ("memo's" is "memo")."""
    return [re.sub(r"'s?$", "", w) for w in _WORD.findall(_fold(text.lower().replace("\u2019", "'")))]


@lru_cache(maxsize=65536)
def rare_in_english(word: str) -> bool:
    """True for a word rarer in English than :data:`RARE_IN_ENGLISH_ZIPF`, for a word wordfreq
    does not know (names, codes) and for a hyphenated compound (wordfreq scores
    "care-management" by its common parts)."""
    from wordfreq import zipf_frequency

    if "-" in word.strip("-"):  # a compound ("care-management") names one thing: specific
        return True
    return zipf_frequency(word, "en") < RARE_IN_ENGLISH_ZIPF


def _stem(word: str) -> str:
    for suffix in ("ing", "ed", "es", "s", "ly"):
        if word.endswith(suffix) and len(word) - len(suffix) >= 4:
            return word[: -len(suffix)]
    return word


def off_subject_terms(question: str, cited: Sequence[Hit], chunk_count, total_chunks: int,
                      stem: Callable[[Sequence[str]], list[str]] | None = None, *,
                      names: bool | str = False, asked: str | None = None) -> list[str]:
    """Specific words of ``question`` that none of the ``cited`` sources contains.

    An answer whose sources never mention a word that is rare in the whole knowledge base
    ("juice" in "How many bottles of juice were delivered?" answered from a memo about bottles of
    water; "headquarters" answered from the San Francisco office page) answers another question.
    A word rare in English ("principality", "telework") counts in a small knowledge base, and in a
    large one while it is in at most :data:`RARE_IN_ENGLISH_MAX_SHARE` of the chunks.
    Ordinary words ("long", "often", "needed") are in many chunks and common in English, and
    never count; names and numbers are also the premise check's and the fact check's. A typo
    of a stop word ("Howw") is not a subject. ``chunk_count(word)`` is the number of chunks
    containing the word (:meth:`kb_chatbot.index.store.Store.term_chunk_count`); it is asked
    only in a knowledge base of :data:`SUBJECT_CHECK_MIN_CHUNKS` chunks or more. ``stem`` is the
    index's own stemmer (Porter, :func:`kb_chatbot.index.store.porter_stems`): a word whose stem
    a source holds is held ('leav' and 'leave' are both 'leav').

    With ``names`` ("all" or True; "numbers": the numbers only), the question's names and numbers written in digits (the premise check's
    salient terms: "Scotland", "the 10th century", "Q4_K_M") must be in a cited source too,
    however common: the premise check finds them in *some* source found, but an answer citing
    only sources without them answers a neighbouring question (SQuAD 2.0's "Who ruled Cyprus
    in the 11th century?", answered from a paragraph about the 12th). Each word of a name may
    be held in another form or with a typo as above ("Normans" / "Norman", "Marry" /
    "married"). ``asked`` (a follow-up as typed, before the chat filled it in) limits them to
    the names the asker wrote.
    """
    if not cited:
        return []
    by_count = total_chunks >= SUBJECT_CHECK_MIN_CHUNKS
    limit = max(SPECIFIC_MIN, int(SPECIFIC_SHARE * max(total_chunks, 0)))
    words, have, stems = _vocabulary(" ".join(f"{h.doc_title} {h.prompt_text}" for h in cited), stem)
    kinds = {"all": True, True: True, "numbers": False}.get(names)  # names too? (None: neither)
    out: list[str] = _unheld_names(question, cited, have, stems, stem, asked, kinds) if kinds is not None else []
    named = set(_words(" ".join(out)))  # "GLM-130B" named already: not "glm-130b" again
    for word in dict.fromkeys(_words(question)):
        if word in FILLER_WORDS or len(word) < 4 or _typo_of_filler(word) or word in named:
            continue
        if _held(word, have) or (stem is not None and stem([word])[0] in stems):
            continue
        if rare_in_english(word) and _typo_of(word, words):  # 'rued' for 'ruled', 'bunded' for 'bounded'
            continue
        if by_count:
            n = chunk_count(word)
            if n <= limit or (rare_in_english(word) and n <= RARE_IN_ENGLISH_MAX_SHARE * total_chunks):
                out.append(word)
        elif rare_in_english(word):
            out.append(word)
    return out


def _vocabulary(text: str, stem: Callable[[Sequence[str]], list[str]] | None) -> tuple[list[str], set[str], set[str]]:
    """(words, their crude stems, their Porter stems) of a source text."""
    words = list(dict.fromkeys(_words(text)))
    # a compound is also held by its parts and written together ("pre-trained": "pre",
    # "trained", "pretrained"), so "pre-training" asked of a source saying "pre-trained" is held
    words += [p for w in words if "-" in w for p in (*w.split("-"), w.replace("-", "")) if p]
    return words, {_stem(w) for w in words}, set(stem(words)) if stem is not None and words else set()


def _unheld_names(question: str, cited: Sequence[Hit], have: set[str], stems: set[str],
                  stem: Callable[[Sequence[str]], list[str]] | None, asked: str | None,
                  with_names: bool = True) -> list[str]:
    """The question's names and digit numbers that no cited source holds, as the question
    writes them: as a phrase in the whole chunk (as the premise check reads it), or each word
    of a name in the text the model read (``have`` / ``stems``: :func:`_vocabulary`)."""
    from kb_chatbot.app.answer.checks.premise import salient_terms, spelled_out
    from kb_chatbot.app.answer.facts import SourceFacts

    sources = [SourceFacts(f"{h.doc_title}\n{h.chunk.text}") for h in cited]
    out = []
    for fact, _label in salient_terms(question):
        at = question.find(fact.text)
        if fact.kind in ("name", "quote") and not with_names:
            continue
        if fact.kind in ("money", "percent", "number", "date"):
            if not any(c.isdigit() for c in fact.text):
                continue  # "two abbots": a count the sources may list without writing it
            if at > 0 and (question[at - 1].isalnum() or question[at - 1] in "-_."):
                continue  # "130B" of "GLM-130B": part of a name, asked as the name
        if asked is not None and fact.text.lower() not in asked.lower():
            continue
        if any(s.has(fact) for s in sources):
            continue
        if fact.kind == "name":
            if fact.text.isupper() and any(spelled_out(fact.text, s) for s in sources):
                continue
            parts = [w for w in _words(fact.text) if w not in FILLER_WORDS]
            if all(_held(w, have) or (stem is not None and stem([w])[0] in stems) for w in parts):
                continue
        # named as asked: "Scotland", "the 11th century" (a number with the noun after it)
        unit = re.match(r"\s+([a-z][a-z-]{2,})\b", question[at + len(fact.text):])
        label = re.sub(r"['\u2019]s$", "", fact.text)  # "GLM-130B's" is "GLM-130B"
        out.append(f"{label} {unit.group(1)}" if fact.kind != "name" and unit and unit.group(1) not in FILLER_WORDS
                   else label)
    return list(dict.fromkeys(out))


def _held(word: str, have: set[str]) -> bool:
    """The sources hold ``word``: as is, in another form, with a typo, or (a compound such as
    "care-management" / "Wi-Fi") written apart or together."""
    st = _stem(word)
    if st in have or (len(st) >= 6 and any(t.startswith(st[:6]) for t in have)) or _near(st, have):
        return True
    parts = [p for p in word.split("-") if p]
    if len(parts) > 1:
        return _stem("".join(parts)) in have or all(len(p) < 3 or _held(p, have) for p in parts)
    return False


def _typo_of(word: str, words: Sequence[str]) -> bool:
    """``word``, no word of the language, is one edit from a word the sources hold, as written
    ('rued' / 'ruled'). Words of the language never are: 'worms' is not 'words'."""
    if len(word) < 4:
        return False
    from rapidfuzz import distance, process

    return process.extractOne(word, words, scorer=distance.Levenshtein.distance, score_cutoff=1) is not None


def _typo_of_filler(word: str) -> bool:
    """'howw', 'thee', 'whatt', 'wher': a stop word with one letter off is no subject. A letter
    doubled always is a typo ('thee' is a word, but not in a question "for thee duck"); another
    edit only when the result is no common word itself ('home' is one letter from 'some',
    'wheat' one from 'what')."""
    if len(word) > 6:
        return False
    if any(word[i] == word[i + 1] and word[:i] + word[i + 1:] in FILLER_WORDS for i in range(len(word) - 1)):
        return True
    if not rare_in_english(word):
        return False
    from rapidfuzz import distance

    return any(abs(len(f) - len(word)) <= 1 and len(f) >= 3 and distance.Levenshtein.distance(word, f) <= 1
               for f in FILLER_WORDS)


def _near(stem: str, have: set[str]) -> bool:
    """A word form or a typo of a word the sources hold: one edit away for words of 5+
    letters, two for 9+ ('prerequisite' / 'prerequisites', 'servise' / 'service'). Never for
    shorter words: 'worm' is one edit from 'work', 'form' and 'norm'."""
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
                 chunk_total: Callable[[frozenset[str]], int] | None, *, enabled: bool = True,
                 stem: Callable[[Sequence[str]], list[str]] | None = None, names: bool | str = "numbers"):
        self.names = names
        self.term_count = term_count
        self.chunk_total = chunk_total
        self.stem = stem
        self.enabled = enabled and term_count is not None and chunk_total is not None

    def off_subject(self, question: str, hits: Sequence[Hit], cited_numbers, user: Principal,
                    asked: str | None = None) -> list[str]:
        """Rare words, names and numbers of ``question`` that none of the cited ``hits``
        (numbered from 1) contains; ``asked``: the follow-up as typed (see :func:`off_subject_terms`)."""
        if not self.enabled:
            return []
        cited = [hits[n - 1] for n in sorted(cited_numbers) if 0 < n <= len(hits)]
        mine = user.principals()
        try:
            return off_subject_terms(question, cited, lambda w: self.term_count(w, mine), self.chunk_total(mine),
                                     self.stem, names=self.names, asked=asked)
        except Exception as e:  # the check is a gate, never a crash: an error keeps the answer
            log.warning("subject check failed: %r", e)
            return []
