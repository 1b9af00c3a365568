"""Index generations, published atomically, and the reader that follows them.

Layout under ``settings.index_dir``::

    CURRENT                       the published generation id (replaced with os.replace)
    generations/<id>/kb.sqlite3   documents, chunks, ACL, FTS5 (index/store.py)
    generations/<id>/vectors.faiss
    generations/<id>/manifest.json  written last: a generation without it is incomplete

An ingest copies the current generation into a new folder, applies its changes there, writes
the vectors, fsyncs, writes the manifest, fsyncs, and only then flips CURRENT. A crash at any
point leaves CURRENT naming a complete generation; the next ingest deletes incomplete folders.
The previous generation is kept (a reader may be mid-query on it); older ones are deleted.
``ingest.lock`` under ``data_dir`` keeps two ingests from ever overlapping.
"""
from __future__ import annotations

import json
import logging
import os
import shutil
import sqlite3
import threading
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

from kb_chatbot.core.errors import IndexError_, IngestBusy as _IngestBusy
from kb_chatbot.core.settings import IndexConfig, Settings
from kb_chatbot.index.snapshot import SnapshotShortcuts
from kb_chatbot.index.store import Store
from kb_chatbot.index.vectors import FaissIndex

log = logging.getLogger(__name__)

DB_NAME = "kb.sqlite3"
VECTORS_NAME = "vectors.faiss"
MANIFEST_NAME = "manifest.json"
CURRENT_NAME = "CURRENT"
#: How long a second ingest waits for the lock before giving up.
LOCK_WAIT_S = 5.0


class IngestBusyError(_IngestBusy):
    """Another ingest holds the lock file."""

    def __init__(self, pid: int | None, lock_path: Path):
        who = f"pid {pid}" if pid else "pid unknown"
        super().__init__(f"another ingest is running ({who}); lock file {lock_path}. Try again when it finishes.", pid)


