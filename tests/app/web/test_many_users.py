"""20 people asking at once through the real page's HTTP queue (the browser's own protocol:
``run/predict`` for the step outside the queue, ``queue/join`` + the SSE stream for the answer):
everyone gets the answer to their own question, nobody gets an error or a 503."""
from __future__ import annotations

import json
import secrets
import socket
import threading

import httpx
import pytest

from kb_chatbot.core.settings import load_settings
from kb_chatbot.app.kb.services import build_services
from tests.app.web.test_chat_app import write_config
from kb_chatbot.app.web.app import WarmUp, build_app, launch_options
from kb_chatbot.app.auth import UserDirectory

USERS = 20


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _fn_index(demo, name: str) -> int:
    for i, fn in demo.fns.items():
        if getattr(fn.fn, "__name__", "") == name:
            return i
    raise AssertionError(f"no event handler {name}")


def _ask(base: str, question: str, submit: int, answer: int, out: dict, key: int) -> None:
    session = secrets.token_hex(6)
    with httpx.Client(base_url=base, timeout=120) as c:
        assert c.post("/login", data={"username": "alice", "password": "acme-demo"}).status_code == 200
        r = c.post("/gradio_api/run/predict", json={"data": [question, None], "fn_index": submit,
                                                     "session_hash": session, "event_data": None})
        assert r.status_code == 200, r.text
        shown = r.json()["data"][2]
        r = c.post("/gradio_api/queue/join", json={"data": [None], "fn_index": answer, "session_hash": session,
                                                    "event_data": None})
        assert r.status_code == 200, r.text  # never "Queue is full"
        final, ranks = None, []
        with c.stream("GET", "/gradio_api/queue/data", params={"session_hash": session}) as stream:
            for line in stream.iter_lines():
                if not line.startswith("data:"):
                    continue
                msg = json.loads(line[5:])
                if msg.get("msg") == "estimation":
                    ranks.append(msg.get("rank"))
                if msg.get("msg") == "process_completed":
                    final = msg
                    break
        out[key] = {"shown": shown, "final": final, "ranks": ranks}


@pytest.fixture(scope="module")
def page(tmp_path_factory):
    from kb_chatbot.ingest.sync import sync_sources

    root = tmp_path_factory.mktemp("many")
    settings = load_settings(write_config(root, root / "data"))
    sync_sources(settings, settings.sources)
    services = build_services(settings)
    users = UserDirectory.from_config(settings.server.auth)
    demo = build_app(services, settings, warmup=WarmUp(services), directory=users)
    assert demo.kb_controller.slots == 4  # the fake backend: server.concurrency auto
    port = _free_port()
    demo.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True,
                **launch_options(settings, users))
    try:
        yield demo, f"http://127.0.0.1:{port}"
    finally:
        demo.close()


def test_twenty_users_at_once_each_get_their_own_answer(page):
    demo, base = page
    submit, answer = _fn_index(demo, "on_submit"), _fn_index(demo, "on_answer")
    topics = ["vacation days", "VPN", "expense reports", "parental leave", "laptop"]
    questions = [f"Question {i}: what is the policy on {topics[i % len(topics)]}?" for i in range(USERS)]
    out: dict[int, dict] = {}
    threads = [threading.Thread(target=_ask, args=(base, q, submit, answer, out, i)) for i, q in enumerate(questions)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert len(out) == USERS, f"{USERS - len(out)} users got nothing"
    for i, q in enumerate(questions):
        res = out[i]
        assert res["final"] and res["final"].get("success"), res["final"]
        messages = res["final"]["output"]["data"][0]
        texts = [json.dumps(m.get("content")) for m in messages]
        assert q in texts[0] and len(messages) == 2  # this user's own question, one turn
        assert "not answered" not in texts[1] and "went wrong" not in texts[1]
        assert 'kb-card' in texts[1] or "knowledge base" in texts[1]  # an answer with sources, or an abstention
    # with 4 slots, 16 of them waited, and were told their place when their question appeared
    notes = [json.dumps(out[i]["shown"]) for i in range(USERS)]
    assert sum("ahead of yours" in n for n in notes) >= 1
