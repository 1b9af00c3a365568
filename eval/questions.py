"""Evaluation questions: one dataclass and loaders for the formats we meet.

- JSONL, one question per line. Fields: ``question`` (required); ``expected_answer`` or
  ``answer``; expected sources as ``expected_sources: [{"file": "hr/pto.md", "page": null}]``
  (strings are accepted too), or as ``source_path`` (or ``file``) with an optional ``page`` (or
  ``slide``, for decks); optional ``id``, ``keywords`` (words a good answer contains) and
  ``answerable`` (default: true unless the question has neither sources nor an answer, as the
  ``source_type: null`` rows of ``data/sample/facts.jsonl``); ``history``, the chat before a
  follow-up question (``[{"role": "user", "content": ...}, {"role": "assistant", ...}]``).
  Citations written inside the expected answer, like ``[Some_File.pdf#page=7]``, are parsed
  into expected sources and removed from the answer text.
- SQuAD 2.0 JSON (``data[].paragraphs[].context`` and ``qas[]``): every question, with
  ``is_impossible`` ones unanswerable; the paragraphs become the corpus, one file each
  (:func:`write_squad_corpus`), and a question's expected source is its paragraph's file.
- ARAGOG (deepset-ai/haystack-evaluation): one JSON object with parallel lists ``questions``,
  ``ground_truths`` and ``filepaths`` (file names of arXiv PDFs). A question whose PDF is not
  in the corpus folder (``glm_130b.pdf`` is missing from the shipped papers) cannot be answered
  from the knowledge base and is marked ``answerable=False``.

A source is ``(file, page)``: ``file`` is a path relative to its source root (or just a file
name), ``page`` is 1-based or None. It matches a retrieved chunk when the chunk's document path
ends with ``file`` at a folder boundary (see :func:`kb_chatbot.eval.metrics.file_matches`).
"""
from __future__ import annotations

import json
import logging
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Literal

from kb_chatbot.core.errors import KBError

log = logging.getLogger(__name__)

SourceRef = tuple[str, "int | None"]
Format = Literal["auto", "jsonl", "aragog", "squad"]

#: The ARAGOG question file and its papers folder, relative to ``../shared/eval/aragog``.
ARAGOG_JSON = Path("datasets/ARAGOG/eval_questions_relevant_doc.json")
ARAGOG_PAPERS = Path("datasets/ARAGOG/papers_for_questions")


class QuestionFileError(KBError):
    """A question file cannot be read; the message names the file, line and field."""


@dataclass(frozen=True)
class EvalQuestion:
    id: str
    question: str
    expected_answer: str
    expected_sources: tuple[SourceRef, ...] = ()
    answerable: bool = True
    keywords: tuple[str, ...] = ()
    metadata: dict[str, Any] = field(default_factory=dict, compare=False, hash=False)

    @property
    def expected_files(self) -> tuple[str, ...]:
        """Distinct expected files in order."""
        return tuple(dict.fromkeys(f for f, _ in self.expected_sources))

    @property
    def has_pages(self) -> bool:
        return any(p is not None for _, p in self.expected_sources)


# --- citations inside expected answers ------------------------------------------------------

_GROUP = re.compile(r"\[([^\[\]\n]+)\]")
#: ``file.ext`` (a document extension), then optionally ``#page=7`` / ``#p=7`` / ``, p. 7`` / ``page 7`` / ``p7``.
_REF = re.compile(
    r"""^\s*(?P<file>[^\s#\[\]][^#\[\]]*?\.(?:pdf|md|markdown|html?|docx?|pptx?|xlsx?|txt|csv|tsv|json|rst|odt|rtf))
        (?:\s*\#\s*(?:page|p)\s*=\s*(?P<page>\d{1,5})
          |\s*,?\s*(?:pp?\.|page|pg\.?)\s*(?P<page2>\d{1,5})
        )?\s*$""",
    re.VERBOSE | re.IGNORECASE,
)


