"""Run evaluation questions through the real retriever and answer service; collect per-question
records and summarise them with :mod:`kb_chatbot.eval.metrics`.

The corpus under test is indexed into its own folder (``<data_dir>/eval/<corpus>-<hash>``, the
hash covering the settings that change the index), so an evaluation never touches the live
index or answer log, and two configs that differ only in retrieval or answering share one index.
Questions are asked as :class:`EvalPrincipal`, which may read every document of the corpus.

Definitions (also written into every report):

- retrieval: rank of the first retrieved chunk whose document matches an expected source, by
  file and by file+page; hit@1, hit@5 and MRR@10 over answerable questions with sources.
- correct answer: on an answerable question, not an abstention and semantic similarity to the
  reference >= ``SIM_CORRECT``; on an unanswerable one, an abstention.
- hallucination: an answer (not an abstention) with a sentence whose support by the sources it
  cites, per ``kb_chatbot.app.answer.confidence.sentence_support`` with the config's grounding check, is below
  the service's own ``UNSUPPORTED_BELOW`` (an uncited sentence counts as unsupported).
- calibration: AUROC and reliability of the final confidence against correctness, over answers
  that are not abstentions.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable, Sequence

from kb_chatbot.core.settings import Settings, SourceConfig
from kb_chatbot.core.types import Principal
from kb_chatbot.eval import metrics as m
from kb_chatbot.eval import records as rec
from kb_chatbot.eval.questions import EvalQuestion, spread

log = logging.getLogger(__name__)

RETRIEVAL_MODES = ("bm25", "dense", "hybrid")


@dataclass(frozen=True)
class EvalPrincipal(Principal):
    """A principal that holds every ACL principal of the corpus: evaluation reads everything."""

    grants: frozenset[str] = frozenset()

    def principals(self) -> frozenset[str]:
        return super().principals() | self.grants


def eval_principal(index) -> EvalPrincipal:
    store = index.store
    grants: set[str] = set()
    for doc_id in store.document_ids():
        grants |= store.document_acl(doc_id)
    return EvalPrincipal(username="kb-eval", grants=frozenset(grants))


# --- the corpus -----------------------------------------------------------------------------


def index_fingerprint(settings: Settings, sources: Sequence[SourceConfig]) -> str:
    """Hash of what changes the index: the sources, embedding, chunking and index settings."""
    payload = {
        "sources": [src.model_dump(mode="json", exclude_defaults=True) for src in sources],
        "embedding": settings.embedding.model_dump(mode="json"),
        "chunking": settings.chunking.model_dump(mode="json"),
        "index": settings.index.model_dump(mode="json"),
    }
    return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()[:10]


def corpus_settings(settings: Settings, corpus_name: str, corpus_path: str | Path | None = None,
                    eval_dir: str | Path | None = None) -> Settings:
    """Settings whose only sources are the corpus's and whose data_dir is the corpus's eval folder.

    ``corpus_path`` makes an ad-hoc drive source named ``corpus_name`` (public); otherwise
    ``corpus_name`` names one or more configured sources, comma-separated
    (``acme-wiki,acme-slack,acme-drive``).
    """
    if corpus_path is not None:
        sources = [SourceConfig(name=corpus_name, type="drive", path=Path(corpus_path).expanduser().resolve(),
                                default_acl="public")]
    else:
        names = [n.strip() for n in corpus_name.split(",") if n.strip()]
        sources = [settings.source(n) for n in names]  # ConfigError naming the known sources
    base = Path(eval_dir) if eval_dir is not None else settings.data_dir / "eval"
    s = settings.model_copy(deep=True)
    s.sources = [src.model_copy(deep=True) for src in sources]
    slug = corpus_name.replace(",", "+")
    s.data_dir = (base / f"{slug}-{index_fingerprint(settings, sources)}").resolve()
    s.config_dir = settings.config_dir
    return s


def ensure_indexed(csettings: Settings, *, embedder=None, progress: bool = True) -> dict[str, Any]:
    """Sync the corpus into its eval folder (a no-op when nothing changed); a summary dict."""
    from kb_chatbot.ingest.sync import sync_sources

    from kb_chatbot.app.kb.progress import TqdmProgress

    with TqdmProgress(enabled=progress) as bars:
        rep = sync_sources(csettings, csettings.sources, progress=bars, embedder=embedder)
    failed = [f"{s.name}/{f.path}: {f.reason}" for s in rep.sources for f in s.failures]
    failed += [f"{s.name}: {s.error}" for s in rep.sources if s.error]
    return {
        "data_dir": str(csettings.data_dir),
        "source": ",".join(s.name for s in csettings.sources),
        "path": ", ".join(str(s.path) for s in csettings.sources),
        "documents": rep.documents_total,
        "chunks": rep.chunks_total,
        "added": sum(s.added for s in rep.sources),
        "unchanged": sum(s.unchanged for s in rep.sources),
        "chunks_embedded": rep.chunks_embedded,
        "failed_files": failed,
        "seconds": round(rep.seconds, 2),
        "generation": rep.current_generation,
    }


# --- variants -------------------------------------------------------------------------------


@dataclass
class Variant:
    """One configuration under test: a name and the settings it runs with."""

    name: str
    settings: Settings
    overrides: dict[str, Any] = field(default_factory=dict)


def with_overrides(settings: Settings, **sections: dict[str, Any]) -> Settings:
    """A deep copy of ``settings`` with e.g. ``retrieval={"mode": "bm25"}`` applied."""
    s = settings.model_copy(deep=True)
    for section, values in sections.items():
        setattr(s, section, getattr(s, section).model_copy(update=values))
    return s


def baseline_variants(settings: Settings) -> list[Variant]:
    """The config as is, then the context filter flipped, then self-correction flipped."""
    r, a = settings.retrieval, settings.answer

    def onoff(b: bool) -> str:
        return "on" if b else "off"

    def name(mode: str, filt: bool, sc: bool) -> str:
        return f"{mode}, filter {onoff(filt)}, self-correction {onoff(sc)}"

    out = [Variant(name(r.mode, r.context_filter, a.self_correction) + " (config)", settings)]
    out.append(Variant(name(r.mode, not r.context_filter, a.self_correction),
                       with_overrides(settings, retrieval={"context_filter": not r.context_filter}),
                       {"retrieval.context_filter": not r.context_filter}))
    out.append(Variant(name(r.mode, r.context_filter, not a.self_correction),
                       with_overrides(settings, answer={"self_correction": not a.self_correction}),
                       {"answer.self_correction": not a.self_correction}))
    return out


# --- the whole run --------------------------------------------------------------------------


@dataclass
class EvalOptions:
    corpus_name: str
    corpus_path: str | Path | None = None
    eval_dir: str | Path | None = None
    #: Questions answered by the language model (spread over the expected files); None: all.
    limit: int | None = None
    baselines: bool = False
    retrieval_only: bool = False
    progress: bool = True


@dataclass
class _Config:
    label: str  # "A" / "B"
    path: str | None
    settings: Settings  # as loaded
    corpus: Settings = None  # type: ignore[assignment]  # the corpus's eval settings
    index: Any = None
    principal: Principal | None = None


def _generator_key(s: Settings) -> str:
    return json.dumps(s.generator.model_dump(mode="json"), sort_keys=True)


class _Parts:
    """Embedders and generators loaded once and shared by every variant that can share them."""

    def __init__(self, embedder=None, generator=None):
        self.embedders: dict[str, Any] = {}
        self.generators: dict[str, Any] = {}
        self._embedder, self._generator = embedder, generator

    def embedder(self, s: Settings):
        key = json.dumps(s.embedding.model_dump(mode="json"), sort_keys=True)
        if key not in self.embedders:
            from kb_chatbot.index.embedder import load_embedder

            self.embedders[key] = self._embedder or load_embedder(s.embedding)
        return self.embedders[key]

    def generator(self, original: Settings):
        key = _generator_key(original)
        if key not in self.generators:
            from kb_chatbot.app.generators import make_generator

            # the models folder of the real config: the default model is assembled there once
            self.generators[key] = self._generator or make_generator(
                original.generator, original.models_dir, base_dir=original.config_dir)
        return self.generators[key]


def _retrieval_runs(cfg: _Config, baselines: bool) -> list[tuple[str, str, bool]]:
    """(name, mode, context filter) retrieval runs for one config."""
    r = cfg.corpus.retrieval
    runs = [(m_, m_, False) for m_ in RETRIEVAL_MODES] + [("hybrid + context filter", "hybrid", True)] if baselines else []
    own = (f"{r.mode} + context filter" if r.context_filter else r.mode, r.mode, r.context_filter)
    if own not in runs:
        runs.append(own)
    return runs


def run_evaluation(questions: Sequence[EvalQuestion], configs: Sequence[tuple[str | None, Settings]],
                   opts: EvalOptions, *, embedder=None, generator=None,
                   on_partial: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Evaluate ``questions`` against each ``(config path, settings)`` (one, or two for A/B).

    ``embedder`` / ``generator`` replace the configured ones (tests pass fakes). Returns the
    whole result: meta, corpus summaries, retrieval and answer runs with per-question records,
    and the A/B comparison when two configs are given. ``on_partial`` gets the result so far
    after every run (the CLI saves it, so an interrupted long run keeps what it measured).
    """
    from kb_chatbot.app.answer.confidence import WEIGHTS_FILE, ConfidenceModel
    from kb_chatbot.app.kb.services import build_services
    from kb_chatbot.index.generation import open_index
    from kb_chatbot.index.retriever import HybridRetriever

    t0 = time.perf_counter()
    parts = _Parts(embedder, generator)
    cfgs = [_Config("AB"[i], p, s) for i, (p, s) in enumerate(configs)]
    corpora: dict[str, Any] = {}
    for cfg in cfgs:
        cfg.corpus = corpus_settings(cfg.settings, opts.corpus_name, opts.corpus_path, opts.eval_dir)
        emb = parts.embedder(cfg.corpus)
        if str(cfg.corpus.data_dir) not in corpora:
            log.info("eval corpus sync source=%s data_dir=%s", opts.corpus_name, cfg.corpus.data_dir)
            corpora[str(cfg.corpus.data_dir)] = ensure_indexed(cfg.corpus, embedder=emb, progress=opts.progress)
        cfg.index = open_index(cfg.corpus)
        if cfg.index.generation is None:
            from kb_chatbot.core.errors import IndexError_

            raise IndexError_(f"the corpus {opts.corpus_name!r} indexed no document ({cfg.corpus.sources[0].path})")
        cfg.principal = eval_principal(cfg.index)

    retrieval: dict[str, Any] = {}
    for cfg in cfgs:
        emb = parts.embedder(cfg.corpus)
        retriever = HybridRetriever(cfg.index, emb, cfg.corpus.retrieval)
        for name, mode, filt in _retrieval_runs(cfg, opts.baselines and cfg.label == "A"):
            key = name if len(cfgs) == 1 else f"{cfg.label}: {name}"
            cf = None
            if filt:
                from kb_chatbot.app.answer.context_filter import ContextFilter

                cf = ContextFilter.from_settings(emb, cfg.corpus.retrieval)
            records = rec.retrieval_records(questions, retriever, cfg.principal, mode=mode, context_filter=cf,
                                            top_k=cfg.corpus.retrieval.top_k, progress=opts.progress, label=key)
            retrieval[key] = {"config": cfg.label, "mode": mode, "context_filter": filt,
                              "summary": rec.summarize_retrieval(records, questions), "records": records}
            if on_partial:
                on_partial(_result(questions, cfgs, opts, corpora, retrieval, {}, [], t0))

    answers: dict[str, Any] = {}
    subset = list(questions) if not opts.limit else spread(questions, opts.limit)
    if not opts.retrieval_only and subset:
        for cfg in cfgs:
            variants = baseline_variants(cfg.corpus) if opts.baselines and cfg.label == "A" else \
                [Variant("config", cfg.corpus)]
            emb = parts.embedder(cfg.corpus)
            gen = parts.generator(cfg.settings)
            confidence = ConfidenceModel.load(cfg.settings.data_dir / WEIGHTS_FILE)
            for v in variants:
                key = v.name if len(cfgs) == 1 else f"{cfg.label}: {v.name}"
                services = build_services(v.settings, embedder=emb, index=cfg.index, generator=gen,
                                          answer_log=None, confidence=confidence)
                records = rec.answer_records(subset, services.answer_service, cfg.principal, settings=v.settings,
                                             embedder=emb, generator=gen, progress=opts.progress, label=key)
                answers[key] = {"config": cfg.label, "overrides": v.overrides, "model": getattr(gen, "model_id", ""),
                                "confidence_model": confidence.origin,
                                "summary": rec.summarize_answers(records), "records": records}
                if on_partial:
                    on_partial(_result(questions, cfgs, opts, corpora, retrieval, answers, subset, t0))

    result = _result(questions, cfgs, opts, corpora, retrieval, answers, subset, t0)
    return result


