"""Typo-perturbed copies of question sets: what real users type ('conect', 'comands', 'Howw').

Seeded and reproducible. In about one word of four (words of 3+ letters; never numbers, codes
or quoted names), one edit: a letter swapped for a neighbour on a QWERTY keyboard, a letter
dropped, or a letter doubled. Expected answers and sources stay as they are: the typo copy of
a set measures the same questions asked carelessly.
"""
from __future__ import annotations

import random
import re
from dataclasses import replace
from typing import Sequence

from kb_chatbot.core.text import KEYBOARD_NEIGHBOURS
from kb_chatbot.eval.questions import EvalQuestion

NEIGHBOURS = KEYBOARD_NEIGHBOURS

#: Share of eligible words that get one edit.
RATE = 0.25
_WORD = re.compile(r"[A-Za-z]{3,}")


def perturb_word(word: str, rng: random.Random) -> str:
    """One edit of ``word``: neighbour swap, dropped letter or doubled letter (case kept)."""
    i = rng.randrange(1, len(word)) if len(word) > 3 else rng.randrange(len(word))  # first letter mostly kept
    kind = rng.choice(("swap", "drop", "double"))
    ch = word[i]
    if kind == "swap" and ch.lower() in NEIGHBOURS:
        new = rng.choice(NEIGHBOURS[ch.lower()])
        return word[:i] + (new.upper() if ch.isupper() else new) + word[i + 1:]
    if kind == "drop" and len(word) > 3:
        return word[:i] + word[i + 1:]
    return word[:i] + ch + word[i:]


def perturb(text: str, rng: random.Random, rate: float = RATE) -> str:
    """``text`` with about ``rate`` of its plain words (3+ letters) edited once. Quoted parts
    and words with digits or capitals inside (ids, product codes) are left alone."""
    quoted = [(m.start(), m.end()) for m in re.finditer(r"[\"'“‘`][^\"'”’`]+[\"'”’`]", text)]

    def one(m: re.Match) -> str:
        w = m.group(0)
        if any(a <= m.start() < b for a, b in quoted) or (len(w) > 1 and any(c.isupper() for c in w[1:])):
            return w
        return perturb_word(w, rng) if rng.random() < rate else w

    return _WORD.sub(one, text)


def typo_copy(questions: Sequence[EvalQuestion], seed: int = 13, rate: float = RATE) -> list[EvalQuestion]:
    """The questions with typos (and their chat history's user turns), ids suffixed ``~typo``.
    A question the draw left unchanged gets one edit in its longest word, so every question
    of the copy differs from the clean one."""
    rng = random.Random(seed)
    out = []
    for q in questions:
        text = perturb(q.question, rng, rate)
        if text == q.question:
            words = [w for w in _WORD.findall(q.question) if not any(c.isupper() for c in w[1:])]
            if words:
                longest = max(words, key=len)
                text = q.question.replace(longest, perturb_word(longest, rng), 1)
        meta = dict(q.metadata, clean_question=q.question)
        if meta.get("history"):
            meta["history"] = [dict(h, content=perturb(h["content"], rng, rate)) if h["role"] == "user" else h
                               for h in meta["history"]]
        out.append(replace(q, id=f"{q.id}~typo", question=text, metadata=meta))
    return out
