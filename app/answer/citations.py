"""Citation markers: parse [n], [n, m], [n-m], [n][m]; keep only those naming a provided source.

A marker that names no provided source is removed from the text (an invalid number inside
a valid group is removed from the group). Valid numbers are kept as written (nothing is
renumbered) and mapped to :class:`kb_chatbot.core.types.Citation`, one per number, with the sentence of
the source that best supports the citing sentence as the quote.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Sequence

from kb_chatbot.app.answer.prompts import location_label
from kb_chatbot.core.text import ends_with_abbreviation, overlap, sentence_spans
from kb_chatbot.core.types import Citation, Hit

#: One bracketed group of numbers, commas and ranges: [2], [1, 3], [2-4], [1,3-5]. En/em dashes
#: count as hyphens. Numbers have at most 3 digits (a year like [2024] is not a citation).
MARKER = re.compile(r"\[\s*(\d{1,3}(?:\s*(?:,|-|–|—)\s*\d{1,3})*)\s*\]")
#: A range wider than this is not expanded (it is treated as its two end points).
MAX_RANGE = 20


@dataclass(frozen=True)
class Marker:
    start: int
    end: int
    numbers: tuple[int, ...]  # in the order written, ranges expanded, duplicates removed


def parse_markers(text: str) -> list[Marker]:
    """Every citation marker in ``text`` with its offsets and the numbers it names."""
    out: list[Marker] = []
    for m in MARKER.finditer(text):
        nums: list[int] = []
        for part in m.group(1).split(","):
            ends = [int(x) for x in re.split(r"\s*[-–—]\s*", part.strip())]
            if len(ends) == 2 and 0 <= ends[1] - ends[0] <= MAX_RANGE:
                seq = list(range(ends[0], ends[1] + 1))
            else:
                seq = ends
            nums += [n for n in seq if n not in nums]
        out.append(Marker(m.start(), m.end(), tuple(nums)))
    return out


def cited_numbers(text: str) -> list[int]:
    """All numbers cited in ``text``, in order of first appearance."""
    seen: list[int] = []
    for mk in parse_markers(text):
        seen += [n for n in mk.numbers if n not in seen]
    return seen


def strip_markers(text: str) -> str:
    """``text`` without any citation marker (for comparing or embedding claims)."""
    return re.sub(r"\s+([.,;:!?])", r"\1", MARKER.sub("", text)).strip()


@dataclass(frozen=True)
class AnswerSentence:
    text: str  # with its (valid) markers
    claim: str  # without markers
    cited: tuple[int, ...]  # valid source numbers cited by this sentence


@dataclass(frozen=True)
class CitationResult:
    text: str  # the answer with invalid markers removed
    citations: tuple[Citation, ...]
    sentences: tuple[AnswerSentence, ...]
    markers_total: int = 0
    markers_invalid: int = 0  # numbers that named no provided source
    invalid_numbers: tuple[int, ...] = field(default=())


def _format(nums: Sequence[int]) -> str:
    return "[" + ", ".join(str(n) for n in nums) + "]"


def clean_markers(text: str, n_sources: int) -> tuple[str, int, list[int]]:
    """Drop numbers outside 1..n_sources; return (text, numbers seen, invalid numbers)."""
    pieces: list[str] = []
    pos = 0
    total = 0
    invalid: list[int] = []
    for mk in parse_markers(text):
        valid = [n for n in mk.numbers if 1 <= n <= n_sources]
        total += len(mk.numbers)
        invalid += [n for n in mk.numbers if not 1 <= n <= n_sources]
        if valid and len(valid) == len(mk.numbers):
            pieces.append(text[pos : mk.end])
        elif valid:
            pieces.append(text[pos : mk.start] + _format(valid))
        else:  # remove the marker and the space before it
            pieces.append(text[pos : mk.start].rstrip(" \t"))
        pos = mk.end
    pieces.append(text[pos:])
    return "".join(pieces), total, invalid


#: A full stop ends a sentence when a capital, a digit, a quote or a marker follows ("the D.C.
#: office on the first floor" is one sentence: split there, the small model's answer left a
#: fragment "office on the first floor of the GSA building" that passed its check alone).
_SENT_END = re.compile(r"(?<=[.!?])\s+(?=[^a-z\s])|\n+")
_LEADING_MARKERS = re.compile(r"^(?:\s*" + MARKER.pattern + r")+")


def answer_sentences(text: str, n_sources: int) -> list[AnswerSentence]:
    """The answer's sentences; markers right after a full stop belong to the sentence before."""
    pieces: list[str] = []
    for raw in _SENT_END.split(text):
        if pieces and ends_with_abbreviation(pieces[-1]) and raw.strip():  # "… the U.S. Capitol …"
            pieces[-1] += " " + raw.strip()
            continue
        lead = _LEADING_MARKERS.match(raw)
        if lead and pieces:  # "Claim. [1] Next claim." -> "Claim. [1]" + "Next claim."
            pieces[-1] += " " + lead.group(0).strip()
            raw = raw[lead.end():]
        if raw.strip():
            pieces.append(raw.strip())
    out: list[AnswerSentence] = []
    for raw in pieces:
        claim = strip_markers(raw)
        cited = tuple(n for n in cited_numbers(raw) if 1 <= n <= n_sources)
        if not claim:  # markers only (answer starts with one): nothing to support
            continue
        out.append(AnswerSentence(raw, claim, cited))
    return out


