"""What the chat page needs from the services, as Protocols: the composition root
(:func:`kb_chatbot.app.kb.services.build_services`) provides them, tests pass fakes, and the
page imports neither the answer pipeline nor the index."""
from __future__ import annotations

from typing import Any, Iterator, Protocol, Sequence

from kb_chatbot.app.web.admin import IndexAdmin
from kb_chatbot.core.types import AnswerEvent, Message, Principal


class AnswerStream(Protocol):
    def stream(self, question: str, *, user: Principal, history: Sequence[Message] = ()) -> Iterator[AnswerEvent]:
        """Status, sources, draft, verified text, then always one ``answer`` event."""
        ...

    def forget(self, answer_id: str) -> None:
        """A reader rated this answer wrong: never serve it again from the answer cache."""
        ...


class AnswerLog(Protocol):
    def record_feedback(self, answer_id: str, user: Principal, rating: int, comment: str | None = None) -> Any:
        """Store a thumbs up (1) or down (-1) on one of ``user``'s answers."""
        ...

    def recent_answers(self, limit: int = 50) -> list[dict[str, Any]]: ...

    def feedback_summary(self) -> dict[str, Any]: ...


class ChatServices(Protocol):
    """The five things :class:`kb_chatbot.app.web.app.ChatController` uses."""

    @property
    def has_index(self) -> bool:
        """Whether an index has been published (else the page asks an admin to ingest)."""
        ...

    @property
    def answer_service(self) -> AnswerStream: ...

    @property
    def answer_log(self) -> AnswerLog: ...

    @property
    def index_admin(self) -> IndexAdmin: ...

    def warm_up(self) -> None:
        """Load the models before the first question (may take minutes)."""
        ...
