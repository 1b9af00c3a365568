"""A deterministic generator for tests: it reads the numbered sources and answers from them.

It answers with the sentence of the ``<source id="n">`` blocks that shares the most content
words with the last ``Question:`` line, followed by that source's ``[n]`` marker, or with
``ABSTAIN_TEXT`` when no source shares a content word with the question. ``GenParams.task``
tells it what else is asked (follow-up condensing, query rewrite), so it depends on no prompt
text of the answer pipeline. ``replies`` scripts answer turns for routing tests.
"""
from __future__ import annotations

import math
import re
from collections import deque
from typing import Iterable, Iterator, Sequence

from kb_chatbot.core.text import content_words, overlap, split_sentences, words
from kb_chatbot.core.types import ABSTAIN_TEXT, GenParams, Message, Token
from kb_chatbot.app.generators.base import GeneratorBase, split_continuation

_SOURCE = re.compile(r'<source id="(\d+)"[^>]*>\n(.*?)\n</source>', re.DOTALL)
_BARE_SOURCE = re.compile(r"<source>\n(.*?)\n</source>", re.DOTALL)
_QUESTION = re.compile(r"^(?:Question|Follow-up question): (.*)$", re.MULTILINE)
_UNSUPPORTED = re.compile(r"which the sources do not support:\n((?:- .*\n)+)")


class FakeGenerator(GeneratorBase):
    """No-arg constructible, deterministic. ``calls`` records every ``stream`` call's messages.
    A conversation that ends with the start of its own last reply continues that reply."""

    continues_assistant = True

    def __init__(self, replies: Iterable[str] = (), *, model_id: str = "fake", yes: Iterable[float] = ()):
        self.model_id = model_id
        self.replies: deque[str] = deque(replies)  # consumed by answer turns, then default logic
        self.yes: deque[float] = deque(yes)  # consumed by yes_probability, then word overlap
        self.calls: list[list[Message]] = []
        self.yes_calls: list[list[Message]] = []
        self._last: tuple[str, float] | None = None  # the last reply, for a continuation of it

    # --- the Generator protocol --------------------------------------------------------
    def stream(self, messages: Sequence[Message], params: GenParams) -> Iterator[Token]:
        self.calls.append(list(messages))
        convo, start = split_continuation(messages)
        if start and self._last and self._last[0].startswith(start):  # continuing its own reply
            text, confidence = self._last[0][len(start):], self._last[1]
        else:
            text, confidence = self._reply(convo, params.task)
            self._last = (start + text, confidence)
        for stop in params.stop:  # like a real backend: end before the stop string
            if stop and stop in text:
                text = text[: text.index(stop)]
        words_all = re.findall(r"\s*\S+", text)
        pieces = words_all[: params.max_tokens]
        logprob = math.log(max(confidence, 1e-3))
        for i, piece in enumerate(pieces):
            finish = None
            if i == len(pieces) - 1:
                finish = "length" if len(words_all) > len(pieces) else "stop"
            yield Token(piece, logprob=logprob if params.logprobs else None, finish_reason=finish)

    def yes_probability(self, messages: Sequence[Message]) -> float:
        self.yes_calls.append(list(messages))
        if self.yes:
            return self.yes.popleft()
        user = messages[-1].content
        asked = re.search(r'answer exactly this question, and not a related one: "(.*)"\?.*\nReply: (.*)$', user, re.S)
        if asked:  # does the reply answer the question: it shares a content word with it
            return 0.9 if overlap(asked.group(1), asked.group(2)) > 0 else 0.1
        m = _BARE_SOURCE.search(user)
        if m:  # a standalone check: the evidence is in this message
            evidence, rest = m.group(1), user[m.end():]
        else:  # a check over the numbered sources: "source [n]" after them names the evidence
            wanted = {int(n) for n in re.findall(r"\[(\d+)\]", user.rsplit("</source>", 1)[-1].split("Claim:")[0])}
            blocks = [(int(i), body) for msg in messages for i, body in _SOURCE.findall(msg.content)]
            evidence = "\n".join(body for i, body in blocks if not wanted or i in wanted)
            rest = user
        claim = re.search(r"^Claim: (.*)$", rest, re.MULTILINE) or re.search(r"^Question: (.*)$", rest, re.MULTILINE)
        return round(0.05 + 0.9 * overlap(claim.group(1) if claim else rest, evidence), 4)

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def warm_up(self) -> None:
        return None

    # --- replies ----------------------------------------------------------------------
    def _reply(self, messages: Sequence[Message], task: str) -> tuple[str, float]:
        user = messages[-1].content
        if task == "condense":
            return self._condense(user), 0.9
        if task == "rewrite":
            q = _first(_QUESTION, user)
            return " ".join(w for w in words(q) if content_words(w)), 0.9
        if task == "check":
            return ("yes" if self.yes_probability(messages) >= 0.5 else "no"), 0.9
        if task == "answer" and self.replies:
            return self.replies.popleft(), 0.5
        return self._answer(user)

    def _answer(self, user: str) -> tuple[str, float]:
        found = _QUESTION.findall(user)
        question = found[-1] if found else ""
        avoid = set()
        m = _UNSUPPORTED.search(user)
        if m:
            avoid = {line[2:].strip() for line in m.group(1).splitlines()}
        best: tuple[float, int, str] | None = None
        for sid, body in _SOURCE.findall(user):
            for sent in split_sentences(body):
                if sent in avoid or sent.lstrip("#").strip() in avoid:
                    continue
                score = overlap(question, sent)
                if score > 0 and (best is None or score > best[0]):
                    best = (score, int(sid), sent)
        if best is None:
            return ABSTAIN_TEXT, 0.6
        score, sid, sent = best
        sent = sent.lstrip("#- ").strip()
        if not sent.endswith((".", "!", "?")):
            sent += "."
        return f"{sent[:-1]} [{sid}]{sent[-1]}", 0.3 + 0.7 * score

    def _condense(self, user: str) -> str:
        follow = _first(_QUESTION, user)
        if len(content_words(follow)) >= 3:
            return follow
        asked = [line[len("User: "):] for line in user.splitlines() if line.startswith("User: ")]
        topic = " ".join(w for w in words(asked[-1]) if content_words(w)) if asked else ""
        return f"{follow.rstrip('?').strip()} regarding {topic}?" if topic else follow


def _first(pattern: re.Pattern[str], text: str) -> str:
    m = pattern.search(text)
    return m.group(1) if m else ""