def parse_source_citations(text: str) -> tuple[list[SourceRef], str]:
    """File/page citations written in ``text`` and the text without them.

    A bracket group counts when every ``;``- or ``,``-separated part names a file with an
    extension: ``[Handbook.pdf#page=7]``, ``[a.pdf#page=2; b.md]``, ``[Report.pdf, p. 3]``.
    Other brackets (``[1]``, ``[citation needed]``) are left alone.

    >>> parse_source_citations("Ten days [PTO_Policy.pdf#page=7].")
    ([('PTO_Policy.pdf', 7)], 'Ten days.')
    """
    refs: list[SourceRef] = []

    def repl(m: re.Match[str]) -> str:
        inner = m.group(1)
        # "[a.pdf, b.md]" is two files, "[Report.pdf, p. 3]" one file and its page
        for parts in (re.split(r"[;,]", inner), inner.split(";")):
            matches = [_REF.match(part) for part in parts]
            if all(matches):
                break
        else:
            return m.group(0)
        found: list[SourceRef] = []
        for r in matches:
            page = r.group("page") or r.group("page2")
            found.append((r.group("file").strip(), int(page) if page else None))
        for ref in found:
            if ref not in refs:
                refs.append(ref)
        return ""

    stripped = _GROUP.sub(repl, text)
    if refs:  # tidy the holes the citations left: "days ." -> "days."
        stripped = re.sub(r"[ \t]+([.,;:!?])", r"\1", stripped)
        stripped = re.sub(r"[ \t]{2,}", " ", stripped).strip()
    return refs, stripped if refs else text


# --- JSONL ----------------------------------------------------------------------------------


def _source_from(value: Any, where: str) -> SourceRef:
    if isinstance(value, str):
        refs, _ = parse_source_citations(f"[{value}]")
        return refs[0] if refs else (value.strip(), None)
    if isinstance(value, dict):
        file = value.get("file") or value.get("path") or value.get("source_path")
        if not isinstance(file, str) or not file.strip():
            raise QuestionFileError(f"{where}: each expected source needs a 'file' string, got {value!r}")
        page = value.get("page") if value.get("page") is not None else value.get("slide")
        return file.strip(), _page(page, where)
    raise QuestionFileError(f"{where}: an expected source must be a string or an object with 'file', got {value!r}")


def _page(value: Any, where: str) -> int | None:
    if value is None or value == "":
        return None
    try:
        page = int(value)
    except (TypeError, ValueError):
        raise QuestionFileError(f"{where}: 'page' must be a whole number, got {value!r}") from None
    if page < 1:
        raise QuestionFileError(f"{where}: 'page' is 1-based, got {page}")
    return page


def question_from_record(rec: dict[str, Any], default_id: str, where: str) -> EvalQuestion:
    """One question from a JSON object (the JSONL schema in the module docstring)."""
    q = rec.get("question")
    if not isinstance(q, str) or not q.strip():
        raise QuestionFileError(f"{where}: field 'question' is missing or empty")
    answer = rec.get("expected_answer", rec.get("answer", ""))
    if answer is None:
        answer = ""
    if not isinstance(answer, str):
        raise QuestionFileError(f"{where}: 'expected_answer' must be a string, got {type(answer).__name__}")
    cited, answer = parse_source_citations(answer)
    sources: list[SourceRef] = []
    raw = rec.get("expected_sources", rec.get("sources"))
    if raw is not None:
        if not isinstance(raw, list):
            raw = [raw]
        sources += [_source_from(v, where) for v in raw]
    single = rec.get("source_path", rec.get("file"))
    if single:
        sources.append(_source_from({"file": single, "page": rec.get("page"), "slide": rec.get("slide")}, where))
    for ref in cited:
        if ref not in sources:
            sources.append(ref)
    keywords = rec.get("keywords") or []
    if isinstance(keywords, str):
        keywords = [k.strip() for k in keywords.split(",") if k.strip()]
    if not isinstance(keywords, list) or not all(isinstance(k, str) for k in keywords):
        raise QuestionFileError(f"{where}: 'keywords' must be a list of strings")
    # no source to find and nothing to say (facts.jsonl's "source_type": null rows): unanswerable
    answerable = rec.get("answerable", bool(sources) or bool(answer.strip()))
    if not isinstance(answerable, bool):
        raise QuestionFileError(f"{where}: 'answerable' must be true or false, got {answerable!r}")
    history = rec.get("history") or []
    if not isinstance(history, list) or not all(
            isinstance(h, dict) and h.get("role") in ("user", "assistant") and isinstance(h.get("content"), str)
            for h in history):
        raise QuestionFileError(f"{where}: 'history' must be a list of {{\"role\": \"user\"|\"assistant\", "
                                "\"content\": text} objects")
    known = {"id", "question", "expected_answer", "answer", "expected_sources", "sources", "source_path",
             "file", "page", "slide", "keywords", "answerable"}
    return EvalQuestion(
        id=str(rec.get("id") or default_id),
        question=q.strip(),
        expected_answer=answer.strip(),
        expected_sources=tuple(dict.fromkeys(sources)),
        answerable=answerable,
        keywords=tuple(keywords),
        metadata={k: v for k, v in rec.items() if k not in known},
    )


