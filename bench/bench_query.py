"""Query latency: where the time of one answer goes, vs the raw model on the same prompt.

    .venv/bin/python bench/bench_query.py -n 3       # 3 questions, the configured model (docs/BENCH.md)
    .venv/bin/python bench/bench_query.py            # 6 questions
    .venv/bin/python bench/bench_query.py --quick    # 2 questions
    .venv/bin/python bench/bench_query.py --model smollm2-135m

The sample wiki is indexed into a temporary data folder; each question goes through the real
answer service (retrieve -> context filter -> generate -> citations and confidence ->
self-correction when confidence is low) with the settings of kb.yaml (generator, threads,
context filter), as an all-access user. Then the same generator gets, with no service around
it, exactly the messages of the service's first (draft) generation, recorded on the way (the
system prompt, the numbered filtered sources, the question), and we time its first token and
its whole reply. The raw
runs happen after all service runs, in the same order, so each prompt follows a different one
in both (llama.cpp reuses the shared system-prompt prefix in both alike).

``first_token`` in the service is measured from the question's arrival, so it includes
retrieval and the filter; the raw model's is from the call. See bench/bench_filter.py (the
answering code's own bench) for time to first token with and without the context filter vs a
naive prompt.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import common
from bench_ingest import bench_settings, ingest, load_warm_embedder
from common import RESULTS, pyplot, write_results

QUESTIONS = [
    "How many vacation days do I get per year?",
    "How do I connect to the VPN from home?",
    "What is the limit for meals when travelling on business?",
    "What happens when I am paged while on call?",
    "Who approves a discount above 20 percent?",
    "How often do we run performance calibration?",
]
STAGES = ("retrieve", "filter", "first_token", "generate", "score", "correction", "total")


class PromptRecorder:
    """Passes every call to the real generator and keeps the messages of each ``stream`` call."""

    def __init__(self, inner):
        self.inner = inner
        self.calls: list = []

    def stream(self, messages, params):
        self.calls.append(list(messages))
        return self.inner.stream(messages, params)

    def __getattr__(self, name):
        return getattr(self.inner, name)


def raw_run(generator, messages, params) -> dict:
    t0 = time.perf_counter()
    first = None
    n = 0
    for tok in generator.stream(messages, params):
        if first is None:
            first = time.perf_counter() - t0
        n += 1
    total = time.perf_counter() - t0
    return {"first_token": first, "total": total, "tokens": n}


def plot(res: dict, png: Path) -> None:
    """One pair of bars per question: the service's stages (adding up to its total) above the
    raw model on the draft prompt; black ticks mark the first token."""
    plt = pyplot()
    runs = res["runs"]
    fig, ax = plt.subplots(figsize=(9, 1.1 * len(runs) + 1.5))
    colors = {"retrieve": "tab:blue", "filter": "tab:cyan", "model (draft) + scoring": "tab:orange",
              "self-correction": "tab:red", "raw model": "tab:gray"}
    labels, seen = [], set()
    for i, r in enumerate(runs):
        t = r["timings"]
        y_s, y_r = 2 * i, 2 * i + 0.8
        parts = [("retrieve", t.get("retrieve", 0.0)), ("filter", t.get("filter", 0.0))]
        parts.append(("model (draft) + scoring", t.get("total", 0.0) - t.get("correction", 0.0) - parts[0][1] - parts[1][1]))
        parts.append(("self-correction", t.get("correction", 0.0)))
        left = 0.0
        for name, v in parts:
            if v > 0:
                ax.barh(y_s, v, left=left, height=0.7, color=colors[name], label=None if name in seen else name)
                seen.add(name)
                left += v
        ax.barh(y_r, r["raw"]["total"], height=0.7, color=colors["raw model"],
                label=None if "raw model" in seen else "raw model, same draft prompt")
        seen.add("raw model")
        for y, ft in ((y_s, t.get("first_token")), (y_r, r["raw"]["first_token"])):
            if ft is not None:
                ax.plot([ft, ft], [y - 0.35, y + 0.35], color="black", lw=2)
        labels += [(y_s, f"Q{i + 1} service ({r['route']})"), (y_r, f"Q{i + 1} raw")]
    ax.set_yticks([y for y, _ in labels], [lab for _, lab in labels], fontsize=8)
    ax.invert_yaxis()
    ax.set(xlabel="seconds (black tick: first token)",
           title=f"{res['model']}: service {res['total_ratio']:.2f}x the raw model (median totals)")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.tight_layout()
    fig.savefig(png, dpi=100)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2 questions")
    ap.add_argument("-n", type=int, default=None, help="number of questions (default 6)")
    ap.add_argument("--config", type=Path, default=common.REPO / "kb.yaml",
                    help="generator / retrieval / answer settings to use (default: the repo's kb.yaml)")
    ap.add_argument("--model", default=None, help="override generator.model (e.g. smollm2-135m)")
    ap.add_argument("--backend", default=None, help="override generator.backend (llamacpp, transformers, fake)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    n = args.n or (2 if args.quick else len(QUESTIONS))
    questions = (QUESTIONS * (n // len(QUESTIONS) + 1))[:n]

    from kb_chatbot.app.generators import make_generator
    from kb_chatbot.app.answer.prompts import build_messages
    from kb_chatbot.app.kb.services import build_services
    from kb_chatbot.core.settings import load_settings
    from kb_chatbot.core.types import GenParams
    from kb_chatbot.eval.runner import eval_principal
    from kb_chatbot.index.generation import open_index

    conf = load_settings(args.config)
    if args.model:
        conf.generator.model = args.model
    if args.backend:
        conf.generator.backend = args.backend  # type: ignore[assignment]
    with tempfile.TemporaryDirectory(prefix="kb-bench-query-") as tmp:
        settings = bench_settings(Path(tmp) / "data", common.REPO / "data/sample/wiki", "wiki", "acme-wiki")
        for section in ("generator", "retrieval", "answer", "embedding"):
            setattr(settings, section, getattr(conf, section).model_copy(deep=True))
        embedder = load_warm_embedder(settings)
        ingest(settings, embedder)
        index = open_index(settings)
        user = eval_principal(index)
        # the models folder of the real config: the default model is assembled there once
        generator = make_generator(conf.generator, conf.models_dir, base_dir=conf.config_dir)
        t0 = time.perf_counter()
        warm = getattr(generator, "warm_up", None)
        if callable(warm):
            warm()
        load_s = time.perf_counter() - t0
        print(f"model {generator.model_id} loaded in {load_s:.1f} s; {len(questions)} questions", flush=True)
        recorder = PromptRecorder(generator)
        services = build_services(settings, embedder=embedder, index=index, generator=recorder, answer_log=None)
        service = services.answer_service
        service.answer("warm-up question about holidays", user=user)  # first-call costs out of the figures
        runs = []
        for q in questions:
            recorder.calls.clear()
            a = service.answer(q, user=user)
            # the first call of an answer without history is the draft: the prompt the user waits on
            draft = recorder.calls[0] if recorder.calls else build_messages(a.standalone_question, a.sources)
            runs.append({"question": q, "route": a.route, "corrected": a.corrected, "timings": dict(a.timings),
                         "model_calls": len(recorder.calls), "messages": draft, "answer": a.text})
            t = a.timings
            print(f"  service {t.get('total', 0):6.1f} s (first token {t.get('first_token', float('nan')):5.1f} s, "
                  f"route {a.route}{', corrected' if a.corrected else ''}): {q}", flush=True)
        g = settings.generator
        params = GenParams(max_tokens=g.max_tokens, temperature=g.temperature, logprobs=True)
        for r in runs:
            r["raw"] = raw_run(generator, r.pop("messages"), params)
            print(f"  raw     {r['raw']['total']:6.1f} s (first token {r['raw']['first_token']:5.1f} s, "
                  f"{r['raw']['tokens']} tokens): {r['question']}", flush=True)

    def med(vals):
        vals = [v for v in vals if v is not None]
        return statistics.median(vals) if vals else None

    service_med = {s: med([r["timings"].get(s) for r in runs]) for s in STAGES}
    raw_med = {k: med([r["raw"][k] for r in runs]) for k in ("first_token", "total", "tokens")}
    res = {
        "model": generator.model_id,
        "generator": settings.generator.model_dump(mode="json"),
        "retrieval": settings.retrieval.model_dump(mode="json"),
        "answer": {"self_correction": settings.answer.self_correction,
                   "grounding_check": settings.answer.grounding_check},
        "model_load_s": load_s,
        "questions": len(runs),
        "service_median_s": service_med,
        "raw_median_s": raw_med,
        "total_ratio": service_med["total"] / raw_med["total"] if raw_med["total"] else None,
        "first_token_ratio": (service_med["first_token"] / raw_med["first_token"]
                              if raw_med["first_token"] and service_med["first_token"] else None),
        "service_total_without_correction_median_s": med([r["timings"].get("total", 0) - r["timings"].get("correction", 0)
                                                          for r in runs]),
        "runs": runs,
    }
    print("\nmedians (s):  " + "  ".join(f"{s} {service_med[s]:.2f}" for s in STAGES if service_med[s] is not None))
    print(f"raw model:    first token {raw_med['first_token']:.2f}  total {raw_med['total']:.2f}  "
          f"({raw_med['tokens']:.0f} tokens)")
    wo = res["service_total_without_correction_median_s"]
    print(f"ratios: answer service total / raw model total = {res['total_ratio']:.2f}x "
          f"({wo / raw_med['total']:.2f}x without the self-correction pass); first token {res['first_token_ratio']:.2f}x")

    args.out.mkdir(parents=True, exist_ok=True)
    png = args.out / "bench_query.png"
    plot(res, png)
    path = write_results("bench_query", res, args.out)
    print(f"\nwrote {path} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
