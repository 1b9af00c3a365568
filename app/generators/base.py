"""What every generator backend shares (the factory is :func:`generators.make_generator`).

Backends (``llamacpp``, ``transformers``, ``openai``, ``fake``) implement the whole
:class:`kb_chatbot.core.protocols.Generator`: ``stream`` (stop strings honoured), ``complete``,
``yes_probability(messages)`` (P("yes") / (P("yes") + P("no")) for the first token of the
assistant's reply: the grounding check and the reranker), ``count_tokens`` and ``warm_up``.
Only core types cross this boundary: backend objects are converted inside each module.
"""
from __future__ import annotations

import logging
import math
import os
import re
import sys
from dataclasses import replace
from pathlib import Path
from typing import Callable, Iterable, Iterator, Mapping, Sequence

from kb_chatbot.core.errors import GeneratorError
from kb_chatbot.core.types import GenParams, Message, Token

log = logging.getLogger(__name__)

#: First-token spellings counted as "yes" / "no" (only those that are one token are used).
YES_WORDS = ("yes", "Yes", "YES", " yes", " Yes", " YES")
NO_WORDS = ("no", "No", "NO", " no", " No", " NO")


class GeneratorBase:
    """Shared conveniences; subclasses implement ``stream``, ``yes_probability``, ``count_tokens``."""

    model_id: str = ""
    #: True when ``stream`` continues a conversation that ends with an assistant message: the
    #: reply extends that message's text instead of starting a new turn (the answer service
    #: pauses after a sentence to check it, then resumes). Backends that cannot prefill a
    #: reply (an OpenAI-compatible server) leave it False: their answers are checked at the end.
    continues_assistant: bool = False

    def stream(self, messages: Sequence[Message], params: GenParams) -> Iterator[Token]:  # pragma: no cover
        raise NotImplementedError

    def complete(self, messages: Sequence[Message], params: GenParams | None = None) -> str:
        """The whole reply as one string (for short internal calls such as query rewriting)."""
        return "".join(t.text for t in self.stream(messages, params or GenParams()))

    def yes_probability(self, messages: Sequence[Message]) -> float:  # pragma: no cover
        raise NotImplementedError

    def count_tokens(self, text: str) -> int:  # pragma: no cover
        raise NotImplementedError

    def warm_up(self) -> None:
        """Load the model now (servers call this at start so the first question is not slow)."""

    def __repr__(self) -> str:
        return f"{type(self).__name__}(model_id={self.model_id!r})"


def split_continuation(messages: Sequence[Message]) -> tuple[Sequence[Message], str]:
    """(the conversation to open a new assistant turn for, the text that turn starts with):
    a trailing assistant message is a reply to continue; otherwise there is none ("")."""
    if messages and messages[-1].role == "assistant":
        return messages[:-1], messages[-1].content
    return messages, ""


def to_dicts(messages: Sequence[Message]) -> list[dict[str, str]]:
    """Chat messages in the OpenAI / HF chat-template shape."""
    return [{"role": m.role, "content": m.content} for m in messages]


def merge_finish(tokens: Iterable[Token]) -> Iterator[Token]:
    """Move a trailing empty ``Token("", finish_reason=x)`` onto the last text token.

    Backends learn the finish reason only after the last piece; holding one token back costs
    nothing visible and keeps the contract "finish_reason is set on the last token".
    """
    held: Token | None = None
    try:
        for tok in tokens:
            if held is not None:
                if tok.finish_reason and not tok.text:
                    yield replace(held, finish_reason=tok.finish_reason, logprob=_add(held.logprob, tok.logprob))
                    return
                yield held
            held = tok
        if held is not None:
            yield held
    finally:  # a caller that stops early (the answer service pauses to check a sentence) frees the model now
        close = getattr(tokens, "close", None)
        if close is not None:
            close()


def _add(a: float | None, b: float | None) -> float | None:
    if a is None:
        return b
    return a if b is None else a + b


class StopFilter:
    """Cuts streamed text at the first stop string, holding back text that may start one."""

    def __init__(self, stops: Sequence[str]):
        self.stops = [s for s in stops if s]
        self.buffer = ""
        self.hit = False

    def feed(self, text: str) -> str:
        """Text that is safe to emit now ('' while a possible stop string is pending)."""
        if not self.stops:
            return text
        if self.hit:
            return ""
        self.buffer += text
        cut = min((i for i in (self.buffer.find(s) for s in self.stops) if i >= 0), default=-1)
        if cut >= 0:
            out, self.buffer, self.hit = self.buffer[:cut], "", True
            return out
        hold = 0
        for s in self.stops:
            for k in range(min(len(s) - 1, len(self.buffer)), 0, -1):
                if self.buffer.endswith(s[:k]):
                    hold = max(hold, k)
                    break
        out = self.buffer[: len(self.buffer) - hold]
        self.buffer = self.buffer[len(self.buffer) - hold :]
        return out

    def flush(self) -> str:
        out, self.buffer = ("" if self.hit else self.buffer), ""
        return out


