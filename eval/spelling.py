"""How well the speller undoes typos, per set, without a language model (seconds, not the
suite's hour): every question of each set gets typo copies (:mod:`kb_chatbot.eval.typos`, one
per seed), the speller of the answer service corrects them against the set's own index, and each
word is compared with the question as written before the typos.

Figures per set: *restored* (share of the typo'd words the speller gives back exactly as written;
a typo that spells another word of the language, and words under 3 letters, are never
corrected, so 1.0 is out of reach), *wrong fixes* (words changed into another word than the
one written), *own misspellings fixed* (the set's question writes a word English hardly knows,
SQuAD's 'asimilted', 'Scotish', and the speller makes of it the common word it makes of the
clean question's: read by hand, these are right, and counting them as wrong fixes hid half of
SQuAD's figure), and *clean questions changed* (questions without added typos that the speller
changed: 0 unless the set has typos of its own, as SQuAD's 'assimilted' and 'incorperated').
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from kb_chatbot.eval.questions import EvalQuestion
from kb_chatbot.eval.typos import typo_copy

_WORD = re.compile(r"[A-Za-z']+")
#: A written word rarer in English than this (Zipf) that the speller makes a word at least this
#: common is the set's own misspelling, fixed ('asimilted' 0, 'conquerer' 1.6 -> 'conquered').
OWN_MISSPELLING_ZIPF = 2.0


@dataclass
class SpellingFigures:
    questions: int = 0
    typo_words: int = 0
    restored: int = 0
    wrong_fixes: int = 0
    own_fixes: int = 0
    clean_changed: int = 0
    #: questions whose corrected text did not align word for word with the clean one (skipped)
    unaligned: int = 0
    #: (typed, corrected, written) of each wrong fix
    wrong: list[tuple[str, str, str]] = field(default_factory=list)
    #: (typed, corrected, written) of each fix of the set's own misspelling
    own: list[tuple[str, str, str]] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return {"questions": self.questions, "typo_words": self.typo_words, "restored": self.restored,
                "restored_share": round(self.restored / self.typo_words, 3) if self.typo_words else None,
                "wrong_fixes": self.wrong_fixes, "own_fixes": self.own_fixes, "clean_changed": self.clean_changed,
                "unaligned": self.unaligned, "wrong": [list(w) for w in self.wrong], "own": [list(w) for w in self.own]}


def spelling_figures(questions: Sequence[EvalQuestion], correct: Callable[[str], str],
                     seeds: Sequence[int] = (7, 99)) -> SpellingFigures:
    """``correct(text)`` is the speller's corrected text for the asker the eval runs as."""
    from kb_chatbot.app.answer.spelling import zipf

    out = SpellingFigures(questions=len(questions))
    for seed in seeds:
        for q in typo_copy(questions, seed=seed):
            clean = q.metadata["clean_question"]
            written, typed, fixed = _WORD.findall(clean), _WORD.findall(q.question), _WORD.findall(correct(q.question))
            if not len(written) == len(typed) == len(fixed):
                out.unaligned += 1
                continue
            own = _WORD.findall(correct(clean))
            own = own if len(own) == len(written) else written
            for w, t, f, o in zip(written, typed, fixed, own):
                if w != t:
                    out.typo_words += 1
                    out.restored += f == w
                if f == w or (w != t and f == t):
                    continue
                if f == o and zipf(w.lower()) < OWN_MISSPELLING_ZIPF <= zipf(f.lower()):
                    out.own_fixes += 1
                    out.own.append((t, f, w))
                else:
                    out.wrong_fixes += 1
                    out.wrong.append((t, f, w))
    out.clean_changed = sum(1 for q in questions if correct(q.question) != q.question)
    return out
