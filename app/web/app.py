"""The chat page (Gradio): login, streamed answers with source cards, feedback, admin tab.

``build_app(services, settings)`` returns the Blocks; ``launch_options(settings)`` the
arguments for ``Blocks.launch`` (auth, css, theme). The page logic lives in
:class:`ChatController`, plain Python that tests drive without a browser; the Gradio
handlers only turn a ``gr.Request`` into a :class:`Principal` and call it.

Security: the Principal comes from the login (or the trusted proxy headers) on every event,
never from anything the browser sends; the service filters by ACL before the model sees a
chunk, and this module only renders what the service returned for that same user. The
conversation history lives server-side, per browser session.
"""
from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import gradio as gr

from kb_chatbot.app.web import render as R
from kb_chatbot.app.auth import UserDirectory, header_user, principal_from_headers
from kb_chatbot.app.web.admin import IndexAdmin, NotAdminError, feedback_summary, recent_questions
from kb_chatbot.app.web.services import ChatServices
from kb_chatbot.core.errors import ConfigError, IndexError_, KBError, ModelNotFoundError
from kb_chatbot.core.settings import Settings, answer_slots
from kb_chatbot.core.types import Message, Principal

log = logging.getLogger(__name__)

STATIC_DIR = Path(__file__).resolve().parent / "static"
TITLE = "Knowledge assistant"
WARMING_UP = "Warming up the model… your question will be answered as soon as it is ready."
WAITING = "Starting…"
NOT_ANSWERED = "This question was not answered: the server was too busy. Please ask it again."
EMPTY_INDEX = ("The index is empty: run `kb reindex` (or ask an admin to press “Re-index now” in the "
               "Admin tab), then ask again.")


def in_line_note(ahead: int) -> str:
    """The waiting note of a question with ``ahead`` questions before it (never a 503)."""
    if ahead <= 0:
        return WAITING
    return f"In line: {ahead} question{'s' if ahead != 1 else ''} ahead of yours. It will be answered in turn…"


class AnswerLine:
    """Questions shown and waiting for a model slot, and answers being written, so a new
    question is told its place in line. A question whose request never reaches the answer step
    (the browser went away) is forgotten after STALE_S."""

    STALE_S = 900.0

    def __init__(self, slots: int):
        self.slots = slots
        self._lock = threading.Lock()
        self._waiting: dict[int, float] = {}
        self._busy = 0

    def join(self, key: int) -> int:
        """Put ``key`` in line; how many questions are ahead of it."""
        now = time.monotonic()
        with self._lock:
            self._waiting = {k: t for k, t in self._waiting.items() if now - t < self.STALE_S and k != key}
            ahead = len(self._waiting) + max(0, self._busy - self.slots + 1)
            self._waiting[key] = now
            return ahead

    def start(self, key: int) -> None:
        with self._lock:
            self._waiting.pop(key, None)
            self._busy += 1

    def finish(self) -> None:
        with self._lock:
            self._busy = max(0, self._busy - 1)
#: Warm-up failures that make answering impossible until the server is fixed and restarted.
_FATAL = (ModelNotFoundError, ConfigError, IndexError_)


class WarmUp:
    """Loads the embedder, the index and the model once, in a background thread."""

    def __init__(self, services: ChatServices):
        self.services = services
        self.state = "pending"  # pending | running | ready | degraded | failed
        self.error: str | None = None
        self._done = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()

    def start(self) -> "WarmUp":
        with self._lock:
            if self._thread is None:
                self.state = "running"
                self._thread = threading.Thread(target=self._run, name="kb-warmup", daemon=True)
                self._thread.start()
        return self

    def _run(self) -> None:
        import time

        t0 = time.perf_counter()
        try:
            self.services.warm_up()
            self.state = "ready"
            log.info("warm_up ready seconds=%.1f", time.perf_counter() - t0)
        except _FATAL as e:
            self.state, self.error = "failed", str(e)
            log.error("warm_up failed error=%r", str(e))
        except Exception as e:  # e.g. a remote backend that is down now may be up later
            self.state, self.error = "degraded", f"{type(e).__name__}: {e}"
            log.exception("warm_up failed; answers will still be attempted")
        finally:
            self._done.set()

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)