def _result(questions, cfgs, opts, corpora, retrieval, answers, subset, t0) -> dict[str, Any]:
    result = {
        "meta": {
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
            "questions": len(questions),
            "answerable": sum(1 for q in questions if q.answerable),
            "answer_subset": len(subset) if answers else 0,
            "corpus": opts.corpus_name,
            "configs": {c.label: c.path or "(default settings)" for c in cfgs},
            "settings": {c.label: _settings_summary(c.corpus) for c in cfgs},
            "sim_correct": rec.SIM_CORRECT,
            "retrieve_k": rec.RETRIEVE_K,
        },
        "corpus": corpora,
        "retrieval": retrieval,
        "answers": answers,
        "ab": compare(retrieval, answers) if len(cfgs) == 2 else None,
    }
    result["meta"]["seconds"] = round(time.perf_counter() - t0, 1)
    return result


def _settings_summary(s: Settings) -> dict[str, Any]:
    return {
        "retrieval": s.retrieval.model_dump(mode="json"),
        "answer": {k: v for k, v in s.answer.model_dump(mode="json").items() if k != "escalation"},
        "generator": {k: s.generator.model_dump(mode="json")[k] for k in ("backend", "model", "threads", "max_tokens")},
        "embedding": s.embedding.model_dump(mode="json"),
        "chunking": s.chunking.model_dump(mode="json"),
        "index": s.index.model_dump(mode="json"),
    }