def single_token_ids(encode: Callable[[str], list[int]], words: Sequence[str]) -> list[int]:
    """Ids of the words that encode to exactly one token (deduplicated, in order)."""
    out: list[int] = []
    for w in words:
        ids = encode(w)
        if len(ids) == 1 and ids[0] not in out:
            out.append(ids[0])
    return out


def yes_no_token_ids(encode: Callable[[str], list[int]], model_id: str) -> tuple[list[int], list[int]]:
    """(yes ids, no ids): the single-token spellings of yes / no in this vocabulary."""
    yes, no = single_token_ids(encode, YES_WORDS), single_token_ids(encode, NO_WORDS)
    if not yes or not no:
        raise GeneratorError(f"{model_id}: the vocabulary has no single-token 'yes'/'no'")
    return yes, no


def yes_share_from_logprobs(yes_logprobs: Sequence[float], no_logprobs: Sequence[float]) -> float | None:
    """P(yes) / (P(yes) + P(no)) from the log-probabilities of the yes and no spellings."""
    if not yes_logprobs and not no_logprobs:
        return None
    ly = _logsumexp(yes_logprobs)
    ln = _logsumexp(no_logprobs)
    if ly == -math.inf and ln == -math.inf:
        return None
    return 1.0 / (1.0 + math.exp(ln - ly)) if ly != -math.inf else 0.0


def yes_share_from_top(top: Mapping[str, float]) -> float | None:
    """Same, from a ``{token_text: logprob}`` map such as an OpenAI ``top_logprobs`` list."""
    yes, no = [], []
    for text, lp in top.items():
        word = re.sub(r"[^a-z]", "", text.lower())
        if word == "yes":
            yes.append(lp)
        elif word == "no":
            no.append(lp)
    return yes_share_from_logprobs(yes, no)


def yes_no_from_text(text: str) -> float | None:
    """1.0 / 0.0 when the reply starts with yes / no (for servers that return no logprobs)."""
    m = re.match(r"\W*(yes|no)\b", text.strip().lower())
    if not m:
        return None
    return 1.0 if m.group(1) == "yes" else 0.0


def _logsumexp(xs: Sequence[float]) -> float:
    if not xs:
        return -math.inf
    m = max(xs)
    if m == -math.inf:
        return m
    return m + math.log(sum(math.exp(x - m) for x in xs))


def physical_cores() -> int:
    """Physical cores this process may run on: the CPU affinity set with SMT siblings counted
    once, capped by a cgroup CPU quota (containers). At least 1."""
    try:
        cpus = sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cpus = list(range(os.cpu_count() or 1))
    cores = set()
    for c in cpus:
        try:
            cores.add(Path(f"/sys/devices/system/cpu/cpu{c}/topology/thread_siblings_list").read_text().strip())
        except OSError:
            cores.add(str(c))
    n = len(cores) or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            n = min(n, max(1, int(int(quota) // int(period))))
    except (OSError, ValueError):
        pass
    return max(1, n)


def resolve_threads(threads: int | str) -> int:
    """``generator.threads``: a number, or "auto" for every physical core (a dedicated server)."""
    return physical_cores() if threads == "auto" else int(threads)


def configure_threads(threads: int, wait: str = "spin") -> None:
    """How OpenMP worker threads wait (``generator.thread_wait``), in the environment before
    libgomp loads: it reads the environment once, when torch or llama.cpp first loads it (torch
    bundles it), so ``kb`` calls this at start, before any model. An administrator's own
    OMP_WAIT_POLICY / GOMP_SPINCOUNT win.

    With 2+ threads, libgomp's default (spin ~300,000 iterations before sleeping) collapses
    throughput when another busy process shares the cores (STACK.md). ``wait="sleep"``
    (``OMP_WAIT_POLICY=PASSIVE``) makes idle workers sleep at once: steady under load, but every
    operation of every token wakes them, and writing is 1.38x slower on an idle machine.
    ``wait="spin"`` lets them spin briefly (``GOMP_SPINCOUNT=1000``) before sleeping: as fast
    as libgomp's default when the server is idle, 0.74x of sleeping when another process is busy
    (docs/BENCH.md).
    """
    if threads <= 1 or "OMP_WAIT_POLICY" in os.environ or "GOMP_SPINCOUNT" in os.environ:
        return
    if "torch" in sys.modules or "llama_cpp" in sys.modules:
        log.warning("generator.thread_wait=%s comes too late: torch or llama.cpp has loaded OpenMP already "
                    "(set OMP_WAIT_POLICY / GOMP_SPINCOUNT in the environment instead)", wait)
    if wait == "spin":
        os.environ["GOMP_SPINCOUNT"] = "1000"
    else:
        os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
