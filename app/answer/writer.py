"""The generate-pause-check loop: write an answer and check it sentence by sentence while it is
written, so the page shows only sentences that passed.

When a sentence is complete, generation pauses, the sentence goes through the checks
(:mod:`kb_chatbot.app.answer.checks`: facts, then the model's yes/no on its KV cache of the
sources), the sentences that passed so far are streamed as ``verified`` text, and generation
resumes where it stopped (the reply so far is prefilled; llama.cpp re-reads only the question
and that reply). A backend that cannot continue a reply (``continues_assistant`` False) is
checked at the end instead. The whole draft is then verified and scored.
"""
from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from typing import Sequence

from kb_chatbot.app.answer.checks import SubjectCheck, Verification, Verifier
from kb_chatbot.app.answer.citations import CitationResult, answer_sentences, extract_citations
from kb_chatbot.app.answer.confidence import ConfidenceModel, answer_features, sentence_support
from kb_chatbot.core.errors import GeneratorError
from kb_chatbot.core.types import AnswerEvent, GenParams, Hit, Message, Principal


@dataclass
class Attempt:
    """One written and checked draft."""

    text: str
    hits: tuple[Hit, ...]
    result: CitationResult
    features: dict[str, float]
    confidence: float
    support: list[float]
    model_id: str
    verification: Verification


@dataclass
class Run:
    """One question's clock: timings by step, seconds since it was asked."""

    question: str
    user: Principal
    t0: float = field(default_factory=time.perf_counter)
    timings: dict[str, float] = field(default_factory=dict)
    #: the question as corrected for spelling, when it was
    showing_for: str | None = None
    #: the answer cache's key of this question (None: not cacheable)
    cache_key: tuple | None = None
    #: a follow-up's question as typed, when the chat history filled it in (the names the
    #: subject check asks the cited sources for are the asker's own)
    asked: str | None = None

    def add(self, key: str, seconds: float) -> None:
        self.timings[key] = self.timings.get(key, 0.0) + seconds


def complete_sentences(text: str, n_sources: int) -> list:
    """The sentences of a reply still being written that are complete: all but the last, once
    the last has begun with a word (markers after a full stop still belong to the sentence
    before: "… weeks. [1]" is complete only when the next sentence starts)."""
    sentences = answer_sentences(text, n_sources)
    if len(sentences) < 2 or not re.match(r"\s*[^\s\[]", sentences[-1].text) or not re.search(r"\w", sentences[-1].text):
        return []
    return sentences[:-1]


def verify_mode(grounding_check: str) -> str:
    """answer.grounding_check -> the verifier's mode ("embedding" is the old name of "facts")."""
    return {"embedding": "facts"}.get(grounding_check, grounding_check)


