"""Hybrid retrieval: FAISS dense + SQLite FTS5 BM25, fused with reciprocal rank fusion.

The ACL filter runs inside both searches, before any chunk text leaves the store: the dense
search gets the user's readable row ids as a FAISS ID selector, the BM25 search joins the
ACL table in SQL, and the rows for the final hits are fetched with the ACL check once more.
"""
from __future__ import annotations

import logging
import re
from typing import Any

import numpy as np

from kb_chatbot.core.protocols import Embedder
from kb_chatbot.core.settings import RetrievalConfig
from kb_chatbot.core.text import STOPWORDS
from kb_chatbot.core.types import Hit, Principal
from kb_chatbot.index.generation import IndexReader, IndexSnapshot
from kb_chatbot.index.store import ChunkRow

log = logging.getLogger(__name__)

MODES = ("hybrid", "dense", "bm25")
#: Most terms an FTS query gets (long pasted questions would otherwise match everything).
MAX_TERMS = 32

_WORD = re.compile(r"\w+", re.UNICODE)


def fts_query(text: str) -> str:
    """A safe FTS5 query from free text: each word quoted as a string, OR-ed.

    The user's input never reaches FTS5 as syntax (no NEAR, column filters, ``*`` or quotes):
    only ``\\w+`` runs survive, each inside double quotes. Stopwords are dropped unless
    nothing else is left.
    """
    words = [w.lower() for w in _WORD.findall(text)]
    words = [w.replace("_", " ").strip() for w in words]
    words = [w for w in words if w]
    content = [w for w in words if w not in STOPWORDS] or words
    terms = list(dict.fromkeys(content))[:MAX_TERMS]
    return " OR ".join('"' + t.replace('"', '""') + '"' for t in terms)


