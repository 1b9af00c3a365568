"""Follow-up condensing and query rewriting with the SLM, behind a guard.

``condense_question`` turns "and for contractors?" into "How many vacation days do
contractors get?" using the last few turns; ``rewrite_query`` turns a question into a
keyword-rich search query for the self-correction pass. Both keep the original whenever the
model's output looks wrong (empty, far too long, or sharing no word with the question), so a
weak model can only fail to help, never derail retrieval.
"""
from __future__ import annotations

import logging
import re
from typing import Sequence

from kb_chatbot.app.answer.citations import strip_markers
from kb_chatbot.core.text import content_words, words
from kb_chatbot.core.protocols import Generator
from kb_chatbot.core.types import GenParams, Message

log = logging.getLogger(__name__)

CONDENSE_SYSTEM = (
    "You rewrite a follow-up question from a chat into one standalone question that can be "
    "understood without the chat. Keep names and specific terms. Reply with the question only."
)
REWRITE_SYSTEM = (
    "You turn a question into a search query for a company knowledge base: the key terms plus "
    "likely synonyms, one line. Reply with the query only."
)
CONDENSE_PREFIX = "Follow-up question: "
REWRITE_PREFIX = "Question: "

#: An assistant turn is cut to this many characters in the condense prompt (prompt stays short).
TURN_CHARS = 400


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _guard(original: str, rewrite: str, *, extra_words: set[str] = frozenset()) -> str | None:
    """The cleaned rewrite, or None if it is empty, too long or unrelated to the question."""
    text = _one_line(rewrite)
    text = re.sub(r"^(standalone question|question|query|search query)\s*:\s*", "", text, flags=re.I)
    text = text.strip().strip('"').strip("'").strip()
    if not text:
        return None
    if len(text) > max(3 * len(original), len(original) + 200):
        return None
    allowed = content_words(original) | extra_words
    if allowed and not (content_words(text) & allowed):
        return None
    return text


def _generate(generator: Generator, messages: list[Message], max_tokens: int, task: str) -> str:
    return generator.complete(messages, GenParams(max_tokens=max_tokens, temperature=0.0, stop=("\n",), task=task))


#: Words that point back into the chat ("can I carry *them* over", "what about contractors?").
_ANAPHORA = re.compile(
    r"\b(?:it|its|they|them|their|theirs|that|those|these|this|one|ones|there|same|such|he|she|him|her)\b"
    r"|^\W*(?:and|also|but|so|then|what about|how about|and what about|what if|ok(?:ay)?|same for)\b",
    re.IGNORECASE)
#: A follow-up with at most this many content words of its own needs the chat to be understood.
SHORT_FOLLOW_UP = 6


def needs_context(question: str) -> bool:
    """True when ``question`` leans on the chat: a pronoun or an opening like "and"/"what about",
    or so few words of its own that it cannot be searched alone."""
    return bool(_ANAPHORA.search(question)) or len(content_words(question)) <= 1


def _with_context(question: str, previous: str) -> str:
    """The deterministic standalone form: the follow-up and the question it follows. Retrieval
    gets the earlier question's terms ("vacation days") beside the new ones ("carry over")."""
    return f"{_one_line(question).rstrip()} (follow-up to: {_one_line(previous)})"


def condense_question(generator, question: str, history: Sequence[Message], *, turns: int, max_tokens: int = 64) -> str:
    """A standalone version of ``question`` given the last ``turns`` user/assistant turns.

    No history (or ``turns == 0``): the question itself, and the model is not called. The
    model's rewrite is kept when it passes the guard and, for a question that leans on the chat
    (:func:`needs_context`), brings in a word of the earlier questions; otherwise the follow-up
    is joined to the question it follows (a small model often returns "can I carry them over?"
    unchanged, and retrieval then finds nothing about "them").
    """
    recent = [m for m in history if m.role in ("user", "assistant") and m.content.strip()]
    if not recent or turns <= 0:
        return question
    recent = recent[-2 * turns :]
    lines = []
    for m in recent:
        text = _one_line(strip_markers(m.content))
        if m.role == "assistant" and len(text) > TURN_CHARS:
            text = text[:TURN_CHARS] + " …"
        lines.append(f"{'User' if m.role == 'user' else 'Assistant'}: {text}")
    messages = [
        Message("system", CONDENSE_SYSTEM),
        Message("user", "Chat:\n" + "\n".join(lines) + f"\n\n{CONDENSE_PREFIX}{_one_line(question)}\nStandalone question:"),
    ]
    try:
        out = _generate(generator, messages, max_tokens, "condense")
    except Exception as e:  # a failing rewrite must not fail the answer
        log.warning("condense failed error=%r; keeping the question", e)
        return question
    # the rewrite may (and should) bring in words from the chat, e.g. the topic of "it"
    asked_before = [m.content for m in recent if m.role == "user"]
    chat_words = set().union(*(content_words(q) for q in asked_before))
    cleaned = _guard(question, out, extra_words=chat_words)
    leans = needs_context(question) and asked_before
    if leans and (cleaned is None or not (content_words(cleaned) & (chat_words - content_words(question)))):
        log.info("condense fallback=previous_question rewrite=%s", "rejected" if cleaned is None else "no_context")
        return _with_context(question, strip_markers(asked_before[-1]))
    if cleaned is None:
        log.info("condense rejected rewrite_chars=%d; keeping the question", len(out))
        return question
    return cleaned


def rewrite_query(generator, question: str, *, max_tokens: int = 48) -> str:
    """A keyword-rich search query for ``question``; the question itself if the rewrite fails."""
    messages = [
        Message("system", REWRITE_SYSTEM),
        Message("user", f"{REWRITE_PREFIX}{_one_line(question)}\nSearch query:"),
    ]
    try:
        out = _generate(generator, messages, max_tokens, "rewrite")
    except Exception as e:
        log.warning("query rewrite failed error=%r", e)
        return question
    cleaned = _guard(question, out)
    return cleaned if cleaned is not None else question


def keyword_query(question: str) -> str:
    """The question's content words (a fallback query without stop words)."""
    return " ".join(w for w in words(question) if content_words(w)) or question
