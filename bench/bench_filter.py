"""Answer latency: the context filter vs no filter vs the naive 5 x 512-token prompt.

    .venv/bin/python bench/bench_filter.py --model smollm2-135m --questions 5
    .venv/bin/python bench/bench_filter.py --questions 3            # the default 1.5B model

Three ways to answer the same questions with the same model, all with the real index of the
sample knowledge base (kb.yaml's sources; indexed into a temporary folder unless --data-dir
points at an existing index):

- ``filtered``:  the answer service with the context filter (3 x top_k candidates reranked,
                 each kept chunk trimmed to its best ``filter_sentences`` sentences);
- ``unfiltered``: the answer service without it (top-5 chunks as retrieved);
- ``naive``:     no service: top-5 retrieval, the untrimmed chunks in the prompt, the model.

Self-correction is off in the service runs (it would add a second generation to some
questions only, hiding the filter's effect); citations and confidence are computed as usual.
``first_token`` counts from the question's arrival (retrieval and filter included) in all
three. Prompt tokens are counted with the model's own tokenizer over the message texts. The
runs are interleaved per question (naive, filtered, unfiltered), so no prompt directly follows
an identical one (llama.cpp reuses a cached prompt prefix: only the shared system prompt).
``correct``: the answer contains every keyword of the fact (a rough quality signal).

Writes bench/results/bench_filter-<model>.json and .png.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import common  # one thread, repo on sys.path
from common import pyplot, write_results

VARIANTS = ("naive", "filtered", "unfiltered")


def public_facts(path: Path, n: int) -> list[dict]:
    facts = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return [f for f in facts if f.get("readers") == "public" and f.get("keywords")][:n]


def prompt_tokens(generator, messages) -> int:
    return sum(int(generator.count_tokens(m.content)) for m in messages)


def run_naive(generator, retriever, user, question: str, settings) -> dict:
    from kb_chatbot.app.answer.prompts import build_messages
    from kb_chatbot.core.types import GenParams

    t0 = time.perf_counter()
    hits = retriever.retrieve(question, user=user, top_k=5)
    t_ret = time.perf_counter() - t0
    messages = build_messages(question, hits)
    params = GenParams(max_tokens=settings.generator.max_tokens, temperature=0.0)
    first, pieces = None, []
    for tok in generator.stream(messages, params):
        if first is None:
            first = time.perf_counter() - t0
        pieces.append(tok.text)
    total = time.perf_counter() - t0
    return {"retrieve": t_ret, "first_token": first or total, "total": total,
            "prompt_tokens": prompt_tokens(generator, messages), "answer": "".join(pieces).strip(),
            "sources_chars": sum(len(h.prompt_text) for h in hits)}


def run_service(service, generator, user, question: str) -> dict:
    from kb_chatbot.app.answer.prompts import build_messages

    ans = service.answer(question, user=user)
    messages = build_messages(ans.standalone_question, ans.sources)
    t = ans.timings
    return {"retrieve": t.get("retrieve", 0.0), "filter": t.get("filter", 0.0),
            "first_token": t.get("first_token", t.get("total", 0.0)), "total": t.get("total", 0.0),
            "prompt_tokens": prompt_tokens(generator, messages), "answer": ans.text, "route": ans.route,
            "confidence": ans.confidence, "sources_chars": sum(len(h.prompt_text) for h in ans.sources)}


def summarise(rows: list[dict]) -> dict:
    out = {}
    for key in ("first_token", "total", "prompt_tokens", "retrieve", "filter"):
        vals = [r[key] for r in rows if key in r]
        if vals:
            out[key] = {"mean": round(statistics.mean(vals), 3), "median": round(statistics.median(vals), 3)}
    out["correct"] = sum(1 for r in rows if r.get("correct"))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", default="smollm2-135m", help="generator.model: smollm2-135m, default, or a path")
    ap.add_argument("--backend", default="auto", choices=["auto", "llamacpp", "transformers"])
    ap.add_argument("--questions", type=int, default=5)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--max-tokens", type=int, default=96)
    ap.add_argument("--config", default=str(common.REPO / "kb.yaml"))
    ap.add_argument("--data-dir", default=None, help="use the index already in this data dir")
    ap.add_argument("--facts", default=str(common.REPO / "data" / "sample" / "facts.jsonl"))
    args = ap.parse_args(argv)

    from kb_chatbot.app.generators import make_generator
    from kb_chatbot.app.answer.service import KnowledgeAnswerService
    from kb_chatbot.core.settings import load_settings
    from kb_chatbot.core.types import Principal
    from kb_chatbot.index.embedder import load_embedder
    from kb_chatbot.index.generation import open_index
    from kb_chatbot.index.retriever import HybridRetriever
    from kb_chatbot.ingest.sync import sync_sources

    backend = args.backend
    if backend == "auto":
        backend = "llamacpp" if importlib.util.find_spec("llama_cpp") else "transformers"
    tmp = None
    data_dir = args.data_dir
    if data_dir is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench-answer-")
        data_dir = tmp.name
    settings = load_settings(args.config, data_dir=data_dir)
    from kb_chatbot.app.generators.base import configure_threads, resolve_threads

    # as `kb` does: before the embedder brings OpenMP in with torch (generator.thread_wait)
    configure_threads(resolve_threads(settings.generator.threads), settings.generator.thread_wait)
    settings.generator.backend = backend
    settings.generator.model = args.model
    settings.generator.threads = args.threads
    settings.generator.max_tokens = args.max_tokens
    settings.answer.self_correction = False
    settings.answer.escalation = None

    embedder = load_embedder(settings.embedding)
    embedder.embed_documents(["warm up"])
    if open_index(settings, missing_ok=True).generation is None:
        t = time.perf_counter()
        sync_sources(settings, settings.sources, embedder=embedder)
        print(f"indexed the sample knowledge base in {time.perf_counter() - t:.1f} s", file=sys.stderr)
    index = open_index(settings)
    retriever = HybridRetriever(index, embedder, settings.retrieval)
    generator = make_generator(settings.generator, settings.models_dir, base_dir=settings.config_dir)
    t = time.perf_counter()
    generator.warm_up()
    load_s = time.perf_counter() - t
    with_filter = settings.model_copy(deep=True)
    with_filter.retrieval.context_filter = True
    without = settings.model_copy(deep=True)
    without.retrieval.context_filter = False
    acl = lambda doc_id: index.store.document_acl(doc_id)  # noqa: E731 (as build_services wires it)
    services = {
        "filtered": KnowledgeAnswerService(retriever, generator, embedder, with_filter, None, acl_lookup=acl),
        "unfiltered": KnowledgeAnswerService(retriever, generator, embedder, without, None, acl_lookup=acl),
    }
    user = Principal("bench", groups=())
    facts = public_facts(Path(args.facts), args.questions)
    # warm the whole path once (tokenizer, sentence cache of the filter is NOT kept: new filter per run)
    services["filtered"].answer("warm up question about vacation", user=user)
    rows: dict[str, list[dict]] = {v: [] for v in VARIANTS}
    for i, fact in enumerate(facts, 1):
        for variant in VARIANTS:
            if variant == "naive":
                r = run_naive(generator, retriever, user, fact["question"], settings)
            else:
                if variant == "filtered":  # a cold sentence cache, as for a question never seen
                    services["filtered"].context_filter.clear_cache()
                r = run_service(services[variant], generator, user, fact["question"])
            r["id"] = fact["id"]
            r["correct"] = all(k.lower() in r["answer"].lower() for k in fact["keywords"])
            rows[variant].append(r)
            print(f"[{i}/{len(facts)}] {variant:10s} {fact['id']:24s} first_token={r['first_token']:.2f}s "
                  f"total={r['total']:.2f}s prompt_tokens={r['prompt_tokens']} correct={r['correct']}",
                  file=sys.stderr, flush=True)
    summary = {v: summarise(rows[v]) for v in VARIANTS}
    naive = summary["naive"]
    print(f"\nmodel {generator.model_id} ({backend}, {args.threads} thread), {len(facts)} questions, "
          f"load {load_s:.1f} s; means (ratio to naive)")
    print(f"{'variant':12s}{'first token s':>18s}{'total s':>18s}{'prompt tokens':>20s}{'correct':>9s}")
    for v in VARIANTS:
        s = summary[v]
        cells = []
        for key in ("first_token", "total", "prompt_tokens"):
            m = s[key]["mean"]
            ratio = m / naive[key]["mean"] if naive[key]["mean"] else float("nan")
            cells.append(f"{m:9.2f} ({ratio:4.2f}x)" if key != "prompt_tokens" else f"{m:11.0f} ({ratio:4.2f}x)")
        print(f"{v:12s}{cells[0]:>18s}{cells[1]:>18s}{cells[2]:>20s}{s['correct']:>6d}/{len(facts)}")
    name = f"bench_filter-{args.model.replace('/', '_')}"
    out = write_results(name, {
        "model": generator.model_id, "backend": backend, "threads": args.threads, "questions": len(facts),
        "max_tokens": args.max_tokens, "load_seconds": round(load_s, 2),
        "filter_sentences": settings.retrieval.filter_sentences, "summary": summary, "runs": rows,
    })
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.8))
    for ax, key, label in zip(axes, ("first_token", "total", "prompt_tokens"),
                              ("time to first token (s)", "total (s)", "prompt tokens")):
        vals = [summary[v][key]["mean"] for v in VARIANTS]
        bars = ax.bar(VARIANTS, vals, color=["tab:grey", "tab:green", "tab:orange"])
        ax.bar_label(bars, fmt="%.1f" if key != "prompt_tokens" else "%.0f")
        ax.set_title(label)
    fig.suptitle(f"{generator.model_id}, {backend}, {args.threads} thread, mean of {len(facts)} questions")
    fig.tight_layout()
    png = out.with_suffix(".png")
    fig.savefig(png, dpi=100)
    print(f"\nwrote {out} and {png}")
    if tmp is not None:
        tmp.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