class HybridRetriever:
    """``retrieve(query, user=..., top_k=...)`` -> ACL-filtered Hits, best first."""

    def __init__(self, index: IndexReader | IndexSnapshot | Any, embedder: Embedder, cfg: RetrievalConfig):
        self.index = index
        self.embedder = embedder
        self.cfg = cfg

    def _snapshot(self) -> IndexSnapshot:
        return self.index.snapshot() if hasattr(self.index, "snapshot") else self.index

    # --- the two searches ---------------------------------------------------------------

    def _dense(self, snap: IndexSnapshot, qvec: np.ndarray, principals: frozenset[str], k: int) -> list[tuple[int, float]]:
        return snap.dense(qvec, principals, k)  # the ACL filter inside the search

    def _bm25(self, snap: IndexSnapshot, fq: str, principals: frozenset[str], k: int) -> list[tuple[int, float]]:
        return snap.store.bm25_search(fq, principals, k) if fq else []

    def dense_search(self, query: str, *, user: Principal, k: int) -> list[Hit]:
        """Dense-only baseline: cosine similarity, ACL-filtered inside FAISS."""
        snap = self._snapshot()
        principals = user.principals()
        ranked = self._dense(snap, self.embedder.embed_query(query), principals, k)
        return self._hits(snap, ranked, principals, {i: s for i, s in ranked}, {}, score_of="dense")

    def bm25_search(self, query: str, *, user: Principal, k: int) -> list[Hit]:
        """BM25-only baseline: FTS5 with the ACL join in SQL."""
        snap = self._snapshot()
        principals = user.principals()
        ranked = self._bm25(snap, fts_query(query), principals, k)
        return self._hits(snap, ranked, principals, {}, {i: s for i, s in ranked}, score_of="bm25")

    # --- fused ----------------------------------------------------------------------------

    def retrieve(self, query: str, *, user: Principal, top_k: int | None = None, mode: str | None = None) -> list[Hit]:
        mode = mode or self.cfg.mode
        if mode not in MODES:
            raise ValueError(f"unknown retrieval mode {mode!r} (choose from {', '.join(MODES)})")
        top_k = top_k or self.cfg.top_k
        if not query.strip():
            return []
        if mode == "dense":
            return self.dense_search(query, user=user, k=top_k)
        if mode == "bm25":
            return self.bm25_search(query, user=user, k=top_k)
        snap = self._snapshot()
        principals = user.principals()
        qvec = self.embedder.embed_query(query)
        fq = fts_query(query)
        n = max(self.cfg.candidates, top_k)
        dense = self._dense(snap, qvec, principals, n)
        sparse = self._bm25(snap, fq, principals, n)
        fused: dict[int, float] = {}
        for ranked in (dense, sparse):
            for rank, (cid, _) in enumerate(ranked, start=1):
                fused[cid] = fused.get(cid, 0.0) + 1.0 / (self.cfg.rrf_k + rank)
        order = sorted(fused, key=lambda c: (-fused[c], c))[:top_k]
        dense_scores = {i: s for i, s in dense}
        bm25_scores = {i: s for i, s in sparse}
        # fill in the score the other search did not report, for the final hits only
        missing_dense = [i for i in order if i not in dense_scores]
        if missing_dense:
            ids, vecs = snap.vectors.vectors(missing_dense)
            dense_scores.update({int(i): float(v @ qvec) for i, v in zip(ids, vecs)})
        missing_bm25 = [i for i in order if i not in bm25_scores]
        if missing_bm25 and fq:
            bm25_scores.update(snap.store.bm25_scores(fq, missing_bm25))
        order = self._named_first(snap, query, qvec, fq, principals, order, fused, dense_scores, bm25_scores, top_k)
        ranked = [(i, fused.get(i, 0.0)) for i in order]
        hits = self._hits(snap, ranked, principals, dense_scores, bm25_scores, score_of="fused")
        log.debug("retrieve mode=hybrid gen=%s dense=%d bm25=%d hits=%d", snap.generation, len(dense), len(sparse), len(hits))
        return hits

    #: Chunks of a document named in the question that lead the hits.
    NAMED_CHUNKS = 3

    def _named_first(self, snap: IndexSnapshot, query: str, qvec: np.ndarray, fq: str, principals: frozenset[str],
                     order: list[int], fused: dict[int, float], dense_scores: dict[int, float],
                     bm25_scores: dict[int, float], top_k: int) -> list[int]:
        """A document named in the question ("according to Benefits Details.pdf, …") leads the
        hits with its chunks closest to the question, whether or not the searches ranked them:
        the asker said where the answer is."""
        named = snap.store.named_documents(query, principals)
        if not named:
            return order
        ids = snap.store.chunk_ids_of(named)
        if not ids:
            return order
        got, vecs = snap.vectors.vectors(ids)
        dense = {int(i): float(v @ qvec) for i, v in zip(got, vecs)}
        sparse = snap.store.bm25_scores(fq, ids) if fq else {}
        dense_scores.update(dense)
        bm25_scores.update(sparse)
        mine = sorted(dense, key=lambda i: (-(dense[i] + (0.05 if sparse.get(i) else 0.0)), i))[: self.NAMED_CHUNKS]
        log.debug("retrieve named_documents=%d chunks=%d", len(named), len(mine))
        return (mine + [i for i in order if i not in mine])[:top_k]

    def _hits(self, snap: IndexSnapshot, ranked: list[tuple[int, float]], principals: frozenset[str],
              dense_scores: dict[int, float], bm25_scores: dict[int, float], *, score_of: str) -> list[Hit]:
        rows = snap.store.chunk_rows([i for i, _ in ranked], principals)  # ACL checked again in SQL
        hits = []
        for cid, score in ranked:
            row: ChunkRow | None = rows.get(cid)
            if row is None:
                continue
            hits.append(Hit(
                chunk=row.chunk, doc_title=row.doc_title, doc_uri=row.doc_uri, source=row.source,
                source_type=row.source_type,  # type: ignore[arg-type]
                score=float(score), dense_score=dense_scores.get(cid), bm25_score=bm25_scores.get(cid),
            ))
        return hits
