"""Citation markers: parse [n], [n, m], [n-m], [n][m]; keep only those naming a provided source.

A marker that names no provided source is removed from the text (an invalid number inside
a valid group is removed from the group). Valid numbers are mapped to
:class:`kb_chatbot.core.types.Citation`, one per number, with the passage of the source that
best supports the citing sentences as the quote. The final answer is renumbered in the order it
cites (:func:`renumber`): the reader's first source is [1], whatever its place in the prompt.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from typing import Callable, Sequence

from kb_chatbot.app.answer.facts import SourceFacts, extract_facts
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


#: A fenced code block (or one still open at the end of a reply being written).
CODE_BLOCK = re.compile(r"```.*?(?:```|\Z)", re.S)
_STASHED = re.compile(r"\x00(\d+)\x00")


def answer_sentences(text: str, n_sources: int) -> list[AnswerSentence]:
    """The answer's sentences; markers right after a full stop belong to the sentence before.
    A code block is never split: it belongs to the sentence before it ("Run this: ```…```")."""
    blocks: list[str] = []

    def stash(m: re.Match) -> str:
        blocks.append(m.group(0))
        return f"\x00{len(blocks) - 1}\x00"

    text = CODE_BLOCK.sub(stash, text)
    pieces: list[str] = []
    for raw in _SENT_END.split(text):
        if pieces and _STASHED.match(raw.strip()):  # a code block on its own line(s)
            pieces[-1] += "\n" + raw.strip()
            continue
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
        raw = _STASHED.sub(lambda m: blocks[int(m.group(1))], raw)
        claim = strip_markers(raw)
        cited = tuple(n for n in cited_numbers(raw) if 1 <= n <= n_sources)
        if not claim:  # markers only (answer starts with one): nothing to support
            continue
        out.append(AnswerSentence(raw, claim, cited))
    return out


Similarity = Callable[[str, Sequence[str]], Sequence[float]]


#: A quote shorter than this grows by the sentences after it (in the same passage), and so does
#: a fragment: a table's header row or a slide title alone ("| Day | Hours |", "Slide 3: What
#: Falcon does") is not a quote a reader can check the answer against.
QUOTE_MIN_CHARS = 40
QUOTE_MAX_CHARS = 500
_FRAGMENT = re.compile(r"^\s*(?:#{1,6}\s|\|[\s|:-]*\||(?:slide|page|sheet)\s+\d+\s*:)", re.IGNORECASE)


def _is_fragment(sentence: str) -> bool:
    """A heading, a table's rule or header row, a slide or page title: says nothing alone."""
    s = sentence.strip()
    return bool(_FRAGMENT.match(s)) or (s.startswith("|") and len(re.findall(r"[A-Za-z]{2,}", s)) <= 4)


def best_quote(claim: str, source_text: str, similarity: Similarity | None = None) -> str:
    """The passage of ``source_text`` that best supports ``claim``: its best sentence (word
    overlap by default; a sentence holding the claim's numbers and names first), grown by the
    sentences after it to :data:`QUOTE_MIN_CHARS` when it is short or a fragment."""
    # the context filter joins non-adjacent sentences with " … ": never quote across a gap
    parts = [[s.text.strip(" …") for s in sentence_spans(part)] for part in re.split(r"\s*…\s*", source_text)]
    parts = [[s for s in p if s] for p in parts]
    sents = [(pi, si) for pi, p in enumerate(parts) for si in range(len(p))]
    if not sents:
        return source_text.strip()[:QUOTE_MAX_CHARS]
    texts = [parts[pi][si] for pi, si in sents]
    if similarity is not None:
        scores = list(similarity(claim, texts))
    else:
        scores = [overlap(claim, s) + 0.01 * overlap(s, claim) for s in texts]
    facts = extract_facts(claim)
    if facts:  # the sentence that holds the claim's facts is the one to check it against
        scores = [sc + sum(SourceFacts(s).has(f) for f in facts) / len(facts) for sc, s in zip(scores, texts)]
    # on a tie a sentence beats a heading line ("# Paid time off") or a table header
    scores = [sc - (0.001 if _is_fragment(s) else 0.0) for sc, s in zip(scores, texts)]
    pi, si = sents[max(range(len(sents)), key=lambda i: scores[i])]
    quote = [parts[pi][si]]
    j = si + 1
    while (len(" ".join(quote)) < QUOTE_MIN_CHARS or all(_is_fragment(q) for q in quote)) and j < len(parts[pi]):
        quote.append(parts[pi][j])
        j += 1
    return " ".join(quote)[:QUOTE_MAX_CHARS]


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


def renumber(text: str, citations: Sequence[Citation], others: Sequence[Citation] = ()
             ) -> tuple[str, tuple[Citation, ...], tuple[Citation, ...]]:
    """Number the sources in the order the answer cites them: the first marker read is [1].
    ``others`` (sources given but not cited) are numbered after them. Returns (text,
    citations, others), renumbered; the citations in their new order."""
    order = cited_numbers(text)
    mapping = {old: new for new, old in enumerate(order, 1)}
    for c in citations:  # a citation whose marker the text lost still gets a number
        mapping.setdefault(c.n, len(mapping) + 1)
    pieces, pos = [], 0
    for mk in parse_markers(text):
        pieces.append(text[pos:mk.start] + _format([mapping.get(n, n) for n in mk.numbers]))
        pos = mk.end
    pieces.append(text[pos:])
    cites = tuple(sorted((replace(c, n=mapping[c.n]) for c in citations), key=lambda c: c.n))
    rest = tuple(replace(c, n=len(mapping) + i) for i, c in enumerate(others, 1))
    return "".join(pieces), cites, rest


def source_citations(hits: Sequence[Hit], question: str, similarity: Similarity | None = None) -> tuple[Citation, ...]:
    """Every hit as a citation (for an abstention: 'the closest sources'), quote = best sentence."""
    return tuple(to_citation(i, h, best_quote(question, h.prompt_text, similarity)) for i, h in enumerate(hits, 1))
