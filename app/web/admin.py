"""The admin tab's logic: recent questions and feedback, and the seam to the index admin.

Every function takes the caller's Principal and refuses non-admins (hiding the tab is only
cosmetic: Gradio endpoints can be called directly). Index status and the background re-index
come from an :class:`IndexAdmin` that the composition root (``kb_chatbot.app.kb.jobs``) passes in, so the
page never imports the ingest side.
"""
from __future__ import annotations

import logging
from typing import Any, Protocol

from kb_chatbot.core.errors import KBError
from kb_chatbot.core.types import Principal

log = logging.getLogger(__name__)


class NotAdminError(KBError):
    """The caller is not an admin."""


def require_admin(user: Principal) -> None:
    if not user.is_admin:
        log.warning("admin_denied user=%s", user.username)
        raise NotAdminError("this needs an admin login (server.auth.admins or the 'admins' group)")


class IndexAdmin(Protocol):
    """What the admin tab needs from the ingest side (implemented by ``kb_chatbot.app.kb.jobs.IndexAdmin``)."""

    running: bool

    def status(self, user: Principal) -> dict[str, Any]:
        """The dict ``kb status --json`` prints; refuses non-admins."""
        ...

    def start(self, user: Principal) -> str:
        """Start a background re-index of every enabled source; a message for the page."""
        ...

    def snapshot(self) -> dict[str, Any]:
        """The re-index job's progress: state, source, documents, expected, elapsed, summary."""
        ...


def recent_questions(answer_log, user: Principal, limit: int = 30) -> list[dict[str, Any]]:
    require_admin(user)
    rows = answer_log.recent_answers(limit)
    # only what the table shows: never the answer text or citations (the admin may not be
    # allowed to read the documents behind another user's answer)
    keep = ("ts", "username", "question", "route", "confidence", "corrected", "escalated")
    return [{k: r.get(k) for k in keep} for r in rows]


def feedback_summary(answer_log, user: Principal) -> dict[str, Any]:
    require_admin(user)
    return answer_log.feedback_summary()


