"""Incremental sync: connector documents -> diff against the index -> a new generation.

Per source: a document whose ``content_hash()`` matches the stored one is skipped (not
re-chunked, not re-embedded); a changed one has its chunks, vectors, FTS rows and ACL rows
replaced (chunks identical to the stored ones keep their vectors); a new one is added; one
that the source no longer yields is deleted, unless this run could not read it (its doc id
is in ``connector.failures``, or a failure names its Slack channel): then its previous
version stays. A source that cannot be read at all keeps all its documents.

Embeddings come from the embedding cache when the same text was embedded before (by any
run, even one that was killed), so only new chunk texts reach the model.
"""
from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np

from kb_chatbot.core.errors import ConfigError, SourceError
from kb_chatbot.core.protocols import Connector, Embedder
from kb_chatbot.core.settings import Settings, SourceConfig
from kb_chatbot.core.types import Chunk, Document, IngestFailure
from kb_chatbot.index.cache import EmbeddingCache
from kb_chatbot.index.generation import GenerationWriter, generations_for, ingest_lock, make_writer
from kb_chatbot.index.store import text_sha
from kb_chatbot.ingest.report import IngestReport, SourceReport, utc_now

log = logging.getLogger(__name__)

#: Chunk texts per embedding call; each batch is committed to the cache before the next.
EMBED_BATCH = 64
CACHE_FILE = "embeddings.sqlite3"
_CHANNEL_ID = re.compile(r"channel_id=([A-Za-z0-9_.-]+)")

ConnectorFactory = Callable[[SourceConfig], Connector]


@dataclass
class _Pending:
    doc: Document
    chunks: list[Chunk]
    is_new: bool
    report: SourceReport


@dataclass
class _Sink:
    """Buffers changed documents, writes them to the new generation and embeds new chunks."""

    writer: GenerationWriter
    cache: EmbeddingCache
    embedder: Embedder
    pending: list[_Pending] = field(default_factory=list)
    pending_chunks: int = 0
    removed: list[int] = field(default_factory=list)
    embedded: int = 0
    #: Leave chunks the embedding cache does not hold without a vector, for the store's
    #: embedding workers (``embedding.workers`` with Postgres) to embed before publishing.
    defer: bool = False
    deferred: int = 0
    on_stage: Callable[[str], None] = lambda _stage: None

    def put(self, item: _Pending) -> None:
        self.pending.append(item)
        self.pending_chunks += len(item.chunks)
        if self.pending_chunks >= EMBED_BATCH:
            self.flush()

    def flush(self) -> None:
        if not self.pending:
            return
        items, self.pending, self.pending_chunks = self.pending, [], 0
        store = self.writer.store
        added: list[tuple[int, str]] = []
        texts: dict[str, str] = {}
        with store.transaction():
            for it in items:
                removed, new_rows = store.upsert_document(it.doc, it.chunks)
                self.removed.extend(removed)
                added.extend(new_rows)
                texts.update((text_sha(c.text), c.text) for c in it.chunks)
        if self.defer:
            found = self.cache.get_many(self.embedder.model_id, [sha for _, sha in added], self.embedder.dim)
            have = [(i, sha) for i, sha in added if sha in found]
            self.deferred += len(added) - len(have)
            if have:
                self.writer.vectors.add([i for i, _ in have], np.stack([found[sha] for _, sha in have]))
        else:
            vecs = self.vectors_for([sha for _, sha in added], texts)
            self.writer.vectors.add([i for i, _ in added], vecs)
        for it in items:
            if it.is_new:
                it.report.added += 1
            else:
                it.report.updated += 1

    def vectors_for(self, shas: Sequence[str], texts: dict[str, str]) -> np.ndarray:
        """Vectors for these text shas: from the cache, else embedded (and cached) now."""
        if not shas:
            return np.zeros((0, self.embedder.dim), dtype=np.float32)
        model = self.embedder.model_id
        found = self.cache.get_many(model, shas, self.embedder.dim)
        missing = [s for s in dict.fromkeys(shas) if s not in found]
        for i in range(0, len(missing), EMBED_BATCH):
            part = missing[i:i + EMBED_BATCH]
            vecs = self.embedder.embed_documents([texts[s] for s in part])
            self.cache.put_many(model, zip(part, vecs))
            found.update(zip(part, vecs))
            self.embedded += len(part)
            log.debug("embedded batch texts=%d total=%d", len(part), self.embedded)
            self.on_stage("embedding")
        return np.stack([found[s] for s in shas]).astype(np.float32)