# --- small file helpers -----------------------------------------------------------------


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, text: str) -> None:
    """Write ``text`` to a temp file beside ``path``, fsync, os.replace, fsync the folder."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(path.parent)


# --- the lock ---------------------------------------------------------------------------


@contextmanager
def ingest_lock(settings: Settings, timeout: float = LOCK_WAIT_S) -> Iterator[None]:
    """Hold ``data_dir/ingest.lock`` (an OS file lock, freed by the kernel if we die); with
    ``store.backend: postgres`` a Postgres advisory lock instead (one ingest across machines).

    Raises :class:`IngestBusyError` naming the holder after ``timeout`` seconds.
    """
    if settings.store.backend == "postgres":
        from kb_chatbot.index.pg import advisory_lock

        with advisory_lock(settings.store.url, timeout):
            yield
        return
    from filelock import FileLock, Timeout

    settings.data_dir.mkdir(parents=True, exist_ok=True)
    lock_path = settings.data_dir / "ingest.lock"
    pid_path = settings.data_dir / "ingest.pid"
    lock = FileLock(str(lock_path))
    try:
        lock.acquire(timeout=timeout)
    except Timeout:
        try:
            pid = int(pid_path.read_text().strip())
        except (OSError, ValueError):
            pid = None
        raise IngestBusyError(pid, lock_path) from None
    try:
        pid_path.write_text(str(os.getpid()))
        yield
    finally:
        lock.release()


# --- generations on disk ----------------------------------------------------------------


class Generations:
    """The generation folders of one index dir."""

    def __init__(self, index_dir: Path):
        self.index_dir = Path(index_dir)
        self.root = self.index_dir / "generations"
        self.current_file = self.index_dir / CURRENT_NAME

    def current(self) -> str | None:
        try:
            gen = self.current_file.read_text(encoding="utf-8").strip()
        except FileNotFoundError:
            return None
        return gen or None

    def path(self, gen: str) -> Path:
        return self.root / gen

    def manifest(self, gen: str) -> dict[str, Any]:
        p = self.path(gen) / MANIFEST_NAME
        try:
            return json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:
            raise IndexError_(f"generation {gen} is incomplete or unreadable ({p}: {e}); run `kb reindex`") from None

    def check_files(self, gen: str, manifest: dict[str, Any]) -> None:
        """Cheap integrity check: the files exist with the sizes the manifest recorded."""
        for name, size in (manifest.get("files") or {}).items():
            p = self.path(gen) / name
            try:
                actual = p.stat().st_size
            except OSError:
                raise IndexError_(f"generation {gen}: {p} is missing; run `kb reindex`") from None
            if actual != size:
                raise IndexError_(f"generation {gen}: {p} has {actual} bytes, the manifest says {size}; "
                                  "run `kb reindex`")

    def listing(self) -> list[str]:
        if not self.root.is_dir():
            return []
        return sorted(p.name for p in self.root.iterdir() if p.is_dir())

    def new_id(self) -> str:
        now = datetime.now(timezone.utc)
        base = now.strftime("%Y%m%dT%H%M%S%fZ")
        gen, n = base, 0
        existing = set(self.listing())
        while gen in existing:
            n += 1
            gen = f"{base}-{n}"
        return gen

    def prune(self) -> list[str]:
        """Delete every generation but CURRENT and its parent (readers may be mid-query on it).

        That removes incomplete folders (no manifest: a crashed ingest) and complete ones that
        were never published (killed between the manifest and the flip). Call with the lock held.
        """
        current = self.current()
        keep = {current}
        if current:
            try:
                keep.add(self.manifest(current).get("parent"))
            except IndexError_:
                pass
        gone = []
        for gen in self.listing():
            if gen not in keep:
                shutil.rmtree(self.path(gen), ignore_errors=True)
                gone.append(gen)
        if gone:
            log.info("generations removed gens=%s kept=%s", ",".join(gone), ",".join(sorted(k for k in keep if k)))
        return gone

    def publish(self, gen: str) -> None:
        write_atomic(self.current_file, gen + "\n")


# --- writing a generation ---------------------------------------------------------------


class GenerationWriter:
    """Builds the next generation lazily: nothing is copied until the first change.

    ``read_store`` answers "what is indexed now" (the new copy once it exists);
    ``store``/``vectors`` create the copy on first use. Call with the ingest lock held.
    """

    def __init__(self, settings: Settings, *, model_id: str, dim: int,
                 on_stage: Callable[[str], None] | None = None):
        self.settings = settings
        #: called at "faiss_written" and "manifest_written" while publishing (crash tests)
        self.on_stage: Callable[[str], None] = on_stage or (lambda _stage: None)
        self.gens = Generations(settings.index_dir)
        self.model_id = model_id
        self.dim = dim
        self._base_store: Store | None = None
        self._store: Store | None = None
        self._vectors: FaissIndex | None = None
        self.gen: str | None = None
        self.changed = False
        self.reembed_needed = self.kind_changed = False
        #: Set when the published generation could not be read and the new one starts empty.
        self.recovered_from: str | None = None
        self.base = self.gens.current()
        self.base_manifest: dict[str, Any] | None = None
        if self.base:
            try:
                self.base_manifest = self.gens.manifest(self.base)
                self.gens.check_files(self.base, self.base_manifest)
            except IndexError_ as e:
                self._start_over(str(e))
                return
            m = self.base_manifest
            self.reembed_needed = m.get("embedder") != model_id or int(m.get("dim", 0)) != dim
            self.kind_changed = m.get("index_kind") != settings.index.kind

    def _start_over(self, reason: str) -> None:
        log.error("published generation unreadable gen=%s reason=%s: building a new index from scratch",
                  self.base, reason)
        self.recovered_from, self.base, self.base_manifest = self.base, None, None
        self.reembed_needed = self.kind_changed = False
        self.changed = True  # the broken generation must be replaced even if no source changed
        if self._base_store is not None:
            self._base_store.close()
            self._base_store = None
        self._store = None

    @property
    def read_store(self) -> Store:
        if self._store is not None:
            return self._store
        if self._base_store is None and self.base:
            try:
                store = Store.open_readonly(self.gens.path(self.base) / DB_NAME)
                store.get_meta("generation")  # "file is not a database" shows up here
                self._base_store = store
            except (IndexError_, sqlite3.DatabaseError) as e:
                self._start_over(str(e))
        if self._base_store is None:
            self._base_store = Store.empty()
        return self._base_store

    def _begin(self) -> None:
        self.gens.root.mkdir(parents=True, exist_ok=True)
        self.gen = self.gens.new_id()
        path = self.gens.path(self.gen)
        path.mkdir()
        db = path / DB_NAME
        if self.base:
            try:
                self._store = self.read_store.copy_to(db)
                self._vectors = FaissIndex.load(self.gens.path(self.base) / VECTORS_NAME, self.settings.index)
            except (IndexError_, sqlite3.DatabaseError) as e:
                if self._store is not None:
                    self._store.close()
                db.unlink(missing_ok=True)
                self._start_over(str(e))
        if not self.base:
            self._store = Store.create(db)
            self._vectors = FaissIndex(self.dim, self.settings.index)
        if self._base_store is not None:
            self._base_store.close()
            self._base_store = None
        log.info("generation started gen=%s base=%s", self.gen, self.base)

    @property
    def store(self) -> Store:
        if self._store is None:
            self._begin()
        self.changed = True
        return self._store  # type: ignore[return-value]

    @property
    def vectors(self) -> FaissIndex:
        if self._vectors is None:
            self._begin()
        self.changed = True
        return self._vectors  # type: ignore[return-value]

    def new_vectors(self) -> FaissIndex:
        """An empty vector index of this writer's dimension (to re-embed every chunk into)."""
        return FaissIndex(self.dim, self.settings.index)

    def replace_vectors(self, vectors: FaissIndex) -> None:
        """Use a rebuilt vector index (e.g. after the embedder changed)."""
        if self._store is None:
            self._begin()
        self._vectors = vectors
        self.changed = True

    def publish(self, *, extra: dict[str, Any] | None = None) -> str:
        """Finish the new generation and make it CURRENT. Returns its id."""
        store, vectors = self.store, self.vectors
        assert self.gen is not None
        path = self.gens.path(self.gen)
        vectors.settle()
        ids = store.chunk_ids()
        if not np.array_equal(np.sort(vectors.ids()), ids):
            raise IndexError_(
                f"generation {self.gen}: {len(ids)} chunks but {vectors.ntotal} vectors; not published")
        counts = store.counts()
        store.set_meta("generation", self.gen)
        store.set_meta("embedder", self.model_id)
        store.finalize()
        vectors.save(path / VECTORS_NAME)
        self.on_stage("faiss_written")
        manifest = {
            "generation": self.gen, "parent": self.base,
            "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "embedder": self.model_id, "dim": self.dim,
            "index_kind": self.settings.index.kind, "index_structure": vectors.structure,
            "documents": counts["documents"], "chunks": counts["chunks"], "vectors": vectors.ntotal,
            "files": {n: (path / n).stat().st_size for n in (DB_NAME, VECTORS_NAME)},
            **(extra or {}),
        }
        write_atomic(path / MANIFEST_NAME, json.dumps(manifest, indent=2) + "\n")
        self.on_stage("manifest_written")
        self.gens.publish(self.gen)
        log.info("generation published gen=%s documents=%d chunks=%d", self.gen, counts["documents"], counts["chunks"])
        self.gens.prune()
        return self.gen

    def discard(self) -> None:
        """Drop an unpublished generation (nothing changed, or the run failed)."""
        for s in (self._store, self._base_store):
            if s is not None:
                try:
                    s.close()
                except Exception:  # already closed
                    pass
        if self.gen is not None:
            shutil.rmtree(self.gens.path(self.gen), ignore_errors=True)
            log.info("generation discarded gen=%s", self.gen)
        self.gen = None


