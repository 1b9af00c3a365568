"""Support: the answer model's own yes/no "does source [n] state this claim?", asked as a
continuation of the answer conversation (sources, question, the model's answer, then the
check). llama.cpp reuses the KV cache of the common prefix, so a check costs the answer's and
the claim's tokens, not a re-read of the sources."""
from __future__ import annotations

from dataclasses import replace

from kb_chatbot.app.answer.checks.base import CheckContext, SentenceCheck, failed
from kb_chatbot.app.answer.prompts import build_check_messages, build_support_messages
from kb_chatbot.core.protocols import Generator

#: P(yes) below this fails the check. The 1.5B model gives ~0.9 to claims its source states
#: and ~0.1 to those it does not (STACK.md); 0.5 is the natural cut.
SUPPORT_MIN = 0.5


class SupportGate:
    name = "support"

    def __init__(self, generator: Generator, support_min: float = SUPPORT_MIN):
        self.generator = generator
        self.support_min = support_min

    def check(self, c: SentenceCheck, ctx: CheckContext) -> SentenceCheck:
        if c.verbatim:  # the source's own code, copied: its own evidence
            return c
        claim = c.sentence.claim
        if ctx.messages:  # the prompt that produced the answer: its KV cache is reused
            check = build_check_messages(ctx.messages, claim, c.sources)
        else:
            evidence = "\n".join(ctx.hits[n - 1].prompt_text for n in c.sources)
            check = build_support_messages(claim, evidence)
        p = float(self.generator.yes_probability(check))
        if p < self.support_min:
            return failed(c, self.name, f"the model does not find it in source {', '.join(map(str, c.sources))}",
                          support=p)
        return replace(c, support=p)
