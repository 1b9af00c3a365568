"""A small OpenAI-compatible server for tests (no network): canned streamed pieces, yes/no
logprobs for one-token requests. Used by the openai backend tests and the generator contract."""
from __future__ import annotations

import json
import math
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

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
        canned = [(self.server.reply(body), -0.1)] if self.server.reply else PIECES
        pieces = canned[: body.get("max_tokens", 99)]
        for i, (text, lp) in enumerate(pieces):
            choice = {"index": 0, "delta": {"content": text}, "finish_reason": None}
            if i == 0:
                choice["delta"]["role"] = "assistant"
            if body.get("logprobs"):
                choice["logprobs"] = {"content": [{"token": text, "logprob": lp, "bytes": None, "top_logprobs": []}]}
            self._event({"id": "c1", "object": "chat.completion.chunk", "created": 0, "model": "big-model", "choices": [choice]})
        finish = "length" if len(pieces) < len(canned) else "stop"
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
        #: When set, a streamed reply is this function of the request body (one piece).
        self.reply = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"