def _failure_prefixes(src: SourceConfig, failures: Sequence[IngestFailure],
                      stored_acl: Callable[[str], frozenset[str]] | None = None,
                      ) -> tuple[set[str], set[str], list[str], set[str]]:
    """(doc ids to keep, doc id prefixes to keep, failures that block pruning the whole source,
    doc ids to remove whatever else happens: fail closed when a document's access is unknown
    or changed since its indexed version)."""
    keep_ids: set[str] = set()
    keep_prefixes: set[str] = set()
    blocking: list[str] = []
    drop_ids: set[str] = set()
    for f in failures:
        if f.report_only:
            continue
        if f.doc_id:
            if f.drop:
                drop_ids.add(f.doc_id)
            elif f.keep_if_acl is not None and stored_acl is not None:
                try:
                    same = frozenset(stored_acl(f.doc_id)) == frozenset(f.keep_if_acl)
                except Exception:  # not indexed before: nothing to keep
                    same = False
                (keep_ids if same else drop_ids).add(f.doc_id)
            else:
                keep_ids.add(f.doc_id)
            continue
        m = _CHANNEL_ID.search(f.reason or "") or _CHANNEL_ID.search(f.path or "")
        if m:
            keep_prefixes.add(f"{src.name}:{m.group(1)}:")
        else:
            blocking.append(f.path)
    return keep_ids, keep_prefixes, blocking, drop_ids


#: ``progress(source, documents_read, expected_or_None)``: called with 0 when a source starts
#: and after every document read. The CLI turns it into a tqdm bar; the web job into a dict.
ProgressFn = Callable[[str, int, "int | None"], None]


def _sync_source(src: SourceConfig, *, writer: GenerationWriter, sink: _Sink, chunker: Any,
                 factory: ConnectorFactory, progress: ProgressFn | None, full: bool = False) -> SourceReport:
    rep = SourceReport(name=src.name, type=src.type, path=src.location())
    t0 = time.monotonic()
    try:
        connector = factory(src)
    except (SourceError, ConfigError, OSError, ValueError) as e:
        rep.status, rep.error, rep.pruned = "failed", str(e), False
        log.error("source failed source=%s reason=%s", src.name, e)
        rep.seconds = time.monotonic() - t0
        return rep
    stored = writer.read_store.doc_hashes(src.name)
    fingerprint = getattr(chunker, "fingerprint", None)
    rechunk = bool(stored) and fingerprint is not None and writer.read_store.source_chunker(src.name) != fingerprint
    if rechunk:
        rep.notes.append("chunking settings changed: every document of this source was re-chunked")
    try:
        total = connector.expected_count()
    except Exception:  # a count is only for the progress bar
        total = None
    seen: set[str] = set()
    embedded_before = sink.embedded
    report_progress = progress or (lambda _s, _n, _t: None)
    report_progress(src.name, 0, total)
    incremental = bool(getattr(connector, "incremental", False))
    try:
        if incremental:  # an API source: it reads what changed since its stored state
            connector.begin(None if rechunk or full else writer.read_store.source_state(src.name),
                            writer.read_store.source_acls(src.name))
        for n, doc in enumerate(connector.documents(), start=1):
            report_progress(src.name, n, total)
            if doc.id in seen:
                rep.fail_file(IngestFailure(path=str(doc.metadata.get("path", doc.uri)),
                                            reason=f"duplicate document id {doc.id!r}: second one skipped", doc_id=doc.id))
                continue
            seen.add(doc.id)
            old = stored.get(doc.id)
            if old == doc.content_hash() and not rechunk:
                rep.unchanged += 1
                continue
            try:
                chunks = chunker.chunk(doc)
            except Exception as e:  # one bad document never aborts the run
                log.warning("chunking failed doc_id=%s reason=%s", doc.id, e)
                rep.fail_file(IngestFailure(path=str(doc.metadata.get("path", doc.uri)),
                                            reason=f"chunking failed: {e}", doc_id=doc.id))
                continue
            sink.put(_Pending(doc, chunks, old is None, rep))
    except SourceError as e:
        rep.status, rep.error, rep.pruned = "failed", str(e), False
        log.error("source failed source=%s reason=%s", src.name, e)
    except Exception as e:  # a connector bug: keep the source's documents, go on with the others
        rep.status, rep.error, rep.pruned = "failed", f"{type(e).__name__}: {e}", False
        log.exception("source failed source=%s", src.name)
    sink.flush()  # a source's documents are all written before the next source starts
    rep.chunks_embedded = sink.embedded - embedded_before
    for f in getattr(connector, "skipped", []):  # read, nothing to index: listed, not failed
        rep.skipped.append(f)
        log.info("file not indexed source=%s path=%s reason=%s", src.name, f.path, f.reason)
    for f in getattr(connector, "failures", []):
        rep.fail_file(f)
        log.warning("file skipped source=%s path=%s reason=%s", src.name, f.path, f.reason)
    if incremental:
        rep.api_calls = dict(sorted(connector.calls.items()))
    if rep.status != "failed":
        if incremental and not connector.full_read:
            _apply_changes(src, rep, connector, stored, seen, writer, sink)
        else:
            _prune(src, rep, stored, seen, writer, sink)
        state = connector.state() if incremental else None
        if incremental and _canonical(state) != _canonical(writer.read_store.source_state(src.name)):
            writer.store.set_source_state(src.name, state)
    if writer.changed or (rep.status != "failed" and writer.read_store.source_chunker(src.name) != fingerprint):
        writer.store.set_source(src.name, src.type, src.location(), last_run_at=utc_now().isoformat(timespec="seconds"),
                                last_status=rep.status, chunker=fingerprint if rep.status != "failed" else None)
    rep.seconds = time.monotonic() - t0
    log.info("source synced source=%s added=%d updated=%d deleted=%d unchanged=%d failed=%d seconds=%.1f",
             src.name, rep.added, rep.updated, rep.deleted, rep.unchanged, rep.failed, rep.seconds)
    return rep


