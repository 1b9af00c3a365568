"""`kb ask` answered by a running `kb serve` over its Unix socket (app/kb/warm.py): the same
answer as the cold path, nothing loaded in the asking process, only the server's own account let
in, and the cold path when no server answers."""
from __future__ import annotations

import json
import stat
import sys

import pytest
from click.testing import CliRunner

sys.path.insert(0, str(__import__("pathlib").Path(__file__).resolve().parents[1] / "answer"))

from kb_chatbot.app.kb.cli import main  # noqa: E402
from tests.app.answer.test_service import _cli_config  # noqa: E402


@pytest.fixture
def warm(tmp_path):
    from kb_chatbot.app.kb.services import build_services
    from kb_chatbot.app.kb.warm import LocalAnswerServer
    from kb_chatbot.app.web.app import AnswerLine
    from kb_chatbot.core.settings import load_settings

    cfg = _cli_config(tmp_path)
    settings = load_settings(cfg)
    services = build_services(settings)
    line = AnswerLine(1)
    server = LocalAnswerServer(settings, services, line).start()
    assert server is not None
    yield cfg, server, services
    server.close()


def _no_cold_path(monkeypatch):
    import kb_chatbot.app.kb.services

    def refuse(*a, **k):
        raise AssertionError("the asking process loaded the services: the warm path was not taken")

    monkeypatch.setattr(kb_chatbot.app.kb.services, "build_services", refuse)


def test_kb_ask_is_answered_by_the_running_server(warm, monkeypatch):
    cfg, server, services = warm
    assert stat.S_IMODE(server.path.stat().st_mode) == 0o600
    _no_cold_path(monkeypatch)
    r = CliRunner().invoke(main, ["--config", str(cfg), "ask", "When is the Falcon robot launch date?", "--user",
                                  "alice", "--json"])
    assert r.exit_code == 0, r.output
    d = json.loads(r.stdout)
    assert "March 3" in d["answer"] and d["route"] == "answered" and d["citations"][0]["title"] == "Falcon plan"
    # the server resolves the user from its users file and applies the same ACL: bob reads nothing of Falcon
    r = CliRunner().invoke(main, ["--config", str(cfg), "ask", "When is the Falcon robot launch date?", "--user", "bob"])
    assert r.exit_code == 0 and "March 3" not in r.stdout and "route abstained" in r.stdout
    r = CliRunner().invoke(main, ["--config", str(cfg), "ask", "How many vacation days do employees get?",
                                  "--json-events"])
    kinds = [json.loads(line)["event"] for line in r.stdout.splitlines()]
    assert kinds[-1] == "answer" and "sources" in kinds and "token" not in kinds
    # every warm answer is in the server's answer log, as the page's are
    assert len(services.answer_log.recent_answers(10)) == 3


def test_only_the_servers_own_account_gets_in(warm, monkeypatch):
    import kb_chatbot.app.kb.warm as warm_mod

    cfg, _server, _services = warm
    monkeypatch.setattr(warm_mod, "_peer_uid", lambda sock: 4242)  # another account on the machine
    r = CliRunner().invoke(main, ["--config", str(cfg), "ask", "vacation days?", "--user", "alice"])
    assert r.exit_code != 0 and "refused" in r.output and "25 days" not in r.output


def test_cold_path_without_a_server_and_with_cold(tmp_path, warm, monkeypatch):
    cfg, server, _services = warm
    r = CliRunner().invoke(main, ["--config", str(cfg), "ask", "How many vacation days do employees get?", "--cold"])
    assert r.exit_code == 0 and "25 days" in r.stdout  # answered in-process although a server runs
    server.close()  # no server: the socket is gone, the cold path answers
    assert not server.path.exists()
    r = CliRunner().invoke(main, ["--config", str(cfg), "ask", "How many vacation days do employees get?"])
    assert r.exit_code == 0 and "25 days" in r.stdout


def test_a_socket_left_by_a_dead_server_is_replaced(tmp_path):
    import socket

    from kb_chatbot.app.kb.services import build_services
    from kb_chatbot.app.kb.warm import LocalAnswerServer, ask_warm, socket_path
    from kb_chatbot.core.settings import load_settings

    settings = load_settings(_cli_config(tmp_path))
    path = socket_path(settings)
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.bind(str(path))
    s.close()  # the file stays, nothing listens: a server that died
    assert ask_warm(settings, "q", None, None, []) is None
    server = LocalAnswerServer(settings, build_services(settings)).start()
    try:
        assert server is not None and ask_warm(settings, "How many vacation days?", None, None, []) is not None
    finally:
        server.close()
