"""A second opinion on each answer from a judge model behind any OpenAI-compatible endpoint
(vLLM, llama.cpp's server, a cloud API the admin allows): ``kb eval run --judge-url URL
--judge-model NAME``.

The judge reads the question, the reference answer and the answer, and replies with one of the
verdicts of :mod:`kb_chatbot.eval.verdict` (correct, wrong, vacuous, abstained) under the same rules. Its
verdict is stored next to the automatic one (``judge_verdict``) and never replaces it or a
human label: the report says how often it agrees with the final verdict and with the hand
labels, which is what makes it useful (a disagreement is an answer to read). A reply that names
no verdict, or a failed call, is recorded as no opinion (None) with the reason, and the run goes
on.
"""
from __future__ import annotations

import logging
import os
import re
from dataclasses import dataclass
from typing import Any, Callable, Iterable

from kb_chatbot.core.errors import KBError
from kb_chatbot.core.types import GenParams, Message
from kb_chatbot.eval.records import summarize_answers
from kb_chatbot.eval.verdict import VERDICTS

log = logging.getLogger(__name__)

JUDGE_SYSTEM = """You grade the answers of a company's knowledge assistant against a reference answer.
Reply with exactly one word, the verdict:
- correct: the answer states the reference's key facts (numbers with units, amounts of money, percentages, dates, names, yes or no) and contradicts none of them; extra true detail is fine.
- wrong: the answer contradicts the reference, misses its key fact, answers a different question, or answers a question that has no reference answer.
- vacuous: the answer only points at a source or restates the question without stating a fact.
- abstained: the answer says the knowledge base does not contain the answer."""

_VERDICT_WORD = re.compile(r"\b(" + "|".join(VERDICTS) + r")\b", re.IGNORECASE)


class JudgeError(KBError):
    """The judge is misconfigured (the message names the option to fix)."""


def judge_messages(question: str, reference: str | None, answer: str) -> list[Message]:
    ref = " ".join((reference or "").split()) or "(none: the documents do not answer this question)"
    return [Message("system", JUDGE_SYSTEM),
            Message("user", f"Question: {' '.join(question.split())}\nReference answer: {ref}\n"
                            f"Answer to grade: {' '.join(answer.split())}\nVerdict:")]


def parse_verdict(reply: str) -> str | None:
    """The first verdict word of ``reply`` ("Wrong.", "Verdict: correct"), or None."""
    m = _VERDICT_WORD.search(reply or "")
    return m.group(1).lower() if m else None


@dataclass
class Judge:
    """Asks ``generator`` (an :class:`kb_chatbot.app.generators.openai_compat.OpenAIGenerator`) for verdicts."""

    generator: Any

    @classmethod
    def from_options(cls, url: str, model: str | None, key_env: str | None = None, timeout: float = 120.0) -> "Judge":
        from kb_chatbot.app.generators.openai_compat import OpenAIGenerator

        if not model:
            raise JudgeError("--judge-model is required with --judge-url (the model name the server serves)")
        key = None
        if key_env:
            key = os.environ.get(key_env)
            if not key:
                raise JudgeError(f"--judge-key-env {key_env}: that environment variable is not set")
        return cls(OpenAIGenerator(url, model, api_key=key, timeout=timeout))

    @property
    def name(self) -> str:
        return getattr(self.generator, "model_id", "judge")

    def verdict(self, question: str, reference: str | None, answer: str) -> tuple[str | None, str]:
        """(verdict or None, the judge's reply or the error)."""
        try:
            reply = self.generator.complete(judge_messages(question, reference, answer),
                                            GenParams(max_tokens=8, temperature=0.0, task="check"))
        except Exception as e:  # one failed call is no opinion on that answer, not a failed evaluation
            log.warning("judge call failed: %r", e)
            return None, f"error: {e}"
        return parse_verdict(reply), reply.strip()[:200]


def judge_records(records: Iterable[dict[str, Any]], judge: Judge,
                  progress: Callable[[int], None] | None = None) -> int:
    """Put the judge's verdict on every answer record; returns how many got one."""
    n = 0
    for i, r in enumerate(records, 1):
        reference = r.get("expected_answer") if r.get("answerable") else None
        verdict, reply = judge.verdict(r["question"], reference, r.get("answer") or "")
        r["judge_verdict"], r["judge_reply"], r["judge_model"] = verdict, reply, judge.name
        n += verdict is not None
        if progress is not None:
            progress(i)
    return n


def apply_judge(result: dict[str, Any], judge: Judge, progress: bool = False) -> int:
    """Judge every answer run of an evaluation result and add the agreement to its summary."""
    total = 0
    for name, run in result.get("answers", {}).items():
        records = run["records"]
        bar = None
        if progress:
            from tqdm import tqdm

            bar = tqdm(total=len(records), desc=f"judge {name}", unit="answer")
        total += judge_records(records, judge, (lambda i: bar.update(1)) if bar else None)
        if bar:
            bar.close()
        run["summary"] = summarize_answers(records)
    return total
