"""What an ingest did: per-source counts and failures, as a dataclass, a JSON file and a row.

Each run is written to ``settings.reports_dir/ingest-<UTC timestamp>.json`` and recorded in
the ``ingest_runs`` table of ``settings.app_db`` (it survives index generations and is what
``kb status`` reads for the last run and its failures), or of the shared Postgres database
(``kb.ingest_runs``) with ``store.backend: postgres``, so every app node shows the last run
whichever node or machine ran it.
"""
from __future__ import annotations

import json
import logging
import os
import sqlite3
from dataclasses import asdict, dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from kb_chatbot.core.settings import Settings
from kb_chatbot.core.types import IngestFailure, Principal

log = logging.getLogger(__name__)

_RUNS_SCHEMA = """
CREATE TABLE IF NOT EXISTS ingest_runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT, started_at TEXT NOT NULL, finished_at TEXT NOT NULL,
    ok INTEGER NOT NULL, generation TEXT, report_path TEXT, report TEXT NOT NULL
);
"""


def utc_now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass
class SourceReport:
    name: str
    type: str
    path: str
    #: "ok" (every file read), "partial" (some files failed), "failed" (the source could not be read)
    status: str = "ok"
    added: int = 0
    updated: int = 0
    deleted: int = 0
    unchanged: int = 0
    failed: int = 0
    failures: list[IngestFailure] = field(default_factory=list)
    #: Files read but not indexed, and why (no text): listed, not failures.
    skipped: list[IngestFailure] = field(default_factory=list)
    #: Why the whole source failed (SourceError message), if it did.
    error: str | None = None
    #: False when vanished documents were not deleted this run (see ``notes``).
    pruned: bool = True
    notes: list[str] = field(default_factory=list)
    chunks_embedded: int = 0
    seconds: float = 0.0
    #: API sources: documents whose readers changed at the source while their content did not.
    acl_updated: int = 0
    #: API sources: calls made, by endpoint.
    api_calls: dict[str, int] = field(default_factory=dict)

    def fail_file(self, failure: IngestFailure) -> None:
        self.failures.append(failure)
        self.failed += 1
        if self.status == "ok":
            self.status = "partial"

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["failures"] = [_failure_dict(f) for f in self.failures]
        d["skipped"] = [_failure_dict(f) for f in self.skipped]
        d["seconds"] = round(self.seconds, 3)
        return d


@dataclass
class IngestReport:
    started_at: datetime = field(default_factory=utc_now)
    finished_at: datetime | None = None
    sources: list[SourceReport] = field(default_factory=list)
    #: The generation published by this run (None when nothing changed or the run failed).
    generation: str | None = None
    #: The generation readers use after this run.
    current_generation: str | None = None
    chunks_embedded: int = 0
    documents_total: int = 0
    chunks_total: int = 0
    embedder: str = ""
    index_kind: str = ""
    notes: list[str] = field(default_factory=list)
    report_path: str | None = None

    @property
    def seconds(self) -> float:
        end = self.finished_at or utc_now()
        return (end - self.started_at).total_seconds()

    @property
    def ok(self) -> bool:
        """Nothing failed: no unreadable file and no unreadable source."""
        return all(s.status == "ok" for s in self.sources)

    @property
    def exit_code(self) -> int:
        return 0 if self.ok else 1

    def totals(self) -> dict[str, int]:
        keys = ("added", "updated", "deleted", "unchanged", "failed")
        return {k: sum(getattr(s, k) for s in self.sources) for k in keys}

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "started_at": self.started_at.isoformat(timespec="seconds"),
            "finished_at": self.finished_at.isoformat(timespec="seconds") if self.finished_at else None,
            "seconds": round(self.seconds, 3),
            "generation": self.generation,
            "current_generation": self.current_generation,
            "embedder": self.embedder,
            "index_kind": self.index_kind,
            "chunks_embedded": self.chunks_embedded,
            "documents_total": self.documents_total,
            "chunks_total": self.chunks_total,
            "totals": self.totals(),
            "sources": [s.to_dict() for s in self.sources],
            "notes": list(self.notes),
            "report_path": self.report_path,
        }

    def save(self, settings: Settings) -> Path:
        """Write the JSON report and record the run in the app database. Returns the JSON path."""
        settings.reports_dir.mkdir(parents=True, exist_ok=True)
        stamp = self.started_at.strftime("%Y%m%dT%H%M%S%fZ")
        path = settings.reports_dir / f"ingest-{stamp}.json"
        if path.exists():
            path = settings.reports_dir / f"ingest-{stamp}-{os.getpid()}.json"
        self.report_path = str(path)
        text = json.dumps(self.to_dict(), indent=2, ensure_ascii=False) + "\n"
        path.write_text(text, encoding="utf-8")
        record_run(settings, self)
        return path


def _runs_db(settings: Settings) -> sqlite3.Connection:
    settings.app_db.parent.mkdir(parents=True, exist_ok=True)
    conn = sqlite3.connect(str(settings.app_db), timeout=30)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.executescript(_RUNS_SCHEMA)
    return conn


_PG_RUNS_SCHEMA = """
CREATE SCHEMA IF NOT EXISTS kb;
CREATE TABLE IF NOT EXISTS kb.ingest_runs (
    id bigserial PRIMARY KEY, started_at text NOT NULL, finished_at text NOT NULL,
    ok int NOT NULL, generation text, report_path text, report text NOT NULL
);
"""


def _pg_runs(settings: Settings):
    import psycopg

    conn = psycopg.connect(settings.store.url, autocommit=True)
    with conn.transaction():
        conn.execute("SELECT pg_advisory_xact_lock(7240118)")  # two nodes creating it at once
        conn.execute(_PG_RUNS_SCHEMA)
    return conn