def load_jsonl(path: str | Path) -> list[EvalQuestion]:
    """Questions from a JSONL file; blank lines and ``#`` comment lines are skipped."""
    path = Path(path)
    out: list[EvalQuestion] = []
    seen: set[str] = set()
    for lineno, line in enumerate(_read(path).splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        where = f"{path}:{lineno}"
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise QuestionFileError(f"{where}: not valid JSON ({e.msg}); one JSON object per line") from None
        if not isinstance(rec, dict):
            raise QuestionFileError(f"{where}: each line must be a JSON object")
        q = question_from_record(rec, f"q{lineno}", where)
        if q.id in seen:
            raise QuestionFileError(f"{where}: duplicate id {q.id!r}")
        seen.add(q.id)
        out.append(q)
    if not out:
        raise QuestionFileError(f"{path}: no questions found")
    return out


# --- ARAGOG ---------------------------------------------------------------------------------


def load_aragog(path: str | Path, corpus_dir: str | Path | None = None) -> list[EvalQuestion]:
    """ARAGOG's ``eval_questions_relevant_doc.json`` (or the folder holding it).

    ``corpus_dir`` is the folder of PDFs that will be indexed (default: the
    ``papers_for_questions`` folder beside the JSON). A question whose PDF is not there is
    unanswerable. Ids are ``aragog-001`` … in file order.
    """
    path = Path(path)
    if path.is_dir():
        for cand in (path / ARAGOG_JSON, path / "ARAGOG" / ARAGOG_JSON.name, path / ARAGOG_JSON.name):
            if cand.is_file():
                path = cand
                break
        else:
            raise QuestionFileError(f"{path}: no {ARAGOG_JSON.name} inside (expected {ARAGOG_JSON})")
    try:
        data = json.loads(_read(path))
    except json.JSONDecodeError as e:
        raise QuestionFileError(f"{path}: not valid JSON ({e.msg})") from None
    if not isinstance(data, dict):
        raise QuestionFileError(f"{path}: expected an object with 'questions', 'ground_truths', 'filepaths'")
    lists = {}
    for key in ("questions", "ground_truths", "filepaths"):
        v = data.get(key)
        if not isinstance(v, list):
            raise QuestionFileError(f"{path}: field {key!r} must be a list (ARAGOG format)")
        lists[key] = v
    n = len(lists["questions"])
    if any(len(v) != n for v in lists.values()):
        sizes = ", ".join(f"{k}={len(v)}" for k, v in lists.items())
        raise QuestionFileError(f"{path}: the lists must have equal length ({sizes})")
    corpus = Path(corpus_dir) if corpus_dir is not None else path.parent / ARAGOG_PAPERS.name
    present = {p.name for p in corpus.iterdir() if p.is_file()} if corpus.is_dir() else None
    if present is None:
        log.warning("aragog corpus folder missing path=%s: every question treated as answerable", corpus)
    out = []
    for i, (q, truth, file) in enumerate(zip(lists["questions"], lists["ground_truths"], lists["filepaths"]), 1):
        where = f"{path}: item {i}"
        if not isinstance(q, str) or not q.strip():
            raise QuestionFileError(f"{where}: question is missing or empty")
        if not isinstance(file, str) or not file.strip():
            raise QuestionFileError(f"{where}: filepath must be a file name")
        name = Path(file.strip()).name
        out.append(
            EvalQuestion(
                id=f"aragog-{i:03d}",
                question=q.strip(),
                expected_answer=str(truth or "").strip(),
                expected_sources=((name, None),),
                answerable=present is None or name in present,
                metadata={"paper": name},
            )
        )
    return out


# --- SQuAD 2.0 -------------------------------------------------------------------------------


def _squad(path: Path) -> list[tuple[str, str, list[dict], str]]:
    """(title, file name, qas, context) per paragraph of a SQuAD JSON file."""
    try:
        data = json.loads(_read(path))
    except json.JSONDecodeError as e:
        raise QuestionFileError(f"{path}: not valid JSON ({e.msg})") from None
    if not isinstance(data, dict) or not isinstance(data.get("data"), list):
        raise QuestionFileError(f"{path}: expected SQuAD JSON with a 'data' list")
    out = []
    for a, article in enumerate(data["data"], 1):
        title = str(article.get("title") or f"article-{a}")
        for i, para in enumerate(article.get("paragraphs") or [], 1):
            if not isinstance(para.get("context"), str) or not isinstance(para.get("qas"), list):
                raise QuestionFileError(f"{path}: article {a} paragraph {i}: needs 'context' and 'qas'")
            slug = re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-") or f"article-{a}"
            out.append((title, f"{slug}-p{i:02d}.md", para["qas"], para["context"]))
    return out


def write_squad_corpus(path: str | Path, dest: str | Path) -> Path:
    """The paragraphs of a SQuAD file as one markdown file each under ``dest`` (created; files
    already there with the same text are left alone, so re-indexing is a no-op)."""
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    for title, name, _qas, context in _squad(Path(path)):
        text = f"---\ntitle: {title}, {name[:-3].rsplit('-', 1)[-1]}\naccess: [public]\n---\n\n{context.strip()}\n"
        f = dest / name
        if not f.exists() or f.read_text(encoding="utf-8") != text:
            f.write_text(text, encoding="utf-8")
    return dest


def load_squad(path: str | Path) -> list[EvalQuestion]:
    """Every question of a SQuAD 2.0 file; ids are SQuAD's own."""
    path = Path(path)
    out = []
    for _title, name, qas, _context in _squad(path):
        for qa in qas:
            impossible = bool(qa.get("is_impossible"))
            answers = [a.get("text", "") for a in qa.get("answers") or []]
            plausible = [a.get("text", "") for a in qa.get("plausible_answers") or []]
            out.append(EvalQuestion(
                id=str(qa.get("id")), question=str(qa.get("question", "")).strip(),
                expected_answer="" if impossible else (answers[0] if answers else ""),
                expected_sources=() if impossible else ((name, None),), answerable=not impossible,
                metadata={"answers": answers, "plausible_answers": plausible, "paragraph": name}))
    if not out:
        raise QuestionFileError(f"{path}: no questions found")
    return out


def detect_format(path: str | Path) -> Literal["jsonl", "aragog", "squad"]:
    """``aragog`` for a folder or a JSON object with ``questions`` + ``filepaths``; else ``jsonl``."""
    path = Path(path)
    if path.is_dir():
        return "aragog"
    if path.suffix.lower() == ".jsonl":
        return "jsonl"
    head = _read(path).lstrip()[:1]
    if head == "{":
        try:
            data = json.loads(_read(path))
        except json.JSONDecodeError:
            return "jsonl"  # several objects, one per line
        if isinstance(data, dict) and "questions" in data and "filepaths" in data:
            return "aragog"
        if isinstance(data, dict) and isinstance(data.get("data"), list) and "version" in data:
            return "squad"
    return "jsonl"


def load_questions(path: str | Path, fmt: Format = "auto", *, corpus_dir: str | Path | None = None,
                   limit: int | None = None) -> list[EvalQuestion]:
    """Questions from ``path`` in ``fmt`` (``auto`` detects it), the first ``limit`` of them."""
    path = Path(path)
    if not path.exists():
        raise QuestionFileError(f"question file not found: {path}")
    kind = detect_format(path) if fmt == "auto" else fmt
    if kind == "aragog":
        qs = load_aragog(path, corpus_dir)
    elif kind == "jsonl":
        qs = load_jsonl(path)
    elif kind == "squad":
        qs = load_squad(path)
    else:
        raise QuestionFileError(f"unknown question format {fmt!r} (auto, jsonl, aragog or squad)")
    return qs[:limit] if limit else qs


def spread(questions: Iterable[EvalQuestion], n: int) -> list[EvalQuestion]:
    """``n`` questions taken round-robin over their expected files (every paper or page is
    covered before any gets a second question), returned in file order: deterministic, and it
    keeps unanswerable questions in the mix. Used for the slow answer-level subset."""
    qs = list(questions)
    if n >= len(qs):
        return qs
    groups: dict[str, list[int]] = {}
    for i, q in enumerate(qs):
        key = q.expected_files[0] if q.expected_files else ""
        groups.setdefault(key, []).append(i)
    picked: list[int] = []
    depth = 0
    while len(picked) < n:
        for members in groups.values():
            if depth < len(members) and len(picked) < n:
                picked.append(members[depth])
        depth += 1
    return [qs[i] for i in sorted(picked)]


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError:
        raise QuestionFileError(f"{path}: not UTF-8 text") from None
    except OSError as e:
        raise QuestionFileError(f"{path}: cannot read ({e.strerror})") from None