@dataclass
class ChatSession:
    """One browser session's conversation (kept server-side in gr.State)."""

    messages: list[dict[str, str]] = field(default_factory=list)  # what the Chatbot shows
    history: list[Message] = field(default_factory=list)  # what the service condenses with
    answer_ids: dict[int, str] = field(default_factory=dict)  # message index -> answer log id
    pending: str | None = None  # the question shown and waiting for its answer


class ChatController:
    """Everything the page does, as plain methods taking the caller's Principal."""

    def __init__(self, services: ChatServices, settings: Settings, warmup: WarmUp,
                 directory: UserDirectory | None = None, admin: IndexAdmin | None = None):
        self.services = services
        self.settings = settings
        self.warmup = warmup
        self.directory = directory
        #: index status and re-index for the admin tab (``services.index_admin`` unless given)
        self.reindex: IndexAdmin = admin if admin is not None else services.index_admin
        self.threshold = settings.answer.confidence_threshold
        #: model slots (server.concurrency resolved for the backend) and who waits for them
        self.slots = answer_slots(settings.server, settings.generator)
        self.line = AnswerLine(self.slots)

    # --- who ---------------------------------------------------------------------------
    def principal(self, request: Any) -> Principal:
        """The Principal for a gr.Request (login name, proxy headers, or anonymous)."""
        auth = self.settings.server.auth
        if request is None:
            return Principal.anonymous()
        if auth.mode == "users_file" and self.directory is not None:
            return self.directory.principal_for(getattr(request, "username", None))
        if auth.mode == "header":
            client = getattr(getattr(request, "client", None), "host", None)
            return principal_from_headers(getattr(request, "headers", None) or {}, auth, client)
        return Principal.anonymous()

    def greeting(self, user: Principal) -> str:
        if user.is_anonymous:
            return '<div class="kb-user">Not signed in: public documents only</div>'
        name = R.esc(user.display_name or user.username)
        groups = f' <span class="kb-muted">({R.esc(", ".join(user.groups))})</span>' if user.groups else ""
        logout = ' · <a href="logout">Sign out</a>' if self.settings.server.auth.mode == "users_file" else ""
        return f'<div class="kb-user">Signed in as <b>{name}</b>{groups}{logout}</div>'

    def banner(self) -> str:
        w = self.warmup
        if w.state in ("pending", "running"):
            return f'<div class="kb-banner kb-warming"><span class="kb-spinner"></span>{R.esc(WARMING_UP)}</div>'
        if w.state == "failed":
            return R.render_error(f"The answer model could not be loaded: {w.error}",
                                  "Fix the setting or install the package, then restart `kb serve`.")
        return ""

    # --- chat --------------------------------------------------------------------------
    def respond(self, question: str, session: ChatSession, user: Principal
                ) -> Iterator[tuple[list[dict[str, str]], ChatSession]]:
        """One turn: :meth:`begin` then :meth:`answer`; yields (chat messages, session)."""
        self.begin(question, session)
        yield session.messages, session
        yield from self.answer(session, user)

    def begin(self, question: str, session: ChatSession) -> bool:
        """Show the question at once, with a waiting note (the answer may queue behind others).

        Runs outside the queue, so a user whose question waits for a free model slot sees it.
        """
        question = (question or "").strip()
        if not question:
            return False
        if session.pending is not None:
            # the previous question never reached the answer step (its request was refused,
            # e.g. "Queue is full"): say so in its place, and never answer it under this one
            session.messages[-1] = {"role": "assistant", "content": R.render_error(NOT_ANSWERED)}
            log.warning("question_dropped reason=not_answered_before_next")
        session.messages.append({"role": "user", "content": R.render_user_message(question)})
        ahead = self.line.join(id(session))
        session.messages.append({"role": "assistant", "content": R.render_streaming(in_line_note(ahead), "")})
        session.pending = question
        return True

    def answer(self, session: ChatSession, user: Principal) -> Iterator[tuple[list[dict[str, str]], ChatSession]]:
        """Stream the answer to the pending question into its placeholder message."""
        question, session.pending = session.pending, None
        if question is None:
            yield session.messages, session
            return
        self.line.start(id(session))
        try:
            yield from self._answer(question, session, user)
        finally:
            self.line.finish()

    def _answer(self, question: str, session: ChatSession, user: Principal
                ) -> Iterator[tuple[list[dict[str, str]], ChatSession]]:
        msgs = session.messages
        idx = len(msgs) - 1

        def show(content: str):
            msgs[idx] = {"role": "assistant", "content": content}
            return msgs, session

        if not self.warmup.done:
            yield show(R.render_streaming(WARMING_UP, ""))
            while not self.warmup.wait(0.5):
                pass
        if self.warmup.state == "failed":
            yield show(R.render_error(f"The answer model could not be loaded: {self.warmup.error}",
                                      "An admin must fix it and restart `kb serve`."))
            return
        try:
            if not self.services.has_index:
                yield show(R.render_error(EMPTY_INDEX))
                return
            yield from self._stream(question, session, user, idx, show)
        except KBError as e:
            log.error("answer_failed user=%s error=%r", user.username, str(e))
            yield show(R.render_error(str(e)))
        except Exception:
            ref = uuid.uuid4().hex[:8]
            log.exception("answer_failed user=%s ref=%s", user.username, ref)
            yield show(R.render_error(f"Something went wrong while answering (reference {ref}). "
                                      "Please try again; the details are in the server log."))

    def _stream(self, question: str, session: ChatSession, user: Principal, idx: int, show):
        # the page shows checked text only: the sentences of the draft that passed their check
        # ("verified"), never the raw draft, which may still hold an invented fact
        status, verified, found = "Thinking…", "", ()
        history = list(session.history)
        key = f"s{idx}"
        for ev in self.services.answer_service.stream(question, user=user, history=history):
            if ev.kind == "status":
                status = ev.text
                yield show(R.render_streaming(status, verified, found, key))
            elif ev.kind == "sources":
                found = ev.sources
                yield show(R.render_streaming(status, verified, found, key))
            elif ev.kind == "discard":
                verified = ""  # the draft is being replaced
                yield show(R.render_streaming(status, verified, found, key))
            elif ev.kind == "verified":
                verified = ev.text
                yield show(R.render_streaming(status, verified, found, key))
            elif ev.kind == "answer" and ev.answer is not None:
                a = ev.answer
                key = R.answer_key(a, fallback=f"m{idx}")
                yield show(R.render_answer(a, threshold=self.threshold, key=key))
                if a.answer_id:
                    session.answer_ids[idx] = a.answer_id
                if a.route != "error":
                    keep = 2 * max(1, self.settings.answer.history_turns)
                    session.history = (history + [Message("user", question), Message("assistant", a.text)])[-keep:]
                log.info("ui_answer user=%s route=%s confidence=%.3f answer_id=%s",
                         user.username, a.route, a.confidence, a.answer_id)

    def clear(self) -> tuple[list, ChatSession]:
        return [], ChatSession()

    # --- feedback ----------------------------------------------------------------------
    def feedback(self, index: Any, liked: Any, comment: str | None, session: ChatSession,
                 user: Principal) -> str:
        """Store a thumbs up/down (+ optional comment) for the answer at chat ``index``."""
        if isinstance(index, (list, tuple)):
            index = index[0]
        answer_id = session.answer_ids.get(int(index)) if index is not None else None
        if answer_id is None:
            return "Only answers can be rated."
        if liked is True or liked == "Like":
            rating = 1
        elif liked is False or liked == "Dislike":
            rating = -1
        else:  # the thumb was un-clicked
            return "Rating removed from the page (the earlier rating stays recorded)."
        try:
            self.services.answer_log.record_feedback(answer_id, user, rating, comment=(comment or "").strip() or None)
        except KBError as e:
            log.warning("feedback_refused user=%s answer_id=%s error=%r", user.username, answer_id, str(e))
            return f"Feedback not saved: {e}"
        if rating < 0:  # a reader says it is wrong: never serve it again from the answer cache
            forget = getattr(self.services.answer_service, "forget", None)
            if forget is not None:
                forget(answer_id)
        log.info("feedback user=%s answer_id=%s rating=%d comment=%s", user.username, answer_id, rating,
                 bool(comment and comment.strip()))
        return "Thanks: your feedback was saved (" + ("helpful" if rating > 0 else "not helpful") + ")."

    # --- admin -------------------------------------------------------------------------
    def admin_panels(self, user: Principal) -> tuple[str, str, str, str, str]:
        """(index status, failed files, re-index progress, recent questions, feedback summary)."""
        try:
            st = self.reindex.status(user)
            return (R.render_index_status(st), R.render_failures(st), R.render_progress(self.reindex.snapshot()),
                    R.render_recent(recent_questions(self.services.answer_log, user)),
                    R.render_feedback_summary(feedback_summary(self.services.answer_log, user)))
        except NotAdminError as e:
            denied = R.render_error(str(e))
            return denied, "", "", "", ""
        except KBError as e:
            return R.render_error(str(e)), "", "", "", ""

    def start_reindex(self, user: Principal) -> str:
        try:
            msg = self.reindex.start(user)
        except NotAdminError as e:
            return R.render_error(str(e))
        snap = self.reindex.snapshot()
        if snap.get("state") == "running":
            return R.render_progress(snap)
        return R.render_progress(snap) if snap.get("state") == "failed" else f'<div class="kb-muted">{R.esc(msg)}</div>'

    def progress(self, user: Principal) -> tuple[str, bool]:
        """(progress html, still running) for the admin tab's poll."""
        if not user.is_admin:
            return "", False
        snap = self.reindex.snapshot()
        return R.render_progress(snap), snap.get("state") == "running"


