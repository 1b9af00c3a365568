"""FAISS vector index: int64 chunk ids -> L2-normalised float32 vectors, inner-product search.

Every kind is an ``IndexIDMap2`` around the real index, so the ids FAISS returns are the
``chunks.id`` row ids of the SQLite store and any vector can be reconstructed by id:

- ``flat``: ``IndexFlatIP`` (exact; the default, fine to ~1M chunks).
- ``hnsw``: ``IndexHNSWFlat`` with inner product. HNSW cannot remove vectors, so a removal
  rebuilds the graph from the stored vectors (HNSWFlat keeps them).
- ``ivf``: ``IndexIVFFlat`` trained on the vectors; below ``ivf_min_vectors`` there is too
  little to train on, so it stays flat (logged) until a later ingest crosses the threshold.
  ``IndexIDMap2`` assumes the inner index renumbers on removal, which IVF does not: a removal
  rebuilds (and retrains) instead.

The ACL filter runs inside the search: ``allowed_ids`` becomes an ``IDSelectorBatch`` in the
search parameters. HNSW and IVF only look at part of the collection, so a selective filter
can leave them with fewer than ``k`` hits; then (and whenever few ids are allowed) the search
is done exactly over the allowed vectors instead.
"""
from __future__ import annotations

import logging
import math
import os
from pathlib import Path
from typing import Any

import numpy as np

from kb_chatbot.core.errors import IndexError_
from kb_chatbot.core.settings import IndexConfig

log = logging.getLogger(__name__)

#: IVF needs ~39 training points per list; below this many vectors ``ivf`` stays flat.
IVF_MIN_VECTORS = 4096
#: With this many allowed ids or fewer, search them exactly instead of asking the ANN index.
EXACT_SUBSET_MAX = 2048

_faiss_mod: Any = None


def _faiss() -> Any:
    """Import faiss once, with one OpenMP thread (it defaults to 2; see STACK.md)."""
    global _faiss_mod
    if _faiss_mod is None:
        import faiss

        faiss.omp_set_num_threads(int(os.environ.get("KB_FAISS_THREADS", "1")))
        _faiss_mod = faiss
    return _faiss_mod


def _as_ids(ids: Any) -> np.ndarray:
    return np.ascontiguousarray(np.asarray(ids, dtype=np.int64).reshape(-1))


def _as_vecs(vecs: Any, dim: int) -> np.ndarray:
    v = np.ascontiguousarray(np.asarray(vecs, dtype=np.float32))
    if v.ndim == 1:
        v = v.reshape(1, -1)
    if v.shape[1] != dim:
        raise ValueError(f"vectors have dimension {v.shape[1]}, the index has {dim}")
    return v