# --- reading: follow CURRENT ------------------------------------------------------------


@dataclass
class IndexSnapshot:
    """One published generation, opened read-only. Safe to share between threads."""

    generation: str | None
    store: Store
    vectors: FaissIndex
    manifest: dict[str, Any]
    _allowed: dict[frozenset[str], np.ndarray | None] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def dense(self, qvec: np.ndarray, principals: frozenset[str], k: int) -> list[tuple[int, float]]:
        """(row id, cosine) of the ``k`` nearest chunks ``principals`` may read, best first."""
        if not self.vectors.ntotal:
            return []
        scores, ids = self.vectors.search(qvec, k, allowed_ids=self.allowed_ids(principals))
        return [(int(i), float(s)) for i, s in zip(ids, scores)]

    def allowed_ids(self, principals: frozenset[str]) -> np.ndarray | None:
        """Row ids readable by ``principals`` for the FAISS selector; None when all are."""
        with self._lock:
            if principals in self._allowed:
                return self._allowed[principals]
        ids = self.store.readable_chunk_ids(principals)
        value = None if len(ids) == self.vectors.ntotal else ids
        with self._lock:
            if len(self._allowed) > 256:
                self._allowed.clear()
            self._allowed[principals] = value
        return value


def _open_snapshot(gens: Generations, gen: str, cfg: IndexConfig) -> IndexSnapshot:
    manifest = gens.manifest(gen)
    gens.check_files(gen, manifest)
    path = gens.path(gen)
    store = Store.open_readonly(path / DB_NAME)
    vectors = FaissIndex.load(path / VECTORS_NAME, cfg)
    return IndexSnapshot(gen, store, vectors, manifest)