# --- Gradio wiring -------------------------------------------------------------------------


def _css() -> str:
    return (STATIC_DIR / "kb.css").read_text(encoding="utf-8")


def _theme():
    # system fonts only: the page must not fetch fonts from the internet
    return gr.themes.Soft(
        primary_hue="indigo", neutral_hue="slate", radius_size="md",
        font=["Inter", "system-ui", "-apple-system", "Segoe UI", "Roboto", "Helvetica Neue", "Arial", "sans-serif"],
        font_mono=["ui-monospace", "SFMono-Regular", "Menlo", "Consolas", "monospace"],
    )


def launch_options(settings: Settings, directory: UserDirectory | None = None) -> dict[str, Any]:
    """Arguments for ``Blocks.launch``: auth for the configured mode, theme and css."""
    auth = settings.server.auth
    opts: dict[str, Any] = {"css": _css(), "theme": _theme(), "footer_links": [], "show_error": False}
    if auth.mode == "users_file":
        directory = directory or UserDirectory.from_config(auth)
        opts["auth"] = directory.verify_async
        opts["auth_message"] = "Sign in with your company login to ask the knowledge base."
    elif auth.mode == "header":
        opts["auth_dependency"] = header_user(auth)
    return opts


def asgi_app(demo: gr.Blocks, settings: Settings, directory: UserDirectory | None = None) -> Any:
    """The chat page as an ASGI app behind :class:`kb_chatbot.app.web.origin.SameOriginMiddleware` and
    :class:`kb_chatbot.app.web.session.SessionGuard` (session expiry, per-address login backoff); serve it
    with uvicorn. Gradio's own CORS layer steps aside when the parent app configures CORS,
    so a CORS middleware that allows only ``server.allowed_origins`` is installed too."""
    from fastapi import FastAPI
    from starlette.middleware.cors import CORSMiddleware
    from starlette.routing import Mount

    from kb_chatbot.app.web.origin import SameOriginMiddleware
    from kb_chatbot.app.web.session import SessionGuard

    parent = FastAPI(docs_url=None, redoc_url=None, openapi_url=None)
    parent.add_middleware(CORSMiddleware, allow_origins=list(settings.server.allowed_origins),
                          allow_credentials=True, allow_methods=["GET", "POST"], allow_headers=["*"])
    opts = launch_options(settings, directory)
    app = gr.mount_gradio_app(parent, demo, path="", server_name=settings.server.host,
                              server_port=settings.server.port, **opts)
    gradio_app = next(r.app for r in parent.routes if isinstance(r, Mount))
    auth = settings.server.auth
    shared = None
    if settings.store.backend == "postgres" and auth.mode == "users_file":
        # logins shared by every node: the token table and the cookie's name in Postgres
        from kb_chatbot.app.web.shared_sessions import PgSessions, shared_cookie_id

        shared = PgSessions(settings.store.url)
        shared.prune(auth.session_hours * 3600.0)
        gradio_app.tokens = shared
        gradio_app.cookie_id = shared_cookie_id(settings.store.url)
    guarded = SessionGuard(app, gradio_app.tokens, session_hours=auth.session_hours, idle_minutes=auth.idle_minutes,
                           shared=shared)
    return SameOriginMiddleware(guarded, settings.server.allowed_origins)


