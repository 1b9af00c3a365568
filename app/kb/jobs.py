"""Jobs the composition root runs for the web page: index status and a background re-index
that is never run twice at once.

The re-index holds an in-process flag and the ingest file lock (``sync_sources`` takes it), so
a CLI ``kb reindex`` running at the same time makes the button report "busy" instead of
queueing a second ingest.
"""
from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

from kb_chatbot.core.errors import KBError
from kb_chatbot.core.settings import Settings
from kb_chatbot.core.types import Principal
from kb_chatbot.app.web.admin import require_admin

log = logging.getLogger(__name__)


class IndexAdmin:
    """Index status, and one background re-index at a time with progress the page polls
    (implements :class:`kb_chatbot.app.web.admin.IndexAdmin`)."""

    def __init__(self, settings: Settings, *, embedder_provider: Callable[[], Any] | None = None,
                 sync: Callable[..., Any] | None = None, isolate: bool = True):
        self.settings = settings
        #: run the re-index in its own process (a parser that eats memory cannot take the chat
        #: page down with it); an injected ``sync`` runs in a thread
        self.isolate = isolate
        self._embedder_provider = embedder_provider
        self._sync = sync
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._progress: dict[str, Any] = {"state": "idle"}

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def status(self, user: Principal) -> dict[str, Any]:
        """The same dict ``kb status --json`` prints: generation, per-source counts, last run."""
        require_admin(user)
        from kb_chatbot.ingest.report import status_info

        return status_info(self.settings, reader=user)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            p = dict(self._progress)
        if p.get("state") == "running":
            p["elapsed"] = time.monotonic() - p.get("t0", time.monotonic())
        return p

    def _update(self, **kw: Any) -> None:
        with self._lock:
            self._progress.update(kw)

    def start(self, user: Principal) -> str:
        """Start a re-index of every enabled source; returns a message for the page."""
        require_admin(user)
        from kb_chatbot.core.errors import IngestBusy
        from kb_chatbot.index.generation import ingest_lock

        sources = [s for s in self.settings.sources if s.enabled]
        if not sources:
            return "No enabled sources are configured in the settings file."
        with self._lock:
            if self._thread is not None and self._thread.is_alive():
                return "A re-index is already running."
            # fail fast if a CLI ingest holds the file lock (the job itself takes it again)
            try:
                with ingest_lock(self.settings, timeout=0.1):
                    pass
            except IngestBusy as e:
                self._progress = {"state": "failed", "error": str(e)}
                return str(e)
            self._progress = {"state": "running", "t0": time.monotonic(), "sources": len(sources),
                              "source_index": 0, "source": None, "documents": 0, "expected": None,
                              "user": user.username}
            self._thread = threading.Thread(target=self._run, args=(sources, user.username),
                                            name="kb-reindex", daemon=True)
            self._thread.start()
        log.info("reindex_started user=%s sources=%d", user.username, len(sources))
        return "Re-index started."

    def wait(self, timeout: float | None = None) -> bool:
        t = self._thread
        if t is not None:
            t.join(timeout)
        return not self.running

    def _progress_of(self, source: str, documents: int, expected: int | None) -> None:
        with self._lock:
            if self._progress.get("source") != source:
                self._progress["source_index"] = self._progress.get("source_index", 0) + 1
                self._progress["source"] = source
            self._progress["documents"] = documents
            self._progress["expected"] = expected

    def _run(self, sources: list, username: str) -> None:
        from kb_chatbot.ingest.sync import sync_sources

        try:
            if self._sync is None and self.isolate:
                facts = self._run_in_process(sources)
            else:
                embedder = self._embedder_provider() if self._embedder_provider else None
                report = (self._sync or sync_sources)(self.settings, sources, progress=self._progress_of,
                                                      embedder=embedder, lock_timeout=0.5)
                facts = _report_facts(report)
            failed, errors = facts["failed"], facts["errors"]
            summary = (f"{facts['documents']} documents, {facts['chunks']} chunks; "
                       f"generation {facts['current'] or 'none'}"
                       + (f"; {facts['read']}" if facts.get("read") else "")
                       + ("" if facts["changed"] else " (nothing changed)"))
            # a source or a file that failed makes the outcome a failure the admin must see,
            # with the files and reasons; the index still holds what could be read
            state = "failed" if errors else "partial" if failed else "done"
            self._update(state=state, summary=summary, failures=facts.get("failures", []),
                         source_errors=facts.get("source_errors", {}),
                         error=(f"sources failed: {', '.join(errors)}" if errors
                                else f"{failed} file(s) could not be read" if failed else None))
            log.info("reindex_finished user=%s documents=%d chunks=%d generation=%s changed=%s failed_files=%d",
                     username, facts["documents"], facts["chunks"], facts["current"], facts["changed"], failed)
        except KBError as e:
            self._update(state="failed", error=str(e))
            log.error("reindex_failed user=%s error=%r", username, str(e))
        except Exception as e:  # the traceback goes to the log, the page gets one line
            log.exception("reindex_failed user=%s", username)
            self._update(state="failed", error=f"{type(e).__name__}: {e} (details in the server log)")

    def _run_in_process(self, sources: list) -> dict[str, Any]:
        """The re-index in a spawned child process; progress comes back over a pipe."""
        import multiprocessing

        ctx = multiprocessing.get_context("spawn")
        parent, child = ctx.Pipe(duplex=False)
        # not a daemon: a daemonic process may not have children, and the re-index starts the
        # isolated parse workers (PDF, Office, HTML) as children of its own. It ends with the
        # job: the finally below joins it, then kills it if it hangs.
        proc = ctx.Process(target=_reindex_child, args=(self.settings, [s.name for s in sources], child),
                           name="kb-reindex", daemon=False)
        proc.start()
        child.close()
        try:
            while True:
                try:
                    msg = parent.recv()
                except EOFError:
                    proc.join(10)
                    raise KBError(f"the re-index process ended unexpectedly (exit code {proc.exitcode}; out of "
                                  "memory?); the index is unchanged, details in the server log") from None
                if msg[0] == "progress":
                    self._progress_of(*msg[1:])
                elif msg[0] == "done":
                    return msg[1]
                else:
                    raise KBError(msg[1])
        finally:
            parent.close()
            proc.join(30)
            if proc.is_alive():
                proc.kill()