def _apply_changes(src: SourceConfig, rep: SourceReport, connector: Any, stored: dict[str, str], seen: set[str],
                   writer: GenerationWriter, sink: _Sink) -> None:
    """An API source's deletions and permission changes (its unchanged documents were not
    yielded, so nothing is pruned for being unseen). Fail closed: a document whose access
    could not be confirmed (a failure with ``drop``) is removed."""
    _keep, _prefixes, _blocking, drop_ids = _failure_prefixes(src, rep.failures, writer.read_store.document_acl)
    gone = sorted(d for d in set(connector.removed) | drop_ids if d in stored and d not in seen)
    acl = {d: a for d, a in connector.acl_changes.items() if d in stored and d not in seen and d not in gone}
    if not gone and not acl:
        return
    with writer.store.transaction():
        for doc_id in gone:
            sink.removed.extend(writer.store.delete_document(doc_id))
        for doc_id, readers in sorted(acl.items()):
            writer.store.set_document_acl(doc_id, frozenset(readers))
    rep.deleted += len(gone)
    rep.acl_updated += len(acl)
    if acl:
        rep.notes.append(f"{len(acl)} documents have new readers at the source (content unchanged): "
                         "their access was updated")


def _canonical(state: Any) -> str:
    return json.dumps(state, sort_keys=True, ensure_ascii=False, default=str)


def _prune(src: SourceConfig, rep: SourceReport, stored: dict[str, str], seen: set[str],
           writer: GenerationWriter, sink: _Sink) -> None:
    keep_ids, keep_prefixes, blocking, drop_ids = _failure_prefixes(
        src, rep.failures, writer.read_store.document_acl)
    dropped = [d for d in stored if d in drop_ids]
    if dropped:  # fail closed, even when other failures keep the rest of the source as it was
        with writer.store.transaction():
            for doc_id in dropped:
                sink.removed.extend(writer.store.delete_document(doc_id))
        rep.deleted += len(dropped)
        rep.notes.append(f"{len(dropped)} documents were removed because their access could not be "
                         "confirmed (see the failures)")
    stored = {d: h for d, h in stored.items() if d not in drop_ids}
    vanished = [d for d in stored if d not in seen and d not in keep_ids
                and not any(d.startswith(p) for p in keep_prefixes)]
    if blocking:
        rep.pruned = False
        if vanished:
            rep.notes.append(
                f"{len(vanished)} documents no longer found were kept, because these failures could hide "
                f"them: {', '.join(blocking[:5])}")
        return
    kept = len([d for d in stored if d not in seen]) - len(vanished)
    if kept:
        rep.notes.append(f"{kept} documents that failed to read this run keep their previous version")
    if not vanished:
        return
    store = writer.store
    with store.transaction():
        for doc_id in vanished:
            sink.removed.extend(store.delete_document(doc_id))
    rep.deleted += len(vanished)


def _embed_deferred(writer, sink: _Sink, settings: Settings, progress: ProgressFn | None) -> None:
    """The chunks left without a vector, embedded by the store's workers and this process,
    then put in the embedding cache (a killed run's successor embeds nothing twice)."""
    def told(done: int, total: int) -> None:
        if progress is not None:  # shown as one more bar: "embedding 640/1200"
            progress("embedding", done, total)
        log.debug("embedding chunks done=%d total=%d", done, total)

    writer.embed_pending(sink.embedder, workers=settings.embedding.workers, progress=told)
    sink.on_stage("embedding")
    sink.embedded += sink.deferred
    model, known = sink.embedder.model_id, set()
    for rows in writer.store.chunk_texts(batch=EMBED_BATCH * 4):
        shas = [sha for _i, _t, sha in rows if sha not in known]
        cached = sink.cache.get_many(model, shas, sink.embedder.dim)
        todo = [(i, sha) for i, _t, sha in rows if sha not in cached and sha not in known]
        if todo:
            ids, vecs = writer.vectors.vectors([i for i, _ in todo])
            by_id = dict(zip(ids.tolist(), vecs))
            sink.cache.put_many(model, [(sha, by_id[i]) for i, sha in todo if i in by_id])
        known.update(shas)


