"""The warm path of ``kb ask``: a running ``kb serve`` answers the shell's questions too.

A cold ``kb ask`` loads the embedder, the index and the model before it can answer (25 s on
an idle AVX-512 box, of which 9 s is the answer itself). ``kb serve`` already holds all of
them, so it also listens on a Unix socket, ``<data_dir>/kb-serve.sock``, and ``kb ask`` sends
its question there when it can connect.

Who may ask, as whom: the socket is created with mode 0600 and the server checks the peer's
uid (``SO_PEERCRED``) against its own, so only the account that runs ``kb serve`` (and root)
gets in: the same account that can already read the index and run a cold ``kb ask --user``
as anyone. The user named in the request is resolved on the server from its users file, as
the cold path does, and the answer goes through the same answer service, ACL filter, checks,
answer log and waiting line as the page's.

The protocol is one JSON request line ({"question", "user", "groups", "history"}), answered
by JSON lines: the answer events as ``kb ask --json-events`` prints them (tokens included),
the last one ``{"event": "answer", ...}``, or ``{"event": "error", "text": ...}``.
"""
from __future__ import annotations

import json
import logging
import os
import socket
import socketserver
import struct
import threading
from pathlib import Path
from typing import Any, Iterator

log = logging.getLogger(__name__)

SOCKET_NAME = "kb-serve.sock"
#: AF_UNIX paths are limited to 108 bytes on Linux.
MAX_PATH = 100


def socket_path(settings) -> Path:
    return Path(settings.data_dir) / SOCKET_NAME


def event_dict(ev) -> dict[str, Any]:
    """One streamed answer event as JSON: {"event": kind, ...}."""
    if ev.kind == "answer":
        return {"event": "answer", **ev.answer.to_dict()}
    if ev.kind == "sources":
        return {"event": "sources", "sources": [c.to_dict() for c in ev.sources]}
    return {"event": ev.kind, "text": ev.text}


def _peer_uid(sock: socket.socket) -> int | None:
    try:
        creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    except (OSError, AttributeError):  # not Linux: the file mode alone guards the socket
        return None
    return struct.unpack("3i", creds)[1]


class LocalAnswerServer:
    """Answers ``kb ask`` over the Unix socket, in threads, until :meth:`close`."""

    def __init__(self, settings, services, line=None):
        self.settings = settings
        self.services = services
        self.line = line
        self.path = socket_path(settings)
        self._server: socketserver.ThreadingUnixStreamServer | None = None

    def start(self) -> "LocalAnswerServer | None":
        if len(str(self.path)) > MAX_PATH:
            log.warning("warm_cli=off reason=socket_path_too_long path=%s", self.path)
            return None
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.path.exists() or self.path.is_symlink():
            if _connectable(self.path):
                log.warning("warm_cli=off reason=another_kb_serve_answers_on path=%s", self.path)
                return None
            self.path.unlink()  # left by a server that died
        owner = self

        class Handler(socketserver.StreamRequestHandler):
            def handle(self) -> None:
                owner._handle(self.request, self.rfile, self.wfile)

        old = os.umask(0o177)  # the socket file is created 0600
        try:
            self._server = socketserver.ThreadingUnixStreamServer(str(self.path), Handler)
        finally:
            os.umask(old)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, name="kb-warm-cli", daemon=True).start()
        log.info("warm_cli=on socket=%s", self.path)
        return self

    def close(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
            self.path.unlink(missing_ok=True)

    def _handle(self, sock: socket.socket, rfile, wfile) -> None:
        def send(obj: dict) -> None:
            wfile.write((json.dumps(obj, ensure_ascii=False) + "\n").encode("utf-8"))
            wfile.flush()

        line = rfile.readline(1 << 20)  # read first: a client still sending would get EPIPE
        uid = _peer_uid(sock)
        if uid is not None and uid not in (os.getuid(), 0):
            log.warning("warm_cli refused peer_uid=%s", uid)
            send({"event": "error", "text": "refused: only the account running kb serve may ask through its socket"})
            return
        try:
            req = json.loads(line.decode("utf-8"))
            question = str(req["question"])
        except (ValueError, KeyError, TypeError, UnicodeDecodeError) as e:
            send({"event": "error", "text": f"bad request: {e}"})
            return
        from kb_chatbot.app.kb.asker import history_from, resolve_user
        from kb_chatbot.core.errors import KBError

        key = id(sock)
        try:
            user = resolve_user(self.settings, req.get("user"), req.get("groups"))
            history = history_from(req.get("history") or [], "request")
            if self.line is not None:
                self.line.join(key)
                self.line.start(key)
            try:
                for ev in self.services.answer_service.stream(question, user=user, history=history):
                    send(event_dict(ev))
            finally:
                if self.line is not None:
                    self.line.finish()
        except (KBError, ValueError) as e:
            send({"event": "error", "text": str(e)})
        except (BrokenPipeError, ConnectionResetError):
            log.info("warm_cli client went away")


def _connectable(path: Path) -> bool:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(1.0)
        try:
            s.connect(str(path))
            return True
        except OSError:
            return False


def ask_warm(settings, question: str, user: str | None, groups: str | None,
             history: list[dict[str, str]]) -> Iterator[dict[str, Any]] | None:
    """The answer events from a running ``kb serve``, or None when none answers here."""
    path = socket_path(settings)
    if len(str(path)) > MAX_PATH or not path.exists():
        return None
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        s.settimeout(2.0)
        s.connect(str(path))
    except OSError:
        s.close()
        return None
    s.settimeout(None)
    req = {"question": question, "user": user, "groups": groups, "history": history}
    s.sendall((json.dumps(req, ensure_ascii=False) + "\n").encode("utf-8"))

    def events() -> Iterator[dict[str, Any]]:
        with s, s.makefile("rb") as f:
            for line in f:
                yield json.loads(line.decode("utf-8"))

    return events()
