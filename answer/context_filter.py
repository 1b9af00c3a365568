"""The pre-generation filter: rerank retrieved chunks and trim each to the sentences that answer.

Prefill is the bulk of an answer's cost on CPU (5 x 512 tokens ~ 45 s on the 1.5B model,
STACK.md), so the prompt gets only what answers the question:

1. every candidate chunk is split into sentences; the query and all sentences are embedded
   with the already-loaded embedder (one batch; sentence vectors are cached per chunk id, so a
   chunk seen before costs nothing);
2. a chunk's rerank score is ``0.7 * best + 0.3 * second best`` sentence cosine to the query
   (one strong sentence matters most; a second one breaks ties between similar chunks);
   with ``relevance="slm"`` the SLM's P(yes) for "does this passage answer the question"
   replaces it for the chunks that survive the embedding pass (slower, sharper);
3. chunks below ``min_relevance`` are dropped (the best one is always kept), the rest are
   sorted by rerank score and cut to ``top_k``;
4. each kept chunk keeps its ``filter_sentences`` best sentences in original order, plus a
   leading heading line, joined with " … " where sentences were skipped.

The result carries ``Hit.text`` (what goes into the prompt) and ``Hit.rerank_score``.
"""
from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass, replace
from typing import Literal, Sequence

import numpy as np

from answer.prompts import build_relevance_messages
from core.text import Span, sentence_spans
from core.protocols import Embedder
from core.types import Hit

log = logging.getLogger(__name__)

#: Sentences kept per chunk id in the embedding cache (chunk text is immutable per id).
CACHE_CHUNKS = 4096
#: A sentence longer than this many characters is embedded by its start only (MiniLM reads
#: at most 512 tokens anyway; long "sentences" are tables or code).
MAX_SENTENCE_CHARS = 1000


@dataclass(frozen=True)
class FilteredContext:
    hits: tuple[Hit, ...]
    seconds: float
    candidates: int
    dropped: int  # below min_relevance
    chars_before: int
    chars_after: int


class ContextFilter:
    def __init__(
        self,
        embedder: Embedder,
        *,
        filter_sentences: int = 4,
        min_relevance: float = 0.15,
        relevance: Literal["embedding", "slm"] = "embedding",
        generator=None,
    ):
        if relevance == "slm" and generator is None:
            raise ValueError("relevance='slm' needs a generator with yes_probability()")
        self.embedder = embedder
        self.filter_sentences = filter_sentences
        self.min_relevance = min_relevance
        self.relevance = relevance
        self.generator = generator
        self._cache: OrderedDict[str, tuple[list[Span], np.ndarray]] = OrderedDict()
        self._lock = threading.Lock()

    @classmethod
    def from_settings(cls, embedder: Embedder, cfg, generator=None, relevance: str = "embedding") -> "ContextFilter":
        return cls(
            embedder,
            filter_sentences=cfg.filter_sentences,
            min_relevance=cfg.min_relevance,
            relevance=relevance,  # type: ignore[arg-type]
            generator=generator,
        )

    def clear_cache(self) -> None:
        """Forget cached sentence vectors (benchmarks measure a cold question)."""
        with self._lock:
            self._cache.clear()

    # --- sentence vectors ------------------------------------------------------------
    def _sentences(self, hits: Sequence[Hit]) -> list[tuple[list[Span], np.ndarray]]:
        out: list[tuple[list[Span], np.ndarray] | None] = []
        todo: list[tuple[int, list[Span]]] = []
        with self._lock:
            for i, h in enumerate(hits):
                cached = self._cache.get(h.chunk.id)
                if cached is not None:
                    self._cache.move_to_end(h.chunk.id)
                    out.append(cached)
                else:
                    spans = sentence_spans(h.chunk.text) or [Span(h.chunk.text, 0, len(h.chunk.text))]
                    todo.append((i, spans))
                    out.append(None)
        if todo:
            texts = [s.text[:MAX_SENTENCE_CHARS] for _, spans in todo for s in spans]
            vecs = np.asarray(self.embedder.embed_documents(texts), dtype=np.float32)
            pos = 0
            with self._lock:
                for i, spans in todo:
                    entry = (spans, vecs[pos : pos + len(spans)])
                    pos += len(spans)
                    out[i] = entry
                    self._cache[hits[i].chunk.id] = entry
                while len(self._cache) > CACHE_CHUNKS:
                    self._cache.popitem(last=False)
        return out  # type: ignore[return-value]

    # --- the filter ------------------------------------------------------------------
    def filter(self, query: str, hits: Sequence[Hit], *, top_k: int) -> FilteredContext:
        t0 = time.perf_counter()
        if not hits:
            return FilteredContext((), 0.0, 0, 0, 0, 0)
        qv = np.asarray(self.embedder.embed_query(query), dtype=np.float32)
        scored: list[tuple[float, int, Hit, str]] = []
        for i, (h, (spans, vecs)) in enumerate(zip(hits, self._sentences(hits))):
            sims = vecs @ qv if len(spans) else np.zeros(0, dtype=np.float32)
            order = np.argsort(-sims, kind="stable")
            best = float(sims[order[0]]) if len(order) else 0.0
            second = float(sims[order[1]]) if len(order) > 1 else best
            score = 0.7 * best + 0.3 * second
            scored.append((score, i, h, _trim(h.chunk.text, spans, order, self.filter_sentences)))
        # rerank: best first (stable on retrieval order), drop weak ones but never all
        scored.sort(key=lambda t: (-t[0], t[1]))
        if self.relevance == "slm":
            pool = scored[: 2 * top_k]
            rescored = []
            for _score, i, h, text in pool:
                p = float(self.generator.yes_probability(build_relevance_messages(query, text)))
                rescored.append((p, i, h, text))
            scored = sorted(rescored, key=lambda t: (-t[0], t[1]))
        kept = [t for t in scored if t[0] >= self.min_relevance] or scored[:1]
        kept = kept[:top_k]
        out = tuple(replace(h, text=text, rerank_score=round(score, 6)) for score, _i, h, text in kept)
        seconds = time.perf_counter() - t0
        result = FilteredContext(
            hits=out,
            seconds=seconds,
            candidates=len(hits),
            dropped=len(scored) - len([t for t in scored if t[0] >= self.min_relevance]),
            chars_before=sum(len(h.chunk.text) for _s, _i, h, _t in kept),
            chars_after=sum(len(h.text or "") for h in out),
        )
        log.debug(
            "context_filter candidates=%d kept=%d dropped=%d chars_before=%d chars_after=%d seconds=%.3f",
            result.candidates, len(out), result.dropped, result.chars_before, result.chars_after, seconds,
        )
        return result


def _is_heading(span: Span) -> bool:
    return span.text.lstrip().startswith("#")


def _trim(text: str, spans: list[Span], order: np.ndarray, keep: int) -> str:
    """The ``keep`` best sentences in original order, a leading heading kept, gaps as ' … '."""
    if len(spans) <= keep:
        return text.strip()
    chosen = {int(i) for i in order[:keep]}
    if _is_heading(spans[0]):
        chosen.add(0)
    idx = sorted(chosen)
    out = "" if idx[0] == 0 else "… "
    for j, i in enumerate(idx):
        if j:
            prev = idx[j - 1]
            newline = _is_heading(spans[prev]) or "\n" in text[spans[prev].end : spans[i].start]
            if i == prev + 1:
                out += "\n" if newline else " "
            else:
                out += "\n… " if _is_heading(spans[prev]) else " … "
        out += spans[i].text
    if idx[-1] != len(spans) - 1:
        out += " …"
    return out