def build_app(services: ChatServices, settings: Settings, *, warmup: WarmUp | None = None,
              directory: UserDirectory | None = None, controller: ChatController | None = None) -> gr.Blocks:
    """The chat page. Starts the warm-up (if not started) so the models load once, now."""
    if directory is None and settings.server.auth.mode == "users_file":
        directory = UserDirectory.from_config(settings.server.auth)
    warmup = (warmup or WarmUp(services)).start()
    ctl = controller or ChatController(services, settings, warmup, directory)

    with gr.Blocks(title=TITLE, fill_height=False) as demo:
        session = gr.State(ChatSession())
        with gr.Row(elem_classes="kb-header"):
            gr.HTML(f'<div class="kb-brand"><span class="kb-logo">?</span>{R.esc(TITLE)}</div>', scale=1)
            who = gr.HTML("", elem_id="kb-who", scale=2)
        banner = gr.HTML(ctl.banner(), elem_id="kb-banner", visible=bool(ctl.banner()))
        warm_timer = gr.Timer(1.0, active=True)
        with gr.Tabs():
            with gr.Tab("Chat", id="chat"):
                chatbot = gr.Chatbot(
                    elem_id="kb-chat", height="66vh", min_height=420, show_label=False, latex_delimiters=[],
                    feedback_options=("Like", "Dislike"), layout="bubble",
                    buttons=["copy", "copy_all"],  # no "share": nothing leaves the machine
                    placeholder=("<div class='kb-placeholder'><b>Ask about policies, projects and how-tos.</b><br>"
                                 "Answers come from the wiki, Slack and Drive documents you can read, with "
                                 "numbered sources.</div>"),
                )
                with gr.Row(elem_classes="kb-input-row"):
                    question = gr.Textbox(placeholder="Ask a question…", show_label=False, scale=8,
                                          autofocus=True, lines=1, max_lines=6, elem_id="kb-question",
                                          submit_btn=False)
                    send = gr.Button("Ask", variant="primary", scale=0, min_width=100, elem_id="kb-send")
                    new_chat = gr.Button("New chat", variant="secondary", scale=0, min_width=120, elem_id="kb-new")
                with gr.Row(elem_classes="kb-feedback-row"):
                    comment = gr.Textbox(placeholder="Comment on your rating (optional)",
                                         show_label=False, scale=3, lines=1, max_lines=1, elem_id="kb-comment")
                    feedback_note = gr.HTML("", elem_id="kb-feedback-note", scale=2)
            with gr.Tab("Admin", id="admin", visible=False) as admin_tab:
                with gr.Row():
                    reindex_btn = gr.Button("Re-index now", variant="primary", elem_id="kb-reindex", scale=0)
                    refresh_btn = gr.Button("Refresh", variant="secondary", scale=0)
                progress = gr.HTML("", elem_id="kb-progress")
                gr.Markdown("### Sources")
                sources_html = gr.HTML("")
                gr.Markdown("### Failed files (last run)")
                failures_html = gr.HTML("")
                gr.Markdown("### Recent questions")
                recent_html = gr.HTML("")
                gr.Markdown("### Feedback")
                feedback_html = gr.HTML("")
                poll = gr.Timer(1.0, active=False)

        admin_outputs = [sources_html, failures_html, progress, recent_html, feedback_html]

        def on_load(request: gr.Request):
            user = ctl.principal(request)
            log.info("page_load user=%s admin=%s", user.username, user.is_admin)
            panels = ctl.admin_panels(user) if user.is_admin else ("",) * 5
            html = ctl.banner()
            return (ctl.greeting(user), gr.HTML(html, visible=bool(html)), gr.Tab(visible=user.is_admin), *panels)

        demo.load(on_load, None, [who, banner, admin_tab, *admin_outputs], queue=False, api_visibility="private")

        def on_warm_tick():
            html = ctl.banner()
            return gr.HTML(html, visible=bool(html)), gr.Timer(active=not ctl.warmup.done)

        warm_timer.tick(on_warm_tick, None, [banner, warm_timer], queue=False, api_visibility="private",
                        show_progress="hidden")

        def on_submit(text: str, sess: ChatSession):
            started = ctl.begin(text, sess)
            lock = gr.update(interactive=not started)
            return gr.update(value="" if started else text, interactive=not started), lock, list(sess.messages), sess

        def on_answer(sess: ChatSession, request: gr.Request):
            user = ctl.principal(request)
            for msgs, sess in ctl.answer(sess, user):
                yield list(msgs), sess

        def on_done():
            return gr.update(interactive=True), gr.update(interactive=True)

        for trigger in (question.submit, send.click):
            # 1) outside the queue: show the question now; 2) queued, at most
            # server.concurrency at once: stream the answer; 3) unlock the input
            trigger(on_submit, [question, session], [question, send, chatbot, session], queue=False,
                    show_progress="hidden", api_visibility="private"
                    ).then(on_answer, [session], [chatbot, session], show_progress="minimal",
                           api_visibility="private"
                    ).then(on_done, None, [question, send], queue=False, show_progress="hidden",
                           api_visibility="private")

        def on_clear():
            msgs, sess = ctl.clear()
            return msgs, sess, ""

        new_chat.click(on_clear, None, [chatbot, session, feedback_note], queue=False, api_visibility="private")
        chatbot.clear(on_clear, None, [chatbot, session, feedback_note], queue=False, api_visibility="private")

        def on_like(data: gr.LikeData, text: str, sess: ChatSession, request: gr.Request):
            note = ctl.feedback(data.index, data.liked, text, sess, ctl.principal(request))
            saved = note.startswith("Thanks")
            return f'<div class="kb-muted">{R.esc(note)}</div>', ("" if saved else text)

        chatbot.like(on_like, [comment, session], [feedback_note, comment], queue=False, api_visibility="private")

        def on_refresh(request: gr.Request):
            return ctl.admin_panels(ctl.principal(request))

        refresh_btn.click(on_refresh, None, admin_outputs, queue=False, api_visibility="private")

        def on_reindex(request: gr.Request):
            user = ctl.principal(request)
            html = ctl.start_reindex(user)
            return html, gr.Timer(active=ctl.reindex.running)

        reindex_btn.click(on_reindex, None, [progress, poll], queue=False, api_visibility="private")

        def on_poll(request: gr.Request):
            user = ctl.principal(request)
            html, running = ctl.progress(user)
            if running:
                return html, gr.Timer(active=True), gr.skip(), gr.skip(), gr.skip(), gr.skip()
            panels = ctl.admin_panels(user)
            return panels[2], gr.Timer(active=False), panels[0], panels[1], panels[3], panels[4]

        poll.tick(on_poll, None, [progress, poll, sources_html, failures_html, recent_html, feedback_html],
                  queue=False, api_visibility="private", show_progress="hidden")

    demo.queue(default_concurrency_limit=ctl.slots, max_size=settings.server.queue_limit)
    demo.kb_controller = ctl  # for tests and the serve command
    return demo
