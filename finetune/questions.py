"""Question writers: turn an indexed chunk into (question, grounded answer) pairs.

Two writers with one interface, ``write(chunk, title) -> list[QA]``:

- :class:`ExtractiveWriter` (deterministic, no model): picks the chunk's most fact-like
  sentences (numbers, names, moderate length) and asks about each through its section and its
  rarest content words ("What does the 'Carry-over' section of PTO policy say about unused,
  carried and March?"). The answer is the sentence itself. Template-shaped questions teach
  the answer format (cite the right source, refuse when the sources do not answer) far more
  than question variety; the sentence is guaranteed to be in the source, so no label is false.
- :class:`ModelWriter`: asks a language model (the configured SLM, or an OpenAI-compatible
  teacher) for a question and a short answer; the pair is kept only if the question looks
  like one and the answer is grounded in the chunk (most of its content words and all of its
  numbers occur there) and adds to the question. Anything else falls back to the extractive writer, so a weak
  model (SmolLM2-135M) degrades to extractive data instead of garbage.
"""
from __future__ import annotations

import hashlib
import logging
import math
import re
from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Sequence

from kb_chatbot.core.text import STOPWORDS, content_words, overlap, sentence_spans, words
from kb_chatbot.core.types import Chunk, GenParams, Message

log = logging.getLogger(__name__)

MIN_WORDS, MAX_WORDS = 6, 45
#: Share of the answer's content words that must occur in the chunk for it to count as grounded.
GROUNDED = 0.8

_LIST_MARK = re.compile(r"^\s*(?:[-*+•]\s+|\d{1,2}[.)]\s+|>\s*)+")
_EMPHASIS = re.compile(r"(\*\*|__|`)")
_QUESTION_LINE = re.compile(r"^\s*(?:\d+[.)]\s*)?(?:Q(?:uestion)?\s*[:.-])\s*(.+)$", re.IGNORECASE | re.MULTILINE)
_ANSWER_LINE = re.compile(r"^\s*(?:A(?:nswer)?\s*[:.-])\s*(.+)$", re.IGNORECASE | re.MULTILINE)

QUESTION_SYSTEM = "You write exam questions about company documents. Follow the format exactly."


@dataclass(frozen=True)
class QA:
    question: str
    answer: str  # one grounded sentence, no citation marker
    origin: str  # extractive | slm | teacher


def clean_sentence(text: str) -> str:
    """A source sentence as answer prose: no list/quote markers, emphasis or line breaks; ends with a stop."""
    s = _LIST_MARK.sub("", text.strip())
    s = _EMPHASIS.sub("", s)
    s = " ".join(s.split()).strip()
    if s and s[-1] not in ".!?":
        s = s.rstrip(":;,") + "."
    return s


_WRAPPED = re.compile(r"(?<=[^\s.!?:;|])[ \t]*\n[ \t]*(?=[a-z(])")


def unwrap(text: str) -> str:
    """Join hard-wrapped lines (PDF text) where a line ends mid-sentence and the next goes on in lower case."""
    return _WRAPPED.sub(" ", text)


def _is_candidate(sentence: str) -> bool:
    """A complete, self-contained statement: a list item, or a capitalised sentence with its full stop."""
    t = sentence.strip()
    if not t or t.startswith(("#", "|", "```", "<")):
        return False
    n = len(words(t))
    if not MIN_WORDS <= n <= MAX_WORDS:
        return False
    if t.rstrip("\"')").endswith("?"):  # a question in the source is not an answer
        return False
    if _LIST_MARK.match(t):
        return True
    body = _EMPHASIS.sub("", t).lstrip("\"'(")
    return bool(body) and (body[0].isupper() or body[0].isdigit()) and t.rstrip("\"')").endswith((".", "!"))


def _fact_score(sentence: str) -> float:
    """Higher for sentences that state checkable facts: numbers, names, dates, middling length."""
    ws = sentence.split()
    digits = sum(1 for w in ws if any(c.isdigit() for c in w))
    names = sum(1 for w in ws[1:] if w[:1].isupper())
    n = len(ws)
    length = 1.0 if 8 <= n <= 30 else 0.5
    return 2.0 * min(digits, 2) + 0.5 * min(names, 4) + length