def _reembed_all(writer: GenerationWriter, sink: _Sink, settings: Settings, report: IngestReport) -> None:
    """The embedder changed: every stored chunk gets a vector from the new one."""
    store = writer.store
    fresh = writer.new_vectors()
    n = 0
    for rows in store.chunk_texts(batch=EMBED_BATCH * 4):
        ids = [r[0] for r in rows]
        texts = {r[2]: r[1] for r in rows}
        fresh.add(ids, sink.vectors_for([r[2] for r in rows], texts))
        n += len(ids)
    writer.replace_vectors(fresh)
    old = (writer.base_manifest or {}).get("embedder")
    report.notes.append(f"embedder changed from {old} to {sink.embedder.model_id}: {n} chunks re-embedded")
    log.info("embedder changed old=%s new=%s chunks=%d", old, sink.embedder.model_id, n)


def sync_sources(settings: Settings, sources: Sequence[SourceConfig], *, progress: ProgressFn | None = None,
                 embedder: Embedder | None = None, chunker: Any = None,
                 connector_factory: ConnectorFactory | None = None,
                 lock_timeout: float | None = None,
                 on_stage: Callable[[str], None] | None = None, full: bool = False) -> IngestReport:
    """Sync ``sources`` into a new index generation and publish it atomically.

    Holds ``data_dir/ingest.lock`` for the whole run: if another ingest holds it, waits
    ``lock_timeout`` s (default ``kb_chatbot.index.generation.LOCK_WAIT_S``), then raises IngestBusy.
    When nothing changed, nothing is published. The report is saved as JSON under ``reports_dir`` and recorded in ``app_db``.
    ``progress`` is told of every document read (see :data:`ProgressFn`). ``on_stage(name)``
    is called at "embedding" (after each embedded batch was cached), "faiss_written" and
    "manifest_written": crash tests pause or slow the run there. ``full``: the API sources read
    everything again instead of the changes since their stored state (``kb reindex --full``).
    """
    from kb_chatbot.index.embedder import load_embedder
    from kb_chatbot.ingest.chunking import make_chunker
    from kb_chatbot.ingest.connectors import make_connector

    import kb_chatbot.index.generation as generation

    report = IngestReport()
    with ingest_lock(settings, timeout=generation.LOCK_WAIT_S if lock_timeout is None else lock_timeout):
        generations_for(settings).prune()
        embedder = embedder or load_embedder(settings.embedding)
        chunker = chunker or make_chunker(settings)
        factory = connector_factory or make_connector
        report.embedder, report.index_kind = embedder.model_id, settings.index.kind
        cache = EmbeddingCache(settings.data_dir / CACHE_FILE)
        writer = make_writer(settings, model_id=embedder.model_id, dim=embedder.dim, on_stage=on_stage)
        sink = _Sink(writer, cache, embedder, on_stage=on_stage or (lambda _stage: None),
                     defer=bool(settings.embedding.workers) and settings.store.backend == "postgres")
        try:
            if writer.reembed_needed:
                _reembed_all(writer, sink, settings, report)
            if writer.kind_changed:
                writer.vectors.rebuild()
                report.notes.append(f"index kind changed to {settings.index.kind}: vectors rebuilt")
            for src in sources:
                report.sources.append(_sync_source(src, writer=writer, sink=sink, chunker=chunker,
                                                   factory=factory, progress=progress, full=full))
            if sink.removed:
                writer.vectors.remove(sink.removed)
            if writer.recovered_from:
                report.notes.append(f"generation {writer.recovered_from} was unreadable: the index was rebuilt "
                                    "from this run's sources only; run `kb reindex` for all sources")
            if sink.deferred:
                _embed_deferred(writer, sink, settings, progress)
            report.chunks_embedded = sink.embedded
            if writer.changed:
                keep = writer.store.text_shas()
                report.generation = writer.publish()
                cache.prune(embedder.model_id, keep)
            else:
                writer.discard()
                log.info("nothing changed: no new generation")
        except BaseException:
            writer.discard()
            raise
        finally:
            cache.close()
        gens = generations_for(settings)
        report.current_generation = gens.current()
        if report.current_generation:
            m = gens.manifest(report.current_generation)
            report.documents_total, report.chunks_total = int(m.get("documents", 0)), int(m.get("chunks", 0))
    report.finished_at = utc_now()
    report.save(settings)
    log.info("ingest finished ok=%s generation=%s embedded=%d seconds=%.1f report=%s", report.ok,
             report.generation, report.chunks_embedded, report.seconds, report.report_path)
    return report
