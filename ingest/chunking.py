"""Chunking: split each Document into pieces of at most ``chunk_tokens`` embedder tokens.

Structure first: every :class:`kb_chatbot.core.types.Section` (heading block, PDF page, slide, sheet,
Slack message) is chunked on its own, so a chunk never mixes two pages or two headings'
bodies, and its citation metadata (heading path, page, slide, sheet, message ts) is exact.
Inside a section LangChain's ``RecursiveCharacterTextSplitter`` cuts on paragraphs, lines,
sentences, words and finally characters, measuring length with the embedder's own tokenizer
(``from_huggingface_tokenizer``), with ``overlap_tokens`` of overlap between neighbours.

Merging: consecutive small sections are joined into one chunk when they share the same
page/slide/sheet and the joined span still fits. Tiny chunks (a heading and one line, one
Slack reply) retrieve poorly on their own. A merged chunk keeps the *common prefix* of the
sections' heading paths (never a heading that only part of its text sits under) and the
Slack ts of its first message. ``merge_sections=False`` turns this off.

Guarantees, checked by property tests: ``doc.text[c.start:c.end] == c.text``; no chunk has
more than ``chunk_tokens`` tokens by the given counter (the splitter's counts are re-checked
and an oversized piece, e.g. one enormous word, is hard-split); every non-whitespace character
of the document's sections is in some chunk; ids are deterministic and unique per document.
LangChain objects never leave this module.
"""
from __future__ import annotations

import bisect
import hashlib
import logging
import re
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Sequence

from kb_chatbot.core.types import Chunk, Document, Section

if TYPE_CHECKING:
    from kb_chatbot.core.settings import Settings

log = logging.getLogger(__name__)

TokenCounter = Callable[[str], int]
#: Paragraphs, lines, sentences, words, characters: the splitter tries them in this order.
SEPARATORS = ["\n\n", "\n", ". ", " ", ""]
#: Bump when the algorithm changes in a way that changes chunk boundaries.
ALGORITHM_VERSION = 1

_NON_SPACE = re.compile(r"\S")


def _next_non_space(text: str, i: int) -> int:
    """Index of the first non-whitespace character at or after ``i`` (``len(text)`` if none)."""
    m = _NON_SPACE.search(text, i)
    return m.start() if m else len(text)


def _strip_span(text: str, start: int, end: int) -> tuple[int, int]:
    """Shrink ``[start, end)`` to exclude leading and trailing whitespace."""
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end


def _common_prefix(paths: Sequence[tuple[str, ...]]) -> tuple[str, ...]:
    first = paths[0]
    n = len(first)
    for p in paths[1:]:
        n = min(n, len(p))
        for i in range(n):
            if p[i] != first[i]:
                n = i
                break
    return tuple(first[:n])


#: Positions kept per piece at each end of the candidate list in :func:`_align`.
ALIGN_CANDIDATES = 32


def _align(text: str, pieces: Sequence[str]) -> list[int] | None:
    """Start offsets of the splitter's ``pieces`` in ``text``, or None if they cannot be placed.

    Each piece is a whitespace-stripped substring of ``text``; pieces come in order, a piece
    starts at or after the previous one's start and at most at the first non-space
    character after the previous one's end (overlap or contiguity). ``str.find`` alone would
    misplace pieces in repetitive text, so this keeps every consistent position per piece
    (a small forward dynamic programme) and backtracks from one that leaves only
    whitespace after the last piece.
    """
    if not pieces:
        return []
    q0 = _next_non_space(text, 0)
    if not text.startswith(pieces[0], q0):
        return None
    reach = [q0]
    parents: list[dict[int, int]] = [{}]
    for i in range(1, len(pieces)):
        prev_len, piece = len(pieces[i - 1]), pieces[i]
        hi = _next_non_space(text, reach[-1] + prev_len)
        nxt: list[int] = []
        par: dict[int, int] = {}
        o = text.find(piece, reach[0])
        while o != -1 and o <= hi:
            j = bisect.bisect_right(reach, o) - 1
            if j >= 0 and _next_non_space(text, reach[j] + prev_len) >= o:
                nxt.append(o)
                par[o] = reach[j]
            o = text.find(piece, o + 1)
        if not nxt:
            return None
        if len(nxt) > 2 * ALIGN_CANDIDATES:
            # repetitive text (a log of identical lines) places a piece at every line: keep the
            # latest positions (the splitter moves forward by about a piece each time), or the
            # search window and the programme grow without bound (a 4 MB log took > 10 min and
            # 3.5 GB); no path left means a hard split, no text lost
            nxt = nxt[-2 * ALIGN_CANDIDATES:]
            par = {o: par[o] for o in nxt}
        reach = nxt
        parents.append(par)
    last_len = len(pieces[-1])
    ends = [p for p in reach if _next_non_space(text, p + last_len) == len(text)]
    if not ends:
        return None
    pos = ends[-1]
    out = [pos]
    for i in range(len(pieces) - 1, 0, -1):
        pos = parents[i][pos]
        out.append(pos)
    return out[::-1]