def record_run(settings: Settings, report: IngestReport) -> None:
    row = (report.started_at.isoformat(), (report.finished_at or utc_now()).isoformat(), int(report.ok),
           report.generation, report.report_path, json.dumps(report.to_dict(), ensure_ascii=False))
    if settings.store.backend == "postgres":
        with _pg_runs(settings) as pg:
            pg.execute("INSERT INTO kb.ingest_runs(started_at, finished_at, ok, generation, report_path, report) "
                       "VALUES (%s,%s,%s,%s,%s,%s)", row)
        return
    conn = _runs_db(settings)
    try:
        with conn:
            conn.execute(
                "INSERT INTO ingest_runs(started_at, finished_at, ok, generation, report_path, report) VALUES (?,?,?,?,?,?)",
                row)
    finally:
        conn.close()


def recent_runs(settings: Settings, limit: int = 20) -> list[dict[str, Any]]:
    """The last ``limit`` ingest reports (as dicts), newest first; [] before the first run."""
    if settings.store.backend == "postgres":
        with _pg_runs(settings) as pg:
            rows = pg.execute("SELECT report FROM kb.ingest_runs ORDER BY id DESC LIMIT %s", (limit,)).fetchall()
        return [json.loads(r[0]) for r in rows]
    if not settings.app_db.is_file():
        return []
    conn = _runs_db(settings)
    try:
        rows = conn.execute("SELECT report FROM ingest_runs ORDER BY id DESC LIMIT ?", (limit,)).fetchall()
    finally:
        conn.close()
    return [json.loads(r[0]) for r in rows]


def status_info(settings: Settings, reader: Principal | None = None) -> dict[str, Any]:
    """What `kb status` and the admin tab show: index generation, per-source counts, last run.

    ``reader``: the admin the page shows it to. A failed file's path and reason can name a
    restricted page or a private channel, so they are shown only when the file's ACL (its
    indexed document's, or the one the failure carries) admits ``reader``; the others are
    counted per source as hidden (``kb status`` on the server shows all of them).
    """
    from kb_chatbot.index.generation import published_store

    current, manifest, store = published_store(settings)
    stats = []
    acl_of = None
    try:
        if store is not None:
            stats = store.source_stats()
            acl_of = store.document_acl
        info = _status_dict(settings, current, manifest, stats)
        if reader is not None:
            info = _for_reader(info, reader, acl_of)
    finally:
        if store is not None:
            store.close()
    return info


def _for_reader(info: dict[str, Any], reader: Principal, acl_of) -> dict[str, Any]:
    last = info.get("last_run")
    if not last:
        return info
    shown, hidden = [], {}
    for f in last.get("failures", []):
        acl: set[str] | None = None
        if f.get("keep_if_acl") is not None:
            acl = set(f["keep_if_acl"])
        elif f.get("doc_id") and acl_of is not None:
            acl = set(acl_of(f["doc_id"])) or None
        if acl is not None and reader.can_read(acl):
            shown.append(f)
        else:  # restricted, or its access is unknown (the page did not parse): fail closed
            hidden[f.get("source")] = hidden.get(f.get("source"), 0) + 1
    last = {**last, "failures": shown, "failures_hidden": hidden}
    return {**info, "last_run": last}


def _status_dict(settings: Settings, current: str | None, manifest: dict[str, Any], stats: list) -> dict[str, Any]:
    runs = recent_runs(settings, limit=50)
    last_by_source: dict[str, dict[str, Any]] = {}
    for run in runs:  # newest first
        for s in run.get("sources", []):
            last_by_source.setdefault(s["name"], {**s, "finished_at": run.get("finished_at")})
    configured = {s.name: s for s in settings.sources}
    names = list(dict.fromkeys([*configured, *(s.name for s in stats)]))
    by_name = {s.name: s for s in stats}
    sources = []
    for n in names:
        st, cfg, last = by_name.get(n), configured.get(n), last_by_source.get(n, {})
        sources.append({
            "name": n, "type": cfg.type if cfg else (st.type if st else "?"),
            "path": str(cfg.path) if cfg else (st.path if st else ""),
            "configured": cfg is not None, "enabled": bool(cfg and cfg.enabled),
            "documents": st.documents if st else 0, "chunks": st.chunks if st else 0,
            "last_run_at": last.get("finished_at"), "last_status": last.get("status"),
            "last_failed": last.get("failed", 0),
        })
    last = runs[0] if runs else None
    return {
        "data_dir": str(settings.data_dir),
        "generation": current,
        "generation_created_at": manifest.get("created_at"),
        "documents": manifest.get("documents", 0), "chunks": manifest.get("chunks", 0),
        "index_kind": manifest.get("index_kind", settings.index.kind),
        "index_structure": manifest.get("index_structure"),
        "embedder": manifest.get("embedder"),
        "configured_embedding_model": settings.embedding.model,
        "schedule": settings.schedule.model_dump(),
        "sources": sources,
        "last_run": None if last is None else {
            "started_at": last.get("started_at"), "finished_at": last.get("finished_at"), "ok": last.get("ok"),
            "totals": last.get("totals"), "generation": last.get("generation"), "report_path": last.get("report_path"),
            "failures": [{"source": s["name"], **f} for s in last.get("sources", []) for f in s.get("failures", [])],
            "source_errors": [{"source": s["name"], "error": s["error"]} for s in last.get("sources", []) if s.get("error")],
        },
    }


def _failure_dict(f: IngestFailure) -> dict[str, Any]:
    d = asdict(f)
    if d.get("keep_if_acl") is not None:
        d["keep_if_acl"] = sorted(d["keep_if_acl"])
    return d
