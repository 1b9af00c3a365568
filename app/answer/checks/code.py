"""Code: commands, code blocks, configuration keys and values copied from a cited source are
their own evidence.

Technical documentation answers with the thing itself: "To download the packages, use the
following command:" is empty without the command. A sentence's code (``inline`` spans and
fenced blocks) must appear verbatim, whitespace aside, in the source it cites (or in another
source, which then becomes its citation, as for a fact); then the sentence needs no yes/no from
the model: the reader sees exactly what the document says. Code found in no source fails the
sentence: an invented command is worse than none.
"""
from __future__ import annotations

import re
from dataclasses import replace

from kb_chatbot.app.answer.checks.base import CheckContext, SentenceCheck, failed

_CODE = re.compile(r"```[^\n`]*\n?(.*?)(?:```|\Z)|`([^`\n]+)`", re.S)
#: Inline spans shorter than this are words in backticks (`yes`, `on`), not code to verify.
MIN_CODE_CHARS = 3


def code_parts(text: str) -> list[str]:
    """The code of ``text``: fenced blocks' bodies and inline spans, stripped."""
    out = []
    for m in _CODE.finditer(text):
        body = (m.group(1) if m.group(1) is not None else m.group(2) or "").strip()
        if len(body) >= MIN_CODE_CHARS:
            out.append(body)
    return out


def _squash(text: str) -> str:
    return " ".join(text.replace("`", " ").split()).lower()


def verbatim_in(code: str, source: str) -> bool:
    """``code`` occurs in ``source``, whitespace, backticks and case aside."""
    return _squash(code) in _squash(source)


class CodeGate:
    name = "code"

    def check(self, c: SentenceCheck, ctx: CheckContext) -> SentenceCheck:
        parts = code_parts(c.sentence.claim)
        if not parts:
            return c
        texts = [f"{h.doc_title}\n{h.prompt_text}" for h in ctx.hits]
        cited = c.sources or tuple(range(1, len(texts) + 1))
        if all(any(verbatim_in(p, texts[n - 1]) for n in cited) for p in parts):
            return replace(c, verbatim=True)
        for n, text in enumerate(texts, 1):  # a wrong marker: the source that holds all the code
            if all(verbatim_in(p, text) for p in parts):
                return replace(c, sources=(n,), recited=True, verbatim=True)
        missing = next(p for p in parts if not any(verbatim_in(p, t) for t in texts))
        return failed(c, self.name, f"code not in any source: {missing[:60]}")