#: Failed files listed on the page (the rest are counted; `kb status` lists them all).
FAILURES_SHOWN = 20


def _report_facts(report: Any) -> dict[str, Any]:
    """What the page shows of a sync report: plain data (it crosses a process pipe)."""
    sources = list(report.sources)
    moved = [(n, sum(getattr(s, n, 0) for s in sources)) for n in ("added", "updated", "deleted", "unchanged")]
    return {
        "documents": report.documents_total, "chunks": report.chunks_total,
        "current": report.current_generation, "changed": bool(report.generation),
        "read": ", ".join(f"{v} {n}" for n, v in moved if v),
        "failed": sum(getattr(s, "failed", 0) for s in sources),
        "errors": [s.name for s in sources if getattr(s, "error", None)],
        "source_errors": {s.name: s.error for s in sources if getattr(s, "error", None)},
        "failures": [{"source": s.name, "path": f.path, "reason": f.reason}
                     for s in sources for f in getattr(s, "failures", [])][:FAILURES_SHOWN],
    }


def _reindex_child(settings: Settings, names: list[str], conn: Any) -> None:
    """The re-index process: sync the named sources, send progress and the outcome."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s %(message)s")
    from kb_chatbot.core.secrets import install_redaction

    install_redaction()
    from kb_chatbot.ingest.sync import sync_sources

    try:
        sources = [settings.source(n) for n in names]
        report = sync_sources(settings, sources, lock_timeout=0.5,
                              progress=lambda source, docs, expected: conn.send(("progress", source, docs, expected)))
        conn.send(("done", _report_facts(report)))
    except KBError as e:
        conn.send(("error", str(e)))
    except Exception as e:  # the traceback goes to this process's log (the server's stderr)
        log.exception("reindex_failed in the re-index process")
        conn.send(("error", f"{type(e).__name__}: {e} (details in the server log)"))
    finally:
        conn.close()
