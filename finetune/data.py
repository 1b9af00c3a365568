"""Training data from the indexed knowledge base and from users' feedback.

Every example is a chat in exactly the answering service's prompt format
(:func:`kb_chatbot.app.answer.prompts.build_messages`: system prompt, numbered ``<source>`` blocks, the question)
plus the assistant reply the model should learn:

- ``answerable``: a question written from one chunk (:mod:`kb_chatbot.finetune.questions`); the sources
  are what the real retriever returns for it (then the same context filter the service
  applies), so the other sources are realistic distractors; the gold chunk is added if
  retrieval missed it. The reply is the grounded sentence with the gold source's ``[n]``.
- ``unanswerable``: the same question with every chunk of the gold document (and any chunk
  containing the answer sentence) removed from the sources; the reply is ``ABSTAIN_TEXT``.
- ``feedback``: answers users rated thumbs-up (as they were) and thumbs-down answers that
  carry a correction (the correction), with the sources the model saw, in their order. A
  follow-up question condensed from the chat history carries earlier answers, which may quote
  documents the build may not use: it counts as restricted.

Access control: by default only public documents are used, and retrieval runs as the
anonymous principal, so no restricted text reaches any example. ``include_restricted``
builds each example as one reader of the gold document (a single ACL principal of it), so
its sources are all readable by that principal; the adapter then carries restricted facts in
its weights and must be served only to people who may read all of them (logged, and marked in
the manifest).

An example's document is its gold document; documents are split train/held-out (seeded, ~80/20),
so no held-out gold document is ever trained on. Duplicates (same normalised question and gold
chunk) are dropped. Output: ``train.jsonl``, ``heldout.jsonl`` and ``manifest.json`` (counts,
options and ``data_hash``, the sha256 of the two JSONL files).
"""
from __future__ import annotations

import hashlib
import json
import logging
import random
import time
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterable, Literal, Sequence

from kb_chatbot.app.answer.prompts import ABSTAIN_TEXT, build_messages
from kb_chatbot.core.text import overlap
from kb_chatbot.core.errors import KBError
from kb_chatbot.core.settings import OpenAIEndpoint, Settings
from kb_chatbot.core.types import PUBLIC, Hit, Message, Principal
from kb_chatbot.finetune.questions import QA, ExtractiveWriter, ModelWriter, document_frequencies, normalise_question

log = logging.getLogger(__name__)

TRAIN_FILE, HELDOUT_FILE, MANIFEST = "train.jsonl", "heldout.jsonl", "manifest.json"
Kind = Literal["answerable", "unanswerable", "feedback"]
QuestionSource = Literal["auto", "extractive", "slm", "teacher"]
#: How an answerable example's reply is checked before it is kept: the answer service's own
#: verifier ("facts": its text gates, no model; "slm": and the model's support check).
VerifyMode = Literal["slm", "facts", "off"]


@dataclass(frozen=True)
class BuildOptions:
    out_dir: Path
    max_docs: int | None = None
    questions_per_chunk: int = 1
    #: Unanswerable examples per answerable one (drawn per question, seeded).
    unanswerable_ratio: float = 0.35
    heldout_share: float = 0.2
    seed: int = 0
    include_restricted: bool = False
    questions: QuestionSource = "auto"
    teacher: OpenAIEndpoint | None = None
    #: Sources per prompt (default: settings.retrieval.top_k, as the service uses).
    top_k: int | None = None
    #: Share of examples whose sources are shuffled (the gold source is not always [1]).
    shuffle_share: float = 0.5
    feedback: bool = True
    #: Keep an answerable example only if the service's verifier passes every sentence of its reply.
    verify: VerifyMode = "facts"


@dataclass(frozen=True)
class GroupedPrincipal(Principal):
    """A reader holding exactly ``grants`` (plus public): one ACL principal of a document."""

    grants: frozenset[str] = frozenset()

    def principals(self) -> frozenset[str]:
        return frozenset({PUBLIC}) | self.grants


@dataclass
class BuildReport:
    out_dir: Path
    counts: dict[str, Any]
    data_hash: str
    seconds: float
    notes: list[str] = field(default_factory=list)


# --- helpers ----------------------------------------------------------------------------------


def _msg_dicts(messages: Sequence[Message]) -> list[dict[str, str]]:
    return [{"role": m.role, "content": m.content} for m in messages]