class FaissIndex:
    """Ids + vectors with filtered inner-product search. Not thread-safe for writes."""

    def __init__(self, dim: int, cfg: IndexConfig | None = None, *, ivf_min_vectors: int = IVF_MIN_VECTORS,
                 _index: Any = None):
        self.dim = int(dim)
        self.cfg = cfg or IndexConfig()
        self.ivf_min_vectors = ivf_min_vectors
        self._index = _index if _index is not None else self._empty("flat" if self.cfg.kind == "ivf" else self.cfg.kind)

    # --- structure ----------------------------------------------------------------------

    @property
    def kind(self) -> str:
        """The kind asked for in settings."""
        return self.cfg.kind

    @property
    def structure(self) -> str:
        """What the index really is now: flat, hnsw or ivf (ivf may still be flat when small)."""
        inner = _faiss().downcast_index(self._index.index)
        name = type(inner).__name__
        if "HNSW" in name:
            return "hnsw"
        if "IVF" in name:
            return "ivf"
        return "flat"

    @property
    def ntotal(self) -> int:
        return int(self._index.ntotal)

    def __len__(self) -> int:
        return self.ntotal

    def _empty(self, structure: str) -> Any:
        faiss = _faiss()
        if structure == "hnsw":
            inner = faiss.IndexHNSWFlat(self.dim, self.cfg.hnsw_m, faiss.METRIC_INNER_PRODUCT)
        elif structure == "flat":
            inner = faiss.IndexFlatIP(self.dim)
        else:
            raise ValueError(f"an empty index cannot be {structure!r}")
        return faiss.IndexIDMap2(inner)  # faiss's Python wrapper keeps ``inner`` alive

    def _target_structure(self, n: int) -> str:
        if self.cfg.kind == "ivf" and n < self.ivf_min_vectors:
            return "flat"
        return self.cfg.kind

    def _build(self, ids: np.ndarray, vecs: np.ndarray) -> None:
        faiss = _faiss()
        target = self._target_structure(len(ids))
        if self.cfg.kind == "ivf" and target == "flat":
            log.info("ivf index kept flat vectors=%d min_for_ivf=%d", len(ids), self.ivf_min_vectors)
        if target == "ivf":
            n = len(ids)
            nlist = max(1, min(self.cfg.ivf_nlist, n // 39, int(4 * math.sqrt(n))))
            quantizer = faiss.IndexFlatIP(self.dim)
            inner = faiss.IndexIVFFlat(quantizer, self.dim, nlist, faiss.METRIC_INNER_PRODUCT)
            inner.train(vecs)
            inner.make_direct_map()  # reconstruct by id (dense scores, rebuilds)
            idx = faiss.IndexIDMap2(inner)
            log.info("ivf index trained vectors=%d nlist=%d", n, nlist)
        else:
            idx = self._empty(target)
        if len(ids):
            idx.add_with_ids(vecs, ids)
        self._index = idx

    def rebuild(self) -> None:
        """Rebuild from the stored vectors in the structure settings ask for."""
        ids, vecs = self.vectors()
        self._build(ids, vecs)

    def settle(self) -> bool:
        """Bring the structure in line with settings (e.g. ivf once big enough). True if rebuilt."""
        want = self._target_structure(self.ntotal)
        if want != self.structure:
            log.info("vector index rebuilt from=%s to=%s vectors=%d", self.structure, want, self.ntotal)
            self.rebuild()
            return True
        return False

    # --- writes -------------------------------------------------------------------------

    def add(self, ids: Any, vecs: Any) -> None:
        ids = _as_ids(ids)
        if not len(ids):
            return
        vecs = _as_vecs(vecs, self.dim)
        if len(vecs) != len(ids):
            raise ValueError(f"{len(ids)} ids but {len(vecs)} vectors")
        self._index.add_with_ids(vecs, ids)

    def remove(self, ids: Any) -> int:
        """Remove these ids (unknown ones are ignored); returns how many were removed."""
        ids = _as_ids(ids)
        if not len(ids) or not self.ntotal:
            return 0
        if self.structure == "flat":
            return int(self._index.remove_ids(_faiss().IDSelectorBatch(ids)))
        all_ids, vecs = self.vectors()
        keep = ~np.isin(all_ids, ids)
        self._build(all_ids[keep], vecs[keep])
        return int((~keep).sum())

    # --- reads --------------------------------------------------------------------------

    def ids(self) -> np.ndarray:
        return _faiss().vector_to_array(self._index.id_map).astype(np.int64)

    def vectors(self, ids: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """(ids, vectors) for ``ids`` (all when None). Unknown ids raise KeyError."""
        if ids is None:
            all_ids = self.ids()
            if not len(all_ids):
                return all_ids, np.zeros((0, self.dim), dtype=np.float32)
            inner = _faiss().downcast_index(self._index.index)
            return all_ids, inner.reconstruct_n(0, self.ntotal)
        ids = _as_ids(ids)
        if not len(ids):
            return ids, np.zeros((0, self.dim), dtype=np.float32)
        try:
            return ids, self._index.reconstruct_batch(ids)
        except RuntimeError as e:
            raise KeyError(f"vector ids not in the index: {e}") from None

    def search(self, query: Any, k: int, allowed_ids: Any = None) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` (scores, ids) for one query vector, best first, restricted to ``allowed_ids``.

        ``allowed_ids=None`` means no restriction; an empty array means nothing is readable.
        """
        q = _as_vecs(query, self.dim)[:1]
        empty = (np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.int64))
        if k <= 0 or not self.ntotal:
            return empty
        if allowed_ids is None:
            return self._trim(*self._index.search(q, min(k, self.ntotal), params=self._params(None)))
        allowed = _as_ids(allowed_ids)
        if not len(allowed):
            return empty
        structure = self.structure
        if structure != "flat" and len(allowed) <= EXACT_SUBSET_MAX:
            return self._exact_subset(q, k, allowed)
        sel = _faiss().IDSelectorBatch(allowed)
        want = min(k, self.ntotal, len(allowed))
        scores, ids = self._trim(*self._index.search(q, want, params=self._params(sel)))
        if structure != "flat" and len(ids) < want:
            # the ANN index saw too few allowed vectors: redo it exactly (still filtered)
            log.debug("filtered ann search short found=%d wanted=%d: exact fallback", len(ids), want)
            return self._exact_subset(q, k, allowed)
        return scores, ids

    def _params(self, sel: Any) -> Any:
        faiss = _faiss()
        structure = self.structure
        if structure == "hnsw":
            return faiss.SearchParametersHNSW(sel=sel, efSearch=self.cfg.hnsw_ef_search)
        if structure == "ivf":
            return faiss.SearchParametersIVF(sel=sel, nprobe=self.cfg.ivf_nprobe)
        return faiss.SearchParameters(sel=sel) if sel is not None else None

    @staticmethod
    def _trim(scores: np.ndarray, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        keep = ids[0] >= 0
        return scores[0][keep].astype(np.float32), ids[0][keep].astype(np.int64)

    def _exact_subset(self, q: np.ndarray, k: int, allowed: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        present = allowed[np.isin(allowed, self.ids())]
        if not len(present):
            return np.zeros(0, dtype=np.float32), np.zeros(0, dtype=np.int64)
        _, vecs = self.vectors(present)
        scores = vecs @ q[0]
        order = np.argsort(-scores, kind="stable")[:k]
        return scores[order].astype(np.float32), present[order]

    # --- files --------------------------------------------------------------------------

    def save(self, path: str | Path) -> None:
        """Write the index to ``path`` and fsync it."""
        path = Path(path)
        _faiss().write_index(self._index, str(path))
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    @classmethod
    def load(cls, path: str | Path, cfg: IndexConfig | None = None, **kw: Any) -> "FaissIndex":
        faiss = _faiss()
        path = Path(path)
        try:
            idx = faiss.read_index(str(path))
        except RuntimeError as e:
            raise IndexError_(f"cannot read vector index {path}: {e}; run `kb reindex` to rebuild") from None
        if not isinstance(idx, faiss.IndexIDMap2):
            raise IndexError_(f"{path} is not a kb vector index (got {type(idx).__name__}); run `kb reindex`")
        inner = faiss.downcast_index(idx.index)
        if isinstance(inner, faiss.IndexIVF) and inner.direct_map.type == faiss.DirectMap.NoMap:
            inner.make_direct_map()
        return cls(idx.d, cfg, _index=idx, **kw)