def document_frequencies(texts: Iterable[str]) -> tuple[Counter, int, set[str]]:
    """Per content word, how many of ``texts`` contain it (for choosing rare keywords); the count
    of texts; and the normalised sentences that occur in more than one text."""
    df: Counter = Counter()
    sentences: Counter = Counter()
    n = 0
    for t in texts:
        n += 1
        df.update(set(_keywords(t)))
        sentences.update({normalise_question(s.text) for s in sentence_spans(unwrap(t))})
    return df, n, {s for s, c in sentences.items() if c > 1}


def _keywords(text: str) -> list[str]:
    out = []
    for w in words(text):
        if len(w) > 2 and w not in STOPWORDS and not any(c.isdigit() for c in w):
            out.append(w)
    return out


class ExtractiveWriter:
    """Deterministic questions from a chunk's fact-like sentences (see the module doc)."""

    origin = "extractive"
    TEMPLATES = (
        "What does the {where} say about {kws}?",
        "According to the {where}, what is stated about {kws}?",
        "What should I know about {kws} from the {where}?",
    )

    def __init__(self, df: Counter | None = None, n_docs: int = 1, *, per_chunk: int = 1, keywords: int = 3,
                 skip: Iterable[str] = ()):
        """``skip``: normalised sentences never used (those repeated across chunks: page headers,
        boilerplate, chunk overlaps; their gold source would be ambiguous)."""
        self.skip = frozenset(skip)
        self.df = df or Counter()
        self.n_docs = max(1, n_docs)
        self.per_chunk = per_chunk
        self.keywords = keywords

    def _idf(self, w: str) -> float:
        return math.log((1 + self.n_docs) / (1 + self.df.get(w, 0))) + 1.0

    def key_sentences(self, text: str, avoid: Iterable[str] = ()) -> list[str]:
        """The chunk's most fact-like sentences, skipping those mostly made of ``avoid`` (title, heading)."""
        avoid_text = " ".join(avoid)
        cands = [s.text for s in sentence_spans(unwrap(text)) if _is_candidate(s.text)
                 and not (avoid_text and overlap(s.text, avoid_text) >= 0.6)
                 and normalise_question(s.text) not in self.skip]
        ranked = sorted(enumerate(cands), key=lambda t: (-_fact_score(t[1]), t[0]))
        chosen: list[str] = []
        for _, s in ranked:
            if all(overlap(s, c) < 0.6 for c in chosen):
                chosen.append(s)
            if len(chosen) >= self.per_chunk:
                break
        return chosen

    def question_for(self, sentence: str, chunk: Chunk, title: str) -> str | None:
        section = chunk.heading_path[-1].strip() if chunk.heading_path else ""
        where_words = set(_keywords(f"{title} {section}"))
        kws = [w for w in dict.fromkeys(_keywords(sentence)) if w not in where_words]
        if not kws:
            return None
        best = sorted(kws, key=lambda w: (-self._idf(w), kws.index(w)))[: self.keywords]
        best = [w for w in kws if w in best]  # back in sentence order
        kw_text = best[0] if len(best) == 1 else ", ".join(best[:-1]) + " and " + best[-1]
        title = " ".join(title.split()) or "the documentation"
        where = f"'{section}' section of {title}" if section and section.lower() != title.lower() else title
        pick = int(hashlib.sha256(f"{chunk.id}|{sentence}".encode()).hexdigest(), 16) % len(self.TEMPLATES)
        return self.TEMPLATES[pick].format(where=where, kws=kw_text)

    def write(self, chunk: Chunk, title: str) -> list[QA]:
        out = []
        for s in self.key_sentences(chunk.text, avoid=(title, *chunk.heading_path[-1:])):
            q = self.question_for(s, chunk, title)
            if q:
                out.append(QA(q, clean_sentence(s), self.origin))
        return out