def owner_of(acl: Iterable[str], include_restricted: bool) -> str | None:
    """The principal an example of a document with ``acl`` is built for (None: skip the document)."""
    acl = set(acl)
    if PUBLIC in acl:
        return PUBLIC
    if not include_restricted or not acl:
        return None
    return sorted(acl)[0]


def principal_for(owner: str) -> Principal:
    return Principal.anonymous() if owner == PUBLIC else GroupedPrincipal(username=f"finetune:{owner}",
                                                                           grants=frozenset({owner}))


def _contains(text: str, sentence: str) -> bool:
    """True when (nearly) all of the sentence's content words occur in ``text``."""
    return overlap(sentence, text) >= 0.9


def cite(answer: str, n: int) -> str:
    """``answer`` with ``[n]`` before its final punctuation (the service's citation style)."""
    a = answer.rstrip()
    if a and a[-1] in ".!?":
        return f"{a[:-1]} [{n}]{a[-1]}"
    return f"{a} [{n}]."


# --- the builder ------------------------------------------------------------------------------


class DatasetBuilder:
    """Builds the examples; all collaborators can be injected (tests pass fakes)."""

    def __init__(self, settings: Settings, opts: BuildOptions, *, index=None, retriever=None, embedder=None,
                 generator=None, answer_log=None, progress: Callable[[int, int], None] | None = None):
        self.settings = settings
        self.opts = opts
        self.rng = random.Random(opts.seed)
        self.top_k = opts.top_k or settings.retrieval.top_k
        self.progress = progress
        from kb_chatbot.index.embedder import load_embedder
        from kb_chatbot.index.generation import open_index
        from kb_chatbot.index.retriever import HybridRetriever

        self.index = index or open_index(settings)
        self.embedder = embedder or load_embedder(settings.embedding)
        self.retriever = retriever or HybridRetriever(self.index, self.embedder, settings.retrieval)
        self.context_filter = None
        if settings.retrieval.context_filter:
            from kb_chatbot.app.answer.context_filter import ContextFilter

            self.context_filter = ContextFilter.from_settings(self.embedder, settings.retrieval)
        self._generator = generator
        self._verifier = None
        self.answer_log = answer_log
        self.counts: Counter = Counter()
        self.notes: list[str] = []

    # --- sources for a question -----------------------------------------------------------
    def _candidates(self, question: str, principal: Principal) -> list[Hit]:
        k = self.top_k * (3 if self.context_filter is not None else 1)
        hits = self.retriever.retrieve(question, user=principal, top_k=k)
        store = self.index.store
        acls: dict[str, frozenset[str]] = {}
        out = []
        for h in hits:  # defence in depth, as the answer service does
            if h.chunk.doc_id not in acls:
                acls[h.chunk.doc_id] = store.document_acl(h.chunk.doc_id)
            if principal.can_read(acls[h.chunk.doc_id]):
                out.append(h)
            else:
                self.counts["dropped_unreadable_hits"] += 1
        return out

    def _trim(self, question: str, hits: Sequence[Hit]) -> list[Hit]:
        if self.context_filter is None:
            return list(hits[: self.top_k])
        return list(self.context_filter.filter(question, hits, top_k=self.top_k).hits)

    def _trim_one(self, question: str, hit: Hit) -> Hit:
        if self.context_filter is None:
            return hit
        return self.context_filter.filter(question, [hit], top_k=1).hits[0]

    def _order(self, hits: list[Hit]) -> list[Hit]:
        if len(hits) > 1 and self.rng.random() < self.opts.shuffle_share:
            hits = hits[:]
            self.rng.shuffle(hits)
        return hits

    # --- examples -----------------------------------------------------------------------
    def answerable(self, qa: QA, gold: Hit, principal: Principal, owner: str) -> tuple[dict | None, list[Hit]]:
        cands = self._candidates(qa.question, principal)
        hits = self._trim(qa.question, cands)
        idx = next((i for i, h in enumerate(hits) if h.chunk.id == gold.chunk.id), None)
        if idx is None:
            self.counts["gold_not_retrieved"] += 1
            g = self._trim_one(qa.question, gold)
            hits = hits[: self.top_k - 1]
            hits.insert(self.rng.randrange(len(hits) + 1), g)
            idx = hits.index(g)
        if not _contains(hits[idx].prompt_text, qa.answer):
            hits[idx] = replace(hits[idx], text=None)  # the trim cut the answer: show the whole chunk
        hits = self._order(hits)
        n = next(i for i, h in enumerate(hits, 1) if h.chunk.id == gold.chunk.id)
        prompt = build_messages(qa.question, hits)
        reply = cite(qa.answer, n)
        if not self._verified(qa.question, hits, prompt, reply):
            return None, cands
        return self._row("answerable", qa, gold, hits, prompt + [Message("assistant", reply)], [n], owner), cands

    def _verified(self, question: str, hits: Sequence[Hit], prompt: Sequence[Message], reply: str) -> bool:
        """The answer service's verifier passes every sentence of ``reply`` as cited (counted)."""
        if self.opts.verify == "off":
            return True
        if self._verifier is None:
            from kb_chatbot.app.answer.checks import Verifier

            self._verifier = Verifier(self._model() if self.opts.verify == "slm" else None, mode=self.opts.verify)
        v = self._verifier.verify(reply, hits, question=question, messages=prompt)
        if v.status == "ok" and all(not c.recited for c in v.checks):
            self.counts["replies_verified"] += 1
            return True
        self.counts["replies_failed_verification"] += 1
        log.debug("finetune reply_failed_verification status=%s reply=%r", v.status, reply[:200])
        return False

    def unanswerable(self, qa: QA, gold: Hit, cands: Sequence[Hit], owner: str) -> dict | None:
        rest = [h for h in cands if h.chunk.doc_id != gold.chunk.doc_id and not _contains(h.chunk.text, qa.answer)]
        if not rest:
            return None
        hits = self._order(self._trim(qa.question, rest))
        msgs = build_messages(qa.question, hits) + [Message("assistant", ABSTAIN_TEXT)]
        return self._row("unanswerable", qa, gold, hits, msgs, [], owner)

    def _row(self, kind: Kind, qa: QA, gold: Hit, hits: Sequence[Hit], msgs: Sequence[Message],
             gold_numbers: list[int], owner: str) -> dict:
        return {
            "messages": _msg_dicts(msgs),
            "kind": kind,
            "doc_id": gold.chunk.doc_id,
            "chunk_id": gold.chunk.id,
            "question": qa.question,
            "reference": msgs[-1].content,
            "gold_sources": gold_numbers,
            "source_chunk_ids": [h.chunk.id for h in hits],
            "source_doc_ids": [h.chunk.doc_id for h in hits],
            "question_origin": qa.origin,
            "owner": owner,
        }

    # --- the corpus -----------------------------------------------------------------------
    def _documents(self) -> list[tuple[str, str]]:
        """(doc_id, owner) of the documents examples are built from (sorted, max_docs applied)."""
        store = self.index.store
        docs = []
        for doc_id in store.document_ids():
            owner = owner_of(store.document_acl(doc_id), self.opts.include_restricted)
            if owner is None:
                self.counts["documents_skipped_restricted"] += 1
                continue
            docs.append((doc_id, owner))
        if self.opts.max_docs is not None and len(docs) > self.opts.max_docs:
            docs = sorted(random.Random(self.opts.seed).sample(docs, self.opts.max_docs))
        return docs

    def _chunk_hits(self, principals: frozenset[str]) -> dict[str, list[Hit]]:
        """Per document, its chunks readable by ``principals`` as Hits (ordinal order)."""
        store = self.index.store
        rows = store.chunk_rows(store.chunk_ids().tolist(), principals)
        by_doc: dict[str, list[Hit]] = {}
        for r in rows.values():
            by_doc.setdefault(r.chunk.doc_id, []).append(Hit(
                chunk=r.chunk, doc_title=r.doc_title, doc_uri=r.doc_uri, source=r.source,
                source_type=r.source_type, score=0.0))  # type: ignore[arg-type]
        for hits in by_doc.values():
            hits.sort(key=lambda h: h.chunk.ordinal)
        return by_doc

    def _writer(self, df: Counter, n: int, repeated: set[str]):
        extractive = ExtractiveWriter(df, n, per_chunk=self.opts.questions_per_chunk, skip=repeated)
        mode = self.opts.questions
        if mode == "auto":
            mode = "teacher" if self.opts.teacher else ("extractive" if self.settings.generator.backend == "fake" else "slm")
        if mode == "extractive":
            return extractive, "extractive"
        if mode == "teacher":
            if self.opts.teacher is None:
                raise KBError("--questions teacher needs --teacher-url and --teacher-model")
            from kb_chatbot.app.generators import make_escalation_generator

            return ModelWriter(make_escalation_generator(self.opts.teacher), extractive, origin="teacher"), "teacher"
        return ModelWriter(self._model(), extractive, origin="slm"), "slm"

    def _model(self):
        """The configured generator (the SLM), loaded once."""
        if self._generator is None:
            from kb_chatbot.app.generators import make_generator

            s = self.settings
            self._generator = make_generator(s.generator, s.models_dir, base_dir=s.config_dir)
        return self._generator

    # --- feedback -------------------------------------------------------------------------
    def feedback_rows(self, all_hits: dict[str, Hit]) -> list[dict]:
        """Thumbs-up answers and corrected thumbs-down ones whose sources are all usable here."""
        from kb_chatbot.app.answer.citations import cited_numbers

        log_ = self.answer_log
        if log_ is None:
            if self.settings.store.backend == "sqlite" and not self.settings.app_db.is_file():
                return []
            from kb_chatbot.app.answer.log import open_answer_log

            log_ = open_answer_log(self.settings)
        rows = []
        for fb in log_.feedback():
            if fb["rating"] == 1:
                reply = fb["answer"]
            elif fb.get("correction"):
                reply = fb["correction"]
            else:
                self.counts["feedback_skipped_no_correction"] += 1
                continue
            ids = list(fb.get("source_chunk_ids") or [])
            hits = [all_hits.get(i) for i in ids]
            if not ids or any(h is None for h in hits):  # unreadable for this build, or re-indexed away
                self.counts["feedback_skipped_sources"] += 1
                continue
            question = fb.get("standalone_question") or fb["question"]
            if not self.opts.include_restricted and " ".join(question.split()) != " ".join(fb["question"].split()):
                # condensed from the chat history: earlier answers, which may quote documents
                # this build may not use, are folded into the question -> restricted
                self.counts["feedback_skipped_history"] += 1
                continue
            hits = [self._trim_one(question, h) for h in hits]  # type: ignore[arg-type]
            nums = [n for n in cited_numbers(reply) if 1 <= n <= len(hits)]
            gold = hits[nums[0] - 1] if nums else hits[0]
            msgs = build_messages(question, hits) + [Message("assistant", reply.strip())]
            owner = "feedback:" + str(fb.get("username"))
            row = self._row("feedback", QA(question, reply, "feedback"), gold, hits, msgs, nums, owner)
            row["rating"] = fb["rating"]
            rows.append(row)
        return rows

    # --- everything -------------------------------------------------------------------------
    def build(self) -> list[dict]:
        docs = self._documents()
        owners = dict(docs)
        if self.opts.include_restricted:
            principals = frozenset({PUBLIC}) | frozenset(owners.values())
            log.warning("finetune include_restricted=1: restricted documents are trained on; serve the adapter "
                        "only to users who may read all of them")
            self.notes.append("include_restricted: the adapter holds restricted facts")
        else:
            principals = frozenset({PUBLIC})
        by_doc = self._chunk_hits(principals)
        df, n, repeated = document_frequencies(h.chunk.text for hs in by_doc.values() for h in hs)
        writer, mode = self._writer(df, n, repeated)
        self.counts["question_mode"] = mode
        rows: list[dict] = []
        total = sum(len(by_doc.get(d, [])) for d, _ in docs)
        done = 0
        for doc_id, owner in docs:
            principal = principal_for(owner)
            for gold in by_doc.get(doc_id, []):
                for qa in writer.write(gold.chunk, gold.doc_title):
                    row, cands = self.answerable(qa, gold, principal, owner)
                    if row is None:  # its reply failed the verifier: no answerable or near-miss example
                        continue
                    rows.append(row)
                    if self.rng.random() < self.opts.unanswerable_ratio:
                        un = self.unanswerable(qa, gold, cands, owner)
                        if un is not None:
                            rows.append(un)
                        else:
                            self.counts["unanswerable_no_other_sources"] += 1
                done += 1
                if self.progress:
                    self.progress(done, total)
        if self.opts.feedback:
            all_hits = {h.chunk.id: h for hs in by_doc.values() for h in hs}
            rows += self.feedback_rows(all_hits)
        if hasattr(writer, "accepted"):
            self.counts["model_questions_accepted"] = writer.accepted
            self.counts["model_questions_rejected"] = writer.rejected
        return dedupe(rows, self.counts)