Similarity = Callable[[str, Sequence[str]], Sequence[float]]


def best_quote(claim: str, source_text: str, similarity: Similarity | None = None) -> str:
    """The sentence of ``source_text`` that best supports ``claim`` (word overlap by default)."""
    # the context filter joins non-adjacent sentences with " … ": never quote across a gap
    sents = [s.text.strip(" …") for part in re.split(r"\s*…\s*", source_text) for s in sentence_spans(part)]
    sents = [s for s in sents if s] or [source_text.strip()]
    if similarity is not None:
        scores = list(similarity(claim, sents))
    else:
        scores = [overlap(claim, s) + 0.01 * overlap(s, claim) for s in sents]
    # on a tie a sentence beats a heading line ("# Paid time off")
    scores = [sc - (0.001 if s.lstrip().startswith("#") else 0.0) for sc, s in zip(scores, sents)]
    best = max(range(len(sents)), key=lambda i: scores[i])
    return sents[best][:500]


def slack_permalink(hit: Hit) -> str:
    """Link to the chunk's first message: thread replies get ``?thread_ts=…&cid=…``."""
    uri = hit.citation_uri()
    ts = hit.chunk.slack_ts
    m = re.match(r"^(.*/archives/([^/]+)/)p(\d+)$", uri)
    if hit.source_type != "slack" or not ts or not m:
        return uri
    link = f"{m.group(1)}p{ts.replace('.', '')}"
    parent = m.group(3)
    parts = hit.chunk.doc_id.rsplit(":", 1)
    is_thread = len(parts) == 2 and re.fullmatch(r"\d+\.\d+", parts[1]) is not None
    if is_thread and parent != ts.replace(".", ""):
        link += f"?thread_ts={parts[1]}&cid={m.group(2)}"
    return link


def to_citation(n: int, hit: Hit, quote: str = "") -> Citation:
    return Citation(
        n=n,
        chunk_id=hit.chunk.id,
        doc_id=hit.chunk.doc_id,
        title=hit.doc_title,
        source=hit.source,
        source_type=hit.source_type,
        uri=slack_permalink(hit),
        location=location_label(hit),
        page=hit.chunk.page,
        slide=hit.chunk.slide,
        quote=quote,
    )


def extract_citations(text: str, hits: Sequence[Hit], similarity: Similarity | None = None) -> CitationResult:
    """Validate the markers of an answer against the ``hits`` it was given (numbered from 1)."""
    cleaned, total, invalid = clean_markers(text, len(hits))
    sentences = answer_sentences(cleaned, len(hits))
    claims_for: dict[int, list[str]] = {}
    for s in sentences:
        for n in s.cited:
            claims_for.setdefault(n, []).append(s.claim)
    citations = []
    for n in cited_numbers(cleaned):
        if n in claims_for:
            hit = hits[n - 1]
            citations.append(to_citation(n, hit, best_quote(" ".join(claims_for[n]), hit.prompt_text, similarity)))
    return CitationResult(
        text=cleaned.strip(),
        citations=tuple(citations),
        sentences=tuple(sentences),
        markers_total=total,
        markers_invalid=len(invalid),
        invalid_numbers=tuple(invalid),
    )


def source_citations(hits: Sequence[Hit], question: str, similarity: Similarity | None = None) -> tuple[Citation, ...]:
    """Every hit as a citation (for an abstention: 'the closest sources'), quote = best sentence."""
    return tuple(to_citation(i, h, best_quote(question, h.prompt_text, similarity)) for i, h in enumerate(hits, 1))
