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
4. scores within :data:`CLOSE` of the last kept chunk's bring up to
   ``retrieval.near_tie_chunks`` more chunks (0 by default) (a toss-up is not settled by cutting); the prompt's length budget
   (``retrieval.context_chars``, shared by all kept chunks) stays the same;
5. each kept chunk keeps contiguous text around its best sentences: the whole paragraphs (a
   paragraph longer than the chunk's share of the budget as the sentences around its best
   one) that hold the most closeness to the question within the share (each sentence worth
   its cosine above 0.75 x the chunk's best, a knapsack), then the next best paragraphs while
   the share lasts, in original order, with a leading heading line, joined with " … " where
   text was skipped. Scattered best sentences lost the answering passage (a lead sentence
   without its list; context recall 0.42 vs 0.64 unfiltered on ARAGOG, measured before this
   change); taking the best sentence's paragraph first lost the paragraph of the next two.

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

from kb_chatbot.app.answer.prompts import build_relevance_messages
from kb_chatbot.core.text import Span, sentence_spans
from kb_chatbot.core.protocols import Embedder
from kb_chatbot.core.types import Hit

log = logging.getLogger(__name__)

#: A chunk scoring within this of the last kept one is taken too (up to
#: ``retrieval.near_tie_chunks`` more; 0 by default: with 6-7 sources instead of 5 in the same
#: budget the 1.5B model abstained on answers it gave from 5, e.g. 3 of 3 dev-set questions).
CLOSE = 0.03
#: Characters of source text per sentence of ``filter_sentences`` (the prompt budget is
#: top_k x filter_sentences x this; ~4 sentences of a typical policy page).
CHARS_PER_SENTENCE = 180
#: Sentences kept per chunk id in the embedding cache (chunk text is immutable per id).
CACHE_CHUNKS = 4096
#: A sentence longer than this many characters is embedded by its start only (MiniLM reads
#: at most 512 tokens anyway; long "sentences" are tables or code).
MAX_SENTENCE_CHARS = 1000
#: A sentence adds to a passage's worth by its cosine above this share of the chunk's best one.
WORTH_FLOOR = 0.75
#: Characters per unit of the knapsack that picks a chunk's paragraphs.
KNAPSACK_UNIT = 10


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
        context_chars: int | None = None,
        near_tie_chunks: int = 0,
        min_relevance: float = 0.15,
        relevance: Literal["embedding", "slm"] = "embedding",
        generator=None,
    ):
        if relevance == "slm" and generator is None:
            raise ValueError("relevance='slm' needs a generator with yes_probability()")
        self.embedder = embedder
        self.filter_sentences = filter_sentences
        self.context_chars = context_chars
        self.near_tie_chunks = near_tie_chunks
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
            context_chars=cfg.context_chars,
            near_tie_chunks=cfg.near_tie_chunks,
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
            scored.append((score, i, h, h.chunk.text, spans, sims))
        # rerank: best first (stable on retrieval order), drop weak ones but never all
        scored.sort(key=lambda t: (-t[0], t[1]))
        if self.relevance == "slm":
            pool = scored[: 2 * top_k]
            rescored = []
            budget = self.filter_sentences * CHARS_PER_SENTENCE
            for _score, i, h, text, spans, sims in pool:
                passage = _passage(text, spans, sims, budget)
                p = float(self.generator.yes_probability(build_relevance_messages(query, passage)))
                rescored.append((p, i, h, text, spans, sims))
            scored = sorted(rescored, key=lambda t: (-t[0], t[1]))
        good = [t for t in scored if t[0] >= self.min_relevance] or scored[:1]
        kept = good[:top_k]
        if len(good) > top_k:  # near-ties with the last kept chunk come along
            last = kept[-1][0]
            kept += [t for t in good[top_k:top_k + self.near_tie_chunks] if last - t[0] <= CLOSE]
        # the same budget however many chunks are kept, in equal shares (shares by rerank
        # position were measured and not kept: context recall on ARAGOG 0.498 -> 0.480)
        total = self.context_chars or top_k * self.filter_sentences * CHARS_PER_SENTENCE
        share = total // len(kept)
        out = tuple(replace(h, text=_passage(text, spans, sims, share), rerank_score=round(score, 6))
                    for score, _i, h, text, spans, sims in kept)
        seconds = time.perf_counter() - t0
        result = FilteredContext(
            hits=out,
            seconds=seconds,
            candidates=len(hits),
            dropped=len(scored) - len([t for t in scored if t[0] >= self.min_relevance]),
            chars_before=sum(len(h.chunk.text) for _s, _i, h, *_rest in kept),
            chars_after=sum(len(h.text or "") for h in out),
        )
        log.debug(
            "context_filter candidates=%d kept=%d dropped=%d chars_before=%d chars_after=%d seconds=%.3f",
            result.candidates, len(out), result.dropped, result.chars_before, result.chars_after, seconds,
        )
        return result