class CheckedWriter:
    """Writes drafts with any generator; the local ``checker`` model checks them all (the model
    that wrote an answer checks it on its own KV cache; an escalation model's answer is checked
    by the local one, on the sources alone)."""

    def __init__(self, settings, checker, embedder, confidence: ConfidenceModel, subject: SubjectCheck):
        self.settings = settings
        self.checker = checker
        self.embedder = embedder
        self.confidence = confidence
        self.subject = subject

    def verifier(self, generator) -> Verifier:
        judge = generator if generator is self.checker else self.checker
        a = self.settings.answer
        return Verifier(judge, mode=verify_mode(a.grounding_check), answers_check=a.answers_check,
                        answers_min=a.answers_min)

    def write(self, generator, question: str, messages: list[Message], hits: Sequence[Hit], run: Run,
              first: bool = False):
        """Yield ``token`` and ``verified`` events while writing; return the :class:`Attempt`."""
        gcfg = self.settings.generator
        verifier = self.verifier(generator)
        own = verifier.generator is generator  # the prompt is in the checker's cache
        stepwise = verifier.mode != "off" and (verifier.mode == "facts" or getattr(generator, "continues_assistant", False))
        pieces: list[str] = []
        logprobs: list[float] = []
        checked, shown, budget = 0, "", gcfg.max_tokens
        conversation = list(messages)
        t = time.perf_counter()
        t_checks = 0.0
        while budget > 0:
            params = GenParams(max_tokens=budget, temperature=gcfg.temperature, logprobs=True)
            complete: list = []
            stream = generator.stream(conversation, params)
            try:
                for tok in stream:
                    if not pieces and first and "first_token" not in run.timings:
                        run.timings["first_token"] = time.perf_counter() - run.t0
                    budget -= 1
                    if tok.logprob is not None:
                        logprobs.append(tok.logprob)
                    if not tok.text:
                        continue
                    pieces.append(tok.text)
                    yield AnswerEvent("token", tok.text)
                    if stepwise:
                        complete = complete_sentences("".join(pieces), len(hits))
                        if len(complete) > checked:
                            break  # a sentence is complete: check it before writing on
                else:
                    complete = []
            except GeneratorError:
                raise
            except Exception as e:  # a backend failure is an error answer, not a crash of the UI
                raise GeneratorError(f"{getattr(generator, 'model_id', 'generator')}: {e}") from e
            finally:
                close = getattr(stream, "close", None)
                if close is not None:
                    close()
            if not complete:
                break  # the reply ended (or the budget did)
            t0 = time.perf_counter()
            for sentence in complete[checked:]:
                verifier.check_sentence(sentence, hits, question=question, messages=messages if own else ())
            checked = len(complete)
            now = verifier.shown_so_far(complete, question)
            # the answer-level subject check runs on the whole answer; what is shown before it
            # must pass it already, on the sources cited so far (nm-02: a right sentence about
            # the San Francisco office's Wi-Fi, asked about headquarters, was shown, then withdrawn)
            if now and self.subject.off_subject(question, hits, {n for c in verifier.passed_so_far(complete)
                                                                 for n in c.sources}, run.user,
                                                                 run.asked):
                now = ""
            t_checks += time.perf_counter() - t0
            if now != shown:
                shown = now
                if first and "first_verified" not in run.timings:
                    run.timings["first_verified"] = time.perf_counter() - run.t0
                yield AnswerEvent("verified", now)
            conversation = list(messages) + [Message("assistant", "".join(pieces))]
        run.add("generate", time.perf_counter() - t - t_checks)
        run.add("verify", t_checks)
        text = "".join(pieces).strip()
        return self.score(text, tuple(hits), logprobs, getattr(generator, "model_id", ""), run, question,
                          messages if own else (), verifier)

    def score(self, text: str, hits: tuple[Hit, ...], logprobs: list[float], model_id: str, run: Run,
              question: str, messages: Sequence[Message], verifier: Verifier) -> Attempt:
        """Verify the draft, keep what passed, and score the confidence of what is left."""
        t = time.perf_counter()
        mode = self.settings.answer.grounding_check
        v = verifier.verify(text, hits, question=question, messages=messages)
        run.add("verify", time.perf_counter() - t)
        t = time.perf_counter()
        kept = v.text if v.status not in ("abstained", "empty") else text
        draft_markers = extract_citations(text, hits)
        result = extract_citations(kept, hits)
        if mode == "slm":
            support = v.support if v.passed else [0.0] * len(result.sentences)
        else:
            support = sentence_support(result.sentences, hits, mode="embedding", embedder=self.embedder)
        feats = answer_features(result, hits, support, logprobs, question=question)
        feats["dropped_share"] = round(len(v.failed) / len(v.checks), 6) if v.checks else 0.0
        if v.answers_p is not None:  # logged, and the calibration of answer.answers_min reads it
            feats["answers_p"] = round(v.answers_p, 4)
        if draft_markers.markers_total:  # markers naming no source are judged on the draft as written
            feats["invalid_share"] = round(draft_markers.markers_invalid / draft_markers.markers_total, 6)
        # hard gate: nothing verified, nothing to be confident about
        conf = self.confidence.score(feats) if v.passed or mode == "off" else 0.0
        run.add("score", time.perf_counter() - t)
        return Attempt(result.text, hits, result, feats, conf, list(support), model_id, v)