def chunk_id(doc_id: str, start: int, end: int, text: str) -> str:
    """Deterministic chunk id: the same document, span and text always give the same id."""
    raw = f"{doc_id}\x00{start}\x00{end}\x00{text}".encode("utf-8", "surrogatepass")
    return hashlib.sha256(raw).hexdigest()[:32]


class Chunker:
    """Splits Documents into Chunks of at most ``chunk_tokens`` tokens.

    ``count_tokens`` is either a Hugging Face tokenizer (tokens counted without special
    tokens, so 510 leaves room for [CLS]/[SEP] in a 512-token model) or any function
    ``str -> int`` (e.g. :func:`kb_chatbot.index.embedder.count_words` for the hash embedder).
    """

    def __init__(
        self,
        count_tokens: TokenCounter | Any,
        chunk_tokens: int = 510,
        overlap_tokens: int = 64,
        *,
        merge_sections: bool = True,
        counter_name: str | None = None,
    ):
        from langchain_text_splitters import RecursiveCharacterTextSplitter

        if chunk_tokens < 1:
            raise ValueError(f"chunking.chunk_tokens must be >= 1, got {chunk_tokens}")
        if not 0 <= overlap_tokens < chunk_tokens:
            raise ValueError(
                f"chunking.overlap_tokens must be >= 0 and smaller than chunk_tokens ({chunk_tokens}), "
                f"got {overlap_tokens}"
            )
        options = dict(
            chunk_size=chunk_tokens,
            chunk_overlap=overlap_tokens,
            separators=SEPARATORS,
            keep_separator="end",  # "a sentence. " keeps its full stop; pieces stay contiguous
            strip_whitespace=True,
        )
        if hasattr(count_tokens, "tokenize"):
            tokenizer = count_tokens
            self.count_tokens: TokenCounter = lambda text: len(tokenizer.tokenize(text))
            self._splitter = RecursiveCharacterTextSplitter.from_huggingface_tokenizer(tokenizer, **options)
            # class + vocabulary size, not name_or_path: that is a site-packages path, and a moved
            # venv must not make every stored chunk look stale
            self.counter_name = f"hf:{type(tokenizer).__name__}:{len(tokenizer)}"
        elif callable(count_tokens):
            self.count_tokens = count_tokens
            self._splitter = RecursiveCharacterTextSplitter(length_function=count_tokens, **options)
            self.counter_name = getattr(count_tokens, "__qualname__", type(count_tokens).__name__)
        else:
            raise TypeError(f"count_tokens must be a tokenizer or a function str -> int, got {type(count_tokens)!r}")
        if counter_name:
            self.counter_name = counter_name
        self.chunk_tokens = chunk_tokens
        self.overlap_tokens = overlap_tokens
        self.merge_sections = merge_sections

    @property
    def fingerprint(self) -> str:
        """Identifies the chunking settings: when it changes, stored chunks are stale."""
        return (
            f"v{ALGORITHM_VERSION}:{self.counter_name}:{self.chunk_tokens}:{self.overlap_tokens}"
            f":{'merge' if self.merge_sections else 'nomerge'}"
        )

    # -- public ---------------------------------------------------------------------------
    def chunk(self, doc: Document) -> list[Chunk]:
        """The chunks of ``doc`` in document order (``ordinal`` 0, 1, ...)."""
        spans: list[tuple[int, int, Section]] = []
        for group in self._groups(doc):
            meta = self._group_meta(group)
            start, end = group[0].start, group[-1].end
            if len(group) > 1:  # merged groups were checked to fit
                spans.append((*_strip_span(doc.text, start, end), meta))
            else:
                spans.extend((s, e, meta) for s, e in self._split_section(doc, start, end))
        chunks: list[Chunk] = []
        for start, end, meta in spans:
            if start >= end:
                continue
            text = doc.text[start:end]
            if not text.strip():
                continue
            chunks.append(
                Chunk(
                    id=chunk_id(doc.id, start, end, text),
                    doc_id=doc.id,
                    ordinal=len(chunks),
                    text=text,
                    start=start,
                    end=end,
                    heading_path=meta.heading_path,
                    page=meta.page,
                    slide=meta.slide,
                    sheet=meta.sheet,
                    slack_ts=meta.slack_ts,
                )
            )
        log.debug("chunked doc_id=%s sections=%d chunks=%d", doc.id, len(doc.sections), len(chunks))
        return chunks

    # -- sections -------------------------------------------------------------------------
    def _sections(self, doc: Document) -> list[Section]:
        """Sections sorted, clipped to the text and to each other; uncovered text becomes a
        section without metadata so that nothing is silently dropped."""
        n = len(doc.text)
        if not doc.sections:
            return [Section(0, n)]
        out: list[Section] = []
        pos = 0
        clipped = 0
        for s in sorted(doc.sections, key=lambda s: (s.start, s.end)):
            start, end = min(max(s.start, pos, 0), n), min(s.end, n)
            if (start, end) != (s.start, s.end):
                clipped += 1
            if start > pos:
                if doc.text[pos:start].strip():
                    out.append(Section(pos, start))
                pos = start
            if end > start:
                out.append(replace(s, start=start, end=end))
                pos = end
        if pos < n and doc.text[pos:].strip():
            out.append(Section(pos, n))
        if clipped:
            log.warning("sections clipped doc_id=%s count=%d (overlapping or outside the text)", doc.id, clipped)
        return out

    def _groups(self, doc: Document) -> list[list[Section]]:
        groups: list[list[Section]] = []
        for sec in self._sections(doc):
            if not doc.text[sec.start : sec.end].strip():
                continue
            if self.merge_sections and groups and self._can_merge(doc, groups[-1], sec):
                groups[-1].append(sec)
            else:
                groups.append([sec])
        return groups

    def _can_merge(self, doc: Document, group: list[Section], sec: Section) -> bool:
        first = group[0]
        if (first.page, first.slide, first.sheet) != (sec.page, sec.slide, sec.sheet):
            return False
        start, end = _strip_span(doc.text, first.start, sec.end)
        return self.count_tokens(doc.text[start:end]) <= self.chunk_tokens

    @staticmethod
    def _group_meta(group: list[Section]) -> Section:
        first = group[0]
        if len(group) == 1:
            return first
        return replace(first, heading_path=_common_prefix([s.heading_path for s in group]), end=group[-1].end)

    # -- splitting ------------------------------------------------------------------------
    def _split_section(self, doc: Document, start: int, end: int) -> list[tuple[int, int]]:
        s, e = _strip_span(doc.text, start, end)
        if s >= e:
            return []
        text = doc.text[s:e]
        # a short section is one chunk; a long one goes straight to the splitter, which
        # gives one piece anyway when it fits (saves tokenizing a whole book twice)
        if len(text) <= 16 * self.chunk_tokens and self.count_tokens(text) <= self.chunk_tokens:
            return [(s, e)]
        pieces = self._splitter.split_text(text)
        offsets = _align(text, pieces)
        if offsets is None:  # not expected; never lose text over it
            log.warning("splitter output not alignable doc_id=%s span=%d-%d: hard split", doc.id, s, e)
            return self._hard_split(doc.text, s, e)
        fitted: list[tuple[int, int]] = []
        for off, piece in zip(offsets, pieces):
            ps, pe = s + off, s + off + len(piece)
            if self.count_tokens(doc.text[ps:pe]) <= self.chunk_tokens:
                fitted.append((ps, pe))
            else:  # token counts of joined pieces can exceed their sum (subword merges)
                fitted.extend(self._hard_split(doc.text, ps, pe))
        # hard-split parts can start after the next piece's overlap: restore document order
        # and drop spans inside another span (they add nothing)
        final: list[tuple[int, int]] = []
        for ps, pe in sorted(fitted, key=lambda span: (span[0], -span[1])):
            if not final or pe > final[-1][1]:
                final.append((ps, pe))
        return final

    def _hard_split(self, text: str, start: int, end: int) -> list[tuple[int, int]]:
        """Cut ``[start, end)`` into spans of at most ``chunk_tokens`` tokens, preferring to
        cut after whitespace; each span is the longest prefix that fits (binary search)."""
        out: list[tuple[int, int]] = []
        s = _next_non_space(text, start)
        while s < end:
            lo, hi = s + 1, end  # lo: longest prefix known to fit (one character always does)
            if self.count_tokens(text[s:hi]) <= self.chunk_tokens:
                lo = hi
            while lo < hi:
                mid = (lo + hi + 1) // 2
                if self.count_tokens(text[s:mid]) <= self.chunk_tokens:
                    lo = mid
                else:
                    hi = mid - 1
            cut = lo
            if cut < end:
                space = max(text.rfind(" ", s, cut), text.rfind("\n", s, cut))
                if space > s + (cut - s) // 2 and self.count_tokens(text[s : space + 1]) <= self.chunk_tokens:
                    cut = space + 1
            ps, pe = _strip_span(text, s, cut)
            if ps < pe:
                out.append((ps, pe))
            s = _next_non_space(text, cut)
        return out


def make_chunker(settings: "Settings") -> Chunker:
    """The chunker for ``settings``: the embedder's own tokenizer measures chunk length.

    With ``embedding.model: hash`` (tests) tokens are words and punctuation marks. The limit
    is also capped at ``embedding.max_seq_length - 2`` so no chunk is ever truncated.
    """
    from kb_chatbot.index.embedder import HASH_MODEL, count_words, load_tokenizer

    emb, ch = settings.embedding, settings.chunking
    limit = ch.chunk_tokens
    if emb.model == HASH_MODEL:
        counter: Any = count_words
        name = "words"
    else:
        counter = load_tokenizer(emb)
        name = "hf:all-MiniLM-L6-v2" if emb.model == "packaged" else f"hf:{Path(emb.model).name}"
        if limit > emb.max_seq_length - 2:
            log.warning(
                "chunking.chunk_tokens=%d exceeds embedding.max_seq_length-2=%d: using %d",
                limit, emb.max_seq_length - 2, emb.max_seq_length - 2,
            )
            limit = emb.max_seq_length - 2
    overlap = min(ch.overlap_tokens, limit // 2)
    return Chunker(counter, chunk_tokens=limit, overlap_tokens=overlap, counter_name=name)
