"""Spelling correction of a question against the knowledge base's own vocabulary.

Real users type 'how do i conect to the vpn from hom?', 'comands', 'servises', 'Howw': the
premise and subject checks then found "nothing about 'conect'" and declined questions the
knowledge base answers. A word of the question whose stem no chunk holds (the index's own
stems, so 'services' and 'service' are one word) is replaced by the closest way a near term of
the index is written: the terms within one edit more than allowed are looked up (rapidfuzz),
their written forms read from chunks, and the form closest to the typed word wins if it is
within the allowed distance (1 edit, 2 for words of 8+ letters)
('leace' -> 'leave', not 'lead'; 'comands' -> 'commands'; 'usee' -> 'use', not 'user';
'cary' -> 'carry', not 'car'). The corrected question is what
retrieval, the checks and the prompt get, and the page says "Showing results for …".

A real word is never corrected (the embedder's word list says which are: 'worms' stays
'worms' in a question about a duck's food, so the subject check still sees it missing).
Fails closed: a correction is only ever a word found in a chunk the asker may read (the
surface form comes from such a chunk), so a correction never reveals a hidden document's
words. Names, codes and short words are left alone: a capitalised word inside a sentence ('the TTS Gold
plan' is not 'Old'), a word with a digit, an inner capital or all capitals ('VPN', 'iOS',
'GS-15'), and words of fewer than 4 letters.
"""
from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from typing import Callable, Sequence

log = logging.getLogger(__name__)

_WORD = re.compile(r"(?<![\w'])[A-Za-z]+(?:'[a-z]+)?(?!\w)")
#: Edit distance allowed by word length (letters).
MIN_LETTERS = 4
#: Index terms looked at per unknown word (their written forms are read from chunks).
CANDIDATES = 40
LONG_WORD = 8


@dataclass(frozen=True)
class Spelling:
    text: str
    #: (as typed, as corrected), in question order
    fixes: tuple[tuple[str, str], ...] = ()


def _undoubled(word: str) -> str:
    return re.sub(r"(.)\1+", r"\1", word)


def _starts_sentence(text: str, at: int) -> bool:
    before = text[:at].rstrip()
    return not before or before[-1] in ".?!:\"'(“"


class SpellChecker:
    """``vocabulary()``: the index's terms -> chunk counts; ``stems(words)``: the index
    tokenizer's term of each word; ``surface(term, principals)``: how a term is written in
    chunks the principals may read, with counts (empty when they may read none)."""

    def __init__(self, vocabulary: Callable[[], dict[str, int]], stems: Callable[[Sequence[str]], list[str]],
                 surface: Callable[[str, frozenset[str]], dict[str, int]],
                 dictionary: Callable[[str], bool] | None = None):
        self.vocabulary = vocabulary
        self.stems = stems
        self.surface = surface
        #: a word of the language (the embedder's own word list): never a typo, even when the
        #: knowledge base lacks it ('worms' asked of a document about ducks' food is the subject
        #: the checks must see missing, not 'norms')
        self.dictionary = dictionary

    def correct(self, question: str, principals: frozenset[str]) -> Spelling:
        try:
            return self._correct(question, principals)
        except Exception as e:  # a speller failure keeps the question as typed
            log.warning("spelling failed error=%r", e)
            return Spelling(question)

    def _correct(self, question: str, principals: frozenset[str]) -> Spelling:
        from rapidfuzz import distance, process

        # a capital inside a question is a name ('the TTS Gold plan': never 'Old'); only the
        # first word of a sentence may be capitalised and corrected ('Howw' -> 'How')
        matches = [m for m in _WORD.finditer(question) if len(m.group(0)) >= MIN_LETTERS
                   and (m.group(0).islower() or _starts_sentence(question, m.start()) and not m.group(0).isupper())]
        if self.dictionary is not None:
            matches = [m for m in matches if not self.dictionary(m.group(0).lower())]
        if not matches:
            return Spelling(question)
        vocab = self.vocabulary()
        if not vocab:
            return Spelling(question)
        stems = self.stems([m.group(0) for m in matches])
        terms = list(vocab)
        fixes: list[tuple[str, str]] = []
        out, pos = [], 0
        for m, stem in zip(matches, stems):
            word = m.group(0)
            if stem in vocab:
                continue
            limit = 2 if len(word) >= LONG_WORD else 1
            found = process.extract(stem, terms, scorer=distance.Levenshtein.distance, score_cutoff=limit + 1,
                                    limit=CANDIDATES)
            options: list[tuple[int, int, int, str]] = []  # (edits, insertions+deletions, -count, form)
            for term, _d, _i in found:
                for form, n in self.surface(term, principals).items():
                    d = distance.Levenshtein.distance(word.lower(), form)
                    if 0 < d <= limit:  # on a tie a dropped or added letter beats a changed one, and
                        # a doubled letter typed single or twice ('cary' -> 'carry', not 'car')
                        options.append((d, distance.Indel.distance(word.lower(), form),
                                        _undoubled(word.lower()) != _undoubled(form), -n, form))
            if not options:
                continue
            fixed = min(options)[4]
            if word[0].isupper():  # 'Howw' -> 'How', 'HHow' -> 'How'
                fixed = fixed[0].upper() + fixed[1:]
            out.append(question[pos:m.start()] + fixed)
            pos = m.end()
            fixes.append((word, fixed))
        if not fixes:
            return Spelling(question)
        out.append(question[pos:])
        text = "".join(out)
        log.info("spelling fixes=%d", len(fixes))
        return Spelling(text, tuple(fixes))