# --- A/B ------------------------------------------------------------------------------------

#: Per-question scores compared between A and B, and whether higher is better.
RETRIEVAL_SCORES = {"reciprocal_rank_file": True, "context_recall": True}
ANSWER_SCORES = {"token_f1": True, "similarity": True, "correct": True, "latency_total": False}


def _per_question(records: Sequence[dict], key: str) -> dict[str, float | None]:
    out: dict[str, float | None] = {}
    for r in records:
        if key == "reciprocal_rank_file":
            v = (1.0 / r["rank_file"] if r["rank_file"] else 0.0) if r["scored"] else None
        elif key == "latency_total":
            v = r["timings"].get("total")
        elif key == "correct":
            v = float(r["correct"])
        else:
            v = r.get(key)
        out[r["id"]] = v
    return out


def compare(retrieval: dict[str, Any], answers: dict[str, Any]) -> dict[str, Any]:
    """A vs B, paired by question: mean of each, delta (B - A), bootstrap CI and sign test."""
    def pick(runs: dict[str, Any], label: str) -> dict | None:
        return next((v for v in runs.values() if v["config"] == label), None)

    out: dict[str, Any] = {}
    for kind, runs, scores in (("retrieval", retrieval, RETRIEVAL_SCORES), ("answers", answers, ANSWER_SCORES)):
        a, b = pick(runs, "A"), pick(runs, "B")
        if a is None or b is None:
            continue
        rows = {}
        for key, higher_better in scores.items():
            pa, pb = _per_question(a["records"], key), _per_question(b["records"], key)
            ids = [i for i in pa if i in pb]
            xa, xb = [pa[i] for i in ids], [pb[i] for i in ids]
            rows[key] = {"a": m.mean(xa), "b": m.mean(xb), "higher_is_better": higher_better,
                         **m.paired_bootstrap(xa, xb), "sign_test": m.sign_test(xa, xb)}
        out[kind] = rows
    return out
