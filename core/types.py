"""The shared vocabulary: frozen dataclasses that cross module boundaries.

No I/O and no heavy imports here. Framework objects (LangChain documents, HF outputs,
sqlite rows) are converted to these at the edge of the module that produced them.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal, Mapping

SourceType = Literal["wiki", "slack", "drive"]

#: ACL principal strings, stored on every document and chunk (Onyx style): ``public``,
#: ``user:<login or email>``, ``group:<name>``, ``domain:<email domain>``.
PUBLIC = "public"


def user_principal(name: str) -> str:
    """``user:<name>`` with the name lower-cased (emails and logins compare case-insensitively)."""
    return f"user:{name.strip().lower()}"


def group_principal(name: str) -> str:
    return f"group:{name.strip().lower()}"


def domain_principal(domain: str) -> str:
    """Everyone whose email is in ``domain`` (a Drive file shared with the whole domain)."""
    return f"domain:{domain.strip().lower()}"


@dataclass(frozen=True, kw_only=True)
class Location:
    """Where a span lives in the original, for citations: a heading path for wiki pages and
    docs, a page for PDFs, a slide for decks, a sheet for spreadsheets, a message timestamp
    for Slack. Shared by :class:`Section` and :class:`Chunk` (keyword-only fields)."""

    heading_path: tuple[str, ...] = ()
    page: int | None = None
    slide: int | None = None
    sheet: str | None = None
    slack_ts: str | None = None

    def location(self) -> str:
        """Human label for where the span lives: 'page 7', 'slide 3', 'Benefits > PTO'."""
        parts: list[str] = []
        if self.page is not None:
            parts.append(f"page {self.page}")
        if self.slide is not None:
            parts.append(f"slide {self.slide}")
        if self.sheet:
            parts.append(f"sheet {self.sheet}")
        if self.heading_path:
            parts.append(" > ".join(self.heading_path))
        return ", ".join(parts)


@dataclass(frozen=True)
class Section(Location):
    """A structural span of a document's text: the chunker never cuts across one.

    ``start``/``end`` are character offsets into ``Document.text`` (end exclusive).
    """

    start: int
    end: int


@dataclass(frozen=True)
class Document:
    """One readable unit of a source: a wiki page, a Slack thread or channel-day, a Drive file.

    ``id`` is stable across runs and unique within a source (e.g. ``wiki:hr/pto.md``,
    ``slack:C024BE91L:1700000000.000100``, ``drive:policies/handbook.pdf``).
    ``acl`` holds principal strings (``public``, ``user:alice@acme.example``,
    ``group:engineering``); a reader needs any one of them. An empty ACL means nobody.
    """

    id: str
    source: str  # the configured source name, e.g. "acme-wiki"
    source_type: SourceType
    title: str
    uri: str
    updated_at: datetime
    text: str
    acl: frozenset[str]
    sections: tuple[Section, ...] = ()
    metadata: Mapping[str, Any] = field(default_factory=dict, hash=False, compare=False)

    def content_hash(self) -> str:
        """Hash of everything that changes what is indexed or who may read it."""
        payload = {
            "title": self.title,
            "uri": self.uri,
            "text": self.text,
            "acl": sorted(self.acl),
            "sections": [
                [s.start, s.end, list(s.heading_path), s.page, s.slide, s.sheet, s.slack_ts]
                for s in self.sections
            ],
        }
        raw = json.dumps(payload, sort_keys=True, ensure_ascii=False).encode("utf-8")
        return hashlib.sha256(raw).hexdigest()


@dataclass(frozen=True)
class Chunk(Location):
    """A piece of a document of at most 512 embedder tokens (with [CLS]/[SEP]).

    ``text == document.text[start:end]`` always holds; ``id`` is deterministic
    (same document text and chunking settings give the same ids).
    """

    id: str
    doc_id: str
    ordinal: int
    text: str
    start: int
    end: int


@dataclass(frozen=True)
class Principal:
    """Who is asking. ``principals()`` is what the ACL filter intersects with."""

    username: str
    email: str | None = None
    groups: tuple[str, ...] = ()
    display_name: str | None = None
    is_admin: bool = False

    @classmethod
    def anonymous(cls) -> "Principal":
        return cls(username="anonymous")

    @property
    def is_anonymous(self) -> bool:
        return self.username == "anonymous"

    def principals(self) -> frozenset[str]:
        if self.is_anonymous:
            return frozenset({PUBLIC})
        out = {PUBLIC, user_principal(self.username)}
        if self.email:
            out.add(user_principal(self.email))
            domain = self.email.strip().lower().rpartition("@")[2]
            if "@" in self.email and domain:
                out.add(domain_principal(domain))  # Google Drive's "anyone at acme.example"
        out.update(group_principal(g) for g in self.groups)
        return frozenset(out)

    def can_read(self, acl: frozenset[str] | set[str]) -> bool:
        return bool(self.principals() & set(acl))


@dataclass(frozen=True)
class Hit:
    """A retrieved chunk with the facts a prompt, a citation and a log need."""

    chunk: Chunk
    doc_title: str
    doc_uri: str
    source: str
    source_type: SourceType
    score: float  # fused score, higher is better
    dense_score: float | None = None  # cosine similarity
    bm25_score: float | None = None  # FTS5 bm25 (lower is better in sqlite; stored negated)
    rerank_score: float | None = None
    text: str | None = None  # the (possibly trimmed) text that goes into the prompt

    @property
    def prompt_text(self) -> str:
        return self.text if self.text is not None else self.chunk.text

    def citation_uri(self) -> str:
        """Deep link: PDFs get ``#page=N``; Slack uris already carry the message ts."""
        if self.chunk.page is not None and "#" not in self.doc_uri:
            return f"{self.doc_uri}#page={self.chunk.page}"
        return self.doc_uri


