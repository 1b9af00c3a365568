"""The ``openai`` backend: any OpenAI-compatible chat server (vLLM, llama.cpp server, OpenAI).

Uses the official ``openai`` client (streaming chat completions). The escalation model of the
answer service is one of these too. Nothing is sent anywhere unless an admin configures it.
"""
from __future__ import annotations

import logging
import math
import threading
from typing import Any, Iterator, Sequence

from kb_chatbot.app.generators.base import (
    GeneratorBase,
    StopFilter,
    merge_finish,
    to_dicts,
    yes_no_from_text,
    yes_share_from_top,
)
from kb_chatbot.core.errors import GeneratorError
from kb_chatbot.core.types import GenParams, Message, Token

log = logging.getLogger(__name__)


class OpenAIGenerator(GeneratorBase):
    def __init__(
        self,
        base_url: str,
        model: str,
        api_key: str | None = None,
        timeout: float = 60.0,
        *,
        max_retries: int = 2,
    ):
        self.base_url = base_url.rstrip("/")
        self.model = model
        self.model_id = model
        self._api_key = api_key or "not-needed"  # local servers ignore it; the client wants one
        self.timeout = timeout
        self.max_retries = max_retries
        self._client: Any = None
        self._lock = threading.Lock()

    def __repr__(self) -> str:  # never shows the key
        return f"OpenAIGenerator(base_url={self.base_url!r}, model={self.model!r})"

    def _get_client(self) -> Any:
        with self._lock:
            if self._client is None:
                try:
                    import openai
                except ImportError as e:  # pragma: no cover - a declared dependency
                    raise GeneratorError("the openai backend needs the openai package: pip install openai") from e
                self._client = openai.OpenAI(
                    base_url=self.base_url, api_key=self._api_key, timeout=self.timeout, max_retries=self.max_retries
                )
            return self._client

    def warm_up(self) -> None:
        self._get_client()

    def _call(self, **kwargs: Any) -> Any:
        import openai

        try:
            return self._get_client().chat.completions.create(model=self.model, **kwargs)
        except openai.APITimeoutError as e:
            raise GeneratorError(f"the model server at {self.base_url} did not answer within {self.timeout:g} s") from e
        except openai.APIConnectionError as e:
            raise GeneratorError(f"cannot reach the model server at {self.base_url}: {_cause(e)}") from e
        except openai.APIStatusError as e:
            raise GeneratorError(
                f"the model server at {self.base_url} refused the request (HTTP {e.status_code}): {_short(e.message)}"
            ) from e

    def stream(self, messages: Sequence[Message], params: GenParams) -> Iterator[Token]:
        return merge_finish(self._stream(messages, params))

    def _stream(self, messages: Sequence[Message], params: GenParams) -> Iterator[Token]:
        import openai

        kwargs: dict[str, Any] = dict(
            messages=to_dicts(messages),
            stream=True,
            max_tokens=params.max_tokens,
            temperature=params.temperature,
            top_p=params.top_p,
            seed=params.seed,
        )
        if params.stop:
            kwargs["stop"] = list(params.stop)
        if params.logprobs:
            # top_logprobs too: llama.cpp's server streams logprobs only when it is set (with
            # logprobs=True alone every chunk's logprobs is null); OpenAI and vLLM accept it
            kwargs["logprobs"] = True
            kwargs["top_logprobs"] = 1
        chunks = self._call(**kwargs)
        finish: str | None = None
        # the server is asked to stop too, but some OpenAI-compatible servers ignore stop
        # strings or accept only four: the client enforces them as well
        stops = StopFilter(params.stop)
        try:
            for chunk in chunks:
                if not chunk.choices:
                    continue
                choice = chunk.choices[0]
                text = stops.feed((choice.delta.content if choice.delta else None) or "")
                lp = None
                if choice.logprobs is not None and choice.logprobs.content:
                    lp = math.fsum(c.logprob for c in choice.logprobs.content)
                if text or (lp is not None and not stops.hit):
                    yield Token(text, logprob=lp)
                if stops.hit:
                    finish = "stop"
                    break
                if choice.finish_reason:
                    finish = choice.finish_reason
        except openai.APIConnectionError as e:
            raise GeneratorError(f"lost the connection to the model server at {self.base_url}: {_cause(e)}") from e
        finally:
            close = getattr(chunks, "close", None)
            if close:
                close()
        tail = stops.flush()
        if tail:
            yield Token(tail)
        yield Token("", finish_reason="length" if finish == "length" else "stop")

    def yes_probability(self, messages: Sequence[Message]) -> float:
        """From the top-20 log-probabilities of a one-token reply; servers without logprobs:
        1.0 / 0.0 from a short text answer (0.5 when it is neither yes nor no)."""
        resp = self._call(
            messages=to_dicts(messages), max_tokens=1, temperature=0.0, logprobs=True, top_logprobs=20
        )
        choice = resp.choices[0]
        content = choice.logprobs.content if choice.logprobs is not None else None
        if content:
            top = {t.token: t.logprob for t in content[0].top_logprobs or []}
            top.setdefault(content[0].token, content[0].logprob)
            share = yes_share_from_top(top)
            if share is not None:
                return share
        text = choice.message.content or ""
        if not content:  # no logprobs from this server: ask for a few words and read them
            text = self._call(messages=to_dicts(messages), max_tokens=3, temperature=0.0).choices[0].message.content or ""
        share = yes_no_from_text(text)
        log.debug("model=%s yes_probability=text answer=%r", self.model_id, text[:20])
        return 0.5 if share is None else share

    def count_tokens(self, text: str) -> int:
        """Servers do not expose their tokenizer here: ~4 characters per token (English)."""
        return max(1, math.ceil(len(text) / 4)) if text else 0


def _cause(e: BaseException) -> str:
    inner = e.__cause__ or e.__context__
    return _short(str(inner) if inner else str(e))


def _short(s: str, n: int = 200) -> str:
    s = " ".join(s.split())
    return s if len(s) <= n else s[: n - 1] + "…"