def question_prompt(chunk: Chunk, title: str) -> list[Message]:
    from kb_chatbot.app.answer.prompts import neutralise

    section = " > ".join(chunk.heading_path)
    head = f"Document: {title}" + (f"\nSection: {section}" if section else "")
    return [
        Message("system", QUESTION_SYSTEM),
        Message("user", (
            f"{head}\n<passage>\n{neutralise(chunk.text.strip())}\n</passage>\n"
            "Write one question an employee might ask that this passage answers, and its answer "
            "in one sentence using only the passage. Reply in exactly two lines:\n"
            "Question: ...\nAnswer: ..."
        )),
    ]


def parse_qa(text: str) -> tuple[str, str] | None:
    q = _QUESTION_LINE.search(text)
    a = _ANSWER_LINE.search(text)
    if not q or not a:
        return None
    return " ".join(q.group(1).split()), " ".join(a.group(1).split())


_NUMBER = re.compile(r"\d+(?:[.,:]\d+)*")


def answers_question(answer: str, question: str, chunk_text: str) -> bool:
    """A statement (not a question) that adds >= 2 content words to the question, with every
    number it states present in the chunk (a small model invents years and amounts)."""
    if not answer or answer.rstrip("\"')").endswith("?"):
        return False
    if len(content_words(answer) - content_words(question)) < 2:
        return False
    return all(n in chunk_text for n in _NUMBER.findall(answer))


def grounded_answer(answer: str, chunk_text: str, question: str = "") -> str | None:
    """The answer's first sentence when it is grounded in the chunk (>= ``GROUNDED`` of its
    content words occur there) and answers the question (:func:`answers_question`), else None.

    No "closest sentence of the chunk" rescue: that sentence answers the model's answer, not
    necessarily the question, and a wrong label is worse than an extractive question."""
    spans = sentence_spans(answer)
    first = spans[0].text if spans else answer
    if (len(words(first)) >= 3 and content_words(first) and overlap(first, chunk_text) >= GROUNDED
            and answers_question(first, question, chunk_text)):
        return clean_sentence(first)
    return None


def valid_question(q: str, chunk_text: str) -> bool:
    n = len(words(q))
    return q.endswith("?") and 4 <= n <= 30 and overlap(q, chunk_text) > 0 and "<" not in q


class ModelWriter:
    """Questions by a generator (the SLM or a teacher endpoint), checked, with extractive fallback."""

    def __init__(self, generator, fallback: ExtractiveWriter, *, origin: str, max_tokens: int = 96):
        self.generator = generator
        self.fallback = fallback
        self.origin = origin
        self.max_tokens = max_tokens
        self.accepted = 0
        self.rejected = 0

    def write(self, chunk: Chunk, title: str) -> list[QA]:
        try:
            reply = "".join(t.text for t in self.generator.stream(
                question_prompt(chunk, title), GenParams(max_tokens=self.max_tokens, temperature=0.0)))
        except Exception as e:  # a model failure costs this chunk its model question only
            log.warning("finetune question_model_failed chunk_id=%s error=%r", chunk.id, str(e)[:200])
            reply = ""
        parsed = parse_qa(reply)
        if parsed:
            q, a = parsed
            ans = grounded_answer(a, chunk.text, q)
            if ans and valid_question(q, chunk.text):
                self.accepted += 1
                return [QA(q, ans, self.origin)]
        self.rejected += 1
        log.debug("finetune question_model_rejected chunk_id=%s reply=%r", chunk.id, reply[:200])
        return self.fallback.write(chunk, title)


def normalise_question(q: str) -> str:
    """The dedup key of a question: lower case, words only."""
    return " ".join(words(q))


def writers_summary(writer: object) -> dict[str, int]:
    return {"model_accepted": getattr(writer, "accepted", 0), "model_rejected": getattr(writer, "rejected", 0)}


__all__: Sequence[str] = (
    "QA", "ExtractiveWriter", "ModelWriter", "clean_sentence", "document_frequencies", "grounded_answer",
    "normalise_question", "parse_qa", "question_prompt", "valid_question",
)