@dataclass(frozen=True)
class IngestFailure:
    """A file or item a connector could not read. ``doc_id`` (when known) lets sync keep the
    previously indexed version instead of treating the document as deleted.

    Fail closed: ``drop`` removes the previous version (its access can no longer be known: a
    page whose front matter or ``access:`` list does not parse, a symbolic link). With
    ``keep_if_acl`` set, the previous version is kept only while its stored ACL still equals
    this one (the ACL the file has now); a narrowed or widened ACL removes it."""

    path: str
    reason: str
    doc_id: str | None = None
    drop: bool = False
    keep_if_acl: frozenset[str] | None = None
    #: About no document (a sidecar key that matches no file): reported, nothing else.
    report_only: bool = False


# --- generation -----------------------------------------------------------------------

#: The one sentence said when the sources do not answer; the pipeline and the generators
#: (the fake, fine-tuning data) share it, so it lives in the shared vocabulary.
ABSTAIN_TEXT = "The knowledge base does not contain an answer to this question."

Role = Literal["system", "user", "assistant"]


@dataclass(frozen=True)
class Message:
    role: Role
    content: str


@dataclass(frozen=True)
class GenParams:
    """How to generate. ``stop``: generation ends before the first stop string, which is not
    returned. ``task`` says what the call is for ("answer", "condense", "rewrite", "correct",
    "check"): backends ignore it, the fake generator answers by it, logs and benches group by it."""

    max_tokens: int = 256
    temperature: float = 0.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int = 0
    logprobs: bool = False
    task: str = "answer"


@dataclass(frozen=True)
class Token:
    """One streamed piece of text. ``logprob`` is the natural-log probability when known."""

    text: str
    logprob: float | None = None
    finish_reason: str | None = None  # set on the last token: "stop" | "length"


# --- answers --------------------------------------------------------------------------


@dataclass(frozen=True)
class Citation:
    n: int  # the [n] marker in the answer text
    chunk_id: str
    doc_id: str
    title: str
    source: str
    source_type: SourceType
    uri: str
    location: str = ""
    page: int | None = None
    slide: int | None = None
    quote: str = ""  # the span of the source that supports the answer

    def to_dict(self) -> dict[str, Any]:
        return {"n": self.n, "title": self.title, "source": self.source, "source_type": self.source_type,
                "uri": self.uri, "location": self.location, "page": self.page, "slide": self.slide,
                "quote": self.quote}


Route = Literal["answered", "corrected", "escalated", "abstained", "error"]


@dataclass(frozen=True)
class Answer:
    question: str
    standalone_question: str
    text: str
    citations: tuple[Citation, ...]
    confidence: float
    route: Route
    corrected: bool = False
    escalated: bool = False
    sources: tuple[Hit, ...] = ()  # what the model saw (already ACL-filtered)
    timings: Mapping[str, float] = field(default_factory=dict, hash=False, compare=False)
    scores: Mapping[str, float] = field(default_factory=dict, hash=False, compare=False)
    model_id: str = ""
    answer_id: str | None = None  # row id in the answer log, for feedback
    #: The sources the model was given but the answer does not cite, numbered as in its prompt,
    #: each with its sentence closest to the question: every card the page shows is here.
    other_sources: tuple[Citation, ...] = ()
    #: The question as corrected for spelling, when it was ("Showing results for …").
    showing_for: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "answer_id": self.answer_id,
            "question": self.question,
            "standalone_question": self.standalone_question,
            "showing_results_for": self.showing_for,
            "answer": self.text,
            "citations": [c.to_dict() for c in self.citations],
            "other_sources": [c.to_dict() for c in self.other_sources],
            "confidence": round(self.confidence, 4),
            "corrected": self.corrected,
            "escalated": self.escalated,
            "route": self.route,
            "model": self.model_id,
            "scores": dict(self.scores),
            "timings": {k: round(v, 4) for k, v in self.timings.items()},
        }


@dataclass(frozen=True)
class AnswerEvent:
    """What the answer service streams to a UI: status notes, tokens, then the final answer.

    ``token``: the draft as the model writes it, unchecked. ``verified``: the part of the
    draft checked so far that passed (the whole of it each time, not a delta): what a page
    shows while the answer is written. ``discard``: the tokens streamed so far were a draft
    that is being replaced (a correction or an escalation follows); clear them and any
    verified text. ``sources``: the sources found for the question, before any answer (each
    with its passage closest to the question): a page shows them at once, marked as sources,
    not an answer. ``answer`` is always last and authoritative."""

    kind: Literal["status", "sources", "token", "verified", "discard", "answer"]
    text: str = ""
    answer: Answer | None = None
    sources: tuple[Citation, ...] = ()