def dedupe(rows: Sequence[dict], counts: Counter | None = None) -> list[dict]:
    """Drop repeats of (normalised question, gold chunk, kind), keeping the first."""
    seen: set[tuple[str, str, str]] = set()
    out = []
    for r in rows:
        key = (normalise_question(r["question"]), r["chunk_id"], r["kind"])
        if key in seen:
            if counts is not None:
                counts["duplicates_dropped"] += 1
            continue
        seen.add(key)
        out.append(r)
    return out


def split_by_document(rows: Sequence[dict], share: float, seed: int) -> tuple[list[dict], list[dict]]:
    """(train, heldout): every document's examples on one side; ~``share`` of documents held out."""
    docs = sorted({r["doc_id"] for r in rows})
    random.Random(seed).shuffle(docs)
    n_held = round(len(docs) * share)
    if share > 0 and n_held == 0 and len(docs) >= 2:
        n_held = 1
    if n_held >= len(docs) and len(docs) >= 2:
        n_held = len(docs) - 1
    held = set(docs[:n_held])
    return [r for r in rows if r["doc_id"] not in held], [r for r in rows if r["doc_id"] in held]


def _write_jsonl(path: Path, rows: Sequence[dict]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    with tmp.open("w", encoding="utf-8") as f:
        for r in rows:
            f.write(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n")
    tmp.replace(path)


def data_hash(out_dir: Path) -> str:
    h = hashlib.sha256()
    for name in (TRAIN_FILE, HELDOUT_FILE):
        h.update(name.encode() + b"\0")
        h.update((out_dir / name).read_bytes())
    return h.hexdigest()


def _kinds(rows: Sequence[dict]) -> dict[str, int]:
    return dict(sorted(Counter(r["kind"] for r in rows).items()))


def build_dataset(settings: Settings, opts: BuildOptions, **parts: Any) -> BuildReport:
    """Build, split and write the dataset (see the module doc); ``parts`` go to :class:`DatasetBuilder`."""
    t0 = time.perf_counter()
    builder = DatasetBuilder(settings, opts, **parts)
    rows = builder.build()
    if not rows:
        raise KBError("no training examples: the index has no usable (public) chunks"
                      + ("" if opts.include_restricted else "; pass --include-restricted to use restricted ones"))
    train, held = split_by_document(rows, opts.heldout_share, opts.seed)
    out = Path(opts.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _write_jsonl(out / TRAIN_FILE, train)
    _write_jsonl(out / HELDOUT_FILE, held)
    digest = data_hash(out)
    counts: dict[str, Any] = {
        "train": len(train), "heldout": len(held),
        "train_kinds": _kinds(train), "heldout_kinds": _kinds(held),
        "train_documents": len({r["doc_id"] for r in train}), "heldout_documents": len({r["doc_id"] for r in held}),
        "question_origins": dict(Counter(r["question_origin"] for r in rows)),
        **{k: v for k, v in builder.counts.items()},
    }
    manifest = {
        "format": "kb-finetune-data/1",
        "created_at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "data_hash": digest,
        "counts": counts,
        "options": {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(opts).items() if k != "teacher"}
        | {"teacher": opts.teacher.model if opts.teacher else None, "top_k": builder.top_k},
        "restricted": opts.include_restricted,
        "index": {"generation": builder.index.generation, "embedder": getattr(builder.embedder, "model_id", "")},
        "retrieval": settings.retrieval.model_dump(mode="json"),
        "heldout_doc_ids": sorted({r["doc_id"] for r in held}),
        "notes": builder.notes,
    }
    (out / MANIFEST).write_text(json.dumps(manifest, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    seconds = time.perf_counter() - t0
    log.info("finetune build_data out=%s train=%d heldout=%d hash=%s seconds=%.1f", out, len(train), len(held),
             digest[:12], seconds)
    return BuildReport(out, counts, digest, seconds, builder.notes)
