"""The seams: small protocols that backends implement and services receive."""
from __future__ import annotations

from typing import Iterator, Protocol, Sequence, runtime_checkable

import numpy as np

from kb_chatbot.core.types import Answer, AnswerEvent, Document, GenParams, Hit, IngestFailure, Message, Principal, Token


@runtime_checkable
class Embedder(Protocol):
    dim: int
    model_id: str

    def embed_documents(self, texts: Sequence[str]) -> np.ndarray:
        """(n, dim) float32, L2-normalised."""
        ...

    def embed_query(self, text: str) -> np.ndarray:
        """(dim,) float32, L2-normalised."""
        ...


@runtime_checkable
class Retriever(Protocol):
    def retrieve(self, query: str, *, user: Principal, top_k: int) -> list[Hit]:
        """Only chunks ``user`` may read, best first. The ACL filter runs inside."""
        ...


@runtime_checkable
class Generator(Protocol):
    """A chat model. Every backend implements all of it (tests/contracts/test_generator_contract.py)."""

    model_id: str

    def stream(self, messages: Sequence[Message], params: GenParams) -> Iterator[Token]:
        """The reply, token by token; honours ``params.max_tokens`` and ``params.stop`` (stop
        strings end the reply and are not returned); the last token carries ``finish_reason``."""
        ...

    def complete(self, messages: Sequence[Message], params: GenParams | None = None) -> str:
        """The whole reply as one string."""
        ...

    def yes_probability(self, messages: Sequence[Message]) -> float:
        """P("yes") / (P("yes") + P("no")) for the first token of the reply: the judge used by
        the grounding check and the reranker. In [0, 1]."""
        ...

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` in this model's tokenizer (prompt budgets)."""
        ...

    def warm_up(self) -> None:
        """Load the model now, so the first question is not slow."""
        ...


@runtime_checkable
class Connector(Protocol):
    """Yields the Documents of one source.

    A file that cannot be read never raises out of ``documents()``: it is appended to
    ``failures`` (with the doc id it would have had, when known) and iteration goes on.
    A source that cannot be read at all (missing folder, not an export) raises SourceError.
    Document ids are ``f"{source}:{...}"`` so they are unique across sources.
    """

    source_type: str
    failures: list[IngestFailure]

    def documents(self) -> Iterator[Document]: ...

    def expected_count(self) -> int | None:
        """How many documents ``documents()`` will yield, if cheap to know (progress bars)."""
        ...


class AnswerService(Protocol):
    def answer(self, question: str, *, user: Principal, history: Sequence[Message] = ()) -> Answer: ...

    def stream(
        self, question: str, *, user: Principal, history: Sequence[Message] = ()
    ) -> Iterator[AnswerEvent]: ...