def _is_heading(span: Span) -> bool:
    return span.text.lstrip().startswith("#")


def _paragraphs(text: str, spans: list[Span]) -> list[list[int]]:
    """Sentence indices grouped by paragraph (a blank line or a heading starts a new one)."""
    groups: list[list[int]] = []
    for i, s in enumerate(spans):
        gap = text[spans[i - 1].end:s.start] if i else ""
        if not groups or "\n\n" in gap or _is_heading(s) or (i and _is_heading(spans[i - 1])):
            groups.append([i])
        else:
            groups[-1].append(i)
    return groups


def _window(group: list[int], spans: list[Span], best: int, budget: int) -> list[int]:
    """Sentences of ``group`` around ``best``, growing both ways while they fit ``budget``."""
    lo = hi = group.index(best)
    used = len(spans[best].text)
    while True:
        grew = False
        for nxt in (hi + 1, lo - 1):
            if 0 <= nxt < len(group) and used + len(spans[group[nxt]].text) <= budget:
                used += len(spans[group[nxt]].text)
                lo, hi = min(lo, nxt), max(hi, nxt)
                grew = True
        if not grew:
            return group[lo:hi + 1]


def _passage(text: str, spans: list[Span], sims: np.ndarray, budget: int) -> str:
    """Contiguous text around the best sentences within ``budget`` characters (see step 5)."""
    if len(text) <= budget or len(spans) <= 1:
        return text.strip()
    groups = _paragraphs(text, spans)
    group_of = {i: g for g in groups for i in g}
    chosen = set(_richest(groups, spans, sims, budget))
    used = sum(len(spans[i].text) for i in chosen)
    # then fill what is left of the share, best sentence first, with paragraphs that fit whole
    ranked = sorted(range(len(spans)), key=lambda i: (-float(sims[i]), i))
    for best in ranked:
        if used >= budget:
            break
        if best in chosen:
            continue
        group = group_of[best]
        size = sum(len(spans[i].text) for i in group)
        if used + size <= budget:
            chosen.update(group)
            used += size
    if _is_heading(spans[0]):
        chosen.add(0)
    return _join(text, spans, sorted(chosen))


def _richest(groups: list[list[int]], spans: list[Span], sims: np.ndarray, budget: int) -> list[int]:
    """The paragraphs (a too-long one as the sentences around its best) that hold the most
    closeness to the question within ``budget``: each sentence is worth what its cosine has
    above :data:`WORTH_FLOOR` x the chunk's best, and the worth is maximised over subsets
    (0/1 knapsack in :data:`KNAPSACK_UNIT`-character units). Taking the best sentence's
    paragraph first lost the paragraph with the next two best sentences when it no longer
    fitted ("How many vacation days do I get per year?": the base allowance, 22 days, gave way
    to a part-time rule)."""
    first = int(np.argmax(sims))
    if len(spans[first].text) >= budget:  # one sentence (a table, a listing) fills the share
        return [first]
    top = float(sims[first])
    floor = WORTH_FLOOR * top if top > 0 else top
    items: list[tuple[list[int], int, float]] = []
    for group in groups:
        size = sum(len(spans[i].text) for i in group)
        if size > budget:  # the sentences around its best one
            group = _window(group, spans, max(group, key=lambda i: (float(sims[i]), -i)), budget)
            size = sum(len(spans[i].text) for i in group)
            if size > budget:
                continue
        worth = sum(max(0.0, float(sims[i]) - floor) for i in group)
        if worth > 0:
            items.append((group, size, worth))
    if not items:  # nothing closer than the floor (cosines all <= 0)
        return [first]
    cap = -(-budget // KNAPSACK_UNIT)  # rounded up, as the weights are: a window filling the share fits
    weights = [-(-size // KNAPSACK_UNIT) for _g, size, _w in items]
    # best[c] = (worth, picks) using at most c units
    best: list[tuple[float, tuple[int, ...]]] = [(0.0, ())] * (cap + 1)
    for k, (w, (_g, _s, worth)) in enumerate(zip(weights, items)):
        for c in range(cap, w - 1, -1):
            cand = best[c - w][0] + worth
            if cand > best[c][0] + 1e-12:
                best[c] = (cand, best[c - w][1] + (k,))
    return [i for k in best[cap][1] for i in items[k][0]]


def _join(text: str, spans: list[Span], idx: list[int]) -> str:
    """The chosen sentences in original order, gaps marked ' … '."""
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
