"""Parsing in a child process with a time limit and a memory limit.

The binary formats (PDF, Office files, HTML) go through third-party parsers that can spin or
balloon on a hostile or broken file (a docx whose XML expands to 600 MB parsed for minutes at
4 GB; a PDF with a loop in its page tree). :class:`IsolatedParser` runs them in one long-lived
worker process (started on first use with ``spawn``, so it shares no threads or locks with the
server) whose address space is capped with ``RLIMIT_AS``. A parse that takes longer than the
time limit gets the worker killed and the file reported; a parse that runs out of memory is
reported the same way; the next file gets a fresh worker. Plain text, markdown and CSV are
parsed in-process (their parsers are bounded by :data:`kb_chatbot.ingest.connectors.drive.MAX_TEXT_CHARS`
and the safe YAML loader), so a wiki of markdown pages never starts a worker.
"""
from __future__ import annotations

import logging
import multiprocessing
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from kb_chatbot.core.errors import ParseError
from kb_chatbot.ingest.parsers import FORMATS, Parsed, parse_file

log = logging.getLogger(__name__)

#: Formats parsed in the worker (the others are parsed in-process).
ISOLATED_FORMATS = frozenset({"pdf", "docx", "pptx", "xlsx", "html"})


def _limit_memory(memory_mb: int) -> None:
    try:
        import resource

        limit = int(memory_mb) * 1024 * 1024
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ImportError, ValueError, OSError) as e:  # not on this platform: time limit only
        log.warning("parser worker memory limit not set: %r", e)


def _worker(conn: Connection, memory_mb: int) -> None:
    """The child: run the (module, function, format, path) jobs it is sent, reply ("ok", Parsed)
    or ("error", kind, reason)."""
    import importlib

    _limit_memory(memory_mb)
    while True:
        try:
            job = conn.recv()
        except EOFError:
            return
        if job is None:
            return
        module, func, fmt, path = job
        try:
            parsed: Parsed = getattr(importlib.import_module(module), func)(Path(path))
            parsed.metadata.setdefault("format", fmt)
            reply: tuple[Any, ...] = ("ok", parsed)
        except ParseError as e:
            reply = ("error", "parse", e.reason)
        except MemoryError:
            reply = ("error", "memory", "")
        except Exception as e:  # a parser bug: the message, not the object (it may not pickle)
            reply = ("error", "crash", f"{type(e).__name__}: {e}")
        try:
            conn.send(reply)
        except MemoryError:
            conn.send(("error", "memory", ""))


class IsolatedParser:
    """``parse(path, rel)`` like :func:`kb_chatbot.ingest.parsers.parse_file`, with limits (see module doc)."""

    def __init__(self, timeout_s: float = 120.0, memory_mb: int = 2048):
        self.timeout_s = float(timeout_s)
        self.memory_mb = int(memory_mb)
        self._proc: Any = None
        self._conn: Connection | None = None

    def __call__(self, path: Path, rel: str | None = None) -> Parsed:
        return self.parse(path, rel)

    def parse(self, path: Path, rel: str | None = None) -> Parsed:
        entry = FORMATS.get(path.suffix.lower())
        if entry is None or entry[2] not in ISOLATED_FORMATS:
            return parse_file(path)
        return self.run(entry, path, rel)

    def run(self, entry: tuple[str, str, str], path: Path, rel: str | None = None) -> Parsed:
        """Run parser ``entry`` = (module, function, format name) on ``path`` in the worker."""
        rel = rel or path.name
        conn = self._start()
        conn.send((*entry, str(path)))
        if not conn.poll(self.timeout_s):
            self._kill()
            raise ParseError(rel, f"parsing took longer than {self.timeout_s:.0f} s: not indexed (a hostile or "
                                  "broken file? raise sources[].parse_timeout_s if it is a genuine large file)")
        try:
            reply = conn.recv()
        except (EOFError, OSError, MemoryError):
            reply = ("error", "memory" if not self._alive() else "crash", "the parser process died")
            self._kill()
        if reply[0] == "ok":
            return reply[1]
        kind, reason = reply[1], reply[2]
        if kind == "memory":
            self._kill()  # a worker that hit its limit may be in a bad state
            raise ParseError(rel, f"parsing needed more than {self.memory_mb} MB of memory: not indexed (a "
                                  "decompression bomb? raise sources[].parse_memory_mb if it is a genuine file)")
        if kind == "crash":
            raise ParseError(rel, f"unexpected error while reading ({reason})")
        raise ParseError(rel, reason)

    # --- the worker -------------------------------------------------------------------------
    def _alive(self) -> bool:
        return self._proc is not None and self._proc.is_alive()

    def _start(self) -> Connection:
        if self._alive() and self._conn is not None:
            return self._conn
        self._kill()
        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe()
        self._proc = ctx.Process(target=_worker, args=(child, self.memory_mb), daemon=True, name="kb-parser")
        self._proc.start()
        child.close()
        self._conn = parent
        return parent

    def _kill(self) -> None:
        if self._proc is not None:
            if self._proc.is_alive():
                self._proc.kill()
            self._proc.join(5)
        if self._conn is not None:
            self._conn.close()
        self._proc, self._conn = None, None

    def close(self) -> None:
        if self._alive() and self._conn is not None:
            try:
                self._conn.send(None)
                self._proc.join(5)
            except (OSError, ValueError):
                pass
        self._kill()

    def __del__(self) -> None:  # pragma: no cover (best effort)
        try:
            self._kill()
        except Exception:
            pass
