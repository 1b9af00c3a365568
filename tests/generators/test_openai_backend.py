"""The openai backend against a small OpenAI-compatible server started in the test (no network)."""
from __future__ import annotations

import json
import math
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from generators import make_escalation_generator
from generators.openai_compat import OpenAIGenerator
from core.errors import GeneratorError
from core.settings import OpenAIEndpoint
from core.types import GenParams, Message

PIECES = [("Vacation", -0.1), (" is", -0.2), (" 25 days", -0.3), (" [1].", -0.4)]


class _Handler(BaseHTTPRequestHandler):
    server: "_FakeServer"

    def log_message(self, *args):  # keep pytest output clean
        pass

    def do_POST(self):  # noqa: N802 (http.server naming)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.requests.append({"path": self.path, "auth": self.headers.get("Authorization"), **body})
        if self.path != "/v1/chat/completions":
            self._json(404, {"error": {"message": "not found"}})
        elif body["model"] != "big-model":
            self._json(404, {"error": {"message": f"model {body['model']} does not exist"}})
        elif body.get("stream"):
            self._stream(body)
        else:
            self._once(body)

    def _json(self, status, obj):
        raw = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def _stream(self, body):
        self.send_response(200)
        self.send_header("Content-Type", "text/event-stream")
        self.end_headers()
        pieces = PIECES[: body.get("max_tokens", 99)]
        for i, (text, lp) in enumerate(pieces):
            choice = {"index": 0, "delta": {"content": text}, "finish_reason": None}
            if i == 0:
                choice["delta"]["role"] = "assistant"
            if body.get("logprobs"):
                choice["logprobs"] = {"content": [{"token": text, "logprob": lp, "bytes": None, "top_logprobs": []}]}
            self._event({"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": "big-model", "choices": [choice]})
        finish = "length" if len(pieces) < len(PIECES) else "stop"
        self._event({"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": "big-model",
                     "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
        self.wfile.write(b"data: [DONE]\n\n")
        self.wfile.flush()

    def _event(self, obj):
        self.wfile.write(b"data: " + json.dumps(obj).encode() + b"\n\n")
        self.wfile.flush()

    def _once(self, body):
        question = body["messages"][-1]["content"]
        supported = "TRUE" in question
        logprobs = None
        if body.get("logprobs") and self.server.give_logprobs:
            yes, no = (math.log(0.72), math.log(0.18)) if supported else (math.log(0.1), math.log(0.85))
            first = ("Yes", yes) if supported else ("No", no)
            top = [{"token": "Yes", "logprob": yes, "bytes": None}, {"token": "No", "logprob": no, "bytes": None},
                   {"token": " yes", "logprob": math.log(0.02), "bytes": None}]
            logprobs = {"content": [{"token": first[0], "logprob": first[1], "bytes": None, "top_logprobs": top}]}
        text = "Yes, it is." if supported else "No, it is not."
        self._json(200, {
            "id": "c2", "object": "chat.completion", "created": 0, "model": "big-model",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": text},
                         "finish_reason": "length", "logprobs": logprobs}],
        })


class _FakeServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[dict] = []
        self.give_logprobs = True

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


@pytest.fixture
def server():
    srv = _FakeServer()
    t = threading.Thread(target=srv.serve_forever, daemon=True)
    t.start()
    yield srv
    srv.shutdown()
    srv.server_close()


MSGS = [Message("system", "Answer from the sources."), Message("user", "How many vacation days?")]


def test_streams_pieces_with_logprobs_and_finish_reason(server):
    gen = OpenAIGenerator(server.url, "big-model", api_key="sk-test", timeout=5)
    toks = list(gen.stream(MSGS, GenParams(max_tokens=50, logprobs=True, stop=("\n\n",))))
    assert [t.text for t in toks] == [p for p, _ in PIECES]
    assert [t.logprob for t in toks] == pytest.approx([lp for _, lp in PIECES])
    assert [t.finish_reason for t in toks] == [None, None, None, "stop"]
    req = server.requests[-1]
    assert req["stream"] is True and req["logprobs"] is True and req["stop"] == ["\n\n"]
    assert req["messages"] == [{"role": "system", "content": "Answer from the sources."},
                               {"role": "user", "content": "How many vacation days?"}]
    assert req["auth"] == "Bearer sk-test"


def test_length_finish_and_no_logprobs_unless_asked(server):
    gen = OpenAIGenerator(server.url, "big-model", timeout=5)
    toks = list(gen.stream(MSGS, GenParams(max_tokens=2)))
    assert "".join(t.text for t in toks) == "Vacation is"
    assert toks[-1].finish_reason == "length"
    assert all(t.logprob is None for t in toks)
    assert "logprobs" not in server.requests[-1]


def test_yes_probability_from_top_logprobs(server):
    gen = OpenAIGenerator(server.url, "big-model", timeout=5)
    p_true = gen.yes_probability([Message("user", "Is this TRUE? yes or no")])
    p_false = gen.yes_probability([Message("user", "Is this false? yes or no")])
    assert p_true == pytest.approx((0.72 + 0.02) / (0.72 + 0.02 + 0.18))
    assert p_false == pytest.approx((0.1 + 0.02) / (0.1 + 0.02 + 0.85))
    req = server.requests[-1]
    assert req["max_tokens"] == 1 and req["top_logprobs"] == 20 and req["temperature"] == 0.0


def test_yes_probability_falls_back_to_text_without_logprobs(server):
    server.give_logprobs = False
    gen = OpenAIGenerator(server.url, "big-model", timeout=5)
    assert gen.yes_probability([Message("user", "Is this TRUE?")]) == 1.0
    assert gen.yes_probability([Message("user", "Is this false?")]) == 0.0


def test_unreachable_server_gives_clear_error():
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    gen = OpenAIGenerator(f"http://127.0.0.1:{port}/v1", "big-model", timeout=2, max_retries=0)
    with pytest.raises(GeneratorError, match=rf"cannot reach the model server at http://127.0.0.1:{port}/v1"):
        list(gen.stream(MSGS, GenParams()))
    with pytest.raises(GeneratorError, match="cannot reach"):
        gen.yes_probability(MSGS)


def test_unknown_model_is_reported_with_status(server):
    gen = OpenAIGenerator(server.url, "no-such-model", timeout=5, max_retries=0)
    with pytest.raises(GeneratorError, match=r"HTTP 404.*no-such-model"):
        list(gen.stream(MSGS, GenParams()))


def test_escalation_factory_uses_endpoint_settings(server):
    gen = make_escalation_generator(OpenAIEndpoint(base_url=server.url, model="big-model", api_key="sk-secret-123", timeout_s=3))
    assert gen.model_id == "big-model"
    assert "sk-secret-123" not in repr(gen)  # the key never shows in logs
    assert gen.complete(MSGS, GenParams(max_tokens=3)) == "Vacation is 25 days"