def _empty_snapshot(cfg: IndexConfig, dim: int) -> IndexSnapshot:
    return IndexSnapshot(None, Store.empty(), FaissIndex(dim, cfg), {})


class IndexReader(SnapshotShortcuts):
    """What ``open_index`` returns: the published generation, reopened when CURRENT changes.

    ``snapshot()`` does a cheap stat of CURRENT and returns the generation to use for one
    query (store and vectors together); ``store``/``vectors``/``generation`` are shortcuts.
    """

    def __init__(self, settings: Settings, *, missing_ok: bool = False, empty_dim: int = 384):
        self.settings = settings
        self.gens = Generations(settings.index_dir)
        self.missing_ok = missing_ok
        self.empty_dim = empty_dim
        self._lock = threading.Lock()
        self._stamp: tuple[int, int, int] | None = None
        self._snap: IndexSnapshot | None = None
        self.snapshot()

    def _current_stamp(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self.gens.current_file)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def snapshot(self) -> IndexSnapshot:
        stamp = self._current_stamp()
        if self._snap is not None and stamp == self._stamp:
            return self._snap
        with self._lock:
            stamp = self._current_stamp()
            if self._snap is not None and stamp == self._stamp:
                return self._snap
            gen = self.gens.current() if stamp else None
            if gen is None:
                if not self.missing_ok:
                    raise IndexError_(
                        f"no index yet in {self.settings.index_dir}: run `kb reindex` or `kb ingest wiki|slack|drive PATH`")
                snap = _empty_snapshot(self.settings.index, self.empty_dim)
            else:
                snap = self._open_retrying(gen)
                log.info("index generation opened gen=%s chunks=%s", gen, snap.manifest.get("chunks"))
            self._snap, self._stamp = snap, stamp
            return snap

    def _open_retrying(self, gen: str) -> IndexSnapshot:
        # CURRENT can move on (and its old target be pruned) between reading and opening it
        for attempt in range(3):
            try:
                return _open_snapshot(self.gens, gen, self.settings.index)
            except IndexError_:
                newer = self.gens.current()
                if attempt == 2 or newer is None or newer == gen:
                    raise
                gen = newer
        raise AssertionError("unreachable")


def open_index(settings: Settings, *, missing_ok: bool = False) -> IndexReader:
    """Open the published index read-only. Raises IndexError_ if there is none (unless
    ``missing_ok``: then it is empty until the first ingest publishes)."""
    if settings.store.backend == "postgres":
        from kb_chatbot.index.pg import PgIndexReader

        return PgIndexReader(settings, missing_ok=missing_ok)  # type: ignore[return-value]
    return IndexReader(settings, missing_ok=missing_ok)


def generations_for(settings: Settings) -> Generations:
    """The generations of the configured store: folders under data_dir, or Postgres schemas."""
    if settings.store.backend == "postgres":
        from kb_chatbot.index.pg import PgGenerations

        return PgGenerations(settings.store.url)  # type: ignore[return-value]
    return Generations(settings.index_dir)


def make_writer(settings: Settings, *, model_id: str, dim: int,
                on_stage: Callable[[str], None] | None = None) -> GenerationWriter:
    """The next generation's writer for the configured store."""
    if settings.store.backend == "postgres":
        from kb_chatbot.index.pg import PgGenerationWriter

        return PgGenerationWriter(settings, model_id=model_id, dim=dim, on_stage=on_stage)  # type: ignore[return-value]
    return GenerationWriter(settings, model_id=model_id, dim=dim, on_stage=on_stage)


def published_store(settings: Settings) -> tuple[str | None, dict[str, Any], Any]:
    """(current generation, its manifest, its store opened read-only) or (None, {}, None)."""
    gens = generations_for(settings)
    current = gens.current()
    if not current:
        return None, {}, None
    manifest = gens.manifest(current)
    if settings.store.backend == "postgres":
        from kb_chatbot.index.pg import PgStore, connect, schema_of

        return current, manifest, PgStore(connect(settings.store.url), schema_of(current), readonly=True)
    return current, manifest, Store.open_readonly(gens.path(current) / DB_NAME)
